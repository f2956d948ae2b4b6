package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/abproxy/abproxy/internal/testutil"
)

// fakeServer is an OpenAI streaming server with a fixed answer time that
// counts what bench does to it.
type fakeServer struct {
	url      string
	chunks   int
	gap      time.Duration
	inflight atomic.Int64
	maxIn    atomic.Int64
	posts    atomic.Int64

	mu      sync.Mutex
	runs    map[string]int // X-ABProxy-Run → requests
	ids     map[string]bool
	lastReq map[string]any
	samples []int64 // in-flight count sampled every millisecond while busy
}

func newFakeServer(t testing.TB, chunks int, gap time.Duration) *fakeServer {
	f := &fakeServer{chunks: chunks, gap: gap, runs: map[string]int{}, ids: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if n := f.inflight.Load(); n > 0 {
					f.mu.Lock()
					f.samples = append(f.samples, n)
					f.mu.Unlock()
				}
			}
		}
	}()
	return f
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == "GET" && r.URL.Path == "/v1/models" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"object":"list","data":[{"id":"fake-model","object":"model"}]}`)
		return
	}
	if r.Method != "POST" || r.URL.Path != "/v1/chat/completions" {
		http.NotFound(w, r)
		return
	}
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		m := f.maxIn.Load()
		if n <= m || f.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	f.posts.Add(1)
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	f.runs[r.Header.Get(headerRun)]++
	f.ids[r.Header.Get("X-Request-Id")] = true
	f.lastReq = body
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	fl := w.(http.Flusher)
	fl.Flush()
	io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`+"\n\n")
	for i := range f.chunks {
		time.Sleep(f.gap)
		fr := "null"
		if i == f.chunks-1 {
			fr = `"length"`
		}
		fmt.Fprintf(w, `data: {"choices":[{"index":0,"delta":{"content":"t%d "},"finish_reason":%s}]}`+"\n\n", i, fr)
		fl.Flush()
	}
	fmt.Fprintf(w, `data: {"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`+"\n\ndata: [DONE]\n\n", 77, f.chunks)
	fl.Flush()
}

// collector keeps every result.
type collector struct {
	mu sync.Mutex
	rs []Result
}

func (c *collector) add(r *Result) {
	c.mu.Lock()
	c.rs = append(c.rs, *r)
	c.mu.Unlock()
}

func (c *collector) results() []Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Result(nil), c.rs...)
}

func runWith(t testing.TB, ctx context.Context, cfg Config) ([]RunSummary, []Result, error) {
	t.Helper()
	var col collector
	opts := Options{OnResult: col.add, Version: "test", Args: []string{"bench", "--test"}}
	if cfg.Tokenizer != "" {
		opts.Tokenizer, _ = qwen(t)
	}
	b, err := New(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sums, err := b.Run(ctx)
	return sums, col.results(), err
}

func TestClosedLoopHoldsConcurrency(t *testing.T) {
	f := newFakeServer(t, 5, 20*time.Millisecond)
	cfg := baseConfig(f.url, "")
	cfg.Concurrency = []int{8}
	cfg.MaxRequests = 48
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.maxIn.Load(); got != 8 {
		t.Errorf("at most %d requests were in flight, want 8", got)
	}
	f.mu.Lock()
	s := f.samples
	f.mu.Unlock()
	// the middle of the run, away from the start and the drain
	mid := s[len(s)/10 : len(s)*8/10]
	sum := 0.0
	for _, v := range mid {
		sum += float64(v)
	}
	if mean := sum / float64(len(mid)); mean < 7.5 {
		t.Errorf("mean in flight %.2f over the run's middle, want about 8", mean)
	}
	if len(rs) != 48 || sums[0].Stats.Completed != 48 || sums[0].StoppedBy != "max_requests" {
		t.Errorf("%d results, %+v", len(rs), sums[0].Stats)
	}
	for _, r := range rs {
		if r.FirstTokenNS <= r.StartNS || r.EndNS < r.FirstTokenNS || r.CompletionTokens != 5 || r.PromptTokens != 77 || r.Chunks != 5 {
			t.Fatalf("bad timing or usage: %+v", r)
		}
	}
}

func TestOpenLoopRate(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test; skipped with -short")
	}
	f := newFakeServer(t, 2, time.Millisecond)
	cfg := baseConfig(f.url, "")
	cfg.Concurrency = nil
	cfg.RequestRates = []float64{100}
	cfg.MaxRequests = 200
	cfg.Seed = 3
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var first, last int64
	for _, r := range rs {
		if first == 0 || r.ScheduledNS < first {
			first = r.ScheduledNS
		}
		last = max(last, r.ScheduledNS)
	}
	rate := float64(len(rs)-1) / (float64(last-first) / 1e9)
	if len(rs) != 200 || math.Abs(rate-100) > 20 {
		t.Errorf("%d requests at %.1f req/s, want 200 at about 100", len(rs), rate)
	}
	if lag := sums[0].ScheduleLag; lag == nil || lag.P99 > 25 {
		t.Errorf("requests left late after their arrival time: %+v", lag)
	}
}

