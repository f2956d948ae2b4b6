package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/abproxy/abproxy/internal/wire"
)

// The client is a small HTTP/1.1 client of its own over pooled connections,
// for the same reasons as the proxy's upstream side: the time of every read
// is taken right after the read returns, the idle timeout restarts on each
// read (a stream may last minutes), an exchange is aborted by closing its
// connection, and a stream costs one goroutine and no per-chunk allocation.

// Error classes, the same strings the proxy stores in requests.error.
const (
	errUnreachable = "upstream_unreachable"
	errStatus      = "upstream_status"
	errReset       = "upstream_reset"
	errTimeout     = "timeout"
	errCancelled   = "client_cancelled"
)

// Header names of abproxy's header contract.
const (
	headerBackend   = "X-ABProxy-Backend"
	headerRun       = "X-ABProxy-Run"
	headerNoMirror  = "X-ABProxy-No-Mirror"
	headerRequestID = "X-ABProxy-Request-Id"
)

// endpoint is the server bench talks to and its idle connections.
type endpoint struct {
	base    string // URL as given, for messages
	addr    string // host:port to dial
	host    string // Host header
	prefix  string // path prefix before /v1
	tlsConf *tls.Config
	dialTO  time.Duration
	idleTO  time.Duration
	static  []byte // header lines sent with every request
	pool    wire.IdlePool[*conn]
}

// newEndpoint parses a base URL: scheme://host[:port][/prefix], with or
// without a trailing /v1.
func newEndpoint(base, apiKey, userAgent string, idleTimeout time.Duration) (*endpoint, error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--target %q is not an http(s)://host:port URL", base)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--target %q must not have a query or fragment", base)
	}
	e := &endpoint{
		base: base, host: u.Host, dialTO: 10 * time.Second, idleTO: idleTimeout,
		pool: wire.IdlePool[*conn]{MaxIdle: 4 * time.Second},
	}
	e.prefix = strings.TrimSuffix(strings.TrimSuffix(u.EscapedPath(), "/"), "/v1")
	e.addr = u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		e.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		e.tlsConf = &tls.Config{ServerName: u.Hostname()}
	}
	var h []byte
	h = append(h, "Host: "...)
	h = append(h, e.host...)
	h = append(h, "\r\nUser-Agent: "...)
	h = append(h, userAgent...)
	h = append(h, "\r\nAccept: text/event-stream, application/json\r\n"...)
	if apiKey != "" {
		h = append(h, "Authorization: Bearer "...)
		h = append(h, apiKey...)
		h = append(h, "\r\n"...)
	}
	e.static = h
	return e, nil
}

// conn is one keep-alive connection. Read keeps an idle deadline: no read
// waits much longer than the endpoint's idle timeout (wire.ReadDeadline).
type conn struct {
	nc     net.Conn     // the connection (TLS or TCP): deadlines, writes, Close
	rd     io.Reader    // what reads go through: nc, or the stamped TCP conn
	stamp  *wire.RxConn // kernel receive times; nil when unavailable
	br     *bufio.Reader
	idle   wire.ReadDeadline
	reused bool
}

func (c *conn) Read(p []byte) (int, error) {
	c.idle.Arm(c.nc)
	return c.rd.Read(p)
}

// now is the time of the latest read: the kernel's receive time of the
// last segment read when known, else the time now.
func (c *conn) now() int64 {
	t := time.Now().UnixNano()
	if c.stamp != nil {
		if k := c.stamp.Last; k != 0 && k <= t && t-k < int64(time.Minute) {
			return k
		}
	}
	return t
}

func (e *endpoint) get() (*conn, error) {
	if c, ok := e.pool.Get(); ok {
		c.reused = true
		return c, nil
	}
	return e.dial()
}

func (e *endpoint) dial() (*conn, error) {
	d := net.Dialer{Timeout: e.dialTO, KeepAlive: 30 * time.Second}
	raw, err := d.Dial("tcp", e.addr)
	if err != nil {
		return nil, err
	}
	c := &conn{nc: raw, rd: raw, idle: wire.ReadDeadline{Idle: e.idleTO}}
	var under net.Conn = raw
	if c.stamp = wire.NewRxConn(raw); c.stamp != nil {
		under, c.rd = c.stamp, c.stamp
	}
	if e.tlsConf != nil {
		tc := tls.Client(under, e.tlsConf)
		_ = raw.SetDeadline(time.Now().Add(e.dialTO))
		if err := tc.Handshake(); err != nil {
			_ = raw.Close()
			return nil, err
		}
		_ = raw.SetDeadline(time.Time{})
		c.nc, c.rd = tc, tc
	}
	c.br = bufio.NewReaderSize(c, 4<<10)
	return c, nil
}

