package sim

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/abproxy/abproxy/internal/testutil"
)

func TestPlanPrefill(t *testing.T) {
	mk := func(prompts ...int) *engine {
		e := newEngine(fastProfile(), 1, 1, nil)
		for _, p := range prompts {
			e.running = append(e.running, &seq{promptTokens: p})
		}
		return e
	}
	chunks := func(e *engine) []int {
		var c []int
		for _, q := range e.running {
			c = append(c, q.chunk)
		}
		return c
	}
	// Chunked: the budget is shared in admission order, splitting prompts.
	e := mk(3000, 3000, 10)
	e.prof.PrefillChunkTokens = 4096
	if got := e.planPrefill(); got != 4096 || fmt.Sprint(chunks(e)) != "[3000 1096 0]" {
		t.Fatalf("chunked plan: %d %v", got, chunks(e))
	}
	e.running[0].prefilled, e.running[1].prefilled = 3000, 1096
	if got := e.planPrefill(); got != 1914 || fmt.Sprint(chunks(e)) != "[0 1904 10]" {
		t.Fatalf("chunked plan, second step: %d %v", got, chunks(e))
	}
	// Unchunked: prompts are never split; the first always goes, later ones
	// only while max(MaxModelLen, 2048) = 4096 tokens are left.
	e = mk(3000, 2000, 1000, 50)
	e.prof.PrefillChunkTokens = 0
	if got := e.planPrefill(); got != 4050 || fmt.Sprint(chunks(e)) != "[3000 0 1000 50]" {
		t.Fatalf("whole-prompt plan: %d %v", got, chunks(e))
	}
	e = mk(5000)
	e.prof.PrefillChunkTokens = 0
	e.prof.MaxModelLen = 8000
	if got := e.planPrefill(); got != 5000 {
		t.Fatalf("a long prompt must be prefilled in one step: %d", got)
	}
}

func TestStepDuration(t *testing.T) {
	p := fastProfile()
	p.StepBase, p.StepPerSeq, p.PrefillTokensPerSec = 20*time.Millisecond, time.Millisecond, 1000
	e := newEngine(p, 4, 1, nil)
	e.running = make([]*seq, 3)
	// (20ms + 3×1ms + 500 tokens / 1000 tok/s) / 4
	if got, want := e.stepDuration(500), (23*time.Millisecond+500*time.Millisecond)/4; got != want {
		t.Fatalf("step %s, want %s", got, want)
	}
	e.prof.Jitter = 0.1
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for i := 0; i < 1000; i++ {
		d := e.stepDuration(0)
		lo, hi = min(lo, d), max(hi, d)
	}
	base := 23 * time.Millisecond / 4
	if lo < base*9/10 || hi > base*11/10 || hi-lo < base/10 {
		t.Fatalf("jitter 10%% gave steps in [%s, %s] around %s", lo, hi, base)
	}
}

// TestSingleStreamTiming checks the c=1 model: one token per step of
// (StepBase + StepPerSeq)/speedup, first token after one step.
func TestSingleStreamTiming(t *testing.T) {
	opts := testOptions()
	opts.Profile.StepBase, opts.Profile.StepPerSeq = 40*time.Millisecond, 2*time.Millisecond
	opts.Speedup = 10 // 4.2 ms per step
	_, base := startSim(t, opts)
	start := time.Now()
	res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":40,"ignore_eos":true,"stream":true`), nil)
	step := 4200 * time.Microsecond
	if ttft := res.firstAt.Sub(start); ttft < step*7/10 || ttft > step*4 {
		t.Fatalf("TTFT %s, want about one step (%s)", ttft, step)
	}
	last := res.events[len(res.events)-2].at // the last content chunk
	itl := last.Sub(res.firstAt) / time.Duration(len(res.contents)-1)
	if itl < step*7/10 || itl > step*13/10 {
		t.Fatalf("mean inter-token time %s, want %s ±30%%", itl, step)
	}
}

