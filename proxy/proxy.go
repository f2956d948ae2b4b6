// Package proxy is abproxy's data plane: an OpenAI-compatible HTTP proxy
// on fasthttp that forwards each request to a backend, streams the answer
// back event by event, and taps every Server-Sent Event on the way to time
// it and read its usage, without waiting on the disk or on logging.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/fdtable"
	"github.com/abproxy/abproxy/internal/procs"
	"github.com/abproxy/abproxy/internal/reqid"
	"github.com/abproxy/abproxy/internal/wire"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/router"
)

// Sink receives finished request records. recorder.Recorder is one; Submit
// must not block.
type Sink interface {
	Submit(r *recorder.Request) bool
}

// Observer sees every finished request (metrics, live dashboards), at most
// ObserveDelay after it finished, in batches on a goroutine of the proxy's
// own; calls never overlap. Shutdown returns after the last one. It must
// not modify or keep the record, and should be quick: observations queue
// up behind it.
type Observer interface {
	Observe(o *Observation)
}

// Observation is what an Observer gets for one finished request.
type Observation struct {
	// Record is the request's record (read-only).
	Record *recorder.Request
	// FirstTokenSentNS is when the first content chunk had been written to
	// the client (0 when none was); minus Record.FirstTokenNS it is the
	// time the proxy added to TTFT.
	FirstTokenSentNS int64
}

// Options configure a Proxy.
type Options struct {
	// Observer, when set, sees every finished request (metrics), shortly
	// after it finished.
	Observer Observer
	// Config holds the proxy settings and the backends.
	Config *config.Config
	// Sink receives one record per request; nil discards them.
	Sink Sink
	// Logger logs lifecycle and errors; per-request lines only at debug.
	Logger *zap.Logger
	// Run is the run name for requests without an X-ABProxy-Run header.
	Run string
	// StoreBodies keeps prompt and output text in records.
	StoreBodies bool
	// GovernProcs lets the proxy set GOMAXPROCS as proxy.procs says: one
	// P while quiet, every CPU under load (internal/procs). It is process
	// wide: only one proxy in a process may have it, and `abproxy serve`
	// does.
	GovernProcs bool
}

// QuietStreams is the most requests in flight at which a governed proxy
// runs one P (proxy.procs = 0). At one stream one P took 30-50 µs off the
// request's way to the backend; at 4 streams the two were level in TTFT and
// one P used a quarter less CPU; at 8 and 16 two Ps were ahead (the first
// chunk waited behind the others' chunks), and at 200 one P was 2 ms behind
// (docs/benchmarks.md, "One P while quiet").
const QuietStreams = 4

// Header names of the abproxy header contract.
const (
	HeaderBackend   = "X-ABProxy-Backend"
	HeaderRun       = "X-ABProxy-Run"
	HeaderNoMirror  = "X-ABProxy-No-Mirror"
	HeaderRequestID = "X-ABProxy-Request-Id"
)

// Proxy is the data plane server.
type Proxy struct {
	cfg       *config.Config
	sink      Sink
	observed  *observations // nil without an Observer
	log       *zap.Logger
	run       string
	bodies    bool
	upstreams []*upstream
	byName    map[string]*upstream
	srv       *fasthttp.Server
	ids       reqid.Gen

	route          atomic.Pointer[router.Router]
	shadowInflight atomic.Int64
	shadowSkipped  atomic.Uint64

	inflight   sync.WaitGroup
	activeMu   sync.Mutex
	active     map[*upConn]struct{} // open upstream connections (track)
	inflightN  atomic.Int64
	shutdownCh chan struct{}
	closeOnce  sync.Once
	abortCh    chan struct{} // closed when the drain timeout cuts what is left
	abortOnce  sync.Once

	procs *procs.Governor // nil unless Options.GovernProcs

	loops     []*wire.Loop[exchange]
	loopsOnce sync.Once
	loopNext  atomic.Uint32
	loopWG    sync.WaitGroup
	// streams that entered a loop, and those handed back to their goroutine
	// because the client could not keep up (for tests)
	loopStreams, loopHandbacks atomic.Int64

	rewriters sync.Pool
	taps      sync.Pool
	bufs      sync.Pool
}

