package report

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/recorder"
)

// t0 is the fixture's clock origin: 2025-01-02 03:04:05 UTC.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()

const msNS = int64(time.Millisecond)

// req describes one fixture request in milliseconds from t0.
type req struct {
	run, backend, role, pair string
	start, ttft, e2e         float64   // ms; ttft < 0: no first token
	completion, prompt       int       // -1 unknown
	chunks                   []float64 // ms after start; nil: one chunk per gap below
	status                   int
	err                      string
	sha, output              string
	endpoint                 string
}

func (q req) record(i int) *recorder.Request {
	start := t0 + int64(q.start*float64(msNS))
	r := &recorder.Request{
		ID: "r" + string(rune('a'+i/26)) + string(rune('a'+i%26)), Run: q.run, Backend: q.backend, Role: q.role, PairID: q.pair,
		Endpoint: "/v1/chat/completions", Model: "m", Stream: true, Status: q.status, Error: q.err,
		StartNS: start, UpstreamNS: start, FirstByteNS: start,
		PromptTokens: q.prompt, CompletionTokens: q.completion, OutputSHA256: q.sha, Output: q.output,
		BytesIn: 100, BytesOut: 1000,
	}
	if q.endpoint != "" {
		r.Endpoint = q.endpoint
	}
	if r.Role == "" {
		r.Role = recorder.RolePrimary
	}
	if r.Status == 0 && r.Error == "" {
		r.Status = 200
	}
	if q.ttft >= 0 {
		r.FirstTokenNS = start + int64(q.ttft*float64(msNS))
	}
	r.EndNS = start + int64(q.e2e*float64(msNS))
	for _, c := range q.chunks {
		r.ChunkNS = append(r.ChunkNS, start+int64(c*float64(msNS)))
	}
	if r.Error != "" {
		r.ErrorDetail = "fixture failure"
	}
	if q.completion > 0 || q.prompt > 0 {
		r.TokensSource = recorder.TokensUsage
	}
	return r
}

// steps returns n chunk times from first, every gap ms.
func steps(first, gap float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = first + float64(i)*gap
	}
	return out
}

func fixtureRuns() []recorder.Run {
	meta := `{"command":"bench","version":"test","args":["bench","--target","http://127.0.0.1:8080"],"flags":{"seed":1},"status":"complete"}`
	run := func(name, backend string, conc int, startMS, endMS float64) recorder.Run {
		return recorder.Run{Name: name, Kind: recorder.KindBench, Backend: backend, Scenario: "D(100,100)", Concurrency: conc,
			StartedNS: t0 + int64(startMS*float64(msNS)), EndedNS: t0 + int64(endMS*float64(msNS)), Meta: []byte(meta)}
	}
	return []recorder.Run{
		run("fix/c2/baseline", "baseline", 2, 0, 3000),
		run("fix/c2/optimized", "optimized", 2, 0, 3000),
		run("fix/c8/baseline", "baseline", 8, 10000, 13000),
		run("fix/c8/optimized", "optimized", 8, 10000, 13000),
		run("fix/c4/baseline", "baseline", 4, 20000, 21000),
		{Name: "fix/c2/baseline#warmup", Kind: recorder.KindBench, Backend: "baseline", Scenario: "D(100,100)", Concurrency: 2,
			StartedNS: t0, EndedNS: t0 + 1000*msNS, Meta: []byte(`{"warmup":true,"warmup_of":"fix/c2/baseline"}`)},
		{Name: "mirror-1", Kind: recorder.KindMirror, StartedNS: t0 + 30000*msNS, EndedNS: t0 + 40000*msNS, Meta: []byte(`{"command":"serve","version":"test"}`)},
		{Name: "serve-1", Kind: recorder.KindLive, StartedNS: t0 + 60000*msNS, Meta: []byte(`{"command":"serve","version":"test","backends":[{"name":"baseline"},{"name":"optimized"}]}`)},
	}
}