// TestQueueingWhenKVFull: a second request that does not fit the KV budget
// waits for the first to finish; with room it starts at once.
func TestQueueingWhenKVFull(t *testing.T) {
	run := func(kv int) (firstDur, secondTTFT time.Duration, maxWaiting int64) {
		opts := testOptions()
		opts.Profile.KVCapacityTokens, opts.Profile.MaxModelLen = kv, 250
		opts.Profile.StepBase = 10 * time.Millisecond
		opts.Speedup = 20 // 0.5 ms steps; each request reserves 7+200 tokens
		s, base := startSim(t, opts)
		body := chatBody(`,"max_tokens":200,"ignore_eos":true,"stream":true`)
		var wg sync.WaitGroup
		wg.Add(1)
		start := time.Now()
		go func() {
			defer wg.Done()
			stream(t, base+"/v1/chat/completions", body, nil)
			firstDur = time.Since(start)
		}()
		for s.engine.nRunning.Load() == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		done := make(chan struct{})
		go func() { // watch the queue while the second request is in flight
			defer close(done)
			for i := 0; i < 50; i++ {
				maxWaiting = max(maxWaiting, s.engine.nWaiting.Load())
				time.Sleep(time.Millisecond)
			}
		}()
		t2 := time.Now()
		res := stream(t, base+"/v1/chat/completions", body, nil)
		secondTTFT = res.firstAt.Sub(t2)
		wg.Wait()
		<-done
		return
	}
	firstDur, ttft, waiting := run(300) // 2×207 > 300: the second must wait
	if ttft < firstDur/2 || waiting != 1 {
		t.Fatalf("KV full: second TTFT %s (first request took %s), max waiting %d; want queueing", ttft, firstDur, waiting)
	}
	firstDur, ttft, waiting = run(10_000)
	if ttft > firstDur/4 || waiting != 0 {
		t.Fatalf("KV free: second TTFT %s (first request took %s), max waiting %d; want no queueing", ttft, firstDur, waiting)
	}
}

// TestDisconnectFreesSlot: with one batch slot, a client that goes away
// mid-stream must not keep the next request waiting for its full length.
func TestDisconnectFreesSlot(t *testing.T) {
	truth := &testutil.SyncBuffer{}
	opts := testOptions()
	opts.Profile.MaxNumSeqs = 1
	opts.Speedup = 1 // 1 ms steps: the abandoned request alone would take 4 s
	opts.Truth = truth
	s, base := startSim(t, opts)

	resp := post(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":4000,"ignore_eos":true,"stream":true`),
		map[string]string{"X-Request-Id": "gone"})
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 6; i++ { // role chunk and a couple of tokens
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	resp.Body.Close() // unread body: net/http closes the connection

	start := time.Now()
	res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":5,"ignore_eos":true,"stream":true`), nil)
	if d := time.Since(start); d > time.Second || len(res.contents) != 5 {
		t.Fatalf("next request took %s (%d tokens): the slot was not freed", d, len(res.contents))
	}
	// Gauges are published at step boundaries, just after the last token.
	for i := 0; s.engine.nRunning.Load() != 0; i++ {
		if i == 100 {
			t.Fatalf("%d requests still running", s.engine.nRunning.Load())
		}
		time.Sleep(time.Millisecond)
	}
	s.Close()
	recs := parseTruth(t, truth.String())
	if len(recs) != 2 || recs[0].RequestID != "gone" || recs[0].Status != 499 ||
		recs[0].CompletionTokens < 1 || recs[0].CompletionTokens >= 4000 {
		t.Fatalf("truth for the abandoned request: %+v", recs)
	}
}

// TestBuiltinProfilesSaturation is the demo's story in miniature: with 300
// concurrent requests of 100+256 tokens, baseline's 55k-token KV admits
// about 154 and queues the rest; optimized admits all 300.
// The speedup leaves each request at least ~170 ms of life even alone, so
// that all 300 are in before the first leaves on a busy CI box (at 100, the
// first finished in ~40 ms and a loaded run peaked at 261).
func TestBuiltinProfilesSaturation(t *testing.T) {
	if testing.Short() {
		t.Skip("300 concurrent requests")
	}
	peak := func(name string) (running, waiting int64) {
		p, _ := BuiltinProfile(name)
		opts := testOptions()
		opts.Profile, opts.Speedup = p, 20
		opts.CountPrompt = func([]Message, string) int { return 100 }
		s, base := startSim(t, opts)
		stop := make(chan struct{})
		var watch sync.WaitGroup
		watch.Add(1)
		go func() {
			defer watch.Done()
			for {
				running, waiting = max(running, s.engine.nRunning.Load()), max(waiting, s.engine.nWaiting.Load())
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Microsecond):
				}
			}
		}()
		var wg sync.WaitGroup
		for i := 0; i < 300; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, b := postJSON(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":256,"ignore_eos":true`), nil); st != 200 {
					t.Errorf("status %d: %s", st, b)
				}
			}()
		}
		wg.Wait()
		close(stop)
		watch.Wait()
		return running, waiting
	}
	br, bw := peak("baseline")
	or, ow := peak("optimized")
	if br != 55_000/356 || bw == 0 {
		t.Fatalf("baseline peaked at %d running, %d waiting; want %d running and a queue", br, bw, 55_000/356)
	}
	if or < 280 || ow != 0 {
		t.Fatalf("optimized peaked at %d running (%d waiting); want (nearly) all 300 running and no queue", or, ow)
	}
}