// New builds a proxy from a validated config.
func New(opts Options) (*Proxy, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("proxy: no config")
	}
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backend configured: add a [[backend]] section with name and url")
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	p := &Proxy{
		cfg: cfg, sink: opts.Sink, log: log, run: opts.Run, bodies: opts.StoreBodies,
		byName:     map[string]*upstream{},
		active:     map[*upConn]struct{}{},
		shutdownCh: make(chan struct{}),
		abortCh:    make(chan struct{}),
	}
	p.ids.Init()
	if opts.Observer != nil {
		p.observed = newObservations(opts.Observer, ObserveDelay)
	}
	// before any traffic: a table that grows under load stalls the process
	if n, err := fdtable.Reserve(fdtable.Max); err != nil {
		log.Warn("could not size the file descriptor table up front", zap.Error(err))
	} else {
		log.Debug("file descriptor table sized", zap.Int("descriptors", n))
	}
	for _, b := range cfg.Backends {
		u, err := newUpstream(b, cfg.Proxy.ConnectTimeout.Duration, cfg.Proxy.IdleTimeout.Duration, 1024)
		if err != nil {
			return nil, err
		}
		u.opened, u.closed = p.track, p.untrack
		p.upstreams = append(p.upstreams, u)
		p.byName[b.Name] = u
	}
	if err := p.SetRoute(cfg.Route); err != nil {
		return nil, err
	}
	p.rewriters.New = func() any { return &rewriter{} }
	p.taps.New = func() any { return newTap() }
	p.bufs.New = func() any { b := make([]byte, 0, 4<<10); return &b }
	p.srv = &fasthttp.Server{
		Handler:                       p.handle,
		ErrorHandler:                  p.handleParseError,
		Name:                          "abproxy",
		MaxRequestBodySize:            cfg.Proxy.MaxBodyBytes,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		DisablePreParseMultipartForm:  true,
		IdleTimeout:                   90 * time.Second,
		CloseOnShutdown:               true,
		DisableHeaderNamesNormalizing: false,
		Logger:                        fasthttpLogger{log},
	}
	if opts.GovernProcs { // last: nothing below can fail and leave GOMAXPROCS changed
		p.procs = procs.Start(cfg.Proxy.Procs, QuietStreams, procs.DefaultHold, p.inflightN.Load, func(n int) {
			log.Debug("scheduler procs changed", zap.Int("procs", n), zap.Int64("in_flight", p.inflightN.Load()))
		})
	}
	return p, nil
}

// Serve accepts clients on ln until Shutdown.
func (p *Proxy) Serve(ln net.Listener) error { return p.srv.Serve(wrapListener(ln)) }

// Handler returns the request handler, for tests and embedding.
func (p *Proxy) Handler() fasthttp.RequestHandler { return p.handle }

// InFlight is the number of requests being served now, shadows included.
func (p *Proxy) InFlight() int64 { return p.inflightN.Load() }

// Stats are the proxy's counters.
type Stats struct {
	InFlight       int64  // requests being served, shadows included
	ShadowInflight int64  // shadow requests running
	ShadowSkipped  uint64 // shadow copies skipped because max_shadow_inflight was reached
	// Backends are the requests at each backend now, in configuration order.
	Backends []BackendStats
}

// BackendStats are one backend's in-flight requests. A request counts
// from when it is sent to the backend until its response has ended, so
// requests refused before a backend was chosen are in Stats.InFlight only.
type BackendStats struct {
	Name           string // backend name
	InFlight       int64  // primary requests (the client's) at this backend
	ShadowInFlight int64  // shadow copies at this backend
}

// Stats reads the counters.
func (p *Proxy) Stats() Stats {
	s := Stats{InFlight: p.inflightN.Load(), ShadowInflight: p.shadowInflight.Load(), ShadowSkipped: p.shadowSkipped.Load(),
		Backends: make([]BackendStats, len(p.upstreams))}
	for i, u := range p.upstreams {
		s.Backends[i] = BackendStats{Name: u.name, InFlight: u.inflight[0].Load(), ShadowInFlight: u.inflight[1].Load()}
	}
	return s
}

// flight is the upstream's in-flight counter for a request's role.
func (u *upstream) flight(role string) *atomic.Int64 {
	if role == recorder.RoleShadow {
		return &u.inflight[1]
	}
	return &u.inflight[0]
}

// SetRoute replaces the routing table atomically: requests already routed
// keep their backend, new ones use the new table. On error the old table
// stays. Backends themselves cannot change without a restart.
func (p *Proxy) SetRoute(rc config.Route) error {
	rt, err := router.New(rc.RouterConfig(), p.cfg.BackendNames())
	if err != nil {
		return err
	}
	p.route.Store(rt)
	return nil
}

// Route returns the routing table in use.
func (p *Proxy) Route() *router.Router { return p.route.Load() }

// Shutdown stops accepting connections and lets in-flight requests finish
// until ctx is done; requests still running then are cut and recorded as
// proxy_shutdown. It returns once every record has been handed to the sink.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.srv.ShutdownWithContext(ctx)
	p.closeOnce.Do(func() { close(p.shutdownCh) })
	// shadows are not tied to a client connection: wait for them too
	drained := make(chan struct{})
	go func() { p.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		err = ctx.Err()
		p.activeMu.Lock()
		for c := range p.active {
			c.aborted.Store(true)
			_ = c.c.SetReadDeadline(time.Now()) // wakes a reader blocked now
		}
		p.activeMu.Unlock()
		p.abortOnce.Do(func() { close(p.abortCh) }) // and streams in event loops
		<-drained
	}
	p.loopsOnce.Do(func() {}) // no loops start after this
	p.closeLoops()
	for _, u := range p.upstreams {
		u.closeIdle()
	}
	if p.observed != nil {
		p.observed.flush()
	}
	p.procs.Stop()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("drain timeout: in-flight requests were cut")
	}
	return err
}

