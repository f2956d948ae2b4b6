package bench

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/abproxy/abproxy/admin"
	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/report"
)

// adminScraper is what `abproxy bench` plugs in: admin.Scraper.
func adminScraper(targets []ScrapeTarget, store func([]recorder.BackendMetric) error) Scraper {
	s := &admin.Scraper{Interval: time.Second, Store: store}
	for _, t := range targets {
		s.Targets = append(s.Targets, admin.ScrapeTarget{Backend: t.Backend, URL: t.URL})
	}
	return s
}

// TestDirectBenchScrapesBackend benchmarks a sim directly (no proxy) and
// finds the sim's own /metrics in backend_metrics: scrapes within every
// run, one at or before its first request and one at or after its last,
// and a report whose server state counts exactly the run's requests in
// vLLM's TTFT histogram.
func TestDirectBenchScrapesBackend(t *testing.T) {
	url, _ := startSim(t, "optimized", 50, nil)
	db := filepath.Join(t.TempDir(), "direct.db")
	cfg := baseConfig(url+"/v1", db)
	cfg.Backends = []string{"sim"}
	cfg.Scenarios = []string{"D(60,200)"} // long enough runs for scrapes within them
	cfg.Concurrency = []int{2, 4}
	cfg.ScrapeInterval = 50 * time.Millisecond
	ctx := context.Background()
	b, err := New(ctx, cfg, Options{Progress: io.Discard, NewScraper: adminScraper})
	if err != nil {
		t.Fatal(err)
	}
	if tg := b.ScrapeTargets(); len(tg) != 1 || tg[0] != (ScrapeTarget{Backend: "sim", URL: url + "/metrics"}) {
		t.Fatalf("scrape targets %+v, want sim at %s/metrics", tg, url)
	}
	if _, err := b.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	d := testutil.OpenDB(t, db)
	runs, err := recorder.ListRuns(d)
	if err != nil || len(runs) != 2 {
		t.Fatalf("%d runs (%v), want 2", len(runs), err)
	}
	for _, r := range runs {
		first := queryInt(t, d, `SELECT min(start_ns) FROM requests WHERE run_id = ?`, r.ID)
		last := queryInt(t, d, `SELECT max(end_ns) FROM requests WHERE run_id = ?`, r.ID)
		q := `SELECT count(DISTINCT ts_ns) FROM backend_metrics WHERE backend = 'sim' AND name = 'vllm:num_requests_running' AND `
		within := queryInt(t, d, q+`ts_ns BETWEEN ? AND ?`, first, last)
		before := queryInt(t, d, q+`ts_ns <= ? AND ts_ns >= ?`, first, r.StartedNS-int64(time.Minute))
		after := queryInt(t, d, q+`ts_ns >= ?`, last)
		t.Logf("%s: %.0f ms, %d scrapes within, %d before, %d after", r.Name, float64(last-first)/1e6, within, before, after)
		if within == 0 || before == 0 || after == 0 {
			t.Errorf("%s: %d scrapes within the run, %d before, %d after; want at least one each", r.Name, within, before, after)
		}
	}

	rep, err := report.Build(ctx, d, report.Options{Database: db})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Runs {
		v := s.Server
		if v == nil {
			t.Errorf("%s: no server state in the report", s.Run)
			continue
		}
		if v.TTFTRequests == nil || int(*v.TTFTRequests) != s.Completed || v.TTFTP50 == nil || v.RunningMax == nil || v.KVCacheMetric == "" {
			t.Errorf("%s: server state %s; want vLLM's TTFT count = %d completed requests, a TTFT P50, gauges", s.Run, serverJSON(v), s.Completed)
		}
	}
}

