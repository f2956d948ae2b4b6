package report

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/recorder"
)

// scrapeAt is one hand-made scrape of the baseline backend, at ms from t0.
type scrapeAt struct {
	ms                 float64
	running            [2]float64 // two engines, summed
	waiting, kv, gpu   float64
	preempt            float64
	buckets            []float64 // cumulative counts at le 0.1, 0.25, 0.5, 1, +Inf; nil: no histogram
	ttftSum, ttftCount float64
}

func (s scrapeAt) rows(backend string) []recorder.BackendMetric {
	ts := t0 + int64(s.ms*float64(msNS))
	m := func(name, labels string, v float64) recorder.BackendMetric {
		return recorder.BackendMetric{Backend: backend, TsNS: ts, Name: name, Labels: labels, Value: v}
	}
	out := []recorder.BackendMetric{
		m("vllm:num_requests_running", `{"engine":"0","model_name":"m"}`, s.running[0]),
		m("vllm:num_requests_running", `{"engine":"1","model_name":"m"}`, s.running[1]),
		m("vllm:num_requests_waiting", `{"engine":"0","model_name":"m"}`, s.waiting),
		m("vllm:kv_cache_usage_perc", `{"engine":"0","model_name":"m"}`, s.kv),
		m("vllm:gpu_cache_usage_perc", `{"engine":"0","model_name":"m"}`, s.gpu), // older name: kv_cache wins
		m("vllm:num_preemptions_total", `{"engine":"0","model_name":"m"}`, s.preempt),
		m("vllm:generation_tokens_total", `{"engine":"0","model_name":"m"}`, 1e6), // not read
	}
	for i, le := range []string{"0.1", "0.25", "0.5", "1", "+Inf"} {
		if s.buckets != nil {
			out = append(out, m("vllm:time_to_first_token_seconds_bucket", `{"engine":"0","le":"`+le+`","model_name":"m"}`, s.buckets[i]))
		}
	}
	if s.buckets != nil {
		out = append(out, m("vllm:time_to_first_token_seconds_sum", `{"engine":"0","model_name":"m"}`, s.ttftSum),
			m("vllm:time_to_first_token_seconds_count", `{"engine":"0","model_name":"m"}`, s.ttftCount))
	}
	return out
}