func (e *endpoint) put(c *conn) { e.pool.Put(c) } // the next Read moves the deadline

func (e *endpoint) closeIdle() { e.pool.CloseIdle() }

// Close closes the connection (for the pool).
func (c *conn) Close() error { return c.nc.Close() }

// call is one request to send: method, path and body, plus the headers
// that vary per request.
type call struct {
	method  string
	path    string // under the endpoint's prefix, e.g. /v1/chat/completions
	body    []byte
	id      string // X-Request-Id; "" for none
	run     string // X-ABProxy-Run; "" for none
	backend string // X-ABProxy-Backend; "" for none
	warmup  bool   // passed on to the observer
}

// observer follows exchanges live, for progress output.
type observer interface {
	chunks(n int64)                     // content events arrived
	firstToken(warmup bool, ms float64) // a request's first token arrived, ms after its start
}

// session holds what one in-flight exchange needs; sessions are pooled so
// a stream allocates nothing per chunk.
type session struct {
	hdr    fasthttp.ResponseHeader
	parser fastjson.Parser
	out    hash.Hash
	wbuf   []byte
	buf    []byte // read buffer; complete events are parsed in place
}

var sessions = sync.Pool{New: func() any {
	return &session{out: sha256.New(), buf: make([]byte, 8<<10), wbuf: make([]byte, 0, 512)}
}}

// errStale marks a pooled connection the server had closed before it
// answered; the request is retried once on a fresh connection.
var errStale = errors.New("stale pooled connection")

// exchange sends c and reads the response into res: client-side times of
// the start, the response header, every content-bearing SSE event and the
// end, plus usage, finish reason and a hash of the output. It never returns
// an error: failures are classified into res.Error. live, when not nil,
// hears of content events and first tokens as they arrive.
func (e *endpoint) exchange(ctx context.Context, s *session, c *call, res *Result, live observer) {
	res.StartNS = time.Now().UnixNano()
	res.BytesIn = int64(len(c.body))
	for attempt := 0; ; attempt++ {
		cn, err := e.get()
		if err != nil {
			res.fail(errUnreachable, fmt.Sprintf("cannot connect to %s: %v", e.addr, unwrapOp(err)))
			return
		}
		err = e.roundTrip(ctx, s, cn, c, res, live)
		if errors.Is(err, errStale) && attempt == 0 {
			continue
		}
		return
	}
}

