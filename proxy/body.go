package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"

	"github.com/valyala/fasthttp"
)

// bodyDecoder walks a streamed response body in place in the upstream
// connection's read buffer: chunked framing is parsed where recvmsg put the
// bytes and the payload is handed out as slices of that buffer. An event is
// then copied once on its way to the client, instead of passing through a
// chunked reader, a pump buffer and an event buffer.
//
// It never reads the socket by itself: next reports errNeedMore when the
// buffered bytes are used up, so that the pump can flush what it holds to
// the client before it blocks in fill.
type bodyDecoder struct {
	br    *bufio.Reader
	mode  uint8 // how the body is framed
	state uint8 // where in the chunked framing we are
	left  int64 // bytes left in the current chunk (chunked) or body (length)
	// eof: the backend closed the connection, which then cannot be reused
	// even if the body ended cleanly
	eof       bool
	keepAlive bool // the response allows another request on the connection
}

const (
	bodyNone    uint8 = iota // no body (HEAD, 204, 304, 1xx)
	bodyLength               // Content-Length
	bodyChunked              // Transfer-Encoding: chunked
	bodyClose                // identity: the body ends when the backend closes
)

const (
	chunkSize    uint8 = iota // expecting a chunk-size line
	chunkData                 // inside chunk data, left bytes to go
	chunkDataEnd              // expecting the CRLF after chunk data
	chunkTrailer              // after the last chunk: trailer lines up to an empty one
	chunkDone
)

// maxChunkLine bounds a chunk-size or trailer line. The read buffer is
// 4 KiB, and a line that fills it cannot be a sane chunk header.
const maxChunkLine = 4096

var (
	// errNeedMore is next's signal to call fill; it never leaves the pump.
	errNeedMore = errors.New("need more bytes from the backend")
	// errChunked is a violation of the chunked framing (RFC 9112 §7.1).
	errChunked = errors.New("malformed chunked encoding")
)

// init frames the body described by h.
func (d *bodyDecoder) init(br *bufio.Reader, h *fasthttp.ResponseHeader, head bool) {
	*d = bodyDecoder{br: br, keepAlive: !h.ConnectionClose()}
	switch n := h.ContentLength(); {
	case head || h.StatusCode() == 204 || h.StatusCode() == 304 || (h.StatusCode() >= 100 && h.StatusCode() < 200):
		d.mode = bodyNone // these responses never have a body (RFC 9112 §6.3)
	case n >= 0:
		d.mode, d.left = bodyLength, int64(n)
	case n == -1:
		d.mode, d.state = bodyChunked, chunkSize
	default:
		d.mode, d.keepAlive = bodyClose, false
	}
}

// reusable reports whether the connection can carry another request once
// the body has been read to its end.
func (d *bodyDecoder) reusable() bool { return d.keepAlive && !d.eof }

// buffered returns the bytes read from the socket and not yet consumed,
// without reading more.
func (d *bodyDecoder) buffered() []byte {
	b, _ := d.br.Peek(d.br.Buffered())
	return b
}

// next returns the next payload bytes that are already buffered. The slice
// is valid until the next fill. errNeedMore asks for a fill; io.EOF is the
// end of the body; errChunked a framing error.
func (d *bodyDecoder) next() ([]byte, error) { return d.nextUpTo(math.MaxInt) }

// Read makes the decoder an io.Reader for bodies that are read whole.
func (d *bodyDecoder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		b, err := d.nextUpTo(len(p))
		if err == errNeedMore {
			if err = d.fill(); err == nil {
				continue
			}
		}
		if len(b) > 0 {
			return copy(p, b), nil
		}
		return 0, err
	}
}

func (d *bodyDecoder) nextUpTo(limit int) ([]byte, error) {
	switch d.mode {
	case bodyNone:
		return nil, io.EOF
	case bodyLength:
		if d.left == 0 {
			return nil, io.EOF
		}
		return d.take(d.left, limit)
	case bodyClose:
		return d.take(-1, limit)
	}
	for {
		switch d.state {
		case chunkData:
			return d.take(d.left, limit)
		case chunkDataEnd:
			b := d.buffered()
			if len(b) < 2 {
				if len(b) == 1 && b[0] != '\r' {
					return nil, errChunked
				}
				return nil, errNeedMore
			}
			if b[0] != '\r' || b[1] != '\n' {
				return nil, errChunked
			}
			_, _ = d.br.Discard(2)
			d.state = chunkSize
		case chunkSize, chunkTrailer:
			line, err := d.line()
			if err != nil {
				return nil, err
			}
			if d.state == chunkTrailer {
				if len(line) == 0 {
					d.state = chunkDone
					return nil, io.EOF
				}
				continue // trailer fields are not forwarded (nor are they by vLLM)
			}
			n, ok := parseChunkSize(line)
			if !ok {
				return nil, errChunked
			}
			if n == 0 {
				d.state = chunkTrailer
			} else {
				d.state, d.left = chunkData, n
			}
		default: // chunkDone
			return nil, io.EOF
		}
	}
}

// take hands out up to max buffered payload bytes (max < 0: no bound
// from the framing), and at most limit.
func (d *bodyDecoder) take(max int64, limit int) ([]byte, error) {
	n := int64(d.br.Buffered())
	if n == 0 {
		return nil, errNeedMore
	}
	if max >= 0 && n > max {
		n = max
	}
	if n > int64(limit) {
		n = int64(limit)
	}
	b, _ := d.br.Peek(int(n))
	_, _ = d.br.Discard(int(n))
	if d.mode == bodyChunked || d.mode == bodyLength {
		d.left -= n
		if d.left == 0 && d.mode == bodyChunked {
			d.state = chunkDataEnd
		}
	}
	return b, nil
}

// line consumes one buffered line without its line end. A chunk-size line
// must end in CRLF, as Go's own chunked reader insists, and loses trailing
// spaces and tabs; a trailer line may end in a bare LF.
func (d *bodyDecoder) line() ([]byte, error) {
	b := d.buffered()
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) >= maxChunkLine {
			return nil, errChunked
		}
		return nil, errNeedMore
	}
	if d.state == chunkSize && (i == 0 || bytes.IndexByte(b[:i], '\r') != i-1) {
		return nil, errChunked // a bare LF, or a CR inside the line
	}
	line := b[:i]
	_, _ = d.br.Discard(i + 1)
	if d.state == chunkTrailer {
		return bytes.TrimSuffix(line, []byte("\r")), nil
	}
	line = line[:i-1]
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	return line, nil
}

// parseChunkSize reads the hex size of a chunk-size line, ignoring chunk
// extensions (";name=value") as RFC 9112 §7.1.1 allows.
// The syntax accepted is exactly that of Go's net/http chunked reader.
func parseChunkSize(line []byte) (int64, bool) {
	line, _, _ = bytes.Cut(line, []byte(";"))
	if len(line) == 0 || len(line) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range line {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | uint64(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | uint64(c-'A'+10)
		default:
			return 0, false
		}
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

// fill reads the socket once, blocking until bytes arrive. The end of the
// connection is the end of the body only for close-delimited bodies.
func (d *bodyDecoder) fill() error {
	if d.br.Buffered() == d.br.Size() {
		return errChunked // a full buffer that next could not use: an overlong line
	}
	_, err := d.br.Peek(d.br.Buffered() + 1)
	if err == io.EOF {
		d.eof = true
		// a close after the last chunk, with the trailer's final CRLF
		// missing, has lost nothing: Go's reader also takes it as the end
		if d.mode != bodyClose && !(d.mode == bodyChunked && d.state == chunkTrailer) {
			return io.ErrUnexpectedEOF
		}
	}
	return err
}
