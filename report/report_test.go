package report

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/recorder"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func near(t *testing.T, what string, got *float64, want float64) {
	t.Helper()
	if got == nil {
		t.Errorf("%s = null, want %v", what, want)
		return
	}
	if math.Abs(*got-want) > 1e-3*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v", what, *got, want)
	}
}

func nearF(t *testing.T, what string, got, want float64) {
	t.Helper()
	near(t, what, &got, want)
}

func findRun(t *testing.T, r *Report, run, backend, role string) Stats {
	t.Helper()
	for _, s := range r.Runs {
		if s.Run == run && s.Backend == backend && s.Role == role {
			return s
		}
	}
	t.Fatalf("no stats for %s %s %s", run, backend, role)
	return Stats{}
}

func TestPercentileMatchesNumpy(t *testing.T) {
	// values printed by numpy.percentile (default method "linear")
	cases := []struct {
		data []float64
		p    float64
		want float64
	}{
		{[]float64{1, 2, 3, 4}, 0, 1},
		{[]float64{1, 2, 3, 4}, 25, 1.75},
		{[]float64{1, 2, 3, 4}, 50, 2.5},
		{[]float64{1, 2, 3, 4}, 90, 3.7},
		{[]float64{1, 2, 3, 4}, 100, 4},
		{[]float64{15, 20, 35, 40, 50}, 40, 29},
		{[]float64{15, 20, 35, 40, 50}, 99, 49.6},
		{[]float64{7}, 99, 7},
	}
	for _, c := range cases {
		if got := Percentile(c.data, c.p); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Percentile(%v, %v) = %v, want %v", c.data, c.p, got, c.want)
		}
	}
}

