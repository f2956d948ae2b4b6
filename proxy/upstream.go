package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/abproxy/abproxy/config"

	"github.com/abproxy/abproxy/internal/wire"
)

// The upstream side is a small HTTP/1.1 client of our own over pooled
// connections rather than fasthttp.HostClient, because the tap needs what
// HostClient hides: the time of the first response byte, the time of every
// read, an idle timeout that restarts on each read (not one deadline for the
// whole stream), and the ability to abort one exchange by closing its conn.

// upstream is one configured backend and its idle connections.
type upstream struct {
	name     string
	model    string
	apiKey   string
	addr     string // host:port to dial
	host     string // Host header
	useTLS   bool
	tlsConf  *tls.Config
	dialTO   time.Duration
	idleTO   time.Duration
	keepIdle time.Duration // drop pooled conns idle longer than this

	mu   sync.Mutex
	idle []*upConn
	max  int

	// inflight counts requests at this backend now: [0] primaries, [1]
	// shadows, from roundTrip until done (Proxy.Stats).
	inflight [2]atomic.Int64
}

func newUpstream(b config.Backend, connectTimeout, idleTimeout time.Duration, maxIdle int) (*upstream, error) {
	u, err := url.Parse(b.URL)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", b.Name, err)
	}
	up := &upstream{
		name: b.Name, model: b.Model, apiKey: b.APIKey,
		host: u.Host, useTLS: u.Scheme == "https",
		dialTO: connectTimeout, idleTO: idleTimeout,
		// uvicorn (vLLM's server) closes idle keep-alive connections after 5 s;
		// reusing one just before that races with its close.
		keepIdle: 4 * time.Second,
		max:      maxIdle,
	}
	up.addr = u.Host
	if u.Port() == "" {
		if up.useTLS {
			up.addr = net.JoinHostPort(u.Hostname(), "443")
		} else {
			up.addr = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	if up.useTLS {
		up.tlsConf = &tls.Config{ServerName: u.Hostname()}
	}
	return up, nil
}

// upConn is one connection to a backend. Read restarts the idle deadline
// so that a stream may last for hours while a silent backend is still caught.
type upConn struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	idleTO   time.Duration
	lastUsed time.Time
	reused   bool
	aborted  atomic.Bool    // set by Shutdown after the drain timeout
	deadline time.Time      // bounds a whole exchange (shadows); zero = none
	rx       *wire.RxReader // kernel receive timestamps; nil for TLS or non-Linux
	rxNS     int64          // receive time of the data of the last socket read
}

var errAborted = errors.New("request aborted by shutdown")

func (c *upConn) Read(p []byte) (int, error) {
	if c.aborted.Load() {
		return 0, errAborted
	}
	if c.idleTO > 0 || !c.deadline.IsZero() {
		d := c.deadline
		if c.idleTO > 0 {
			if idle := time.Now().Add(c.idleTO); d.IsZero() || idle.Before(d) {
				d = idle
			}
		}
		_ = c.c.SetReadDeadline(d)
	}
	if c.rx != nil {
		n, ts, err := c.rx.Read(p)
		if n > 0 {
			c.rxNS = ts
		}
		return n, err
	}
	return c.c.Read(p)
}

// readTime is when the data last read from the socket arrived: the
// kernel's receive time when known, else now. Bytes served from the bufio
// buffer carry the time of the socket read that brought them.
func (c *upConn) readTime() int64 {
	if c.rxNS != 0 {
		return c.rxNS
	}
	return now()
}

func (u *upstream) get() (*upConn, error) {
	now := time.Now()
	u.mu.Lock()
	for n := len(u.idle); n > 0; n = len(u.idle) {
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		if now.Sub(c.lastUsed) < u.keepIdle {
			u.mu.Unlock()
			c.reused = true
			return c, nil
		}
		_ = c.c.Close()
	}
	u.mu.Unlock()
	return u.dial()
}

