package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/internal/wire"
	"github.com/abproxy/abproxy/tokenizer"
)

// DefaultModel is the served model name when Options.Model is empty: the
// model of the reference study.
const DefaultModel = "Qwen/Qwen2.5-14B-Instruct"

// Version is what GET /version reports: the vLLM release the sim imitates,
// marked so that recorded server metadata shows a simulated backend.
const Version = "0.13.0-sim"

// Options configures a simulated server.
type Options struct {
	// Profile is the server's capacity and speed (BuiltinProfile or
	// LoadProfile). Required.
	Profile Profile
	// Model is the served model name; requests naming another model get a
	// 404 like vLLM's. Empty means DefaultModel. An empty "model" in a
	// request is accepted, as vLLM does.
	Model string
	// Seed makes output text and step jitter reproducible. Two servers with
	// the same seed answer a temperature-0 prompt identically (as two
	// deployments of the same weights would); different seeds give
	// different text.
	Seed int64
	// Speedup divides all simulated times; 0 or 1 is real time.
	Speedup float64
	// Truth, when set, receives one JSON line (TruthRecord) per completion
	// request. Lines are buffered in memory and written by a background
	// flusher every 200 ms and on Close, so a slow writer never delays a
	// response. The sim does not close it.
	Truth io.Writer
	// CountPrompt, when set, counts prompt tokens exactly: for chat it gets
	// the messages (prompt empty), for completions the prompt (messages
	// nil). When nil the sim approximates; see tokenizer.ApproxChatTokens.
	CountPrompt func(messages []Message, prompt string) int
	// Created, when set, supplies the "created" field (tests fix it to
	// compare bodies byte for byte). Nil means time.Now().Unix().
	Created func() int64
	// Logger receives the server's logs; nil means no logs.
	Logger *zap.Logger
	// RoleChunkEarly sends a chat stream's role-only opening chunk as soon
	// as the request is accepted, instead of with the first token as vLLM
	// does. A client that wrongly treats that chunk as the first token then
	// measures a visibly wrong TTFT against the truth file.
	RoleChunkEarly bool
}

// Server is a simulated vLLM OpenAI-compatible server: an HTTP front end
// over a continuous-batching engine model. It is safe for concurrent use.
type Server struct {
	opts    Options
	model   string
	prof    Profile
	speedup float64
	log     *zap.Logger

	engine  *engine
	m       *metrics
	truth   *truthWriter
	metrics fasthttp.RequestHandler
	handler fasthttp.RequestHandler

	modelsJSON  []byte
	versionJSON []byte
	modelJSON   []byte // the model name, JSON-escaped, for chunk prefixes

	closing   chan struct{} // closed by Close: in-flight requests end
	closeOnce sync.Once
	closeErr  error

	srvMu  sync.Mutex
	srv    *fasthttp.Server
	closed bool

	lns []net.Listener // guarded by srvMu

	connMu sync.Mutex
	conns  map[net.Conn]fasthttp.ConnState // open connections; see Close
}

// New builds a server and starts its scheduler. Serve it with Serve, mount
// Handler on your own fasthttp server, or use Start.
func New(opts Options) (*Server, error) {
	p := opts.Profile
	if p == (Profile{}) {
		return nil, errors.New("sim: Options.Profile is empty; use BuiltinProfile or LoadProfile")
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("sim profile %q: %w", p.Name, err)
	}
	speedup := opts.Speedup
	if speedup == 0 {
		speedup = 1
	}
	if !(speedup > 0) || math.IsInf(speedup, 0) {
		return nil, fmt.Errorf("sim: speedup must be a positive number, got %v", opts.Speedup)
	}
	model := opts.Model
	if model == "" {
		model = DefaultModel
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		opts:    opts,
		model:   model,
		prof:    p,
		speedup: speedup,
		log:     log,
		closing: make(chan struct{}),
	}
	s.engine = newEngine(p, speedup, opts.Seed, nil)
	s.m = newMetrics(model, s.engine, p.KVCapacityTokens)
	s.engine.m = s.m
	s.metrics = s.m.handler()
	if opts.Truth != nil {
		s.truth = newTruthWriter(opts.Truth)
	}
	s.modelJSON = wire.AppendJSONString(nil, model)
	s.modelsJSON = s.buildModels()
	s.versionJSON = []byte(`{"version":"` + Version + `"}`)
	s.handler = s.serveHTTP
	go s.engine.run()
	log.Info("sim server ready", zap.String("model", model), zap.String("profile", p.Name),
		zap.Float64("speedup", speedup))
	return s, nil
}

// Handler returns the request handler, for mounting on a caller's server.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handler }