// TestMetricsByHand checks every metric of the fixture against values
// worked out by hand in the comments.
func TestMetricsByHand(t *testing.T) {
	slo, err := ParseSLO("ttft=250ms,tpot=150ms,e2e=2s")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := fixtureReport(t, Options{SLO: slo})

	// fix/c2/baseline: requests (ms from their start)
	//   r1 TTFT 100 E2E 1100 tokens 11 → TPOT 1000/10 = 100; 10 gaps of 100
	//   r2 TTFT 200 E2E 1200 tokens 6  → TPOT 1000/5 = 200;   5 gaps of 200
	//   r3 TTFT 300 E2E 2300 tokens 11 → TPOT 2000/10 = 200; 10 gaps of 200
	//   r4 TTFT 250 E2E 1400 tokens 1  → no TPOT, one chunk, no gap
	//   r5 HTTP 503 upstream_status after 50 ms
	s := findRun(t, r, "fix/c2/baseline", "baseline", "primary")
	if s.Requests != 5 || s.Completed != 4 || s.Failed != 1 {
		t.Errorf("requests/completed/failed = %d/%d/%d, want 5/4/1", s.Requests, s.Completed, s.Failed)
	}
	nearF(t, "error rate (failures in the denominator)", s.ErrorRate, 0.2)
	if s.Statuses["200"] != 4 || s.Statuses["503"] != 1 || len(s.Statuses) != 2 {
		t.Errorf("statuses = %v, want 200×4, 503×1", s.Statuses)
	}
	if s.Errors["upstream_status"] != 1 || len(s.Errors) != 1 {
		t.Errorf("errors = %v", s.Errors)
	}
	// TTFT sorted 100 200 250 300: mean 212.5; P50 h=1.5 → 225; P90 h=2.7 → 250+0.7·50;
	// P95 h=2.85 → 250+0.85·50; P99 h=2.97 → 250+0.97·50
	checkSummary(t, "TTFT", s.TTFT, 4, 212.5, 225, 285, 292.5, 298.5, 100, 300)
	// E2E sorted 1100 1200 1400 2300: mean 1500; P50 1300; P90 1400+0.7·900; P95 1400+0.85·900; P99 1400+0.97·900
	checkSummary(t, "E2E", s.E2E, 4, 1500, 1300, 2030, 2165, 2273, 1100, 2300)
	// TPOT 100 200 200: mean 166.67, P50 h=1 → 200, all upper percentiles 200
	checkSummary(t, "TPOT", s.TPOT, 3, 500.0/3, 200, 200, 200, 200, 100, 200)
	// ITL: 10×100 and 15×200: mean 4000/25 = 160; P50 h=12 → 200; P90..P99 200
	checkSummary(t, "ITL", s.ITL, 25, 160, 200, 200, 200, 200, 100, 200)
	// duration: first start 0, last end r3 at 200+2300 = 2500 ms
	nearF(t, "duration", s.DurationS, 2.5)
	if s.CompletionTokens != 29 || s.PromptTokens != 400 {
		t.Errorf("tokens = %d prompt, %d completion; want 400, 29", s.PromptTokens, s.CompletionTokens)
	}
	near(t, "output throughput 29/2.5", s.OutputThroughput, 11.6)
	near(t, "total throughput 429/2.5", s.TotalThroughput, 171.6)
	near(t, "request throughput 4/2.5", s.RequestThroughput, 1.6)
	// SLO ttft ≤ 250, tpot ≤ 150, e2e ≤ 2000: r1 meets, r2 TPOT 200, r3 TTFT 300,
	// r4 meets (no TPOT to violate), r5 failed → 2 of 5
	if s.Goodput == nil || s.Goodput.Met != 2 {
		t.Fatalf("goodput = %+v, want 2 met", s.Goodput)
	}
	nearF(t, "goodput share", s.Goodput.Share, 0.4)
	near(t, "goodput rate", s.Goodput.Rate, 0.8)

	// counts: the /v1/models probe is read but not counted; the warmup run is left out
	if r.Counts.OtherEndpoints != 1 {
		t.Errorf("other endpoints = %d, want 1", r.Counts.OtherEndpoints)
	}
	if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "1 warmup run (bench --warmup) is left out") }) {
		t.Errorf("notes %q do not mention the warmup run", r.Notes)
	}
	for _, st := range r.Runs {
		if strings.Contains(st.Run, "#warmup") {
			t.Errorf("warmup run %s is reported", st.Run)
		}
	}

	// a run where every request failed: no samples, one sentence, no crash
	f := findRun(t, r, "fix/c4/baseline", "baseline", "primary")
	if f.Failed != 4 || f.ErrorRate != 1 || f.TTFT.Count != 0 || f.TTFT.P50 != nil || f.OutputThroughput != nil {
		t.Errorf("all-failed run: %+v", f)
	}
	if len(f.Notes) != 1 || !strings.Contains(f.Notes[0], "all 4 requests failed") || !strings.Contains(f.Notes[0], "HTTP 500 ×3") {
		t.Errorf("all-failed run notes = %q", f.Notes)
	}

	// study tables: max throughput of baseline is c=8: 160 tokens over
	// 10000 → 12420 ms (last end 10070+2350) = 66.12 tok/s; optimized c=8
	// ends at 10070+1110 = 11180 ms → 160/1.18
	if len(r.MaxThroughput) != 2 {
		t.Fatalf("max throughput rows = %d, want 2", len(r.MaxThroughput))
	}
	mb, mo := r.MaxThroughput[0], r.MaxThroughput[1]
	if mb.Backend != "baseline" || mb.Concurrency != 8 || mb.Runs != 3 || mo.Concurrency != 8 {
		t.Errorf("max throughput rows: %+v %+v", mb, mo)
	}
	near(t, "baseline max throughput", mb.OutputThroughput, 160/2.42)
	near(t, "optimized max throughput", mo.OutputThroughput, 160/1.18)
	near(t, "baseline total throughput", mb.TotalThroughput, 960/2.42)
	// c8 baseline E2E 2000+50i: P50 h=3.5 → 2175, P99 h=6.93 → 2346.5; TTFT 400+20i: P50 470
	near(t, "E2E P50", mb.E2EP50, 2175)
	near(t, "E2E P99", mb.E2EP99, 2346.5)
	near(t, "TTFT P50", mb.TTFTP50, 470)
	// min latency: the c=2 runs
	if len(r.MinLatency) != 2 || r.MinLatency[0].Concurrency != 2 {
		t.Fatalf("min latency = %+v", r.MinLatency)
	}
	ml := r.MinLatency[0]
	near(t, "min latency E2E mean", ml.E2EMean, 1500)
	near(t, "min latency E2E P50", ml.E2EP50, 1300)
	near(t, "min latency E2E min", ml.E2EMin, 1100)
	near(t, "min latency E2E max", ml.E2EMax, 2300)
	near(t, "min latency throughput", ml.OutputThroughput, 11.6)
	// improvement: optimized c=2 E2E 500 600 700 800 → P50 650: −50%
	if len(r.Improvement) != 2 {
		t.Fatalf("improvement rows = %d", len(r.Improvement))
	}
	it, ie := r.Improvement[0], r.Improvement[1]
	near(t, "max throughput change", it.ChangePct, 100*((160/1.18)/(160/2.42)-1))
	if ie.Label != "E2E P50 (c=2)" {
		t.Errorf("label %q", ie.Label)
	}
	near(t, "E2E P50 change", ie.ChangePct, -50)
	// every optimized E2E is below every baseline one: any resample agrees
	if ie.Verdict != VerdictBetter || ie.ChangeCIPct == nil || ie.ChangeCIPct.Hi >= 0 {
		t.Errorf("E2E P50 verdict %s %+v: %s", ie.Verdict, ie.ChangeCIPct, ie.Sentence)
	}
	if !strings.Contains(ie.Sentence, "optimized is better than baseline on E2E P50 (c=2): -50.0%") {
		t.Errorf("sentence %q", ie.Sentence)
	}

	// mirrored pairs: TTFT diffs −10 −30 −20; E2E −300 −300 −500
	if len(r.Mirror) != 1 {
		t.Fatalf("mirror = %+v", r.Mirror)
	}
	m := r.Mirror[0]
	if m.Primary != "baseline" || m.Shadow != "optimized" || m.Pairs != 4 || m.BothOK != 3 || m.ShadowFailed != 1 {
		t.Errorf("mirror counts %+v", m)
	}
	ttft, e2e := m.Metrics[0], m.Metrics[2]
	near(t, "paired TTFT median diff", ttft.MedianDiff, -20)
	near(t, "paired TTFT mean diff", ttft.MeanDiff, -20)
	near(t, "paired E2E median diff", e2e.MedianDiff, -300)
	near(t, "paired E2E mean diff", e2e.MeanDiff, -1100.0/3)
	near(t, "paired TTFT primary P50", ttft.PrimaryP50, 200)
	if ttft.Verdict != VerdictBetter {
		t.Errorf("paired TTFT verdict %s: %s", ttft.Verdict, ttft.Sentence)
	}
	// outputs: aa=aa, bb=bb, cc≠cd; prefixes 11/11, 8/8, 6/11 ("hello " of "hello world"/"hello there")
	ag := m.Agreement
	if ag.Compared != 3 || ag.Identical != 2 || ag.BodiesCompared != 3 {
		t.Errorf("agreement %+v", ag)
	}
	near(t, "identical share", ag.IdenticalShare, 2.0/3)
	near(t, "mean common prefix", ag.MeanCommonPrefixChars, 25.0/3)
	near(t, "mean common prefix share", ag.MeanCommonPrefixShare, (2+6.0/11)/3)
	if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.HasPrefix(n, "1 mirrored request without a partner row") }) {
		t.Errorf("notes %q do not mention the unpaired row", r.Notes)
	}

	// live traffic in 5-minute windows: the mirror run (03:04:35–03:04:40)
	// in the 03:00 window, primary and shadow; serve-1 (t0+60 s, +160, +260
	// | +360, +460, +560) in the 03:05 and 03:10 windows
	if len(r.Live) != 6 {
		t.Fatalf("live windows = %d, want 6", len(r.Live))
	}
	if r.Live[0].WindowStart.Format("15:04:05") != "03:00:00" || r.Live[0].Requests != 5 || r.Live[1].Role != "shadow" || r.Live[1].Kind != "mirror" {
		t.Errorf("mirror windows %+v %+v", r.Live[0], r.Live[1])
	}
	w := r.Live[2]
	if w.Backend != "baseline" || w.Requests != 3 || w.WindowStart.Format("15:04:05") != "03:05:00" || r.Live[4].WindowStart.Format("15:04:05") != "03:10:00" {
		t.Errorf("first serve window %+v", w)
	}
	// baseline windows' TTFT 200, 201, 202 → P50 201
	near(t, "live TTFT P50", w.TTFT.P50, 201)

	// comparisons: each load level both ran, and the live split run
	var live int
	for _, c := range r.Comparisons {
		if c.Baseline.Run == "serve-1" {
			live++
		}
	}
	if live != len(comparedMetrics) || len(r.Comparisons) != 3*len(comparedMetrics) {
		t.Errorf("comparisons = %d (%d live), want %d", len(r.Comparisons), live, 3*len(comparedMetrics))
	}
}