// track and untrack keep every open upstream connection, in use or idle
// in a pool, from its dial to its close, for a shutdown's cut (aborting an
// idle one is harmless: the pools are closed right after). Keeping the
// open ones rather than those in use takes a mutex and a map operation
// off every request's way to the backend and off the end of its
// response, where they cost 2-3 µs each of cold memory on a VM with dear
// cache misses (docs/benchmarks.md, "A paravirtualised AMD VM").
func (p *Proxy) track(c *upConn) {
	p.activeMu.Lock()
	p.active[c] = struct{}{}
	p.activeMu.Unlock()
}

func (p *Proxy) untrack(c *upConn) {
	p.activeMu.Lock()
	delete(p.active, c)
	p.activeMu.Unlock()
}

func (p *Proxy) shuttingDown() bool {
	select {
	case <-p.shutdownCh:
		return true
	default:
		return false
	}
}

var (
	pathChat        = []byte("/v1/chat/completions")
	pathCompletions = []byte("/v1/completions")
	prefixV1        = []byte("/v1/")
	pathHealth      = []byte("/health")
	ctEventStream   = []byte("text/event-stream")
	ctJSON          = []byte("application/json")
)

func now() int64 { return time.Now().UnixNano() }

func (p *Proxy) newRecord(ctx *fasthttp.RequestCtx, start int64) *recorder.Request {
	run := p.run
	if h := ctx.Request.Header.Peek(HeaderRun); len(h) > 0 {
		run = string(h)
	}
	return &recorder.Request{
		ID:               p.ids.Next(),
		Run:              run,
		Role:             recorder.RolePrimary,
		Endpoint:         string(ctx.Path()),
		StartNS:          start,
		PromptTokens:     -1,
		CompletionTokens: -1,
		BytesIn:          int64(len(ctx.Request.Body())),
	}
}

// finish hands a record to the sink and, at debug level only, logs it.
func (p *Proxy) finish(rec *recorder.Request) { p.finishObserved(rec, 0) }

func (p *Proxy) finishObserved(rec *recorder.Request, firstSentNS int64) {
	if p.observed != nil {
		p.observed.add(rec, firstSentNS)
	}
	if p.sink != nil {
		p.sink.Submit(rec)
	}
	if ce := p.log.Check(zap.DebugLevel, "request"); ce != nil {
		ce.Write(zap.String("id", rec.ID), zap.String("backend", rec.Backend),
			zap.String("endpoint", rec.Endpoint), zap.Int("status", rec.Status),
			zap.String("error", rec.Error), zap.Int("chunks", len(rec.ChunkNS)),
			zap.Float64("ttft_ms", msBetween(rec.StartNS, rec.FirstTokenNS)),
			zap.Float64("e2e_ms", msBetween(rec.StartNS, rec.EndNS)))
	}
	p.inflightN.Add(-1)
	p.inflight.Done()
}

func msBetween(a, b int64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return float64(b-a) / 1e6
}

// fail answers the client with an OpenAI error and records it.
func (p *Proxy) fail(ctx *fasthttp.RequestCtx, rec *recorder.Request, status int, class, typ, msg string) {
	rec.BytesOut = int64(writeError(ctx, status, typ, class, msg))
	rec.Status = status
	rec.Error = class
	rec.ErrorDetail = msg
	rec.EndNS = now()
	ctx.Response.Header.Set(HeaderRequestID, rec.ID)
	if rec.Backend != "" {
		ctx.Response.Header.Set(HeaderBackend, rec.Backend)
	}
	p.finish(rec)
}

// handleParseError answers requests fasthttp could not read, chiefly
// bodies over the limit, with an OpenAI error and a record.
func (p *Proxy) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	start := now()
	p.inflight.Add(1)
	p.procs.Note(p.inflightN.Add(1))
	rec := p.newRecord(ctx, start)
	rec.BytesIn = 0
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		p.fail(ctx, rec, fasthttp.StatusRequestEntityTooLarge, ErrBodyTooLarge, "invalid_request_error",
			fmt.Sprintf("request body is larger than the proxy's limit of %d bytes (proxy.max_body_bytes)", p.cfg.Proxy.MaxBodyBytes))
		return
	}
	p.fail(ctx, rec, fasthttp.StatusBadRequest, ErrBadRequest, "invalid_request_error", "malformed HTTP request: "+err.Error())
}

// requestStart is when the request was fully read: the kernel's receive
// time of its last bytes when known (it does not move when the handler runs
// late under load), else now.
func requestStart(ctx *fasthttp.RequestCtx) int64 {
	t := now()
	if a := arrivalNS(ctx.Conn()); a != 0 && a <= t {
		return a
	}
	return t
}

