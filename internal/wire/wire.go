// Package wire holds the byte-level pieces of HTTP/1.1, Server-Sent Events
// and JSON that the proxy, the load generator and the sim each need on
// their hot paths: one implementation, tested and fuzzed once.
package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http/httputil"
	"unicode/utf8"
)

// EventEnd returns the length of the first event in p including its blank
// line terminator (LF LF, CRLF CRLF, or CR CR as the SSE spec allows), or -1.
func EventEnd(p []byte) int {
	// LF-only streams (vLLM's) take vectorised scans; a CR anywhere before
	// the first LF LF takes the byte loop, which also knows CR CR.
	for off := 0; ; {
		i := bytes.IndexByte(p[off:], '\n')
		if i < 0 || off+i+1 >= len(p) {
			break
		}
		i += off
		if p[i+1] == '\n' {
			if bytes.IndexByte(p[:i], '\r') >= 0 {
				break
			}
			return i + 2
		}
		off = i + 1
	}
	return eventEndSlow(p)
}

// eventEndSlow is EventEnd for streams with CRs in them.
func eventEndSlow(p []byte) int {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\n':
			if i+1 < len(p) && p[i+1] == '\n' {
				return i + 2
			}
			if i+2 < len(p) && p[i+1] == '\r' && p[i+2] == '\n' {
				return i + 3
			}
		case '\r':
			if i+1 < len(p) && p[i+1] == '\r' {
				return i + 2
			}
		}
	}
	return -1
}

// EventData returns the payload of the event's data lines. Several data
// lines are joined with "\n" as the SSE spec says; that rare case allocates.
func EventData(ev []byte) []byte {
	var data []byte
	lines := 0
	for len(ev) > 0 {
		line := ev
		ev = nil
		if i := lineEnd(line); i >= 0 {
			rest := line[i+1:]
			if line[i] == '\r' && len(rest) > 0 && rest[0] == '\n' {
				rest = rest[1:]
			}
			line, ev = line[:i], rest
		}
		if !bytes.HasPrefix(line, dataPrefix) {
			continue
		}
		v := line[len(dataPrefix):]
		if len(v) > 0 && v[0] == ' ' {
			v = v[1:]
		}
		lines++
		if lines == 1 {
			data = v
			continue
		}
		if lines == 2 {
			data = append([]byte(nil), data...)
		}
		data = append(append(data, '\n'), v...)
	}
	return data
}

var dataPrefix = []byte("data:")

// ErrWouldBlock is RxReader.ReadFD's answer when the socket is empty.
var ErrWouldBlock = errors.New("socket has no data now")

// lineEnd is the index of the first CR or LF in p, or -1. Two IndexByte
// scans (vectorised) are several times faster than IndexAny's byte loop
// on an event's one long line.
func lineEnd(p []byte) int {
	lf := bytes.IndexByte(p, '\n')
	end := lf
	if end < 0 {
		end = len(p)
	}
	if cr := bytes.IndexByte(p[:end], '\r'); cr >= 0 {
		return cr
	}
	return lf
}

// AppendJSONString appends s JSON-escaped, without the surrounding quotes,
// the way Python's json/pydantic write it (UTF-8 kept as is, control
// characters escaped, "<>&" not escaped). Invalid UTF-8 becomes U+FFFD so
// the output is always valid JSON.
func AppendJSONString(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"':
				dst = append(dst, '\\', '"')
			case '\\':
				dst = append(dst, '\\', '\\')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(dst, s[start:]...)
}

// ChunkedBody reads a chunked body (r, e.g. httputil.NewChunkedReader(br))
// and then consumes the trailer section after the last chunk so the
// connection is positioned at the next response when it returns to the pool.
type ChunkedBody struct {
	r    io.Reader
	br   *bufio.Reader
	done bool
}

// NewChunkedBody reads the chunked body that follows on br.
func NewChunkedBody(br *bufio.Reader) *ChunkedBody {
	return &ChunkedBody{r: httputil.NewChunkedReader(br), br: br}
}

// Read implements io.Reader.
func (b *ChunkedBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		for {
			line, lerr := b.br.ReadSlice('\n')
			if lerr != nil {
				return n, lerr
			}
			if len(line) == 1 || (len(line) == 2 && line[0] == '\r') { // an empty line ends the trailer section
				break
			}
		}
		b.done = true
	}
	return n, err
}

const hexDigits = "0123456789abcdef"
