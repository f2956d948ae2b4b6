package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/abproxy/abproxy/recorder"
)

// TestScraperAgainstSim scrapes a sim's vLLM /metrics while it serves
// known traffic, through the Run loop, into a real SQLite file, and reads
// the rows back.
func TestScraperAgainstSim(t *testing.T) {
	url := startSim(t, "baseline")
	const n = 3
	for i := range n {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"scrape %d"}],"max_tokens":6,"stream":true}`, testModel, i)
		if err := post(url+"/v1/chat/completions", body, nil, http.StatusOK); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := recorder.Open(recorder.Options{Path: filepath.Join(t.TempDir(), "scrape.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	m := NewMetrics([]string{"baseline", "down"})
	s := &Scraper{
		Targets:  []ScrapeTarget{{Backend: "baseline", URL: url + "/metrics"}, {Backend: "down", URL: "http://127.0.0.1:1/metrics"}},
		Interval: 50 * time.Millisecond, Store: rec.WriteBackendMetrics, Metrics: m,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	db := rec.DB()
	deadline := time.Now().Add(5 * time.Second)
	var scrapes int
	for scrapes < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if err := db.QueryRow(`SELECT count(DISTINCT ts_ns) FROM backend_metrics WHERE backend = 'baseline'`).Scan(&scrapes); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	<-done
	if scrapes < 3 {
		t.Fatalf("%d scrapes stored in 5s at a 50ms interval", scrapes)
	}

	var last int64
	if err := db.QueryRow(`SELECT max(ts_ns) FROM backend_metrics WHERE backend = 'baseline'`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	value := func(name, labels string) float64 {
		t.Helper()
		var v float64
		if err := db.QueryRow(`SELECT value FROM backend_metrics WHERE backend = 'baseline' AND ts_ns = ? AND name = ? AND labels = ?`,
			last, name, labels).Scan(&v); err != nil {
			t.Fatalf("%s %s: %v", name, labels, err)
		}
		return v
	}
	ml := fmt.Sprintf(`{"model_name":%q}`, testModel)
	if v := value("vllm:time_to_first_token_seconds_count", ml); v != n {
		t.Errorf("TTFT count %v, want %d", v, n)
	}
	if v := value("vllm:time_to_first_token_seconds_bucket", fmt.Sprintf(`{"le":"+Inf","model_name":%q}`, testModel)); v != n {
		t.Errorf("TTFT +Inf bucket %v, want %d", v, n)
	}
	if v := value("vllm:time_to_first_token_seconds_sum", ml); v <= 0 {
		t.Errorf("TTFT sum %v", v)
	}
	if v := value("vllm:generation_tokens_total", ml); v != 6*n {
		t.Errorf("generation tokens %v, want %d", v, 6*n)
	}
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total"} {
		if v := value(name, ml); v != 0 {
			t.Errorf("%s = %v on an idle sim", name, v)
		}
	}
	// every scrape adds how long it took: one row per scrape, between 0 and its 1 s timeout
	var durations, stamps, inRange, allScrapes int
	if err := db.QueryRow(`SELECT count(*), count(DISTINCT ts_ns), count(CASE WHEN value > 0 AND value < 1 THEN 1 END),
		(SELECT count(DISTINCT ts_ns) FROM backend_metrics WHERE backend = 'baseline')
		FROM backend_metrics WHERE backend = 'baseline' AND name = ? AND labels = '{}'`,
		recorder.ScrapeDurationSeries).Scan(&durations, &stamps, &inRange, &allScrapes); err != nil {
		t.Fatal(err)
	}
	if durations != allScrapes || stamps != allScrapes || inRange != allScrapes {
		t.Errorf("%d scrape durations over %d timestamps (%d in (0, 1) s) for %d scrapes; want one each", durations, stamps, inRange, allScrapes)
	}
	// only the selected series are kept
	var other int
	if err := db.QueryRow(`SELECT count(*) FROM backend_metrics WHERE name NOT LIKE 'vllm:%' AND name != ?`, recorder.ScrapeDurationSeries).Scan(&other); err != nil {
		t.Fatal(err)
	}
	if other != 0 {
		t.Errorf("%d rows of unselected series", other)
	}
	var lj string
	if err := db.QueryRow(`SELECT labels FROM backend_metrics LIMIT 1`).Scan(&lj); err != nil || !json.Valid([]byte(lj)) {
		t.Errorf("labels %q are not JSON: %v", lj, err)
	}
	var downRows int
	db.QueryRow(`SELECT count(*) FROM backend_metrics WHERE backend = 'down'`).Scan(&downRows) //nolint:errcheck
	if downRows != 0 {
		t.Errorf("%d rows for an unreachable backend", downRows)
	}

	// the scrape outcomes are in abproxy's own /metrics
	var buf bytes.Buffer
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		expfmt.MetricFamilyToText(&buf, f) //nolint:errcheck
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	parsed, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatal(err)
	}
	up := map[string]float64{}
	for _, mm := range parsed[MetricBackendUp].GetMetric() {
		up[labels(mm)["backend"]] = mm.GetGauge().GetValue()
	}
	if up["baseline"] != 1 || up["down"] != 0 {
		t.Errorf("%s = %v", MetricBackendUp, up)
	}
}

// TestScraperBadEndpoint: a non-Prometheus answer is an error and stores nothing.
func TestScraperBadEndpoint(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/500" {
			http.Error(w, "boom", 500)
			return
		}
		w.Write([]byte("this is { not prometheus\n")) //nolint:errcheck
	}))
	defer srv.Close()
	var stored int
	s := &Scraper{Store: func(rows []recorder.BackendMetric) error { stored += len(rows); return nil }}
	for _, path := range []string{"/garbage", "/500"} {
		s.Targets = []ScrapeTarget{{Backend: "x", URL: srv.URL + path}}
		if err := s.ScrapeOnce(context.Background()); err == nil {
			t.Errorf("%s: no error", path)
		}
	}
	if stored != 0 {
		t.Errorf("stored %d rows", stored)
	}
}

// A scrape cut by the scraper's own shutdown says nothing about the
// backend: abproxy_backend_up keeps the last real outcome.
func TestScraperShutdownKeepsBackendUp(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hold") != "" {
			<-release // answers only after the scrape was cancelled
		}
		w.Write([]byte("vllm:num_requests_running{model_name=\"m\"} 0\n")) //nolint:errcheck
	}))
	defer srv.Close()
	defer close(release)
	m := NewMetrics([]string{"x"})
	s := &Scraper{Store: func([]recorder.BackendMetric) error { return nil }, Metrics: m,
		Targets: []ScrapeTarget{{Backend: "x", URL: srv.URL + "/metrics"}}}
	if err := s.ScrapeOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Targets[0].URL += "?hold=1"
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.ScrapeOnce(ctx); err == nil {
		t.Fatal("a scrape cut by its context reported no error")
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == MetricBackendUp {
			if v := f.GetMetric()[0].GetGauge().GetValue(); v != 1 {
				t.Fatalf("%s = %v after a cancelled scrape, want the last real outcome 1", MetricBackendUp, v)
			}
			return
		}
	}
	t.Fatalf("no %s", MetricBackendUp)
}
