package admin

import (
	"context"
	"crypto/subtle"
	"database/sql"
	_ "embed" // the dashboard page
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/report"
)

//go:embed dashboard.html
var dashboardHTML []byte

// LiveInterval is the period of /api/live events.
const LiveInterval = time.Second

// Options configure a Server.
type Options struct {
	// Metrics is the proxy's Observer whose registry /metrics serves and
	// whose live window /api/live streams. Required.
	Metrics *Metrics
	// Token, when set, is required on every endpoint but /healthz, as
	// "Authorization: Bearer TOKEN" (or ?token=TOKEN, for the browser page).
	Token string
	// DB is a read-only handle on the measurements (recorder.DB or
	// recorder.OpenReadOnly); nil makes the database endpoints answer 503.
	DB *sql.DB
	// DBPath labels reports (the file as the user named it).
	DBPath string
	// Logger logs server errors; nil means none.
	Logger *zap.Logger
}

// Server is the control plane's HTTP server, on echo, apart from the data
// plane's listener.
type Server struct {
	opts Options
	e    *echo.Echo
	log  *zap.Logger
	srv  *http.Server
	stop chan struct{} // closed by Shutdown: ends /api/live streams
	once sync.Once
}

// New builds the server and its routes.
func New(opts Options) (*Server, error) {
	if opts.Metrics == nil {
		return nil, errors.New("admin: no metrics")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{opts: opts, log: opts.Logger, stop: make(chan struct{})}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	g := e.Group("", s.auth)
	g.GET("/", s.dashboard)
	g.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(opts.Metrics.Registry(), promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(s.log)})))
	g.GET("/api/live", s.live)
	g.GET("/api/runs", s.runs)
	g.GET("/api/runs/:id", s.run)
	g.GET("/api/report", s.reportJSON)
	g.GET("/report", s.reportHTML)
	s.e = e
	return s, nil
}

// Handler is the server's HTTP handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.e }

// Serve accepts admin clients on ln until Shutdown. It refuses a listener
// reachable from other machines when no token is set.
func (s *Server) Serve(ln net.Listener) error {
	if s.opts.Token == "" {
		if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			return fmt.Errorf("admin listener %s is not a loopback address, so a token (admin.token or %s) is required", a, config.AdminTokenEnv)
		}
	}
	s.srv = &http.Server{Handler: s.e, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: zap.NewStdLog(s.log)}
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown ends the live streams, stops accepting and waits for other
// requests to finish until ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.once.Do(func() { close(s.stop) })
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