// writeMetrics adds backend_metrics rows to a database file.
func writeMetrics(t *testing.T, path string, rows []recorder.BackendMetric) {
	t.Helper()
	rec, err := recorder.Open(recorder.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.WriteBackendMetrics(rows); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestServerStatsByHand writes known backend_metrics rows around the
// fixture's runs and checks every number of the server section against a
// hand computation. fix/c2/baseline spans 0–2,500 ms from t0.
func TestServerStatsByHand(t *testing.T) {
	path := writeDB(t, fixtureRuns(), fixtureRequests())
	var rows []recorder.BackendMetric
	for _, s := range []scrapeAt{
		// an older scrape: not the one the increases start at
		{ms: -10000, running: [2]float64{90, 0}, preempt: 0, buckets: []float64{0, 0, 0, 0, 0}},
		// the last scrape before the run: the increases start here; its gauges are not the run's
		{ms: -1000, running: [2]float64{100, 100}, waiting: 100, kv: 0.99, preempt: 5,
			buckets: []float64{10, 20, 30, 40, 40}, ttftSum: 8, ttftCount: 40},
		// within the run: the gauges' samples
		{ms: 500, running: [2]float64{1, 1}, waiting: 0, kv: 0.2, gpu: 0.9, preempt: 6, buckets: []float64{10, 20, 30, 40, 40}, ttftSum: 8, ttftCount: 40},
		{ms: 1500, running: [2]float64{3, 1}, waiting: 5, kv: 0.6, gpu: 0.9, preempt: 9, buckets: []float64{10, 21, 33, 45, 45}, ttftSum: 9, ttftCount: 45},
		{ms: 2000, running: [2]float64{2, 1}, waiting: 1, kv: 0.4, gpu: 0.9, preempt: 11, buckets: []float64{11, 22, 35, 48, 48}, ttftSum: 10, ttftCount: 48},
		// the first scrape after the run: the increases end here
		{ms: 3000, running: [2]float64{0, 0}, waiting: 0, kv: 0, preempt: 12,
			buckets: []float64{11, 23, 38, 50, 50}, ttftSum: 11, ttftCount: 50},
		// long after: fix/c8/baseline (10,000–12,420 ms) has it as its closing scrape, without a histogram
		{ms: 19000, running: [2]float64{7, 0}, preempt: 50},
	} {
		rows = append(rows, s.rows("baseline")...)
	}
	writeMetrics(t, path, rows)
	rep, err := Build(context.Background(), testutil.OpenDB(t, path), Options{Database: "fixture.db", Now: time.Unix(0, t0).Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]*Stats{}
	for i := range rep.Runs {
		runs[rep.Runs[i].Run+"|"+rep.Runs[i].Backend] = &rep.Runs[i]
	}
	s := runs["fix/c2/baseline|baseline"].Server
	if s == nil {
		t.Fatal("fix/c2/baseline has no server stats")
	}
	eq := func(name string, got *float64, want float64) {
		t.Helper()
		if got == nil || math.Abs(*got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, show(got), want)
		}
	}
	if s.Samples != 3 {
		t.Errorf("samples = %d, want 3", s.Samples)
	}
	eq("running mean", s.RunningMean, 3) // (2 + 4 + 3) / 3, engines summed
	eq("running max", s.RunningMax, 4)
	eq("waiting mean", s.WaitingMean, 2) // (0 + 5 + 1) / 3
	eq("waiting max", s.WaitingMax, 5)
	eq("kv mean", s.KVCacheMean, 0.4) // (0.2 + 0.6 + 0.4) / 3
	eq("kv max", s.KVCacheMax, 0.6)
	if s.KVCacheMetric != "vllm:kv_cache_usage_perc" {
		t.Errorf("kv metric = %q", s.KVCacheMetric)
	}
	eq("preemptions", s.Preemptions, 7)     // 12 − 5
	eq("vLLM requests", s.TTFTRequests, 10) // 50 − 40
	eq("vLLM TTFT mean", s.TTFTMean, 300)   // (11 − 8) / 10 s
	// bucket increases 1, 3, 8, 10, 10: the median (rank 5) is in (0.25, 0.5]
	// at (5 − 3)/(8 − 3) of the way: 0.35 s
	eq("vLLM TTFT P50", s.TTFTP50, 350)
	if s.CountersFrom == nil || !s.CountersFrom.Equal(time.Unix(0, t0-1000*msNS)) || s.CountersTo == nil || !s.CountersTo.Equal(time.Unix(0, t0+3000*msNS)) {
		t.Errorf("counters from %v to %v, want t0−1s to t0+3s", s.CountersFrom, s.CountersTo)
	}

	// fix/c8/baseline: no scrape within it, the increases between 3 s and 19 s
	c8 := runs["fix/c8/baseline|baseline"].Server
	if c8 == nil {
		t.Fatal("fix/c8/baseline has no server stats")
	}
	if c8.Samples != 0 || c8.RunningMean != nil || c8.KVCacheMean != nil || c8.KVCacheMetric != "" {
		t.Errorf("fix/c8/baseline gauges: %+v, want none", c8)
	}
	eq("c8 preemptions", c8.Preemptions, 38)
	if c8.TTFTP50 != nil || c8.TTFTRequests != nil {
		t.Errorf("c8 vLLM TTFT %v over %v requests, want none (no histogram in the closing scrape)", show(c8.TTFTP50), show(c8.TTFTRequests))
	}
	// only scrapes before it (fix/c4, 20 s on) or another backend: nothing
	for _, k := range []string{"fix/c4/baseline|baseline", "fix/c2/optimized|optimized", "fix/c8/optimized|optimized"} {
		if runs[k].Server != nil {
			t.Errorf("%s has server stats %+v, want none", k, runs[k].Server)
		}
	}

	// every format shows it
	var js bytes.Buffer
	if err := WriteJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Schema string `json:"schema"`
		Runs   []struct {
			Run    string          `json:"run"`
			Server json.RawMessage `json:"server"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, r := range doc.Runs {
		if r.Run == "fix/c2/baseline" && !strings.Contains(string(r.Server), `"ttft_p50_ms": 350`) {
			t.Errorf("json runs[%s].server = %s", r.Run, r.Server)
		}
		if r.Run == "fix/c4/baseline" && r.Server != nil {
			t.Errorf("json runs[fix/c4/baseline].server = %s, want absent", r.Server)
		}
	}
	for _, f := range []string{"text", "markdown", "html"} {
		var buf bytes.Buffer
		if err := Render(&buf, rep, f); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		for _, want := range []string{"Server State", "Client TTFT P50", "vLLM TTFT P50", "350.0ms", "300.0ms", "40.0%", "60.0%"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s report lacks %q", f, want)
			}
		}
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, rep); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	if len(recs[0]) != len(CSVHeader)+len(CSVServerHeader) {
		t.Fatalf("csv header has %d columns, want %d", len(recs[0]), len(CSVHeader)+len(CSVServerHeader))
	}
	for _, r := range recs[1:] {
		if r[col["run"]] == "fix/c2/baseline" {
			if r[col["server_ttft_p50_ms"]] != "350" || r[col["server_preemptions"]] != "7" || r[col["server_samples"]] != "3" {
				t.Errorf("csv server cells of fix/c2/baseline: p50 %q preemptions %q samples %q",
					r[col["server_ttft_p50_ms"]], r[col["server_preemptions"]], r[col["server_samples"]])
			}
		}
	}
}

// TestNoServerSection: without backend_metrics rows nothing is added to
// any format (the goldens check Markdown and JSON byte for byte).
func TestNoServerSection(t *testing.T) {
	r, _ := fixtureReport(t, Options{})
	for _, f := range Formats {
		var buf bytes.Buffer
		if err := Render(&buf, r, f); err != nil {
			t.Fatal(err)
		}
		if s := buf.String(); strings.Contains(s, "Server State") || strings.Contains(s, `"server"`) || strings.Contains(s, "server_samples") {
			t.Errorf("%s report has a server section without backend metrics", f)
		}
	}
}

// TestHistogramQuantile checks the Prometheus-style interpolation at its
// edges.
func TestHistogramQuantile(t *testing.T) {
	inf := math.Inf(1)
	cases := []struct {
		a, b map[float64]float64
		want string
	}{
		{nil, map[float64]float64{0.1: 4, 1: 4, inf: 4}, "0.05"},                            // first bucket: from 0
		{nil, map[float64]float64{0.1: 0, 1: 0, inf: 4}, "1"},                               // in +Inf: the last finite bound
		{map[float64]float64{0.1: 1, inf: 2}, map[float64]float64{0.1: 1, inf: 2}, "<nil>"}, // no increase
		{map[float64]float64{0.1: 5, inf: 5}, map[float64]float64{0.1: 1, inf: 9}, "<nil>"}, // a bucket went down: reset
		{nil, map[float64]float64{0.1: 1, 1: 2}, "<nil>"},                                   // no +Inf bucket
	}
	for i, c := range cases {
		if got := show(histogramQuantile(0.5, c.a, c.b)); got != c.want {
			t.Errorf("case %d: %s, want %s", i, got, c.want)
		}
	}
}

func show(v *float64) string {
	if v == nil {
		return "<nil>"
	}
	return fmt.Sprint(*v)
}

// TestServerStatsScrapeSpans: a scrape shows the backend at some moment
// between its sending and its answer, so one that overlaps the run's start
// or end neither opens nor closes the counters' increase, nor is a gauge
// sample, even where its answer's time alone would say so.
func TestServerStatsScrapeSpans(t *testing.T) {
	const start, end = 0, 1000
	sc := func(sent, ts int64, running, count float64) *scrape {
		return &scrape{ts: ts, sent: sent, running: running, hasRun: true, ttftCnt: count, hasCount: true}
	}
	st := serverStats([]*scrape{
		sc(-500, -100, 0, 10), // answered before the start: opens the increase
		sc(-50, 50, 99, 11),   // spans the start: may have seen the run's first requests, or none
		sc(100, 200, 2, 12),   // within: the one gauge sample
		sc(900, 1100, 50, 15), // spans the end: may miss the run's last first tokens
		sc(1200, 1300, 0, 18), // sent after the end: closes the increase
	}, start, end)
	if st == nil {
		t.Fatal("no server stats")
	}
	if st.Samples != 1 || st.RunningMax == nil || *st.RunningMax != 2 {
		t.Errorf("%d samples, running max %v; want the one scrape within (2)", st.Samples, show(st.RunningMax))
	}
	if st.TTFTRequests == nil || *st.TTFTRequests != 8 {
		t.Errorf("TTFT requests %v, want 18 − 10 = 8", show(st.TTFTRequests))
	}
	if st.CountersFrom == nil || st.CountersFrom.UnixNano() != -100 || st.CountersTo == nil || st.CountersTo.UnixNano() != 1300 {
		t.Errorf("counters from %v to %v, want the scrapes answered at −100 ns and 1,300 ns", st.CountersFrom, st.CountersTo)
	}
}
