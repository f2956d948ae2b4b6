package admin

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
)

// hsum is what one histogram child should hold.
type hsum struct {
	count uint64
	sum   float64
}

func (h *hsum) add(v float64) { h.count++; h.sum += v }

type want struct {
	requests                map[[2]string]float64 // (status, error) -> count
	ttft, dur, tpot, itl    hsum
	tokIn, tokOut           hsum
	primariesWithFirstToken uint64
}

// TestMetricsMatchRecords sends known traffic through a real proxy in
// front of two sims (mirror mode), then reads /metrics back with the
// Prometheus text parser and checks every count and histogram sum
// against the records in the SQLite file.
func TestMetricsMatchRecords(t *testing.T) {
	st := startStack(t, "")
	const n = 9
	st.sendTraffic(t, n)
	st.settle(t)

	// expected values, from the database
	exp := map[[2]string]*want{}
	var total int
	err := recorder.ScanRequests(context.Background(), st.rec.DB(), recorder.Query{}, func(r *recorder.Request) error {
		total++
		k := [2]string{r.Backend, r.Role}
		w := exp[k]
		if w == nil {
			w = &want{requests: map[[2]string]float64{}}
			exp[k] = w
		}
		status := ""
		if r.Status != 0 {
			status = strconv.Itoa(r.Status)
		}
		w.requests[[2]string{status, r.Error}]++
		tm := Timings(r)
		if tm.HasTTFT {
			w.ttft.add(tm.TTFT)
			if r.Role == recorder.RolePrimary {
				w.primariesWithFirstToken++
			}
		}
		if tm.HasDuration {
			w.dur.add(tm.Duration)
		}
		if tm.HasTPOT {
			w.tpot.add(tm.TPOT)
		}
		for i := 1; i < len(r.ChunkNS); i++ {
			w.itl.add(float64(r.ChunkNS[i]-r.ChunkNS[i-1]) / 1e9)
		}
		if r.PromptTokens >= 0 {
			w.tokIn.add(float64(r.PromptTokens))
		}
		if r.CompletionTokens >= 0 {
			w.tokOut.add(float64(r.CompletionTokens))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total != 2*n+1 {
		t.Fatalf("%d records, want %d (n primaries, n shadows, 1 unknown backend)", total, 2*n+1)
	}
	if exp[[2]string{"baseline", "primary"}] == nil || exp[[2]string{"optimized", "shadow"}] == nil || exp[[2]string{"", "primary"}] == nil {
		t.Fatalf("unexpected groups: %v", exp)
	}

	code, body := get(t, st.adminURL+"/metrics", "")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{MetricTTFT, MetricTPOT, MetricDuration, MetricTokenUsage, MetricITL, MetricAddedLatency,
		MetricRequests, MetricInFlight, MetricBackendFlight, MetricShadowFlight, MetricShadowSkipped, MetricQueueDepth, MetricRecDropped, MetricRecWritten} {
		if fams[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	var sumRequests float64
	for _, m := range fams[MetricRequests].GetMetric() {
		l := labels(m)
		w := exp[[2]string{l["backend"], l["role"]}]
		got := m.GetCounter().GetValue()
		sumRequests += got
		if w == nil || w.requests[[2]string{l["status"], l["error"]}] != got {
			t.Errorf("%s%v = %v, records say %v", MetricRequests, l, got, w)
		}
	}
	if sumRequests != float64(total) {
		t.Errorf("sum of %s = %v, want %d", MetricRequests, sumRequests, total)
	}

	check := func(name string, extra map[string]string, pick func(*want) hsum) {
		t.Helper()
		seen := 0
		for _, m := range fams[name].GetMetric() {
			l := labels(m)
			if !matches(l, extra) {
				continue
			}
			w := exp[[2]string{l["backend"], l["role"]}]
			var h hsum
			if w != nil {
				h = pick(w)
			}
			got := m.GetHistogram()
			if got.GetSampleCount() != h.count || !near(got.GetSampleSum(), h.sum) {
				t.Errorf("%s%v: count %d sum %.9g, records give count %d sum %.9g", name, l, got.GetSampleCount(), got.GetSampleSum(), h.count, h.sum)
			}
			if b := got.GetBucket(); len(b) > 0 && b[len(b)-1].GetCumulativeCount() > got.GetSampleCount() {
				t.Errorf("%s%v: buckets exceed the count", name, l)
			}
			if h.count > 0 {
				seen++
			}
		}
		if seen == 0 {
			t.Errorf("%s: no child with observations", name)
		}
	}
	check(MetricTTFT, nil, func(w *want) hsum { return w.ttft })
	check(MetricDuration, nil, func(w *want) hsum { return w.dur })
	check(MetricTPOT, nil, func(w *want) hsum { return w.tpot })
	check(MetricITL, nil, func(w *want) hsum { return w.itl })
	check(MetricTokenUsage, map[string]string{"gen_ai_token_type": "input"}, func(w *want) hsum { return w.tokIn })
	check(MetricTokenUsage, map[string]string{"gen_ai_token_type": "output"}, func(w *want) hsum { return w.tokOut })

	// added latency: only primaries that wrote a token to a client; it
	// is small and never negative
	var added uint64
	for _, m := range fams[MetricAddedLatency].GetMetric() {
		l := labels(m)
		h := m.GetHistogram()
		if l["role"] == recorder.RoleShadow && h.GetSampleCount() != 0 {
			t.Errorf("added latency observed for a shadow: %v", l)
		}
		if h.GetSampleSum() < 0 || (h.GetSampleCount() > 0 && h.GetSampleSum()/float64(h.GetSampleCount()) > 0.1) {
			t.Errorf("added latency %v: mean %v s", l, h.GetSampleSum()/float64(h.GetSampleCount()))
		}
		added += h.GetSampleCount()
	}
	if wantAdded := exp[[2]string{"baseline", "primary"}].primariesWithFirstToken; added == 0 || added > wantAdded {
		t.Errorf("added latency count %d, want 1..%d", added, wantAdded)
	}

	if v := gauge(fams[MetricInFlight]); v != 0 {
		t.Errorf("%s = %v after shutdown", MetricInFlight, v)
	}
	if v := fams[MetricRecWritten].GetMetric()[0].GetCounter().GetValue(); v != float64(total) {
		t.Errorf("%s = %v, want %d", MetricRecWritten, v, total)
	}
}

// TestObserveDoesNotAllocateOnWarmPath keeps the data plane's cost in
// check: once a (backend, role, status) has been seen, Observe allocates
// nothing but the live window sample (in place).
func TestObserveDoesNotAllocateOnWarmPath(t *testing.T) {
	m := NewMetrics([]string{"a"})
	r := &recorder.Request{Backend: "a", Role: recorder.RolePrimary, Status: 200, StartNS: 1e9, FirstTokenNS: 1.1e9, EndNS: 1.5e9,
		ChunkNS: []int64{1.1e9, 1.2e9, 1.3e9}, PromptTokens: 10, CompletionTokens: 3}
	o := &proxy.Observation{Record: r, FirstTokenSentNS: 1.1e9 + 1000}
	for range 2000 { // past the ring's growth
		m.Observe(o)
	}
	if a := testing.AllocsPerRun(1000, func() { m.Observe(o) }); a > 0 {
		t.Fatalf("Observe allocates %v times per call", a)
	}
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func matches(l, want map[string]string) bool {
	for k, v := range want {
		if l[k] != v {
			return false
		}
	}
	return true
}

func gauge(f *dto.MetricFamily) float64 { return f.GetMetric()[0].GetGauge().GetValue() }

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// BenchmarkObserve is Observe on a finished 160-token stream, the work the
// proxy's observation batches do per request.
func BenchmarkObserve(b *testing.B) {
	m := NewMetrics([]string{"a"})
	r := &recorder.Request{Backend: "a", Role: recorder.RolePrimary, Status: 200, StartNS: 1e9, FirstTokenNS: 1.1e9,
		PromptTokens: 40, CompletionTokens: 160}
	for i := range 160 {
		r.ChunkNS = append(r.ChunkNS, 1.1e9+int64(i)*13_000_000+int64(i%7)*100_000)
	}
	r.EndNS = r.ChunkNS[159] + 1000
	o := &proxy.Observation{Record: r, FirstTokenSentNS: 1.1e9 + 20_000}
	b.ReportAllocs()
	for range b.N {
		m.Observe(o)
	}
}

// TestGapHistogramMatchesPrometheus feeds the same gaps to addGaps and to a
// prometheus.Histogram with the same buckets: gaps on, just under and just
// over every bound, zero and negative ones, in rising, falling and random
// order, so the bucket walk from the previous gap is exercised both ways.
func TestGapHistogramMatchesPrometheus(t *testing.T) {
	v := newGapVec("gaps", "test", itlBuckets)
	h := v.child("a", recorder.RolePrimary)
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gaps", Buckets: itlBuckets})
	var gaps []int64
	for _, u := range v.upperNS {
		gaps = append(gaps, u, u-1, u+1)
	}
	gaps = append(gaps, 0, -5, 3e9, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		gaps = append(gaps, rng.Int64N(3e9))
	}
	for _, order := range []func([]int64){
		func(g []int64) { slices.Sort(g) },
		func(g []int64) { slices.Sort(g); slices.Reverse(g) },
		func(g []int64) { rng.Shuffle(len(g), func(i, j int) { g[i], g[j] = g[j], g[i] }) },
	} {
		order(gaps)
		ns := []int64{1e12}
		for _, g := range gaps {
			ns = append(ns, ns[len(ns)-1]+g)
			ref.Observe(float64(g) / 1e9)
		}
		h.addGaps(ns)
	}
	got, want := collectOne(t, v), collectOne(t, ref)
	if got.GetSampleCount() != want.GetSampleCount() {
		t.Fatalf("count %d, want %d", got.GetSampleCount(), want.GetSampleCount())
	}
	if math.Abs(got.GetSampleSum()-want.GetSampleSum()) > 1e-6 {
		t.Errorf("sum %v, want %v", got.GetSampleSum(), want.GetSampleSum())
	}
	for i, b := range want.GetBucket() {
		if g := got.GetBucket()[i]; g.GetUpperBound() != b.GetUpperBound() || g.GetCumulativeCount() != b.GetCumulativeCount() {
			t.Errorf("bucket le=%v: %d, want le=%v: %d", g.GetUpperBound(), g.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
}

// collectOne returns the one histogram c collects.
func collectOne(t *testing.T, c prometheus.Collector) *dto.Histogram {
	t.Helper()
	ch := make(chan prometheus.Metric, 4)
	c.Collect(ch)
	close(ch)
	var out []*dto.Histogram
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d.GetHistogram())
	}
	if len(out) != 1 {
		t.Fatalf("%d metrics collected, want 1", len(out))
	}
	return out[0]
}