// auth requires the bearer token when one is configured, compared in
// constant time. ?token= is accepted too, because a browser's EventSource
// cannot send headers.
func (s *Server) auth(next echo.HandlerFunc) echo.HandlerFunc {
	if s.opts.Token == "" {
		return next
	}
	want := []byte(s.opts.Token)
	return func(c echo.Context) error {
		got, ok := strings.CutPrefix(c.Request().Header.Get(echo.HeaderAuthorization), "Bearer ")
		if !ok {
			got = c.QueryParam("token")
		}
		if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="abproxy admin"`)
			return apiError(http.StatusUnauthorized, "authentication_error", "missing or wrong admin token: send Authorization: Bearer TOKEN")
		}
		return next(c)
	}
}

// errorBody is the OpenAI error shape the proxy uses too.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

type httpError struct {
	status int
	typ    string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func apiError(status int, typ, msg string) error { return &httpError{status, typ, msg} }

func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, typ, msg := http.StatusInternalServerError, "server_error", err.Error()
	var he *httpError
	var ee *echo.HTTPError
	switch {
	case errors.As(err, &he):
		status, typ, msg = he.status, he.typ, he.msg
	case errors.As(err, &ee):
		status, typ = ee.Code, "invalid_request_error"
		msg = fmt.Sprint(ee.Message)
		if status == http.StatusNotFound {
			typ = "not_found"
		}
	default:
		s.log.Warn("admin request failed", zap.String("path", c.Path()), zap.Error(err))
	}
	var b errorBody
	b.Error.Message, b.Error.Type = msg, typ
	if err := c.JSON(status, b); err != nil {
		s.log.Debug("write error response", zap.Error(err))
	}
}

func (s *Server) dashboard(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.Blob(http.StatusOK, echo.MIMETextHTMLCharsetUTF8, dashboardHTML)
}

// live streams one LiveSnapshot per LiveInterval as Server-Sent Events,
// the first at once, until the client leaves or the server shuts down.
func (s *Server) live(c echo.Context) error {
	w := c.Response()
	h := w.Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write([]byte("retry: 2000\n\n")); err != nil {
		return nil
	}
	t := time.NewTicker(LiveInterval)
	defer t.Stop()
	ctx := c.Request().Context()
	enc := json.NewEncoder(w)
	for {
		snap := s.opts.Metrics.LiveSnapshot(time.Now())
		if _, err := w.Write([]byte("data: ")); err != nil {
			return nil
		}
		if err := enc.Encode(snap); err != nil { // Encode ends with "\n"
			return nil
		}
		if _, err := w.Write([]byte("\n")); err != nil {
			return nil
		}
		w.Flush()
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return nil
		case <-t.C:
		}
	}
}

func (s *Server) db() (*sql.DB, error) {
	if s.opts.DB == nil {
		return nil, apiError(http.StatusServiceUnavailable, "server_error", "no database is attached to this admin server")
	}
	return s.opts.DB, nil
}

// runJSON is a run as the API shows it.
type runJSON struct {
	ID          int64           `json:"id"`
	Name        string          `json:"name"`
	Kind        string          `json:"kind"`
	Backend     string          `json:"backend,omitempty"`
	Scenario    string          `json:"scenario,omitempty"`
	Concurrency int             `json:"concurrency,omitempty"`
	RequestRate float64         `json:"request_rate,omitempty"`
	StartedNS   int64           `json:"started_ns"`
	EndedNS     int64           `json:"ended_ns,omitempty"`
	Meta        json.RawMessage `json:"meta,omitempty"`
}

func toRunJSON(r recorder.Run) runJSON {
	return runJSON{ID: r.ID, Name: r.Name, Kind: r.Kind, Backend: r.Backend, Scenario: r.Scenario,
		Concurrency: r.Concurrency, RequestRate: r.RequestRate, StartedNS: r.StartedNS, EndedNS: r.EndedNS, Meta: r.Meta}
}

func (s *Server) runs(c echo.Context) error {
	db, err := s.db()
	if err != nil {
		return err
	}
	runs, err := recorder.ListRuns(db)
	if err != nil {
		return err
	}
	out := make([]runJSON, len(runs))
	for i, r := range runs {
		out[i] = toRunJSON(r)
	}
	return c.JSON(http.StatusOK, map[string]any{"runs": out})
}

// runGroup summarizes one run's requests for one backend and role.
type runGroup struct {
	Backend          string   `json:"backend"`
	Role             string   `json:"role"`
	Requests         int64    `json:"requests"`
	Errors           int64    `json:"errors"`
	PromptTokens     int64    `json:"prompt_tokens"`
	CompletionTokens int64    `json:"completion_tokens"`
	TTFTAvgMS        *float64 `json:"ttft_avg_ms"`
	E2EAvgMS         *float64 `json:"e2e_avg_ms"`
	TPOTAvgMS        *float64 `json:"tpot_avg_ms"`
	FirstStartNS     *int64   `json:"first_start_ns"`
	LastEndNS        *int64   `json:"last_end_ns"`
}

// run answers /api/runs/:id (a numeric id or a run name) with the run and
// per-backend, per-role totals and mean latencies; percentiles and
// comparisons are in /api/report?run=NAME.
func (s *Server) run(c echo.Context) error {
	db, err := s.db()
	if err != nil {
		return err
	}
	key := c.Param("id")
	runs, err := recorder.ListRuns(db)
	if err != nil {
		return err
	}
	var found *recorder.Run
	id, numErr := strconv.ParseInt(key, 10, 64)
	for i := range runs {
		if (numErr == nil && runs[i].ID == id) || runs[i].Name == key {
			found = &runs[i]
			break
		}
	}
	if found == nil {
		return apiError(http.StatusNotFound, "not_found", fmt.Sprintf("no run with id or name %q", key))
	}
	rows, err := db.QueryContext(c.Request().Context(), `SELECT coalesce(backend, ''), role, count(*), count(error),
		coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
		avg((first_token_ns - start_ns) / 1e6), avg((end_ns - start_ns) / 1e6),
		avg(CASE WHEN completion_tokens > 1 THEN (end_ns - first_token_ns) / 1e6 / (completion_tokens - 1) END),
		min(start_ns), max(end_ns)
		FROM requests WHERE run_id = ? GROUP BY 1, 2 ORDER BY 1, 2`, found.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	groups := []runGroup{}
	for rows.Next() {
		var g runGroup
		if err := rows.Scan(&g.Backend, &g.Role, &g.Requests, &g.Errors, &g.PromptTokens, &g.CompletionTokens,
			&g.TTFTAvgMS, &g.E2EAvgMS, &g.TPOTAvgMS, &g.FirstStartNS, &g.LastEndNS); err != nil {
			return err
		}
		groups = append(groups, g)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"run": toRunJSON(*found), "groups": groups})
}

// reportOptions reads the report selection from the query string: run
// and backend (repeatable), baseline, window (a Go duration).
func (s *Server) reportOptions(c echo.Context) (report.Options, error) {
	q := c.QueryParams()
	o := report.Options{Database: s.opts.DBPath, Runs: q["run"], Backends: q["backend"], Baseline: q.Get("baseline")}
	if w := q.Get("window"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil || d <= 0 {
			return o, apiError(http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("window %q is not a positive duration such as 5m", w))
		}
		o.Window = d
	}
	return o, nil
}

func (s *Server) buildReport(c echo.Context) (*report.Report, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	o, err := s.reportOptions(c)
	if err != nil {
		return nil, err
	}
	r, err := report.Build(c.Request().Context(), db, o)
	if errors.Is(err, report.ErrNoData) {
		return nil, apiError(http.StatusNotFound, "not_found", err.Error())
	}
	return r, err
}

func (s *Server) reportJSON(c echo.Context) error {
	r, err := s.buildReport(c)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	c.Response().WriteHeader(http.StatusOK)
	return report.WriteJSON(c.Response(), r)
}

func (s *Server) reportHTML(c echo.Context) error {
	r, err := s.buildReport(c)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(http.StatusOK)
	return report.WriteHTML(c.Response(), r)
}