// Serve serves HTTP on ln until Close; it returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.srvMu.Lock()
	if s.closed {
		s.srvMu.Unlock()
		ln.Close()
		return errors.New("sim: server is closed")
	}
	if s.srv == nil {
		s.srv = &fasthttp.Server{
			Handler:               s.handler,
			NoDefaultServerHeader: true,
			NoDefaultContentType:  true,
			MaxRequestBodySize:    64 << 20,
			ReadBufferSize:        16 << 10,
			CloseOnShutdown:       true,
			Logger:                fasthttpLogger{s.log},
			ConnState:             s.trackConn,
		}
	}
	s.lns = append(s.lns, ln)
	srv := s.srv
	s.srvMu.Unlock()
	return srv.Serve(ln)
}

// Start creates a server, listens on addr ("127.0.0.1:0" picks a free port)
// and serves in a goroutine. It returns the base URL, e.g.
// "http://127.0.0.1:41234"; the OpenAI base URL is that plus "/v1".
func Start(opts Options, addr string) (*Server, string, error) {
	s, err := New(opts)
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.Close()
		return nil, "", fmt.Errorf("sim: listen on %s: %w", addr, err)
	}
	go func() {
		if err := s.Serve(ln); err != nil {
			s.log.Error("sim server stopped", zap.Error(err))
		}
	}()
	return s, "http://" + ln.Addr().String(), nil
}

// Close stops the server: in-flight streams end abruptly (as when a real
// server dies), the scheduler stops, the listener closes, and the truth
// buffer is flushed. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.engine.close()
		s.srvMu.Lock()
		s.closed = true
		srv, lns := s.srv, s.lns
		s.srvMu.Unlock()
		if srv != nil {
			s.shutdown(srv, lns)
		}
		if s.truth != nil {
			if err := s.truth.close(); err != nil {
				s.closeErr = fmt.Errorf("sim: write truth: %w", err)
			}
		}
	})
	return s.closeErr
}

// shutdown stops the HTTP side promptly. fasthttp's Shutdown polls its
// connections every 100 ms and, like net/http, waits 5 s before it treats a
// connection that never sent a request as idle (client pools often hold
// such spares). Tests start and close many sims, so Close instead closes
// the listeners, then every connection with nothing in flight, and returns
// as soon as none is left; fasthttp's own Shutdown finishes in the
// background.
func (s *Server) shutdown(srv *fasthttp.Server, lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.ShutdownWithContext(ctx) // listeners are already closed; errors say so
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.connMu.Lock()
		n := len(s.conns)
		for c, st := range s.conns {
			if st == fasthttp.StateNew || st == fasthttp.StateIdle {
				c.Close()
			}
		}
		s.connMu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Warn("sim: connections still open 5 s after Close", zap.Int("open", n))
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *Server) trackConn(c net.Conn, st fasthttp.ConnState) {
	s.connMu.Lock()
	switch st {
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		delete(s.conns, c)
	default:
		if s.conns == nil {
			s.conns = map[net.Conn]fasthttp.ConnState{}
		}
		s.conns[c] = st
	}
	s.connMu.Unlock()
}

type fasthttpLogger struct{ l *zap.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug(fmt.Sprintf(format, args...))
}

func (s *Server) serveHTTP(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	switch string(path) {
	case "/v1/chat/completions", "/v1/completions":
		if !ctx.IsPost() {
			methodNotAllowed(ctx)
			return
		}
		s.serveCompletion(ctx, len(path) == len("/v1/chat/completions"))
	case "/health":
		if !ctx.IsGet() && !ctx.IsHead() {
			methodNotAllowed(ctx)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusOK)
	case "/version":
		s.serveJSON(ctx, s.versionJSON)
	case "/v1/models":
		s.serveJSON(ctx, s.modelsJSON)
	case "/metrics":
		if !ctx.IsGet() {
			methodNotAllowed(ctx)
			return
		}
		s.metrics(ctx)
	default:
		// FastAPI's answer for an unknown route.
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"detail":"Not Found"}`)
	}
}

func methodNotAllowed(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"detail":"Method Not Allowed"}`)
}

func (s *Server) serveJSON(ctx *fasthttp.RequestCtx, body []byte) {
	if !ctx.IsGet() {
		methodNotAllowed(ctx)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

func (s *Server) created() int64 {
	if s.opts.Created != nil {
		return s.opts.Created()
	}
	return time.Now().Unix()
}

func (s *Server) buildModels() []byte {
	c := strconv.FormatInt(s.created(), 10)
	m := string(s.modelJSON)
	return []byte(`{"object":"list","data":[{"id":"` + m + `","object":"model","created":` + c +
		`,"owned_by":"vllm","root":"` + m + `","parent":null,"max_model_len":` +
		strconv.Itoa(s.prof.MaxModelLen) + `,"permission":[{"id":"modelperm-sim","object":"model_permission","created":` + c +
		`,"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,` +
		`"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]}]}`)
}

// apiError is an OpenAI-style error response.
type apiError struct {
	status int
	typ    string
	msg    string
}

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: fasthttp.StatusBadRequest, typ: "BadRequestError", msg: fmt.Sprintf(format, args...)}
}