func checkSummary(t *testing.T, name string, s Summary, n int, mean, p50, p90, p95, p99, lo, hi float64) {
	t.Helper()
	if s.Count != n {
		t.Errorf("%s count = %d, want %d", name, s.Count, n)
	}
	near(t, name+" mean", s.Mean, mean)
	near(t, name+" P50", s.P50, p50)
	near(t, name+" P90", s.P90, p90)
	near(t, name+" P95", s.P95, p95)
	near(t, name+" P99", s.P99, p99)
	near(t, name+" min", s.Min, lo)
	near(t, name+" max", s.Max, hi)
}

// TestGolden compares the Markdown and JSON reports of the fixture with
// testdata/*.golden; go test ./report -run TestGolden -update rewrites them.
func TestGolden(t *testing.T) {
	slo, _ := ParseSLO("ttft=250ms,tpot=150ms,e2e=2s")
	r, _ := fixtureReport(t, Options{SLO: slo})
	for _, f := range []struct{ format, file string }{{"markdown", "fixture.md.golden"}, {"json", "fixture.json.golden"}} {
		var buf bytes.Buffer
		if err := Render(&buf, r, f.format); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", f.file)
		if *update {
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./report -run TestGolden -update to create it)", err)
		}
		if !bytes.Equal(buf.Bytes(), want) {
			got := filepath.Join(t.TempDir(), f.file)
			os.WriteFile(got, buf.Bytes(), 0o644)
			t.Errorf("%s report differs from %s (got: %s); if the change is intended, run go test ./report -run TestGolden -update", f.format, path, got)
		}
	}
}

