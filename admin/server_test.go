package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/abproxy/abproxy/report"
)

// TestTokenEnforced checks every protected endpoint: 401 without a token
// and with a wrong one (bearer or query), 200 with the right one.
func TestTokenEnforced(t *testing.T) {
	const token = "s3cret-token"
	st := startStack(t, token)
	st.sendTraffic(t, 2)
	st.settle(t)
	for _, path := range []string{"/", "/metrics", "/api/runs", "/api/runs/1", "/api/report", "/report"} {
		if code, body := get(t, st.adminURL+path, ""); code != http.StatusUnauthorized || !strings.Contains(string(body), "authentication_error") {
			t.Errorf("GET %s without token: %d %s", path, code, body)
		}
		if code, _ := get(t, st.adminURL+path, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d", path, code)
		}
		if code, _ := get(t, st.adminURL+path, token+"x"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a longer token: %d", path, code)
		}
		if code, body := get(t, st.adminURL+path, token); code != http.StatusOK {
			t.Errorf("GET %s with the token: %d %s", path, code, body)
		}
	}
	if code, _ := get(t, st.adminURL+"/api/runs?token=wrong", ""); code != http.StatusUnauthorized {
		t.Errorf("?token=wrong: %d", code)
	}
	if code, _ := get(t, st.adminURL+"/api/runs?token="+token, ""); code != http.StatusOK {
		t.Errorf("?token=right: %d", code)
	}
	if code, _ := get(t, st.adminURL+"/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz must stay open: %d", code)
	}
}

// TestLoopbackWithoutToken: with no token configured a loopback listener
// serves everyone, and a non-loopback one is refused.
func TestLoopbackWithoutToken(t *testing.T) {
	s, err := New(Options{Metrics: NewMetrics([]string{"a"})})
	if err != nil {
		t.Fatal(err)
	}
	url := serveAdmin(t, s)
	for _, path := range []string{"/", "/metrics"} {
		if code, body := get(t, url+path, ""); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	if code, body := get(t, url+"/api/runs", ""); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "no database") {
		t.Errorf("/api/runs without a database: %d %s", code, body)
	}

	// a wildcard address is not loopback: Serve refuses it without a token
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Skip("cannot listen on 0.0.0.0:", err)
	}
	defer ln.Close()
	s2, _ := New(Options{Metrics: NewMetrics(nil)})
	if err := s2.Serve(ln); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("Serve on 0.0.0.0 without a token: %v", err)
	}
}

// TestAPI reads runs, one run and the report after real traffic.
func TestAPI(t *testing.T) {
	st := startStack(t, "")
	st.sendTraffic(t, 4)
	st.settle(t)

	code, body := get(t, st.adminURL+"/api/runs", "")
	var runs struct {
		Runs []runJSON `json:"runs"`
	}
	if code != 200 || json.Unmarshal(body, &runs) != nil || len(runs.Runs) != 1 || runs.Runs[0].Name != "admin-test" {
		t.Fatalf("/api/runs: %d %s", code, body)
	}
	var one struct {
		Run    runJSON    `json:"run"`
		Groups []runGroup `json:"groups"`
	}
	for _, key := range []string{"1", "admin-test"} {
		code, body = get(t, st.adminURL+"/api/runs/"+key, "")
		if code != 200 || json.Unmarshal(body, &one) != nil || one.Run.ID != 1 {
			t.Fatalf("/api/runs/%s: %d %s", key, code, body)
		}
	}
	var n, errs int64
	for _, g := range one.Groups {
		n += g.Requests
		errs += g.Errors
		if g.Backend == "baseline" && (g.TTFTAvgMS == nil || *g.TTFTAvgMS <= 0 || g.CompletionTokens <= 0) {
			t.Errorf("baseline group: %+v", g)
		}
	}
	if n != 9 || errs != 1 {
		t.Errorf("/api/runs/1 groups count %d requests, %d errors; want 9, 1: %s", n, errs, body)
	}
	if code, body = get(t, st.adminURL+"/api/runs/nope", ""); code != 404 || !strings.Contains(string(body), `"not_found"`) {
		t.Errorf("/api/runs/nope: %d %s", code, body)
	}

	code, body = get(t, st.adminURL+"/api/report", "")
	var rep map[string]any
	if code != 200 || json.Unmarshal(body, &rep) != nil || rep["schema"] != report.SchemaID {
		t.Fatalf("/api/report: %d %.300s", code, body)
	}
	if code, body = get(t, st.adminURL+"/api/report?run=nothing-like-this", ""); code != 404 {
		t.Errorf("/api/report for no run: %d %.300s", code, body)
	}
	if code, body = get(t, st.adminURL+"/report", ""); code != 200 || !strings.Contains(string(body), "<html") {
		t.Errorf("/report: %d %.200s", code, body)
	}
}

// TestLiveStream reads /api/live events and sees the traffic in them; the
// stream ends when the server shuts down.
func TestLiveStream(t *testing.T) {
	st := startStack(t, "")
	st.sendTraffic(t, 5)
	st.settle(t)
	resp, err := http.Get(st.adminURL + "/api/live")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var events []LiveSnapshot
	start := time.Now()
	for len(events) < 2 && sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var s LiveSnapshot
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		events = append(events, s)
	}
	if len(events) < 2 {
		t.Fatalf("got %d events: %v", len(events), sc.Err())
	}
	if d := time.Since(start); d < LiveInterval/2 || d > 3*LiveInterval {
		t.Errorf("two events took %v, want about %v", d, LiveInterval)
	}
	byName := map[string]BackendLive{}
	for _, b := range events[1].Backends {
		byName[b.Backend] = b
	}
	base, opt := byName["baseline"], byName["optimized"]
	if base.Requests != 5 || base.TotalRequests != 5 || opt.Shadow != 5 || byName[""].Errors != 1 {
		t.Errorf("live stats: %+v", events[1].Backends)
	}
	// TTFT comes from the streamed requests only, E2E from all five, so
	// only each metric's own percentiles are ordered
	if base.TTFTP50 <= 0 || base.TTFTP95 < base.TTFTP50 || base.E2EP50 <= 0 || base.E2EP95 < base.E2EP50 || base.RequestRate <= 0 || base.OutputTokRate <= 0 {
		t.Errorf("baseline live stats: %+v", base)
	}

	// Shutdown ends the stream promptly
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- st.admin.Shutdown(ctx) }()
	for sc.Scan() {
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown with a live stream open: %v", err)
	}
}