func (p *Proxy) handle(ctx *fasthttp.RequestCtx) {
	start := requestStart(ctx)
	path := ctx.Path()
	if bytes.Equal(path, pathHealth) {
		ctx.SetStatusCode(fasthttp.StatusOK)
		return
	}
	p.inflight.Add(1)
	p.procs.Note(p.inflightN.Add(1))
	rec := p.newRecord(ctx, start)
	if !bytes.HasPrefix(path, prefixV1) {
		p.fail(ctx, rec, fasthttp.StatusNotFound, ErrNotFound, "not_found_error",
			fmt.Sprintf("abproxy serves the OpenAI API under /v1/; %q is not part of it", path))
		return
	}
	tapped := ctx.IsPost() && (bytes.Equal(path, pathChat) || bytes.Equal(path, pathCompletions))
	var cr clientRequest
	var rw *rewriter
	if tapped {
		rw = p.rewriters.Get().(*rewriter)
		defer p.rewriters.Put(rw)
		var err error
		if cr, err = rw.parse(ctx.Request.Body()); err != nil {
			p.fail(ctx, rec, fasthttp.StatusBadRequest, ErrBadRequest, "invalid_request_error",
				"request body is not valid JSON: "+err.Error())
			return
		}
		rec.Model = cr.model
		rec.Stream = cr.stream
	}
	rt := p.route.Load()
	var key []byte
	if h := rt.StickyHeader(); h != "" {
		key = ctx.Request.Header.Peek(h)
	}
	if len(key) == 0 && cr.user != "" {
		key = []byte(cr.user)
	}
	var up *upstream
	forced := ctx.Request.Header.Peek(HeaderBackend)
	if len(forced) > 0 {
		u, ok := p.byName[string(forced)]
		if !ok {
			p.notePrompt(rec, rw)
			p.fail(ctx, rec, fasthttp.StatusBadRequest, ErrUnknownBackend, "invalid_request_error",
				fmt.Sprintf("unknown backend %q in %s (configured: %v)", forced, HeaderBackend, p.cfg.BackendNames()))
			return
		}
		up = u
	} else {
		up = p.upstreams[rt.Pick(key, rand.Float64())]
	}
	rec.Backend = up.name
	body := ctx.Request.Body()
	if tapped {
		if up.model != "" {
			rec.Model = up.model
		}
		body = rw.render(body, cr, up.model)
		if !sameSlice(body, ctx.Request.Body()) {
			body = append([]byte(nil), body...) // rw goes back to its pool
		}
	}
	var mirror func() *pair
	if tapped && rt.Mode() == router.ModeMirror && up == p.upstreams[rt.Primary()] &&
		string(ctx.Request.Header.Peek(HeaderNoMirror)) != "1" && rt.Sampled(key, rand.Float64()) {
		mirror = func() *pair { return p.startShadows(ctx, rec, rw, cr, rt.Shadows(), rt.MaxShadowInflight()) }
	}
	p.forward(ctx, rec, up, body, cr, rw, mirror)
}

// notePrompt puts the prompt's digest (and, with store_bodies, the prompt)
// into the record; rw holds the parsed body, nil when none was parsed. The
// backend does not need it, so forward takes it off the request's way.
func (p *Proxy) notePrompt(rec *recorder.Request, rw *rewriter) {
	if rw == nil {
		return
	}
	rec.PromptSHA256, rec.Prompt = rw.digest(p.bodies)
}

func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// exchange is one request's trip to a backend and back.
type exchange struct {
	p       *Proxy
	rec     *recorder.Request
	up      *upstream
	conn    *upConn
	dec     bodyDecoder // the response body, framed in place in conn's buffer
	events  eventBuffer // a partial event waiting for the rest of its bytes
	tap     *tap
	keepUse bool        // forward the usage-only chunk (the client asked for it)
	started atomic.Bool // the body has been pumped or closed: record once
	pr      *io.PipeReader
	pair    *pair // set when the request is mirrored
	// firstSent is when the write carrying the first content chunk to the
	// client returned (for the proxy's added-latency metric). Atomic: an
	// event loop reads it without the stream's lock to serve streams still
	// waiting for their first token first (loopFirst).
	firstSent atomic.Int64
	// doneNS is when data: [DONE] arrived: the stream's end (DESIGN.md),
	// not the chunked terminator behind it, which a backend writes
	// separately and a busy one may send milliseconds later. Atomic, as
	// firstSent: loopFirst reads it.
	doneNS atomic.Int64
	// headWithEvents: the response headers wait in fasthttp's buffer for
	// the first events, which then go through fasthttp's writer with them
	headWithEvents bool
	client         *wire.RxConn // the client's socket, when the pump may write it directly
	ls             loopState
}

// roundTrip sends the request and reads the response header. A pooled
// connection the backend closed meanwhile gets one retry on a fresh one.
// A non-zero until (Unix ns) bounds the whole exchange (shadows).
// afterWrite, if not nil, runs once the request has been written.
func (p *Proxy) roundTrip(req *fasthttp.Request, uri []byte, rec *recorder.Request, up *upstream, body []byte, tapped bool, h *fasthttp.ResponseHeader, until int64, afterWrite func()) (*upConn, error) {
	up.flight(rec.Role).Add(1) // until done: every exchange that gets here ends there
	for attempt := 0; ; attempt++ {
		c, err := up.get()
		if err != nil {
			return nil, err
		}
		c.deadline.Until = until
		// Noted before the write: the request leaves during the call, but the
		// call can return much later, when the backend it wakes runs on the
		// proxy's CPU first (200 µs at the median at one stream on a 2-vCPU
		// VM, with the backend's answer often in before the return).
		sentNS := now()
		err = up.writeRequest(c, req, uri, body, rec.ID, tapped)
		if err == nil {
			rec.UpstreamNS = sentNS
			if afterWrite != nil {
				afterWrite()
			}
			_, err = c.br.Peek(1)
			if err == nil {
				rec.FirstByteNS = max(c.readTime(), rec.UpstreamNS) // in case the clock stepped
				err = h.Read(c.br)
				if err == nil {
					return c, nil
				}
			}
		}
		_ = c.Close()
		if c.reused && attempt == 0 && isStale(err) {
			rec.UpstreamNS, rec.FirstByteNS = 0, 0
			continue
		}
		return nil, err
	}
}

