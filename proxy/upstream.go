package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
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
	name    string
	model   string
	apiKey  string
	addr    string // host:port to dial
	host    string // Host header
	useTLS  bool
	tlsConf *tls.Config
	dialTO  time.Duration
	idleTO  time.Duration
	pool    wire.IdlePool[*upConn]
	// opened and closed (may be nil) see every connection dialed and
	// closed: the proxy keeps the open ones for a shutdown to cut
	opened, closed func(*upConn)

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
		pool: wire.IdlePool[*upConn]{MaxIdle: 4 * time.Second, Max: maxIdle},
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
	c       net.Conn
	br      *bufio.Reader
	reused  bool
	aborted atomic.Bool // set by Shutdown after the drain timeout
	// idle timeout between reads and, for shadows, a cap on the exchange
	deadline wire.ReadDeadline
	rx       *wire.RxReader // kernel receive timestamps; nil for TLS or non-Linux
	rxNS     int64          // receive time of the data of the last socket read
	fd       uintptr        // the socket, when rx is set (for event loops)
	// Inside a read session (see pump), Read uses the session's descriptor
	// and reports an empty socket as wire.ErrWouldBlock instead of waiting;
	// drained notes that the last read left the socket empty.
	sessFD  uintptr
	inSess  bool
	drained bool
	// looped: the connection is in an event loop, whose waiter keeps the
	// idle timeout (awaitLoop), so Read leaves the deadline alone
	looped bool
	closed func(*upConn) // the upstream's, called by Close
}

var errAborted = errors.New("request aborted by shutdown")

func (c *upConn) Read(p []byte) (int, error) {
	if c.aborted.Load() {
		return 0, errAborted
	}
	if !c.looped {
		c.deadline.Arm(c.c)
	}
	if c.inSess {
		n, ts, err := c.rx.ReadFD(c.sessFD, p)
		if err == wire.ErrWouldBlock {
			c.drained = true
			return 0, err
		}
		if n > 0 {
			c.rxNS = ts
			// TCP returns less than asked only when the receive queue ran dry
			c.drained = n < len(p)
		}
		return n, err
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

// Write writes to the backend: with raw write(2) calls when the socket
// has kernel timestamps (see wire.RxReader.Write), like Read.
func (c *upConn) Write(p []byte) (int, error) {
	if c.rx != nil {
		return c.rx.Write(p)
	}
	return c.c.Write(p)
}

// session runs step under one raw read of the connection (see
// wire.RxReader.Session) until it returns true. When step returns false
// the socket was left empty, and the session waits for it to become
// readable without the failed recvmsg a plain Read would make first.
// Without kernel timestamps (TLS, non-Linux) step just runs in a loop on
// blocking reads.
func (c *upConn) session(step func() bool) error {
	if c.rx == nil {
		for !step() {
		}
		return nil
	}
	return c.rx.Session(func(fd uintptr) bool {
		c.sessFD, c.inSess = fd, true
		done := step()
		c.inSess, c.drained = false, false
		return done
	})
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
	if c, ok := u.pool.Get(); ok {
		c.reused = true
		return c, nil
	}
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
	c := &upConn{c: nc, deadline: wire.ReadDeadline{Idle: u.idleTO}, closed: u.closed}
	if u.opened != nil {
		u.opened(c)
	}
	if !u.useTLS {
		if c.rx = wire.NewRxReader(nc); c.rx != nil {
			c.fd = c.rx.FD()
		}
	}
	// 4 KiB like nginx's proxy_buffer_size: it holds the response header
	// and, in a stream, one read's worth of events, which the pump consumes
	// in place (see bodyDecoder)
	c.br = bufio.NewReaderSize(c, 4<<10)
	return c, nil
}

func (u *upstream) put(c *upConn) {
	c.deadline.Until = 0 // the connection's deadline is moved by the next Read
	u.pool.Put(c)
}

func (u *upstream) closeIdle() { u.pool.CloseIdle() }

// Close closes the connection: the pool's, the proxy's, every close.
func (c *upConn) Close() error {
	if c.closed != nil {
		c.closed(c)
	}
	return c.c.Close()
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
	// rendered into a pooled buffer and sent with one write: no per-connection
	// write buffer sits idle for the rest of a long stream
	bp := reqBufs.Get().(*[]byte)
	w := append((*bp)[:0], req.Header.Method()...)
	w = append(w, ' ')
	w = append(w, path...)
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, u.host...)
	w = append(w, "\r\n"...)
	for k, v := range req.Header.All() {
		if skipHeader(k, u.apiKey != "", tapped) {
			continue
		}
		w = append(w, k...)
		w = append(w, ": "...)
		w = append(w, v...)
		w = append(w, "\r\n"...)
	}
	if u.apiKey != "" {
		w = append(w, "Authorization: Bearer "...)
		w = append(w, u.apiKey...)
		w = append(w, "\r\n"...)
	}
	w = append(w, "X-Request-Id: "...)
	w = append(w, reqID...)
	w = append(w, "\r\n"...)
	if len(body) > 0 || string(req.Header.Method()) == "POST" {
		w = append(w, "Content-Length: "...)
		w = strconv.AppendInt(w, int64(len(body)), 10)
		w = append(w, "\r\n"...)
	}
	w = append(w, "\r\n"...)
	w = append(w, body...)
	_, err := c.Write(w)
	if cap(w) <= 64<<10 { // a huge prompt's buffer is not worth keeping
		*bp = w[:0]
		reqBufs.Put(bp)
	}
	return err
}

var abproxyPrefix = []byte("x-abproxy-")

var reqBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// skipHeader reports whether a client header stays behind: hop-by-hop
// headers, abproxy's own, Authorization when the backend has its own key,
// and Accept-Encoding on tapped responses (the tap must read the events).
func skipHeader(k []byte, ownKey, tapped bool) bool {
	if len(k) >= len(abproxyPrefix) && bytes.EqualFold(k[:len(abproxyPrefix)], abproxyPrefix) {
		return true
	}
	var lb [24]byte
	if len(k) > len(lb) {
		return false // no other header we drop is this long
	}
	lk := lb[:len(k)]
	for i, ch := range k {
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		lk[i] = ch
	}
	switch {
	case hopHeaders[string(lk)]:
		return true
	case ownKey && string(lk) == "authorization":
		return true
	case tapped && string(lk) == "accept-encoding":
		return true
	}
	return false
}

// errStaleConn marks a pooled connection that the backend had closed before
// we sent anything useful; the request is retried once on a fresh one.
var errStaleConn = errors.New("stale pooled connection")