func TestIdleSchedulerDoesNotSpin(t *testing.T) {
	s, base := startSim(t, testOptions())
	stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":20,"ignore_eos":true,"stream":true`), nil)
	time.Sleep(5 * time.Millisecond)
	n := s.engine.steps.Load()
	time.Sleep(50 * time.Millisecond)
	if got := s.engine.steps.Load(); got != n || n < 20 {
		t.Fatalf("steps went from %d to %d while idle", n, got)
	}
}

func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := testClient.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["model_name"] != testModel {
				t.Fatalf("%s without model_name=%s: %v", name, testModel, labels)
			}
			key := name
			if r := labels["finished_reason"]; r != "" {
				key += "{" + r + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[key+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	_, base := startSim(t, testOptions())
	before := scrape(t, base)
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
		"vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
		"vllm:inter_token_latency_seconds_count"} {
		if _, ok := before[name]; !ok {
			t.Fatalf("metric %s missing (have %v)", name, before)
		}
	}
	stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":10,"ignore_eos":true,"stream":true`), nil)
	postJSON(t, base+"/v1/completions", `{"prompt":"x","max_tokens":5,"ignore_eos":true}`, nil)
	postJSON(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":-5`), nil) // rejected: counts nowhere
	after := scrape(t, base)
	// Gauges are published at step boundaries, just after the last token.
	for i := 0; i < 100 && (after["vllm:num_requests_running"] != 0 || after["vllm:kv_cache_usage_perc"] != 0); i++ {
		time.Sleep(time.Millisecond)
		after = scrape(t, base)
	}
	want := map[string]float64{
		"vllm:prompt_tokens_total":                14,
		"vllm:generation_tokens_total":            15,
		"vllm:request_success_total{length}":      2,
		"vllm:time_to_first_token_seconds_count":  2,
		"vllm:e2e_request_latency_seconds_count":  2,
		"vllm:inter_token_latency_seconds_count":  13,
		"vllm:num_requests_running":               0,
		"vllm:kv_cache_usage_perc":                0,
		"vllm:num_preemptions_total":              0,
		"vllm:request_queue_time_seconds_count":   2,
		"vllm:request_prefill_time_seconds_count": 2,
	}
	for k, v := range want {
		if after[k]-before[k] != v && !(k == "vllm:kv_cache_usage_perc" && after[k] == 0) {
			t.Errorf("%s moved by %v, want %v", k, after[k]-before[k], v)
		}
	}
	if after["vllm:e2e_request_latency_seconds_sum"] <= 0 {
		t.Errorf("e2e latency sum is %v", after["vllm:e2e_request_latency_seconds_sum"])
	}
}

func parseTruth(t *testing.T, s string) []TruthRecord {
	t.Helper()
	var recs []TruthRecord
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if line == "" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		var r TruthRecord
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("truth line %q: %v", line, err)
		}
		if !strings.Contains(line, `"first_content_ns":`) || !strings.Contains(line, `"status":`) {
			t.Fatalf("truth line incomplete: %s", line)
		}
		recs = append(recs, r)
	}
	return recs
}