func (e *apiError) body() []byte {
	b := append([]byte(`{"error":{"message":"`), wire.AppendJSONString(nil, e.msg)...)
	b = append(b, `","type":"`...)
	b = append(b, e.typ...)
	b = append(b, `","param":null,"code":`...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	return append(b, "}}"...)
}

func newRequestID() string {
	var b [32]byte
	for i, v := range [2]uint64{rand.Uint64(), rand.Uint64()} {
		for j := 0; j < 16; j++ {
			b[i*16+j] = hexDigits[(v>>(60-4*j))&0xf]
		}
	}
	return string(b[:])
}

// serveCompletion handles both completion endpoints: validate like vLLM,
// hand the request to the engine, then stream or wait.
func (s *Server) serveCompletion(ctx *fasthttp.RequestCtx, chat bool) {
	received := time.Now()
	r := &request{s: s, chat: chat}
	r.received = received
	r.notify = make(chan struct{}, 1)
	if chat {
		r.endpoint = "/v1/chat/completions"
	} else {
		r.endpoint = "/v1/completions"
	}
	if id := ctx.Request.Header.Peek("X-Request-Id"); len(id) > 0 {
		r.id = string(id)
	} else {
		r.id = newRequestID()
	}
	ctx.Response.Header.Set("X-Request-Id", r.id)

	if e := s.prepare(ctx.PostBody(), r); e != nil {
		ctx.SetStatusCode(e.status)
		ctx.SetContentType("application/json")
		ctx.SetBody(e.body())
		r.record(e.status, time.Time{}, time.Now(), 0)
		return
	}
	r.created = s.created()
	r.buildPrefixes()

	s.engine.submit(&r.seq)
	if r.stream {
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("text/event-stream; charset=utf-8")
		// Headers go out now, as uvicorn sends them before the first token.
		ctx.Response.ImmediateHeaderFlush = true
		ctx.SetBodyStream(r, -1)
		return
	}
	for r.produced.Load() < int64(r.target) {
		select {
		case <-r.notify:
		case <-s.closing:
			r.cancelled.Store(true)
			e := &apiError{status: fasthttp.StatusServiceUnavailable, typ: "ServiceUnavailableError", msg: "The server is shutting down."}
			ctx.SetStatusCode(e.status)
			ctx.SetContentType("application/json")
			ctx.SetBody(e.body())
			r.record(e.status, time.Time{}, time.Now(), 0)
			return
		}
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(r.appendFullBody(make([]byte, 0, 512+r.target*8)))
	r.record(fasthttp.StatusOK, time.Time{}, time.Now(), r.target)
}

// prepare parses and validates the body in vLLM's order (body shape, then
// model, then sampling parameters, then context length) and fills r.
func (s *Server) prepare(body []byte, r *request) *apiError {
	var req apiRequest
	if err := json.Unmarshal(body, &req); err != nil {
		if !json.Valid(body) {
			return badRequest("Invalid JSON body: %v", err)
		}
		return badRequest("Invalid request: %v", err)
	}
	var msgs []Message
	var prompt string
	var promptIDs int
	var err error
	if r.chat {
		msgs, err = parseMessages(req.Messages)
	} else {
		prompt, promptIDs, err = parsePrompt(req.Prompt)
	}
	if err != nil {
		return badRequest("%s", err.Error())
	}
	r.stream = req.Stream != nil && *req.Stream
	if req.StreamOptions.set() && !r.stream {
		return badRequest("Stream options can only be defined when `stream=True`.")
	}
	r.usage = r.stream && req.StreamOptions != nil && req.StreamOptions.IncludeUsage != nil && *req.StreamOptions.IncludeUsage

	if req.Model != "" && req.Model != s.model {
		return &apiError{status: fasthttp.StatusNotFound, typ: "NotFoundError",
			msg: fmt.Sprintf("The model `%s` does not exist.", req.Model)}
	}

	if req.N != nil && *req.N != 1 {
		if *req.N < 1 {
			return badRequest("n must be at least 1, got %d.", *req.N)
		}
		return badRequest("n must be 1: the simulator generates one choice per request, got %d.", *req.N)
	}
	temp := 1.0 // vLLM's default when the request has none
	if req.Temperature != nil {
		temp = *req.Temperature
		if temp < 0 || math.IsNaN(temp) {
			return badRequest("temperature must be non-negative, got %s.", formatPyFloat(temp))
		}
	}
	maxTok := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		maxTok = req.MaxCompletionTokens
	}
	if maxTok != nil && *maxTok < 1 {
		return badRequest("max_tokens must be at least 1, got %d.", *maxTok)
	}
	minTok := 0
	if req.MinTokens != nil {
		minTok = *req.MinTokens
		if minTok < 0 {
			return badRequest("min_tokens must be greater than or equal to 0, got %d.", minTok)
		}
	}

	// Prompt tokens and the text seed.
	h := fnvOffset
	if r.chat {
		if s.opts.CountPrompt != nil {
			r.promptTokens = s.opts.CountPrompt(msgs, "")
		} else {
			r.promptTokens = tokenizer.ApproxChatTokens(msgs)
		}
		for _, m := range msgs {
			h = h.add(m.Role).add("\x00").add(m.Content).add("\x00")
		}
	} else {
		switch {
		case promptIDs > 0:
			r.promptTokens = promptIDs
			h = h.add(string(req.Prompt))
		case s.opts.CountPrompt != nil:
			r.promptTokens = s.opts.CountPrompt(nil, prompt)
		default:
			r.promptTokens = tokenizer.ApproxTextTokens(prompt)
		}
		h = h.add(prompt)
	}
	r.promptTokens = max(r.promptTokens, 1)

	// Context length, with vLLM 0.13's wording.
	mml := s.prof.MaxModelLen
	if maxTok == nil {
		if r.promptTokens >= mml {
			return badRequest("This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input messages.",
				mml, r.promptTokens)
		}
		r.maxTokens = min(s.prof.DefaultMaxTokens, mml-r.promptTokens)
	} else {
		if r.promptTokens+*maxTok > mml {
			return badRequest("'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens (%d > %d - %d).",
				*maxTok, mml, r.promptTokens, *maxTok, mml, r.promptTokens)
		}
		r.maxTokens = *maxTok
	}
	if minTok > r.maxTokens {
		return badRequest("min_tokens must be less than or equal to max_tokens=%d, got %d.", r.maxTokens, minTok)
	}

	r.base = textBase(s.opts.Seed, uint64(h), temp, req.Seed)
	r.target, r.finish = r.maxTokens, "length"
	if !req.IgnoreEOS {
		if n := max(naturalLength(r.base), minTok); n < r.maxTokens {
			r.target, r.finish = n, "stop"
		}
	}
	r.stop = r.finish == "stop"
	return nil
}

// record writes the request's truth line once.
func (r *request) record(status int, firstContent, end time.Time, completion int) {
	r.recordSpans(status, firstContent, time.Time{}, end, time.Time{}, completion)
}

// recordSpans is record with the times the first content's and the last
// data's writes returned: the kernel took those bytes between a write's
// start and its return.
func (r *request) recordSpans(status int, firstContent, firstDone, end, endDone time.Time, completion int) {
	if r.s.truth == nil || !r.recorded.CompareAndSwap(false, true) {
		return
	}
	rec := TruthRecord{
		RequestID:        r.id,
		Endpoint:         r.endpoint,
		ReceivedNS:       r.received.UnixNano(),
		EndNS:            end.UnixNano(),
		PromptTokens:     r.promptTokens,
		CompletionTokens: completion,
		Status:           status,
	}
	if !firstContent.IsZero() {
		rec.FirstContentNS = firstContent.UnixNano()
	}
	if !firstDone.IsZero() {
		rec.FirstContentDoneNS = firstDone.UnixNano()
	}
	if !endDone.IsZero() {
		rec.EndDoneNS = endDone.UnixNano()
	}
	r.s.truth.write(&rec)
}

// errServerClosing ends a stream when the server closes under it.
var errServerClosing = errors.New("sim: server closing")

// request is one completion request: its engine state (embedded seq, one
// allocation) and what its writer needs to render chunks.
type request struct {
	seq
	s        *Server
	chat     bool
	endpoint string
	id       string
	created  int64
	stream   bool
	usage    bool // stream_options.include_usage
	base     uint64
	stop     bool // the last token is the natural stop token

	head []byte // {"id":…,"object":…,"created":…,"model":…  shared by every chunk
	pre  []byte // "data: " + head + the choices opening up to the token text

	recorded atomic.Bool
	started  atomic.Bool    // WriteTo or the Read fallback began
	pr       *io.PipeReader // Read fallback only
}