func TestArrivalProcess(t *testing.T) {
	for _, k := range []float64{1, 0.25, 4} {
		a := newArrivals(1, fmt.Sprint(k), 50, k)
		const n = 40000
		var sum, sq float64
		for range n {
			g := a.next()
			if g < 0 {
				t.Fatalf("negative gap %v", g)
			}
			sum += g
			sq += g * g
		}
		mean := sum / n
		cv := math.Sqrt(sq/n-mean*mean) / mean
		// gamma(k): mean 1/rate, coefficient of variation 1/√k (Poisson: 1)
		if math.Abs(mean-0.02) > 0.02*0.03 || math.Abs(cv-1/math.Sqrt(k)) > 0.05/math.Sqrt(k) {
			t.Errorf("burstiness %v: mean gap %.5f s (want 0.02), CV %.3f (want %.3f)", k, mean, cv, 1/math.Sqrt(k))
		}
	}
	a, b := newArrivals(9, "x", 10, 1), newArrivals(9, "x", 10, 1)
	for range 10 {
		if a.next() != b.next() {
			t.Fatal("arrivals are not reproducible from the seed")
		}
	}
}

func TestMaxConcurrencyCapsOpenLoop(t *testing.T) {
	f := newFakeServer(t, 3, 10*time.Millisecond)
	cfg := baseConfig(f.url, "")
	cfg.Concurrency = nil
	cfg.RequestRates = []float64{1000}
	cfg.MaxConcurrency = 3
	cfg.MaxRequests = 30
	sums, _, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.maxIn.Load(); got != 3 {
		t.Errorf("%d in flight, want the cap of 3", got)
	}
	if sums[0].Stats.Completed != 30 || sums[0].Concurrency != 3 || sums[0].RequestRate != 1000 {
		t.Errorf("%+v", sums[0])
	}
}