func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// forward sends the request to up and answers the client. rw, the parsed
// body of a tapped request (nil otherwise), gives the record its prompt
// (notePrompt) once the response header is in, while the backend works on
// the answer (a backend on the proxy's own CPUs, woken by the request,
// would otherwise wait for it), or at once if the exchange fails. mirror,
// when set, starts the shadows' copies right after the primary's request
// has been written, so that their dials and writes do not delay it; the
// prompt is noted first then, for the shadows copy it.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, rec *recorder.Request, up *upstream, body []byte, cr clientRequest, rw *rewriter, mirror func() *pair) {
	tapped := rw != nil
	x := &exchange{p: p, rec: rec, up: up, keepUse: cr.includeUsage || !cr.stream}
	if tapped {
		x.tap = p.taps.Get().(*tap)
		x.tap.reset(p.bodies || mirror != nil)
	}
	notePrompt := func() {
		p.notePrompt(rec, rw)
		rw = nil // once
	}
	launch := func() {
		if mirror != nil {
			notePrompt()
			x.pair, mirror = mirror(), nil
		}
	}
	var h fasthttp.ResponseHeader
	c, err := p.roundTrip(&ctx.Request, ctx.Request.Header.RequestURI(), rec, up, body, tapped, &h, 0, launch)
	launch() // the primary failed before its request went out
	notePrompt()
	if err != nil {
		status := x.roundTripError(err)
		rec.BytesOut = int64(writeError(ctx, status, errorType(rec.Error), rec.Error, rec.ErrorDetail))
		ctx.Response.Header.Set(HeaderRequestID, rec.ID)
		ctx.Response.Header.Set(HeaderBackend, up.name)
		x.done()
		return
	}
	status := h.StatusCode()
	rec.Status = status
	if status >= 400 {
		rec.Error = ErrUpstreamStatus
	}
	resp := &ctx.Response
	resp.SetStatusCode(status)
	for k, v := range h.All() {
		switch string(k) {
		case "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Trailer":
			// trailer fields are not forwarded (the pump sends the last chunk)
			continue
		case "Content-Type":
			resp.Header.SetContentTypeBytes(v)
			continue
		}
		resp.Header.AddBytesKV(k, v)
	}
	resp.Header.Set(HeaderRequestID, rec.ID)
	resp.Header.Set(HeaderBackend, up.name)

	x.conn = c
	x.dec.init(c.br, &h, ctx.IsHead())
	if bytes.HasPrefix(h.ContentType(), ctEventStream) {
		// Headers go out now when the backend sent them ahead of its first
		// event. When an event came in the same read, they go with it, in
		// one write (as nginx sends them): a write of their own costs the
		// client a wake-up before its first token.
		b := x.dec.buffered()
		x.headWithEvents = bytes.Contains(b, lfLF) || bytes.Contains(b, crlfCRLF)
		resp.ImmediateHeaderFlush = !x.headWithEvents
		ctx.SetBodyStream(x, -1)
		x.client, _ = ctx.Conn().(*wire.RxConn)
		return
	}
	x.whole(ctx)
}

// roundTripError classifies a failure before any response header arrived,
// fills the record, and returns the HTTP status to answer with.
func (x *exchange) roundTripError(err error) int {
	rec, up, p := x.rec, x.up, x.p
	rec.EndNS = now()
	switch {
	case p.shuttingDown():
		rec.Status, rec.Error, rec.ErrorDetail = fasthttp.StatusServiceUnavailable, ErrShutdown, "abproxy is shutting down"
	case isTimeout(err) && rec.UpstreamNS != 0:
		rec.Status, rec.Error = fasthttp.StatusGatewayTimeout, ErrTimeout
		rec.ErrorDetail = fmt.Sprintf("backend %s sent no response within %s", up.name, p.cfg.Proxy.IdleTimeout.Duration)
	case rec.UpstreamNS == 0:
		rec.Status, rec.Error = fasthttp.StatusBadGateway, ErrUpstreamUnreachable
		rec.ErrorDetail = fmt.Sprintf("backend %s at %s is unreachable: %v", up.name, up.addr, unwrapOp(err))
	default:
		rec.Status, rec.Error = fasthttp.StatusBadGateway, ErrUpstreamReset
		rec.ErrorDetail = fmt.Sprintf("backend %s closed the connection before answering: %v", up.name, unwrapOp(err))
	}
	return rec.Status
}

// errorType is the OpenAI error "type" for a proxy error class.
func errorType(class string) string {
	switch class {
	case ErrShutdown:
		return "server_error"
	case ErrTimeout:
		return "timeout"
	default:
		return "upstream_error"
	}
}