// roundTrip runs one attempt on cn, which it closes or pools. It returns
// errStale only when nothing was received on a reused connection.
func (e *endpoint) roundTrip(ctx context.Context, s *session, cn *conn, c *call, res *Result, live observer) error {
	var aborted atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		aborted.Store(true)
		_ = cn.nc.Close()
	})
	defer stop()
	classify := func(err error, what string) {
		switch {
		case aborted.Load() || ctx.Err() != nil:
			res.fail(errCancelled, "bench was interrupted before the response ended")
		case isTimeout(err):
			res.fail(errTimeout, fmt.Sprintf("%s sent nothing for %s (--idle-timeout)", e.addr, e.idleTO))
		default:
			res.fail(errReset, fmt.Sprintf("%s %s: %v", e.addr, what, unwrapOp(err)))
		}
	}

	s.wbuf = appendRequest(s.wbuf[:0], e, c)
	bufs := net.Buffers{s.wbuf, c.body}
	if _, err := bufs.WriteTo(cn.nc); err != nil {
		_ = cn.nc.Close()
		if cn.reused && !aborted.Load() {
			return errStale
		}
		classify(err, "broke off while the request was sent")
		return err
	}
	s.hdr.Reset()
	if err := s.hdr.Read(cn.br); err != nil {
		_ = cn.nc.Close()
		if cn.reused && !aborted.Load() && (err == io.EOF || isReset(err)) {
			return errStale
		}
		classify(err, "closed the connection before answering")
		return err
	}
	res.FirstByteNS = cn.now()
	res.Status = s.hdr.StatusCode()
	if id := s.hdr.Peek(headerRequestID); len(id) > 0 {
		res.ProxyID = string(id)
	}
	if b := s.hdr.Peek(headerBackend); len(b) > 0 && res.Backend == "" {
		res.Backend = string(b)
	}
	body, reusable := bodyReader(cn, &s.hdr)
	if res.Status != fasthttp.StatusOK {
		msg, _ := readSmall(body, 64<<10)
		res.EndNS = time.Now().UnixNano()
		res.fail(errStatus, fmt.Sprintf("HTTP %d: %s", res.Status, errorMessage(msg)))
		_ = cn.nc.Close() // the rest of a long error body may be unread
		return nil
	}
	if !bytes.HasPrefix(s.hdr.ContentType(), []byte("text/event-stream")) {
		const limit = 16 << 20
		msg, err := readSmall(body, limit)
		res.EndNS = time.Now().UnixNano()
		if err != nil {
			classify(err, "broke off the response")
			_ = cn.nc.Close()
			return nil
		}
		res.BytesOut = int64(len(msg))
		s.wholeBody(msg, res)
		e.release(cn, reusable && len(msg) < limit)
		return nil
	}

	// The stream: read, stamp, split into events in place, parse each.
	s.out.Reset()
	res.PromptTokens, res.CompletionTokens = -1, -1
	filled := 0
	done := false
	var outBytes int64
	for {
		if filled == len(s.buf) { // one event larger than the buffer
			s.buf = append(s.buf, make([]byte, len(s.buf))...)
		}
		n, err := body.Read(s.buf[filled:])
		t := cn.now()
		if n > 0 {
			res.BytesOut += int64(n)
			filled += n
			start := 0
			content := int64(0)
			for {
				end := wire.EventEnd(s.buf[start:filled])
				if end < 0 {
					break
				}
				kind := s.event(s.buf[start:start+end], res, &outBytes)
				start += end
				switch kind {
				case evContent:
					if res.FirstTokenNS == 0 {
						res.FirstTokenNS = t
						if live != nil {
							live.firstToken(c.warmup, ms(t-res.StartNS))
						}
					}
					res.ChunkNS = append(res.ChunkNS, t)
					content++
				case evDone:
					if !done {
						done = true
						res.EndNS = t
					}
				}
			}
			filled = copy(s.buf, s.buf[start:filled])
			if live != nil && content > 0 {
				live.chunks(content)
			}
		}
		if err != nil {
			if res.EndNS == 0 {
				res.EndNS = t
			}
			if err == io.EOF {
				if outBytes > 0 || res.Error == "" {
					res.OutputSHA256 = hex.EncodeToString(s.out.Sum(nil))
				}
				e.release(cn, reusable)
				return nil
			}
			_ = cn.nc.Close()
			if done {
				return nil // [DONE] arrived; only the connection's end was lost
			}
			classify(err, "broke off the stream")
			return nil
		}
	}
}

func (e *endpoint) release(cn *conn, reuse bool) {
	if reuse {
		e.put(cn)
		return
	}
	_ = cn.nc.Close()
}

// appendRequest renders the request line and headers.
func appendRequest(b []byte, e *endpoint, c *call) []byte {
	b = append(b, c.method...)
	b = append(b, ' ')
	b = append(b, e.prefix...)
	b = append(b, c.path...)
	b = append(b, " HTTP/1.1\r\n"...)
	b = append(b, e.static...)
	if c.body != nil {
		b = append(b, "Content-Type: application/json\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(c.body)), 10)
		b = append(b, "\r\n"...)
	}
	if c.id != "" {
		b = append(b, "X-Request-Id: "...)
		b = append(b, c.id...)
		b = append(b, "\r\n"...)
	}
	if c.run != "" {
		b = append(b, headerRun+": "...)
		b = append(b, c.run...)
		b = append(b, "\r\n"...)
	}
	if c.backend != "" {
		// bench traffic goes where it is sent and is never mirrored
		b = append(b, headerBackend+": "...)
		b = append(b, c.backend...)
		b = append(b, "\r\n"+headerNoMirror+": 1\r\n"...)
	}
	return append(b, "\r\n"...)
}

// bodyReader returns a reader for the response body framed by h and
// whether the connection can be reused once it hits io.EOF.
func bodyReader(c *conn, h *fasthttp.ResponseHeader) (io.Reader, bool) {
	reusable := !h.ConnectionClose()
	switch n := h.ContentLength(); {
	case n >= 0:
		return io.LimitReader(c.br, int64(n)), reusable
	case n == -1:
		return wire.NewChunkedBody(c.br), reusable
	default: // identity: the body ends when the server closes
		return c.br, false
	}
}

func readSmall(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit))
	return b, err
}