// TestSlowScrapesBracketRuns: a scrape sees the backend at some moment
// between sending its request and the answer's arrival, so a slow
// /metrics must not move a run's counters. The sim's /metrics is served
// here through a handler that reads it at once and answers 300 ms later:
// a scrape sent before a run's last first token but answered after its
// end must not close the run's counter increase, or vLLM's TTFT count
// misses that run's last requests (as it did once on a loaded CI box).
func TestSlowScrapesBracketRuns(t *testing.T) {
	url, _ := startSim(t, "optimized", 50, nil)
	const delay = 300 * time.Millisecond
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		time.Sleep(delay)
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.Write(body) //nolint:errcheck
	}))
	t.Cleanup(slow.Close)

	db := filepath.Join(t.TempDir(), "slow.db")
	cfg := baseConfig(url+"/v1", db)
	cfg.Backends = []string{"sim"}
	cfg.Scenarios = []string{"D(60,200)"}
	cfg.Concurrency = []int{1, 2, 4}
	cfg.MaxRequests = 8
	cfg.ScrapeInterval = 20 * time.Millisecond // back to back: one always in flight
	cfg.Scrape = []string{"sim=" + slow.URL + "/metrics"}
	ctx := context.Background()
	b, err := New(ctx, cfg, Options{Progress: io.Discard, NewScraper: adminScraper})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	d := testutil.OpenDB(t, db)
	all := queryInt(t, d, `SELECT count(*) FROM backend_metrics WHERE name = ?`, recorder.ScrapeDurationSeries)
	short := queryInt(t, d, `SELECT count(*) FROM backend_metrics WHERE name = ? AND value < ?`, recorder.ScrapeDurationSeries, delay.Seconds())
	if all < 6 || short != 0 {
		t.Errorf("%d scrape durations stored (want one per scrape, at least 6), %d shorter than the %s the answer was held", all, short, delay)
	}
	rep, err := report.Build(ctx, d, report.Options{Database: db})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 3 {
		t.Fatalf("%d runs in the report, want 3", len(rep.Runs))
	}
	for _, s := range rep.Runs {
		v := s.Server
		if v == nil || v.TTFTRequests == nil || int(*v.TTFTRequests) != s.Completed || s.Completed != cfg.MaxRequests {
			t.Errorf("%s: server state %s; want vLLM's TTFT count = %d completed requests", s.Run, serverJSON(v), s.Completed)
			continue
		}
		if v.CountersFrom.After(s.FirstStart) || v.CountersTo.Before(s.LastEnd.Add(delay)) {
			t.Errorf("%s (%s to %s): counters from %s to %s; want a scrape answered before the first request and one sent after the last ended",
				s.Run, s.FirstStart, s.LastEnd, v.CountersFrom, v.CountersTo)
		}
	}
}

// serverJSON shows a run's server state in a failure message (its
// numbers are pointers, which %+v would print as addresses).
func serverJSON(v *report.ServerStats) []byte {
	b, _ := json.Marshal(v)
	return b
}

// TestScrapeFlags: what is scraped by default, and bad --scrape values.
func TestScrapeFlags(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a=http://h:8000", "http://h:8000/metrics"},
		{"a=http://h:8000/v1/", "http://h:8000/metrics"},
		{"a=http://h:9090/custom/metrics", "http://h:9090/custom/metrics"},
	} {
		tg, err := parseScrape(c.in)
		if err != nil || tg.URL != c.want || tg.Backend != "a" {
			t.Errorf("parseScrape(%q) = %+v, %v; want %s", c.in, tg, err, c.want)
		}
	}
	for _, bad := range []string{"nourl", "=http://h", "a=ftp://h", "a=h:8000"} {
		if _, err := parseScrape(bad); err == nil {
			t.Errorf("parseScrape(%q) accepted", bad)
		}
	}
	// without a database nothing is scraped by default, and --scrape is refused
	url, _ := startSim(t, "optimized", 50, nil)
	cfg := baseConfig(url, "")
	cfg.ScrapeInterval = time.Second
	b, err := New(context.Background(), cfg, Options{Progress: io.Discard, NewScraper: adminScraper})
	if err != nil {
		t.Fatal(err)
	}
	if tg := b.ScrapeTargets(); tg != nil {
		t.Errorf("scraping without a database: %+v", tg)
	}
	b.Close()
	cfg.Scrape = []string{"sim=" + url}
	if _, err := New(context.Background(), cfg, Options{Progress: io.Discard, NewScraper: adminScraper}); err == nil {
		t.Error("--scrape without --db accepted")
	}
}