// unwrapOp drops net.OpError's "dial tcp 1.2.3.4:5:" prefix, which the
// message already says in words.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// whole reads a non-streamed response and sends it in one piece.
func (x *exchange) whole(ctx *fasthttp.RequestCtx) {
	rec := x.rec
	buf := bytes.NewBuffer(make([]byte, 0, 4096))
	_, err := buf.ReadFrom(&x.dec)
	rec.EndNS = now()
	if err != nil {
		x.release(false)
		x.readError(err)
		msg := rec.ErrorDetail
		rec.BytesOut = int64(writeError(ctx, fasthttp.StatusBadGateway, "upstream_error", rec.Error, msg))
		rec.Status = fasthttp.StatusBadGateway
		x.done()
		return
	}
	x.release(x.dec.reusable())
	b := buf.Bytes()
	if x.tap != nil && bytes.HasPrefix(ctx.Response.Header.ContentType(), ctJSON) {
		x.tap.body(b)
	}
	ctx.Response.SetBody(b)
	rec.BytesOut = int64(len(b))
	x.done()
}

// readError classifies a failed upstream read.
func (x *exchange) readError(err error) {
	rec := x.rec
	switch {
	case x.p.shuttingDown():
		rec.Error = ErrShutdown
		rec.ErrorDetail = "abproxy shut down before the backend finished (proxy.drain_timeout)"
	case isTimeout(err):
		rec.Error = ErrTimeout
		rec.ErrorDetail = fmt.Sprintf("backend %s sent nothing for %s (proxy.idle_timeout)", x.up.name, x.p.cfg.Proxy.IdleTimeout.Duration)
	default:
		rec.Error = ErrUpstreamReset
		rec.ErrorDetail = fmt.Sprintf("backend %s broke off the response: %v", x.up.name, unwrapOp(err))
	}
}

// release gives the upstream connection back to the pool or closes it.
func (x *exchange) release(reuse bool) {
	if x.conn == nil {
		return
	}
	if reuse && !x.p.shuttingDown() {
		x.up.put(x.conn)
	} else {
		_ = x.conn.Close()
	}
	x.conn = nil
}

// done completes the record from the tap and submits it. For a mirrored
// request the primary's record goes out at once; a shadow's waits, if need
// be, for the primary's output to compare with.
func (x *exchange) done() {
	rec := x.rec
	x.up.flight(rec.Role).Add(-1)
	var sr *shadowResult
	if t := x.tap; t != nil {
		rec.FinishReason = t.finishReason
		if t.outBytes > 0 || rec.Status < 400 {
			rec.OutputSHA256 = t.outputSHA256()
		}
		if x.p.bodies {
			rec.Output = string(t.text)
		}
		if t.promptTokens >= 0 || t.completionTokens >= 0 {
			rec.PromptTokens, rec.CompletionTokens = t.promptTokens, t.completionTokens
			rec.TokensSource = recorder.TokensUsage
		} else if len(rec.ChunkNS) > 0 {
			// No usage (the stream was cut, or the server gives none): vLLM
			// sends one token per content chunk, so the chunk count is the
			// best estimate until a tokenizer is configured.
			rec.CompletionTokens = len(rec.ChunkNS)
			rec.TokensSource = recorder.TokensChunks
		}
		if t.errMessage != "" && rec.Error == "" {
			rec.Error = ErrUpstreamStatus
			rec.ErrorDetail = t.errMessage
		}
		if x.pair != nil {
			ok := rec.Error == ""
			if rec.Role == recorder.RoleShadow {
				sr = &shadowResult{rec: rec, ok: ok, text: t.text, ends: t.ends}
			} else {
				x.pair.primaryFinished(ok, t.text, t.ends)
			}
		}
		if sr != nil {
			x.pair.shadowFinished(sr) // copies what it keeps before the tap is reused
		}
		x.tap = nil
		x.p.taps.Put(t)
		if sr != nil {
			return // the pair submits the shadow's record
		}
	}
	x.p.finishObserved(rec, x.firstSent.Load())
}

// The exchange is the response body stream handed to fasthttp. Because it
// implements fasthttp.BodyWriterTo, fasthttp calls WriteTo with the client
// connection's own chunked writer: each Write is one HTTP chunk flushed to
// the socket at once, with no pipe and no extra goroutine in between.

// SupportsBodyWriteTo tells fasthttp that WriteTo may replace Read.
func (x *exchange) SupportsBodyWriteTo() bool { return true }

// WriteTo pumps the Server-Sent Events response to the client: one write
// per upstream read, so each event leaves as soon as it has fully arrived.
func (x *exchange) WriteTo(w io.Writer) (int64, error) {
	if !x.started.CompareAndSwap(false, true) {
		return 0, errors.New("response body already consumed")
	}
	return x.pump(w, x.pr == nil)
}

// Read exists because fasthttp's body stream is an io.Reader; fasthttp uses
// WriteTo for chunked responses, so this fallback only keeps Read correct.
func (x *exchange) Read(p []byte) (int, error) {
	if x.pr == nil {
		pr, pw := io.Pipe()
		x.pr = pr
		go func() {
			_, err := x.WriteTo(pw)
			pw.CloseWithError(err)
		}()
	}
	return x.pr.Read(p)
}