// errorMessage extracts the message of an OpenAI ({"error":{"message"}}),
// FastAPI ({"detail"}) or plain error body, shortened to one line.
func errorMessage(body []byte) string {
	var p fastjson.Parser
	if v, err := p.ParseBytes(body); err == nil {
		for _, path := range [][]string{{"error", "message"}, {"message"}, {"detail"}, {"error"}} {
			if m := v.Get(path...); m != nil {
				if s := m.GetStringBytes(); len(s) > 0 {
					return oneLine(string(s))
				}
				return oneLine(m.String())
			}
		}
	}
	if len(body) == 0 {
		return "(empty body)"
	}
	return oneLine(string(body))
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

type eventKind uint8

const (
	evOther   eventKind = iota // role-only, finish-only, usage, comments
	evContent                  // carries non-empty content or reasoning text
	evDone                     // data: [DONE]
)

// event reads one SSE event into res, DESIGN.md's definitions: a content
// event is one whose delta carries non-empty content, reasoning_content or
// reasoning (the role-only opening chunk is not one).
func (s *session) event(ev []byte, res *Result, outBytes *int64) eventKind {
	data := wire.EventData(ev)
	if data == nil {
		return evOther
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		return evDone
	}
	v, err := s.parser.ParseBytes(data)
	if err != nil {
		return evOther
	}
	if e := v.Get("error"); e != nil {
		msg := e.GetStringBytes("message")
		if len(msg) == 0 {
			msg = []byte("the server sent an error event")
		}
		res.fail(errStatus, "error event in the stream: "+oneLine(string(msg)))
		return evOther
	}
	readUsage(v, res)
	kind := evOther
	for _, c := range v.GetArray("choices") {
		if fr := c.GetStringBytes("finish_reason"); len(fr) > 0 {
			res.FinishReason = string(fr)
		}
		if text := wire.ChoiceText(c); len(text) > 0 {
			s.out.Write(text)
			*outBytes += int64(len(text))
			kind = evContent
		}
	}
	return kind
}

// wholeBody reads a non-streamed JSON answer (a server that ignored
// stream=true): the first token time is the end time.
func (s *session) wholeBody(b []byte, res *Result) {
	res.PromptTokens, res.CompletionTokens = -1, -1
	v, err := s.parser.ParseBytes(b)
	if err != nil {
		res.fail(errStatus, "the response is neither an event stream nor JSON")
		return
	}
	readUsage(v, res)
	s.out.Reset()
	n := 0
	for _, c := range v.GetArray("choices") {
		if fr := c.GetStringBytes("finish_reason"); len(fr) > 0 {
			res.FinishReason = string(fr)
		}
		for _, t := range [][]byte{c.GetStringBytes("message", "reasoning_content"), c.GetStringBytes("message", "content"), c.GetStringBytes("text")} {
			s.out.Write(t)
			n += len(t)
		}
	}
	if n > 0 {
		res.FirstTokenNS = res.EndNS
		res.ChunkNS = append(res.ChunkNS, res.EndNS)
	}
	res.OutputSHA256 = hex.EncodeToString(s.out.Sum(nil))
}

func readUsage(v *fastjson.Value, res *Result) {
	wire.ReadUsage(v, &res.PromptTokens, &res.CompletionTokens)
}

// unwrapOp drops net.OpError's "dial tcp 1.2.3.4:5:" prefix.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func isReset(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// reply is a small non-streamed response.
type reply struct {
	status    int
	body      []byte
	requestID string // X-ABProxy-Request-Id: set only by an abproxy proxy
	backend   string // X-ABProxy-Backend
}

// fetch sends a GET (or a POST with body) and reads a small answer, for
// the checks made before any load is sent.
func (e *endpoint) fetch(ctx context.Context, path, backend string, body []byte) (reply, error) {
	var rp reply
	cn, err := e.dial()
	if err != nil {
		return rp, err
	}
	defer cn.nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = cn.nc.Close() })
	defer stop()
	c := &call{method: "GET", path: path, backend: backend, body: body}
	if body != nil {
		c.method = "POST"
	}
	_ = cn.nc.SetDeadline(time.Now().Add(30 * time.Second))
	req := appendRequest(nil, e, c)
	req = append(req, body...)
	if _, err := cn.nc.Write(req); err != nil {
		return rp, err
	}
	var h fasthttp.ResponseHeader
	if err := h.Read(cn.br); err != nil {
		return rp, err
	}
	rp.status = h.StatusCode()
	rp.requestID = string(h.Peek(headerRequestID))
	rp.backend = string(h.Peek(headerBackend))
	r, _ := bodyReader(cn, &h)
	rp.body, err = readSmall(r, 4<<20)
	return rp, err
}