// TestFormats renders every format and checks each says the key numbers.
func TestFormats(t *testing.T) {
	r, _ := fixtureReport(t, Options{})
	for _, f := range Formats {
		var buf bytes.Buffer
		if err := Render(&buf, r, f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out := buf.String()
		want := "66.12"
		if f == "json" || f == "csv" {
			want = "66.115"
		}
		if !strings.Contains(out, want) {
			t.Errorf("%s output lacks the baseline max throughput %s", f, want)
		}
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, r); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1+len(r.Runs)+len(r.Live) {
		t.Errorf("csv has %d lines, want %d", len(lines), 1+len(r.Runs)+len(r.Live))
	}
	if err := Render(&buf, r, "pdf"); err == nil || !strings.Contains(err.Error(), "not one of") {
		t.Errorf("unknown format error = %v", err)
	}
}

// TestNothingToReport: an empty database, filters that match nothing,
// and a database of only other endpoints each give one sentence.
func TestNothingToReport(t *testing.T) {
	ctx := context.Background()
	empty := writeDB(t, nil, nil)
	_, err := Build(ctx, testutil.OpenDB(t, empty), Options{Database: "empty.db"})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "empty.db has no runs yet") {
		t.Errorf("empty db: %v", err)
	}
	runsOnly := writeDB(t, fixtureRuns(), nil)
	_, err = Build(ctx, testutil.OpenDB(t, runsOnly), Options{Database: "r.db"})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "no recorded requests yet") {
		t.Errorf("runs without requests: %v", err)
	}
	full := writeDB(t, fixtureRuns(), fixtureRequests())
	db := testutil.OpenDB(t, full)
	_, err = Build(ctx, db, Options{Database: "f.db", Runs: []string{"nosuch"}})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "no run in f.db matches --run nosuch; its runs are fix/c2/baseline") {
		t.Errorf("--run nosuch: %v", err)
	}
	_, err = Build(ctx, db, Options{Database: "f.db", Backends: []string{"turbo"}})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "--backend turbo (recorded backends: baseline, optimized)") {
		t.Errorf("--backend turbo: %v", err)
	}
	_, err = Build(ctx, db, Options{Database: "f.db", Since: time.Unix(0, t0).Add(48 * time.Hour)})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "--since 2025-01-04T03:04:05Z") {
		t.Errorf("--since: %v", err)
	}
	_, err = Build(ctx, db, Options{Database: "f.db", Baseline: "turbo"})
	if err == nil || err.Error() != "--baseline turbo is not a backend in the selected data (backends: baseline, optimized)" {
		t.Errorf("--baseline turbo: %v", err)
	}
	models := writeDB(t, fixtureRuns()[:1], []req{{run: "fix/c2/baseline", backend: "baseline", ttft: -1, e2e: 1, completion: -1, prompt: -1, endpoint: "/v1/models"}})
	_, err = Build(ctx, testutil.OpenDB(t, models), Options{})
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "none of the 1 selected requests is a completion (/v1/models: 1)") {
		t.Errorf("only /v1/models: %v", err)
	}
	for _, e := range []error{err} {
		if strings.Count(e.Error(), ". ") > 0 || strings.Contains(e.Error(), "\n") {
			t.Errorf("not one sentence: %q", e)
		}
	}

	// a foreign file is refused by the read side with one sentence
	foreign := filepath.Join(t.TempDir(), "foreign.db")
	fdb, _ := sql.Open("sqlite3", foreign)
	fdb.Exec(`CREATE TABLE t(x)`)
	fdb.Close()
	if _, err := recorder.OpenReadOnly(foreign); !errors.Is(err, recorder.ErrNotDatabase) {
		t.Errorf("foreign db: %v", err)
	}
}