// Close is called by fasthttp when it is done with the body. If the
// response never got as far as the body (the client left while headers
// were being written), the request is still recorded exactly once.
func (x *exchange) Close() error {
	if x.started.CompareAndSwap(false, true) {
		x.rec.Error = ErrClientCancelled
		x.rec.ErrorDetail = "the client closed the connection before the stream started"
		x.rec.EndNS = now()
		x.release(false)
		x.done()
	}
	return nil
}

// pump moves the event stream from the backend to the client. Events are
// cut out of the upstream read buffer in place, read by the tap, and
// gathered into one client write per socket read, which goes out before
// the pump waits for more; so each event leaves as soon as it has fully
// arrived, with one copy in between. direct says that w is fasthttp's
// chunked writer for x.client, whose headers have been flushed: the pump
// then frames the chunks itself and writes them to the socket.
func (x *exchange) pump(w io.Writer, direct bool) (int64, error) {
	rec := x.rec
	if cap(rec.ChunkNS) == 0 {
		rec.ChunkNS = make([]int64, 0, 64)
	}
	st := pumpState{w: w, t: x.conn.readTime()} // body bytes that came with the header
	if direct && x.client != nil {
		st.raw = x.client
	}
	st.head = x.headWithEvents
	// a shadow's output is discarded, which never has to wait either
	if (st.raw != nil || w == io.Discard) && x.conn.rx != nil &&
		x.p.inflightN.Load() >= int64(x.p.cfg.Proxy.EventLoopMinStreams) {
		if lp := x.p.loop(); lp != nil {
			x.pumpInLoop(lp, &st)
		}
	}
	if !st.ended {
		if err := x.conn.session(func() bool { return x.pumpStep(&st) }); err != nil && !st.ended {
			// the wait for data failed: idle timeout, shutdown, closed
			x.endStream(&st, err)
		}
	}
	// only now: closing a connection waits for its read session to end
	x.release(st.reuse)
	st.giveBack(x.p)
	rec.BytesOut = st.written
	x.done()
	return st.written, st.werr
}

// pumpState is what the pump carries between steps of a read session.
type pumpState struct {
	w       io.Writer
	raw     *wire.RxConn // the client's socket, when the pump frames chunks itself
	head    bool         // the response headers are in w's buffer: write through w
	buf     *[]byte      // out's pooled holder while the stream has output pending
	out     []byte       // frameHead bytes of room, then events for the client
	t       int64        // receive time of the last socket read
	written int64        // payload bytes the client took
	werr    error        // the client's write error
	ended   bool
	reuse   bool // the connection can go back to the pool
	// In an event loop, writes must not wait: a client whose send buffer
	// is full gets the stream handed back to its own goroutine, with the
	// framed bytes the socket did not take in pending.
	nonblock bool
	cfd      uintptr // the client's descriptor, held open while nonblock and raw != nil
	busy     bool
	pending  []byte
	// last: the body's last chunk goes out with the final events, so that
	// the client's response ends without waiting for the stream's goroutine
	last bool
}

// An event ends in a blank line; in a chunked body CRLF CRLF is also the
// body's end.
var lfLF, crlfCRLF = []byte("\n\n"), []byte("\r\n\r\n")

// lastChunk ends a chunked body without trailer fields.
var lastChunk = []byte("0\r\n\r\n")

// frameHead is room before the events for their chunk header ("%x\r\n"),
// so that a chunk goes out in one write without another copy.
const frameHead = 10

// errClientBusy: the client's send buffer is full and the pump may not wait.
var errClientBusy = errors.New("client send buffer full")

// giveBack returns the output buffer to the pool between writes: a
// stream waiting for its next token holds no output buffer.
func (st *pumpState) giveBack(p *Proxy) {
	if st.buf == nil {
		return
	}
	if cap(st.out) <= 64<<10 { // a burst's buffer is not worth keeping
		*st.buf = st.out[:0]
		p.bufs.Put(st.buf)
	}
	st.buf, st.out = nil, nil
}

// sentAll is called when a framed write has gone out whole: if it carried
// the body's last chunk, the copy fasthttp writes after WriteTo is dropped.
func (st *pumpState) sentAll() {
	if st.last {
		st.raw.SkipNext(lastChunk)
	}
}

// room gives out a pooled buffer, starting with frameHead bytes of room,
// if it has none.
func (st *pumpState) room(p *Proxy) {
	if st.buf == nil {
		st.buf = p.bufs.Get().(*[]byte)
		st.out = append((*st.buf)[:0], make([]byte, frameHead)...)
	}
}