func TestStopConditions(t *testing.T) {
	t.Run("max requests", func(t *testing.T) {
		f := newFakeServer(t, 1, time.Millisecond)
		cfg := baseConfig(f.url, "")
		cfg.Concurrency = []int{3}
		cfg.MaxRequests = 10
		sums, rs, err := runWith(t, context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if f.posts.Load() != 10 || len(rs) != 10 || sums[0].StoppedBy != "max_requests" {
			t.Errorf("%d posts, %d results, stopped by %s; want exactly 10 by max_requests", f.posts.Load(), len(rs), sums[0].StoppedBy)
		}
	})
	t.Run("max time", func(t *testing.T) {
		f := newFakeServer(t, 5, 40*time.Millisecond) // 200 ms per request
		cfg := baseConfig(f.url, "")
		cfg.Concurrency = []int{4}
		cfg.MaxRequests = 0
		cfg.MaxTime = 300 * time.Millisecond
		start := time.Now()
		sums, rs, err := runWith(t, context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		s := sums[0]
		// two waves start before the deadline; the second finishes after it
		if s.StoppedBy != "max_time" || len(rs) != 8 || s.Stats.Completed != 8 || s.Stats.Failed != 0 {
			t.Errorf("stopped by %s with %d results %+v; want max_time after 8 complete requests", s.StoppedBy, len(rs), s.Stats)
		}
		if took < 390*time.Millisecond || took > 2*time.Second {
			t.Errorf("took %s, want the deadline plus the in-flight requests' end (~400 ms)", took)
		}
	})
}

func TestWarmupExcluded(t *testing.T) {
	f := newFakeServer(t, 2, time.Millisecond)
	db := filepath.Join(t.TempDir(), "w.db")
	cfg := baseConfig(f.url, db)
	cfg.Warmup = 5
	cfg.MaxRequests = 10
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	warm := 0
	for _, r := range rs {
		if r.Warmup {
			warm++
			if r.Index >= 5 {
				t.Errorf("warmup request with index %d", r.Index)
			}
		}
	}
	name := sums[0].Name
	if warm != 5 || sums[0].Stats.Requests != 10 || f.posts.Load() != 15 {
		t.Errorf("%d warmup results, %d measured, %d posts", warm, sums[0].Stats.Requests, f.posts.Load())
	}
	f.mu.Lock()
	if f.runs[name] != 10 || f.runs[name+"#warmup"] != 5 {
		t.Errorf("X-ABProxy-Run headers: %v", f.runs)
	}
	f.mu.Unlock()
	d := testutil.OpenDB(t, db)
	if n := queryInt(t, d, `SELECT count(*) FROM requests WHERE run_id = (SELECT id FROM runs WHERE name = ?)`, name); n != 10 {
		t.Errorf("run has %d rows, want 10", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM requests WHERE run_id = (SELECT id FROM runs WHERE name = ?)`, name+"#warmup"); n != 5 {
		t.Errorf("warmup run has %d rows, want 5", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM runs WHERE json_extract(meta, '$.warmup') = 1 AND json_extract(meta, '$.warmup_of') = ?`, name); n != 1 {
		t.Error("the warmup run's metadata does not mark it")
	}
}

func TestInterruptMarksIncomplete(t *testing.T) {
	f := newFakeServer(t, 50, 20*time.Millisecond) // 1 s per request
	db := filepath.Join(t.TempDir(), "i.db")
	cfg := baseConfig(f.url, db)
	cfg.Concurrency = []int{2, 4}
	ctx, cancel := context.WithCancel(context.Background())
	b, err := New(ctx, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	sums, err := b.Run(ctx)
	b.Close()
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run returned %v, want ErrInterrupted", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("stopping took %s; in-flight requests should be cut", time.Since(start))
	}
	if len(sums) != 1 || sums[0].Status != "incomplete" || sums[0].StoppedBy != "interrupted" {
		t.Fatalf("summaries %+v", sums)
	}
	d := testutil.OpenDB(t, db)
	var status, stopped string
	var ended int64
	if err := d.QueryRow(`SELECT json_extract(meta,'$.status'), json_extract(meta,'$.stopped_by'), ended_ns FROM runs WHERE name = ?`,
		sums[0].Name).Scan(&status, &stopped, &ended); err != nil {
		t.Fatal(err)
	}
	if status != "incomplete" || stopped != "interrupted" || ended == 0 {
		t.Errorf("run meta status %q stopped_by %q ended_ns %d", status, stopped, ended)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM runs`); n != 1 {
		t.Errorf("%d runs; the step after the interruption must not be created", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM requests WHERE error = 'client_cancelled'`); n != 2 {
		t.Errorf("%d requests recorded as client_cancelled, want the 2 in flight", n)
	}
}