// fixtureRequests is the small dataset the hand-computed expectations in
// report_test.go are about.
func fixtureRequests() []req {
	B, O := "baseline", "optimized"
	rs := []req{
		// fix/c2/baseline: 4 completed, 1 failed (see TestMetricsByHand)
		{run: "fix/c2/baseline", backend: B, start: 0, ttft: 100, e2e: 1100, completion: 11, prompt: 100, chunks: steps(100, 100, 11)},
		{run: "fix/c2/baseline", backend: B, start: 100, ttft: 200, e2e: 1200, completion: 6, prompt: 100, chunks: steps(200, 200, 6)},
		{run: "fix/c2/baseline", backend: B, start: 200, ttft: 300, e2e: 2300, completion: 11, prompt: 100, chunks: steps(300, 200, 11)},
		{run: "fix/c2/baseline", backend: B, start: 300, ttft: 250, e2e: 1400, completion: 1, prompt: 100, chunks: []float64{250}},
		{run: "fix/c2/baseline", backend: B, start: 400, ttft: -1, e2e: 50, completion: -1, prompt: -1, status: 503, err: "upstream_status"},
		// a GET /v1/models probe: not counted
		{run: "fix/c2/baseline", backend: B, start: 0, ttft: -1, e2e: 1, completion: -1, prompt: -1, endpoint: "/v1/models"},
		// a warmup request: its run is left out
		{run: "fix/c2/baseline#warmup", backend: B, start: 0, ttft: 5000, e2e: 9000, completion: 2, prompt: 100, chunks: []float64{5000, 9000}},
	}
	// fix/c2/optimized: 4 completed, faster
	for i, v := range []float64{500, 600, 700, 800} {
		rs = append(rs, req{run: "fix/c2/optimized", backend: O, start: float64(i) * 100, ttft: 50 + float64(i)*10, e2e: v, completion: 10, prompt: 100,
			chunks: steps(50+float64(i)*10, (v-50-float64(i)*10)/9, 10)})
	}
	// fix/c8: more load, 8 requests each
	for i := range 8 {
		f := float64(i)
		rs = append(rs,
			req{run: "fix/c8/baseline", backend: B, start: 10000 + f*10, ttft: 400 + f*20, e2e: 2000 + f*50, completion: 20, prompt: 100, chunks: steps(400+f*20, (1600+f*30)/19, 20)},
			req{run: "fix/c8/optimized", backend: O, start: 10000 + f*10, ttft: 100 + f*10, e2e: 900 + f*30, completion: 20, prompt: 100, chunks: steps(100+f*10, (800+f*20)/19, 20)},
		)
	}
	// fix/c4/baseline: every request failed (a metric with no samples)
	for i := range 3 {
		rs = append(rs, req{run: "fix/c4/baseline", backend: B, start: 20000 + float64(i)*100, ttft: -1, e2e: 30, completion: -1, prompt: -1, status: 500, err: "upstream_status"})
	}
	rs = append(rs, req{run: "fix/c4/baseline", backend: B, start: 20500, ttft: -1, e2e: 5000, completion: -1, prompt: -1, err: "timeout", status: 504})
	// mirror-1: 4 pairs baseline (primary) → optimized (shadow), one unpaired
	type pr struct {
		pt, st, pe, se float64
		psha, ssha     string
		pout, sout     string
		shadowFails    bool
	}
	for i, p := range []pr{
		{100, 90, 1000, 700, "aa", "aa", "hello world", "hello world", false},
		{200, 170, 1200, 900, "bb", "bb", "the same", "the same", false},
		{300, 280, 1500, 1000, "cc", "cd", "hello world", "hello there", false},
		{150, 0, 1100, 0, "dd", "", "x", "", true},
	} {
		start := 30000 + float64(i)*1000
		pair := "p" + string(rune('1'+i))
		rs = append(rs, req{run: "mirror-1", backend: B, role: recorder.RolePrimary, pair: pair, start: start, ttft: p.pt, e2e: p.pe,
			completion: 10, prompt: 50, chunks: steps(p.pt, (p.pe-p.pt)/9, 10), sha: p.psha, output: p.pout})
		s := req{run: "mirror-1", backend: O, role: recorder.RoleShadow, pair: pair, start: start + 1, ttft: p.st, e2e: p.se,
			completion: 10, prompt: 50, chunks: steps(p.st, (p.se-p.st)/9, 10), sha: p.ssha, output: p.sout}
		if p.shadowFails {
			s = req{run: "mirror-1", backend: O, role: recorder.RoleShadow, pair: pair, start: start + 1, ttft: -1, e2e: 20, completion: -1, prompt: -1, status: 502, err: "upstream_unreachable"}
		}
		rs = append(rs, s)
	}
	rs = append(rs, req{run: "mirror-1", backend: B, role: recorder.RolePrimary, pair: "p9", start: 35000, ttft: 100, e2e: 1000, completion: 10, prompt: 50, chunks: steps(100, 100, 10)})
	// serve-1: live traffic split between both backends, two 5-minute windows
	for i := range 6 {
		f := float64(i)
		at := 60000 + f*100_000 // 0, 100 s, …: windows of 5 minutes
		rs = append(rs,
			req{run: "serve-1", backend: B, start: at, ttft: 200 + f, e2e: 1500 + f*10, completion: 30, prompt: 40, chunks: steps(200+f, (1300+f*9)/29, 30)},
			req{run: "serve-1", backend: O, start: at + 5, ttft: 120 + f, e2e: 1000 + f*10, completion: 30, prompt: 40, chunks: steps(120+f, (880+f*9)/29, 30)},
		)
	}
	return rs
}

// writeDB writes runs and requests into a new database file with the
// recorder (bodies stored) and returns its path.
func writeDB(t testing.TB, runs []recorder.Run, reqs []req) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fixture.db")
	rec, err := recorder.Open(recorder.Options{Path: path, StoreBodies: true, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if _, err := rec.EnsureRun(r); err != nil {
			t.Fatal(err)
		}
	}
	for i, q := range reqs {
		if !rec.Submit(q.record(i)) {
			t.Fatal("submit refused")
		}
	}
	if err := rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// fixtureReport builds the report of the fixture database.
func fixtureReport(t testing.TB, opts Options) (*Report, string) {
	t.Helper()
	path := writeDB(t, fixtureRuns(), fixtureRequests())
	if opts.Database == "" {
		opts.Database = "fixture.db"
	}
	if opts.Now.IsZero() {
		opts.Now = time.Unix(0, t0).Add(24 * time.Hour)
	}
	rep, err := Build(context.Background(), testutil.OpenDB(t, path), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep, path
}