// flush writes out's events to the client as one chunk and gives the
// buffer back. It returns errClientBusy when a non-blocking write left
// bytes in pending; they count as written.
func (st *pumpState) flush(p *Proxy) error {
	n := len(st.out) - frameHead
	var err error
	if st.raw == nil || st.head {
		// through fasthttp's writer, behind any headers waiting in its
		// buffer; it frames the chunk and writes the last one after WriteTo
		st.head = false
		var m int
		m, err = st.w.Write(st.out[frameHead:])
		st.written += int64(m)
	} else {
		// the chunk header right before the events, CRLF after them
		i := frameHead - 2
		st.out[i], st.out[i+1] = '\r', '\n'
		for v := n; ; v >>= 4 {
			i--
			st.out[i] = "0123456789abcdef"[v&15]
			if v < 16 {
				break
			}
		}
		if n == 0 {
			i = frameHead // only the last chunk
		} else {
			st.out = append(st.out, '\r', '\n')
		}
		if st.last {
			st.out = append(st.out, lastChunk...)
		}
		frame := st.out[i:]
		var m int
		if st.nonblock {
			m, err = wire.TryWriteFD(st.cfd, frame)
			if err == wire.ErrWouldBlock {
				st.pending = append(st.pending[:0], frame[m:]...)
				m, err = len(frame), errClientBusy
			}
		} else {
			m, err = st.raw.Write(frame)
		}
		if m == len(frame) {
			st.written += int64(n)
			if err == nil {
				st.sentAll()
			}
		}
	}
	st.giveBack(p)
	return err
}

// pumpStep moves what the socket has to the client. It returns false
// when the socket is empty, to wait in the session, and true at the end
// of the stream (or, in an event loop, when the client cannot take more).
func (x *exchange) pumpStep(st *pumpState) bool {
	rec := x.rec
	for {
		seg, err := x.dec.next()
		if len(seg) > 0 {
			st.room(x.p)
			st.out = x.consume(seg, st.t, st.out)
		}
		if err == nil {
			continue
		}
		if err == io.EOF && len(x.events.pending()) > 0 {
			// a last event without its blank line: pass it on as sent
			st.room(x.p)
			st.out = append(st.out, x.events.pending()...)
			x.events.off = len(x.events.buf)
		}
		if err == io.EOF && st.raw != nil && !st.head {
			// (behind headers still in fasthttp's buffer, fasthttp ends the body)
			st.room(x.p)
			st.last = true
		}
		if len(st.out) > frameHead || st.last { // an empty write would end the chunked body
			e := st.flush(x.p)
			if rec.FirstTokenNS != 0 && x.firstSent.Load() == 0 {
				x.firstSent.Store(now())
			}
			if e == errClientBusy {
				st.busy = true
				return true
			}
			if e != nil {
				x.clientGone(st, e)
				return true
			}
		} else if st.buf != nil {
			st.giveBack(x.p)
		}
		if err == errNeedMore {
			if x.conn.drained {
				return false // the last read emptied the socket: wait, then read
			}
			err = x.dec.fill()
			if err == wire.ErrWouldBlock {
				return false
			}
			st.t = x.conn.readTime()
			if err == nil {
				continue
			}
		}
		x.endStream(st, err)
		return true
	}
}

// clientGone ends the stream at a failed client write.
func (x *exchange) clientGone(st *pumpState, err error) {
	rec := x.rec
	st.werr, st.ended = err, true
	rec.Error = ErrClientCancelled
	rec.ErrorDetail = "the client closed the connection before the stream ended"
	rec.EndNS = st.t
	st.reuse = false // closing the connection makes vLLM abort the request
}

// endStream finishes the stream at io.EOF or a read error.
func (x *exchange) endStream(st *pumpState, err error) {
	rec := x.rec
	st.ended = true
	if err == io.EOF {
		rec.EndNS = st.t
		if d := x.doneNS.Load(); d != 0 {
			rec.EndNS = d
		}
		st.reuse = x.dec.reusable()
		return
	}
	rec.EndNS = now() // the time of the failure, not of the last data
	x.readError(err)
	st.room(x.p)
	st.out = append(st.out, errorEvent(rec.Error, rec.Error, rec.ErrorDetail)...)
	if st.flush(x.p) == errClientBusy {
		st.busy = true
	}
}

// consume splits payload bytes into events, lets the tap read each one
// and appends those the client gets to out. Complete events are taken
// straight from seg; only a partial one is copied aside.
func (x *exchange) consume(seg []byte, t int64, out []byte) []byte {
	if len(x.events.pending()) > 0 {
		x.events.feed(seg)
		for {
			ev, ok := x.events.next()
			if !ok {
				return out
			}
			out = x.event(ev, t, out)
		}
	}
	for {
		end := wire.EventEnd(seg)
		if end < 0 {
			break
		}
		out = x.event(seg[:end], t, out)
		seg = seg[end:]
	}
	if len(seg) > 0 {
		x.events.feed(seg)
	}
	return out
}

// event records one complete event that arrived at t and appends it to
// out unless it is the usage chunk the client did not ask for.
func (x *exchange) event(ev []byte, t int64, out []byte) []byte {
	if x.tap != nil {
		switch x.tap.event(ev) {
		case eventContent:
			rec := x.rec
			if rec.FirstTokenNS == 0 {
				rec.FirstTokenNS = t
			}
			rec.ChunkNS = append(rec.ChunkNS, t)
		case eventUsageOnly:
			if !x.keepUse {
				return out // the proxy asked for it, the client did not
			}
		case eventDone:
			x.doneNS.CompareAndSwap(0, t)
		}
	}
	return append(out, ev...)
}

// fasthttpLogger routes fasthttp's own messages into zap at warn level.
type fasthttpLogger struct{ l *zap.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Warn(fmt.Sprintf(format, args...), zap.String("component", "fasthttp"))
}
