package admin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

const testModel = "Qwen/Qwen2.5-14B-Instruct"

// startSim serves a simulated vLLM backend on loopback, 200x faster than real time.
func startSim(t testing.TB, profile string) string { return startSimSpeed(t, profile, 200) }

// startSimSpeed serves a simulated vLLM backend on loopback, speedup
// times faster than real time.
func startSimSpeed(t testing.TB, profile string, speedup float64) string {
	t.Helper()
	prof, ok := sim.BuiltinProfile(profile)
	if !ok {
		t.Fatalf("no profile %q", profile)
	}
	s, url, err := sim.Start(sim.Options{Profile: prof, Seed: 1, Speedup: speedup}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return url
}

// stack is a real proxy over two sims in mirror mode (baseline primary,
// optimized shadow), recording into a real SQLite file, observed by a
// Metrics, with an admin server on loopback.
type stack struct {
	proxyURL string
	adminURL string
	proxy    *proxy.Proxy
	rec      *recorder.Recorder
	metrics  *Metrics
	admin    *Server
	cfg      *config.Config
	dbPath   string
}

func startStack(t testing.TB, token string) *stack { return startStackSpeed(t, token, 200) }

// startStackSpeed is startStack with sims speedup times faster than real time.
func startStackSpeed(t testing.TB, token string, speedup float64) *stack {
	t.Helper()
	st := &stack{}
	cfg := config.Default()
	cfg.Backends = []config.Backend{
		{Name: "baseline", URL: startSimSpeed(t, "baseline", speedup), Model: testModel},
		{Name: "optimized", URL: startSimSpeed(t, "optimized", speedup), Model: testModel},
	}
	cfg.Route.Mode = "mirror"
	cfg.Route.Primary = "baseline"
	cfg.Route.Shadows = []string{"optimized"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st.cfg = cfg
	st.dbPath = filepath.Join(t.TempDir(), "admin.db")
	rec, err := recorder.Open(recorder.Options{Path: st.dbPath})
	if err != nil {
		t.Fatal(err)
	}
	st.rec = rec
	st.metrics = NewMetrics(cfg.BackendNames())
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Observer: st.metrics, Run: "admin-test"})
	if err != nil {
		t.Fatal(err)
	}
	st.proxy = p
	st.metrics.WatchProxy(p.Stats)
	st.metrics.WatchRecorder(rec.Stats)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln) //nolint:errcheck
	st.proxyURL = "http://" + ln.Addr().String()

	st.admin, err = New(Options{Metrics: st.metrics, Token: token, DB: rec.DB(), DBPath: st.dbPath})
	if err != nil {
		t.Fatal(err)
	}
	st.adminURL = serveAdmin(t, st.admin)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = st.proxy.Shutdown(ctx)
		_ = st.admin.Shutdown(ctx)
		_ = st.rec.Close()
	})
	return st
}

// serveAdmin serves s on a loopback port and returns its base URL.
func serveAdmin(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("admin Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// sendTraffic sends n chat requests through the proxy, every third one
// not streamed, and one request for an unknown backend (a 4xx error).
func (st *stack) sendTraffic(t testing.TB, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := range n {
		wg.Go(func() {
			stream := i%3 != 0
			body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"request %d %s"}],"max_tokens":%d,"ignore_eos":true,"stream":%v}`,
				testModel, i, strings.Repeat("z", i), 8+i, stream)
			if err := post(st.proxyURL+"/v1/chat/completions", body, nil, http.StatusOK); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	if err := post(st.proxyURL+"/v1/chat/completions", `{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":true}`,
		map[string]string{proxy.HeaderBackend: "nope"}, 0); err != nil {
		errs <- err
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// settle waits until every record (shadows included) has been observed
// and written.
func (st *stack) settle(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func post(url, body string, hdr map[string]string, want int) error {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if want != 0 && resp.StatusCode != want {
		return fmt.Errorf("POST %s: status %d, want %d: %s", url, resp.StatusCode, want, b)
	}
	return nil
}

// get fetches url with an optional bearer token and returns status and body.
func get(t testing.TB, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}
