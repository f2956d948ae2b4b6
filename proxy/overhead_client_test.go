package proxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/abproxy/abproxy/internal/wire"
	"golang.org/x/sys/unix"
)

// The overhead benchmark's load client: raw HTTP/1.1 over one kept-alive
// TCP connection per stream, no HTTP library, no allocation per event. It
// shares two cores with the simulated backend and the proxy it measures,
// so it must cost as little as possible.
//
// Every read goes through recvmsg with SO_TIMESTAMPNS, so a byte's arrival
// time is the kernel's receive time on the client socket, not the time the
// client goroutine got around to reading it: the client's own scheduling
// delay under load is kept out of every target's figures alike.

// ovhConn is one client connection.
type ovhConn struct {
	addr string
	nc   net.Conn
	raw  syscall.RawConn
	oob  []byte
	buf  []byte
	r, w int   // unread bytes are buf[r:w]
	rxNS int64 // kernel receive time of the last read
	ev   []byte
}

// ovhResult is what the client measured for one streamed request, in Unix
// nanoseconds.
type ovhResult struct {
	sendNS   int64  // just before the request was written
	firstNS  int64  // first event with non-empty delta content arrived
	endNS    int64  // the terminating zero-length chunk arrived
	chunks   int    // content-bearing events received
	answered bool   // a status line came back: the server saw the request
	id       string // X-Request-Id of the response (the sim's truth key)
	round    int    // the level's round it ran in (set by ovhRound)
}

func ovhDial(addr string) (*ovhConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &ovhConn{addr: addr, nc: nc, buf: make([]byte, 32<<10), oob: make([]byte, unix.CmsgSpace(16)), ev: make([]byte, 0, 4096)}
	tc := nc.(*net.TCPConn)
	if c.raw, err = tc.SyscallConn(); err != nil {
		nc.Close()
		return nil, err
	}
	var serr error
	if err := c.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		nc.Close()
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %v %v", err, serr)
	}
	return c, nil
}

func (c *ovhConn) Close() error { return c.nc.Close() }

// fill reads more bytes into the buffer, growing or compacting it.
func (c *ovhConn) fill() error {
	if c.r == c.w {
		c.r, c.w = 0, 0
	}
	if c.w == len(c.buf) {
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		} else {
			nb := make([]byte, 2*len(c.buf))
			copy(nb, c.buf[:c.w])
			c.buf = nb
		}
	}
	var n, oobn int
	var rerr error
	p := c.buf[c.w:]
	err := c.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), p, c.oob, 0)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	if n == 0 {
		return io.EOF
	}
	c.w += n
	if ts := wire.TimestampNS(c.oob[:oobn]); ts != 0 {
		c.rxNS = ts
	} else {
		c.rxNS = time.Now().UnixNano()
	}
	return nil
}

// line returns the next CRLF-terminated line (without CRLF), reading as
// needed. The slice is valid until the next fill.
func (c *ovhConn) line() ([]byte, error) {
	for {
		if i := bytes.Index(c.buf[c.r:c.w], crlf); i >= 0 {
			l := c.buf[c.r : c.r+i]
			c.r += i + 2
			return l, nil
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

var (
	crlf        = []byte("\r\n")
	contentPat  = []byte(`"content":"`)
	hdrChunked  = []byte("transfer-encoding: chunked")
	hdrReqID    = []byte("x-request-id:")
	errNotChunk = errors.New("response is not chunked")
)

// do sends one request and reads its streamed response to the end.
func (c *ovhConn) do(req []byte) (ovhResult, error) {
	var res ovhResult
	res.sendNS = time.Now().UnixNano()
	if _, err := c.nc.Write(req); err != nil {
		return res, err
	}
	status, err := c.line()
	if err != nil {
		return res, err
	}
	if len(status) < 12 || !bytes.HasPrefix(status, []byte("HTTP/1.1 ")) {
		return res, fmt.Errorf("bad status line %q", status)
	}
	code, _ := strconv.Atoi(string(status[9:12]))
	res.answered = true
	chunked := false
	for {
		h, err := c.line()
		if err != nil {
			return res, err
		}
		if len(h) == 0 {
			break
		}
		lh := bytes.ToLower(h)
		switch {
		case bytes.Equal(lh, hdrChunked):
			chunked = true
		case bytes.HasPrefix(lh, hdrReqID):
			res.id = string(bytes.TrimSpace(h[len(hdrReqID):]))
		}
	}
	if code != 200 {
		return res, fmt.Errorf("status %d", code)
	}
	if !chunked {
		return res, errNotChunk
	}
	c.ev = c.ev[:0]
	for {
		l, err := c.line()
		if err != nil {
			return res, err
		}
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i]
		}
		size, err := strconv.ParseUint(string(l), 16, 32)
		if err != nil {
			return res, fmt.Errorf("bad chunk size %q", l)
		}
		if size == 0 {
			if _, err := c.line(); err != nil { // empty trailer section
				return res, err
			}
			res.endNS = c.rxNS
			return res, nil
		}
		n := int(size)
		for c.w-c.r < n+2 {
			if err := c.fill(); err != nil {
				return res, err
			}
		}
		c.events(c.buf[c.r:c.r+n], &res)
		c.r += n + 2
	}
}

// events feeds chunk data to the SSE splitter and classifies each event.
func (c *ovhConn) events(data []byte, res *ovhResult) {
	c.ev = append(c.ev, data...)
	off := 0
	for {
		i := bytes.Index(c.ev[off:], []byte("\n\n"))
		if i < 0 {
			break
		}
		ev := c.ev[off : off+i]
		off += i + 2
		if j := bytes.Index(ev, contentPat); j >= 0 && j+len(contentPat) < len(ev) && ev[j+len(contentPat)] != '"' {
			if res.chunks == 0 {
				res.firstNS = c.rxNS
			}
			res.chunks++
		}
	}
	c.ev = c.ev[:copy(c.ev, c.ev[off:])]
}