func (u *upstream) dial() (*upConn, error) {
	d := net.Dialer{Timeout: u.dialTO, KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	if u.useTLS {
		nc, err = (&tls.Dialer{NetDialer: &d, Config: u.tlsConf}).Dial("tcp", u.addr)
	} else {
		nc, err = d.Dial("tcp", u.addr)
	}
	if err != nil {
		return nil, err
	}
	c := &upConn{c: nc, idleTO: u.idleTO}
	if !u.useTLS {
		c.rx = wire.NewRxReader(nc)
	}
	c.br = bufio.NewReaderSize(c, 16<<10)
	c.bw = bufio.NewWriterSize(nc, 16<<10)
	return c, nil
}

func (u *upstream) put(c *upConn) {
	_ = c.c.SetReadDeadline(time.Time{})
	c.deadline = time.Time{}
	c.lastUsed = time.Now()
	u.mu.Lock()
	if len(u.idle) < u.max {
		u.idle = append(u.idle, c)
		u.mu.Unlock()
		return
	}
	u.mu.Unlock()
	_ = c.c.Close()
}

func (u *upstream) closeIdle() {
	u.mu.Lock()
	for _, c := range u.idle {
		_ = c.c.Close()
	}
	u.idle = nil
	u.mu.Unlock()
}

// hopHeaders are connection-level headers that a proxy must not forward
// (RFC 9110 §7.6.1), plus the ones the proxy sets itself.
var hopHeaders = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"proxy-authenticate": true, "proxy-authorization": true, "te": true,
	"trailer": true, "transfer-encoding": true, "upgrade": true,
	"host": true, "content-length": true, "x-request-id": true,
}

// writeRequest sends one request. Client headers pass through except the
// hop-by-hop ones and abproxy's own; Authorization is replaced when the
// backend has its own key; compression is refused on tapped responses
// because the tap must read the events.
func (u *upstream) writeRequest(c *upConn, req *fasthttp.Request, path []byte, body []byte, reqID string, tapped bool) error {
	w := c.bw
	w.Write(req.Header.Method())
	w.WriteByte(' ')
	w.Write(path)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(u.host)
	w.WriteString("\r\n")
	for k, v := range req.Header.All() {
		lk := strings.ToLower(string(k))
		if hopHeaders[lk] || strings.HasPrefix(lk, "x-abproxy-") {
			continue
		}
		if lk == "authorization" && u.apiKey != "" {
			continue
		}
		if lk == "accept-encoding" && tapped {
			continue
		}
		w.Write(k)
		w.WriteString(": ")
		w.Write(v)
		w.WriteString("\r\n")
	}
	if u.apiKey != "" {
		w.WriteString("Authorization: Bearer ")
		w.WriteString(u.apiKey)
		w.WriteString("\r\n")
	}
	w.WriteString("X-Request-Id: ")
	w.WriteString(reqID)
	w.WriteString("\r\n")
	if len(body) > 0 || string(req.Header.Method()) == "POST" {
		w.WriteString("Content-Length: ")
		w.WriteString(itoa(len(body)))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	w.Write(body)
	return w.Flush()
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// bodyReader returns a reader for the response body framed by h, and
// whether the connection can be reused once that reader hits io.EOF.
func bodyReader(c *upConn, h *fasthttp.ResponseHeader, head bool) (io.Reader, bool) {
	reusable := !h.ConnectionClose()
	if st := h.StatusCode(); head || st == 204 || st == 304 || (st >= 100 && st < 200) {
		return eofReader{}, reusable // these responses never have a body (RFC 9112 §6.3)
	}
	switch n := h.ContentLength(); {
	case n >= 0:
		return io.LimitReader(c.br, int64(n)), reusable
	case n == -1: // chunked
		return wire.NewChunkedBody(c.br), reusable
	default: // identity: the body ends when the backend closes
		return c.br, false
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// errStaleConn marks a pooled connection that the backend had closed before
// we sent anything useful; the request is retried once on a fresh one.
var errStaleConn = errors.New("stale pooled connection")