func TestTruthFile(t *testing.T) {
	truth := &testutil.SyncBuffer{}
	opts := testOptions()
	opts.Truth = truth
	opts.Speedup = 2 // 0.5 ms steps: first content and end are well apart
	s, base := startSim(t, opts)

	type sent struct {
		id                 string
		start, first, done time.Time
		tokens             int
		stream             bool
	}
	var reqs []sent
	for i := 0; i < 4; i++ {
		id := fmt.Sprintf("t-%d", i)
		start := time.Now()
		res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":20,"ignore_eos":true,"stream":true`),
			map[string]string{"X-Request-Id": id})
		reqs = append(reqs, sent{id, start, res.firstAt, res.events[len(res.events)-1].at, len(res.contents), true})
	}
	start := time.Now()
	postJSON(t, base+"/v1/completions", `{"prompt":"x","max_tokens":9,"ignore_eos":true}`, map[string]string{"X-Request-Id": "ns"})
	reqs = append(reqs, sent{"ns", start, time.Time{}, time.Now(), 9, false})
	postJSON(t, base+"/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, map[string]string{"X-Request-Id": "err"})
	s.Close()

	recs := parseTruth(t, truth.String())
	if len(recs) != len(reqs)+1 {
		t.Fatalf("%d truth lines for %d requests:\n%s", len(recs), len(reqs)+1, truth.String())
	}
	for i, want := range reqs {
		r := recs[i]
		if r.RequestID != want.id || r.Status != 200 || r.CompletionTokens != want.tokens || r.PromptTokens != 7 {
			t.Fatalf("truth %d: %+v, want id %s, %d tokens", i, r, want.id, want.tokens)
		}
		// The server stamps right after its write returns; the client, in
		// this process, may read the bytes a few µs before that stamp, or a
		// little after it. They agree to well under 2 ms on an idle machine;
		// allow slack for a loaded CI box.
		const slack = 25 * time.Millisecond
		checkBefore := func(what string, server int64, client time.Time) {
			if d := client.UnixNano() - server; d < -int64(2*time.Millisecond) || d > int64(slack) {
				t.Errorf("truth %d %s: server %d, client saw it at %d (diff %s)", i, what, server, client.UnixNano(),
					time.Duration(client.UnixNano()-server))
			}
		}
		if r.ReceivedNS < want.start.UnixNano() || r.ReceivedNS-want.start.UnixNano() > int64(slack) {
			t.Errorf("truth %d: received %d, client sent at %d", i, r.ReceivedNS, want.start.UnixNano())
		}
		if want.stream {
			if !(r.ReceivedNS < r.FirstContentNS && r.FirstContentNS < r.EndNS) {
				t.Errorf("truth %d out of order: %+v", i, r)
			}
			checkBefore("first content", r.FirstContentNS, want.first)
		} else if r.FirstContentNS != 0 || r.EndNS <= r.ReceivedNS {
			t.Errorf("non-stream truth %d: %+v", i, r)
		}
		checkBefore("end", r.EndNS, want.done)
	}
	if e := recs[len(recs)-1]; e.RequestID != "err" || e.Status != 404 || e.Endpoint != "/v1/chat/completions" || e.FirstContentNS != 0 {
		t.Fatalf("error truth line: %+v", e)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	truth := &testutil.SyncBuffer{}
	opts := testOptions()
	opts.Speedup = 1
	opts.Truth = truth
	s, base := startSim(t, opts)
	resp := post(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":4000,"ignore_eos":true,"stream":true`), nil)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %s", d)
	}
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "[DONE]") {
		t.Fatal("a closed server finished the stream")
	}
	if recs := parseTruth(t, truth.String()); len(recs) != 1 || recs[0].Status != 503 {
		t.Fatalf("truth after Close: %s", truth.String())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRoleChunkEarly(t *testing.T) {
	opts := testOptions()
	opts.RoleChunkEarly = true
	opts.Speedup = 1
	opts.Profile.StepBase = 30 * time.Millisecond
	_, base := startSim(t, opts)
	res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":2,"ignore_eos":true,"stream":true`), nil)
	if gap := res.firstAt.Sub(res.events[0].at); gap < 20*time.Millisecond {
		t.Fatalf("role chunk came %s before the first token; want it early (about a step)", gap)
	}
	opts.RoleChunkEarly = false
	_, base = startSim(t, opts)
	res = stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":2,"ignore_eos":true,"stream":true`), nil)
	if gap := res.firstAt.Sub(res.events[0].at); gap > 5*time.Millisecond {
		t.Fatalf("role chunk came %s before the first token; vLLM sends it with the first token", gap)
	}
}