// TestOnlyFailures: a report whose every request failed renders in every
// format with dashes, never a crash.
func TestOnlyFailures(t *testing.T) {
	runs := fixtureRuns()[:2]
	var reqs []req
	for i := range 3 {
		reqs = append(reqs,
			req{run: "fix/c2/baseline", backend: "baseline", start: float64(i), ttft: -1, e2e: 10, completion: -1, prompt: -1, status: 503, err: "upstream_status"},
			req{run: "fix/c2/optimized", backend: "optimized", start: float64(i), ttft: -1, e2e: 10, completion: -1, prompt: -1, status: 0, err: "upstream_unreachable"})
	}
	path := writeDB(t, runs, reqs)
	r, err := Build(context.Background(), testutil.OpenDB(t, path), Options{SLO: SLO{TTFTms: 100}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range Formats {
		var buf bytes.Buffer
		if err := Render(&buf, r, f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if r.Counts.Failed != 6 || r.Runs[0].ErrorRate != 1 || r.Runs[1].Statuses["none"] != 3 {
		t.Errorf("counts %+v runs %+v", r.Counts, r.Runs)
	}
	for _, c := range r.Improvement {
		if c.Verdict != VerdictInsufficient || !strings.HasPrefix(c.Sentence, "Too few samples") {
			t.Errorf("improvement on no samples: %+v", c)
		}
	}
}

// TestRunFilter: exact names, prefixes and patterns; explicit warmups.
func TestRunFilter(t *testing.T) {
	all := fixtureRuns()
	names := func(p ...string) []string {
		sel, _ := selectRuns(all, p)
		var out []string
		for _, r := range sel {
			out = append(out, r.Name)
		}
		return out
	}
	if got := names("fix/c2"); !slices.Equal(got, []string{"fix/c2/baseline", "fix/c2/optimized"}) {
		t.Errorf("prefix: %v", got)
	}
	if got := names("fix/*/optimized"); !slices.Equal(got, []string{"fix/c2/optimized", "fix/c8/optimized"}) {
		t.Errorf("pattern: %v", got)
	}
	if got := names("fix/c2/baseline#warmup"); !slices.Equal(got, []string{"fix/c2/baseline#warmup"}) {
		t.Errorf("explicit warmup: %v", got)
	}
	if got := names("serve-?"); !slices.Equal(got, []string{"serve-1"}) {
		t.Errorf("? pattern: %v", got)
	}
}

func TestParseSLOAndSince(t *testing.T) {
	s, err := ParseSLO("ttft=500ms, tpot=50ms,e2e=10s")
	if err != nil || s != (SLO{TTFTms: 500, TPOTms: 50, E2Ems: 10000}) || s.String() != "ttft=500ms,tpot=50ms,e2e=10s" {
		t.Errorf("ParseSLO = %+v, %v", s, err)
	}
	for _, bad := range []string{"ttft", "ttft=-1s", "speed=1s", "ttft=fast"} {
		if _, err := ParseSLO(bad); err == nil {
			t.Errorf("ParseSLO(%q) succeeded", bad)
		}
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2h":                   now.Add(-2 * time.Hour),
		"2025-05-31":           time.Date(2025, 5, 31, 0, 0, 0, 0, time.UTC),
		"2025-05-31T10:00:00Z": time.Date(2025, 5, 31, 10, 0, 0, 0, time.UTC),
	} {
		if got, err := ParseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("ParseSince(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseSince("yesterday", now); err == nil {
		t.Error("ParseSince(yesterday) succeeded")
	}
}

// TestQuantileReplicatesMatchResampling: the O(1) order-statistic draw
// gives the same bootstrap distribution as resampling every value.
func TestQuantileReplicatesMatchResampling(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]float32, 60)
	for i := range data {
		data[i] = float32(r.ExpFloat64() * 100)
	}
	slices.Sort(data)
	const b = 6000
	for _, p := range []float64{50, 90, 99} {
		fast := quantileReplicates(rand.New(rand.NewPCG(3, 4)), data, p, b)
		slow := make([]float64, b)
		rr := rand.New(rand.NewPCG(5, 6))
		res := make([]float64, len(data))
		for i := range slow {
			for j := range res {
				res[j] = float64(data[rr.IntN(len(data))])
			}
			slices.Sort(res)
			slow[i] = Percentile(res, p)
		}
		slices.Sort(fast)
		slices.Sort(slow)
		for _, q := range []float64{2.5, 25, 50, 75, 97.5} {
			f, s := Percentile(fast, q), Percentile(slow, q)
			spread := Percentile(slow, 97.5) - Percentile(slow, 2.5)
			if math.Abs(f-s) > 0.08*spread {
				t.Errorf("P%v replicates: %vth percentile %.3f (order statistics) vs %.3f (resampling), spread %.3f", p, q, f, s, spread)
			}
		}
	}
}

// TestMeanAndRatioReplicates: exact resampling and the normal limit agree.
func TestMeanAndRatioReplicates(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	big := make([]float32, exactMeanLimit+1)
	small := big[:exactMeanLimit]
	for i := range big {
		big[i] = float32(r.NormFloat64()*10 + 100)
	}
	sd := func(v []float64) float64 {
		m := 0.0
		for _, x := range v {
			m += x
		}
		m /= float64(len(v))
		s := 0.0
		for _, x := range v {
			s += (x - m) * (x - m)
		}
		return math.Sqrt(s / float64(len(v)))
	}
	a := sd(meanReplicates(rand.New(rand.NewPCG(1, 1)), small, 1000))
	b := sd(meanReplicates(rand.New(rand.NewPCG(1, 1)), big, 1000))
	if want := 10 / math.Sqrt(exactMeanLimit); math.Abs(a-want) > 0.15*want || math.Abs(b-want) > 0.15*want {
		t.Errorf("bootstrap SE of the mean: resampled %.4f, normal limit %.4f, want ≈ %.4f", a, b, want)
	}
	den := make([]float32, len(big))
	for i := range den {
		den[i] = 1
	}
	c := sd(ratioReplicates(rand.New(rand.NewPCG(1, 1)), small, den[:len(small)], 1000))
	d := sd(ratioReplicates(rand.New(rand.NewPCG(1, 1)), big, den, 1000))
	if math.Abs(c-a) > 0.15*a || math.Abs(d-b) > 0.15*b {
		t.Errorf("ratio with unit denominators should match the mean: %.4f %.4f vs %.4f %.4f", c, d, a, b)
	}
}

// TestUSHist: percentiles of the histogram equal Percentile over the
// µs-rounded samples, including values past the dense range.
func TestUSHist(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	var h usHist
	var vals []float64
	for range 5000 {
		ns := int64(r.ExpFloat64() * 20e6)
		if r.IntN(50) == 0 {
			ns += 200e6 // beyond denseMax
		}
		h.add(ns)
		vals = append(vals, math.Round(float64(ns)/1000)/1000)
	}
	slices.Sort(vals)
	ps := []float64{0, 1, 50, 90, 95, 99, 99.9, 100}
	got := h.quantilesMS(ps)
	for i, p := range ps {
		if want := Percentile(vals, p); math.Abs(got[i]-want) > 1e-9 {
			t.Errorf("P%v = %v, want %v", p, got[i], want)
		}
	}
	var m usHist
	m.merge(&h)
	m.merge(&h)
	if m.n != 2*h.n || m.quantilesMS([]float64{50})[0] != got[2] {
		t.Errorf("merge: n %d, P50 %v", m.n, m.quantilesMS([]float64{50}))
	}
}

// TestBootstrapReproducible: the same data and seed give the same
// intervals; another seed other ones.
func TestBootstrapReproducible(t *testing.T) {
	a, _ := fixtureReport(t, Options{})
	b, _ := fixtureReport(t, Options{})
	c, _ := fixtureReport(t, Options{Seed: 99})
	ia, ib, ic := a.Improvement[0].ChangeCIPct, b.Improvement[0].ChangeCIPct, c.Improvement[0].ChangeCIPct
	if *ia != *ib {
		t.Errorf("same seed, different intervals: %+v %+v", ia, ib)
	}
	if *ia == *ic {
		t.Errorf("different seeds, same interval %+v", ia)
	}
}

// TestLeanScanMatchesScanRequests: Build's own column-lean reader gives
// the same report as feeding the Collector from recorder.ScanRequests.
func TestLeanScanMatchesScanRequests(t *testing.T) {
	opts := Options{Database: "fixture.db", Now: time.Unix(0, t0), SLO: SLO{TTFTms: 250}}
	a, path := fixtureReport(t, opts)
	db := testutil.OpenDB(t, path)
	runs, err := recorder.ListRuns(db)
	if err != nil {
		t.Fatal(err)
	}
	sel, _ := selectRuns(runs, nil)
	var ids []string
	for _, r := range sel {
		ids = append(ids, strconv.FormatInt(r.ID, 10))
	}
	c := NewCollector(sel, opts)
	if err := recorder.ScanRequests(context.Background(), db, recorder.Query{Where: "run_id IN (" + strings.Join(ids, ",") + ")"}, c.Add); err != nil {
		t.Fatal(err)
	}
	b, err := c.Report()
	if err != nil {
		t.Fatal(err)
	}
	b.Notes = append([]string{a.Notes[0]}, b.Notes...) // Build adds the warmup note
	var ja, jb bytes.Buffer
	WriteJSON(&ja, a)
	WriteJSON(&jb, b)
	if ja.String() != jb.String() {
		t.Errorf("reports differ:\nBuild:\n%.3000s\nScanRequests:\n%.3000s", ja.String(), jb.String())
	}
}
