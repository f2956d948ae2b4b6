package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/abproxy/abproxy/internal/stats"
	"github.com/abproxy/abproxy/sim"
)

// BenchmarkOverhead measures what abproxy adds to a streamed chat
// completion compared with a direct connection to the backend and with
// nginx as a plain streaming reverse proxy (proxy_buffering off, upstream
// keepalive). One simulated backend serves all three targets; the same load
// is sent to each in turn, ALTERNATING the targets round by round (and
// rotating their order) so that drift on the machine affects all alike.
//
//	go test -run '^$' -bench Overhead -benchtime 1x -timeout 60m ./proxy/
//
// It is skipped when nginx is not installed (apt-get install nginx-light).
// The whole measurement runs once per concurrency level whatever b.N is.
// Knobs (environment):
//
//	ABPROXY_OVERHEAD_LEVELS=1,16,200,1000   concurrency levels
//	ABPROXY_OVERHEAD_SCALE=1                multiplies requests per round
//	ABPROXY_OVERHEAD_ROUNDS=N               rounds per level (default per level)
//	ABPROXY_OVERHEAD_PROMPT_BYTES=N         pad each prompt to about N bytes (default ~300)
//	ABPROXY_OVERHEAD_OUT=FILE               also write the tables (Markdown) to FILE
//	ABPROXY_OVERHEAD_CPUPROFILE=FILE        CPU profile of the abproxy process
//	ABPROXY_OVERHEAD_BIN=PATH               measure a built `abproxy serve` instead
//	                                        of the re-executed test binary
//	ABPROXY_OVERHEAD_CHILD_ENV=K=V,...      extra environment for abproxy (GOMAXPROCS=1)
//	ABPROXY_OVERHEAD_EVENT_LOOPS=N          abproxy's proxy.event_loops (-1: a goroutine per stream)
//	ABPROXY_OVERHEAD_LOOP_MIN_STREAMS=N     abproxy's proxy.event_loop_min_streams
//	ABPROXY_OVERHEAD_PPROF=ADDR             serve net/http/pprof from abproxy on ADDR
//	ABPROXY_OVERHEAD_KEEPDB=PATH            abproxy's SQLite file (default: a temp dir)
//	ABPROXY_OVERHEAD_TRUTH=PATH             write the sim's truth lines (JSON, one per
//	                                        request) to PATH at the end; joined with
//	                                        KEEPDB on id, they split abproxy's hop
//	ABPROXY_OVERHEAD_SIM=inprocess|process  the sim in the client's process (default)
//	                                        or in its own, as a real backend is
//	ABPROXY_OVERHEAD_BIN_B=PATH             also measure a second built `abproxy serve`,
//	                                        as target "abproxy-b", in the same rounds:
//	                                        before and after a change, in one run
//	ABPROXY_OVERHEAD_RELAY=1                also measure "go-relay", a bare TCP relay in
//	                                        Go: the floor for a proxy on Go's runtime
//
// abproxy records every request into a real SQLite file through the
// recorder (bounded queue, batched writer); the last sub-benchmark,
// "recorded", stops abproxy and checks that every request it answered was
// written. Results are explained in docs/benchmarks.md.
func BenchmarkOverhead(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("BenchmarkOverhead reads /proc and uses SO_TIMESTAMPNS: Linux only")
	}
	levels := ovhLevels(b)
	if v := os.Getenv(ovhPromptBytesEnv); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			b.Fatalf("%s=%q: want a number of bytes, such as 32768", ovhPromptBytesEnv, v)
		}
	}
	dir := b.TempDir()

	truth := &ovhTruth{}
	if f := os.Getenv(ovhTruthEnv); f != "" {
		defer func() { // also after a failure: the lines are what explains it
			truth.mu.Lock()
			defer truth.mu.Unlock()
			_ = os.WriteFile(f, truth.buf.Bytes(), 0o644)
		}()
	}
	base, simProc, err := ovhStartSim(b, dir, truth)
	if err != nil {
		b.Fatal(err)
	}
	defer simProc.stop()
	simAddr := strings.TrimPrefix(base, "http://")
	prof := ovhSimProfile()
	step := func(c int) time.Duration {
		return time.Duration(float64(prof.StepBase+time.Duration(c)*prof.StepPerSeq) / ovhSpeedup)
	}

	nginx, err := ovhStartNginx(b.TempDir(), simAddr)
	if err == errNoNginx {
		b.Skip("BenchmarkOverhead needs nginx to compare against: apt-get install -y nginx-light")
	}
	if err != nil {
		b.Fatal(err)
	}
	defer nginx.stop()
	abp, err := ovhStartAbproxy(b, dir, base, os.Getenv(ovhProfileEnv))
	if err != nil {
		b.Fatal(err)
	}
	abpStopped := false
	defer func() {
		if !abpStopped {
			abp.stop()
		}
	}()

	targets := []*ovhTarget{
		{name: "direct", addr: simAddr},
		{name: "nginx", addr: nginx.addr, proc: nginx},
		{name: "abproxy", addr: abp.addr, proc: abp},
	}
	ovhTargetNames = []string{"direct", "nginx", "abproxy"}
	if binB := os.Getenv(ovhBinBEnv); binB != "" {
		abpB, err := ovhStartAbproxyB(dir, base, binB)
		if err != nil {
			b.Fatal(err)
		}
		defer abpB.stop()
		targets = append(targets, &ovhTarget{name: ovhNameB, addr: abpB.addr, proc: abpB})
		ovhTargetNames = append(ovhTargetNames, ovhNameB)
	}
	if v := os.Getenv(ovhRelayEnv); v == "1" {
		relay, err := ovhStartRelay(dir, simAddr)
		if err != nil {
			b.Fatal(err)
		}
		defer relay.stop()
		targets = append(targets, &ovhTarget{name: ovhRelayName, addr: relay.addr, proc: relay})
		ovhTargetNames = append(ovhTargetNames, ovhRelayName)
	} else if v != "" && v != "0" {
		b.Fatalf("%s=%q: want 1 (measure the Go relay too) or 0", ovhRelayEnv, v)
	}
	// Idle memory after one request each: the base of "memory per stream".
	for _, t := range targets {
		if err := t.connect(1); err != nil {
			b.Fatalf("%s: %v", t.name, err)
		}
		if err := t.warm(); err != nil {
			b.Fatalf("%s: %v", t.name, err)
		}
		t.idleRSS = t.proc.rss()
		t.baseRSS = t.idleRSS
	}

	env := ovhEnv{sim: simProc.place()}
	env.describe()
	b.Logf("machine: %s", env.String())
	lo, hi := ovhTokens(b)
	b.Logf("sim: step %v + %v/stream (speedup %g), output %d-%d tokens (ignore_eos), request body %d bytes, include_usage on",
		step(0), time.Duration(float64(prof.StepPerSeq)/ovhSpeedup), ovhSpeedup, lo, hi, ovhBodyBytes())

	// Every request abproxy answered must be in its SQLite file: stop it
	// (SIGTERM drains and closes the recorder) and compare its counts. This
	// runs inside the last level's sub-benchmark (which runs once), or in
	// the parent when -bench filtered that level out.
	var recLine string
	var written, dropped int64 = -1, -1
	checkRecorder := func(b *testing.B) {
		if abpStopped {
			if written >= 0 { // a rerun of the same sub-benchmark
				b.ReportMetric(float64(written), "abproxy_records_written")
				b.ReportMetric(float64(dropped), "abproxy_records_dropped")
			}
			return
		}
		for _, t := range targets {
			t.close()
		}
		if err := abp.stop(); err != nil {
			b.Errorf("abproxy exit: %v (log: %s)", err, ovhTail(dir+"/abproxy.log"))
		}
		abpStopped = true
		recLine = strings.TrimSpace(abp.stdout.String())
		answered := targets[2].sent.Load()
		if os.Getenv("ABPROXY_OVERHEAD_BIN") != "" {
			b.Logf("abproxy binary: recorder counts are in its log, not checked")
			return
		}
		var submitted, failed int64
		if _, err := fmt.Sscanf(recLine, "recorder submitted=%d written=%d dropped=%d failed=%d", &submitted, &written, &dropped, &failed); err != nil {
			b.Errorf("abproxy's recorder line %q: %v", recLine, err)
			return
		}
		b.ReportMetric(float64(written), "abproxy_records_written")
		b.ReportMetric(float64(dropped), "abproxy_records_dropped")
		var dbMiB float64
		if fi, err := os.Stat(abp.db); err == nil {
			dbMiB = float64(fi.Size()) / (1 << 20)
		}
		// one line: testing shows only 9 lines of a benchmark's log
		b.Logf("abproxy %s; requests answered by abproxy: %d; redials direct/nginx/abproxy: %d/%d/%d; abproxy.db %.1f MiB", recLine, answered,
			targets[0].redials.Load(), targets[1].redials.Load(), targets[2].redials.Load(), dbMiB)
		if written != answered || dropped != 0 || failed != 0 {
			b.Errorf("abproxy did not record every request: %q, answered %d", recLine, answered)
		}
	}

	var all []*ovhLevelResult
	for i, lv := range levels {
		var res *ovhLevelResult
		b.Run(fmt.Sprintf("streams=%d", lv.streams), func(b *testing.B) {
			if res == nil { // b.N > 1 reruns report the same measurement
				q0, n0 := ovhQueueTime(base)
				res = ovhRunLevel(b, lv, targets, simProc, truth, step(lv.streams))
				res.machine = env.String()
				q1, n1 := ovhQueueTime(base)
				if n1 > n0 {
					res.queueMS = (q1 - q0) / (n1 - n0) * 1000
				}
			}
			res.report(b)
			if i == len(levels)-1 {
				checkRecorder(b)
			}
		})
		if res != nil {
			if len(all) == 0 { // later levels count memory above this one's peak
				for _, t := range targets {
					t.baseRSS, t.baseStreams = res.stats[t.name].peakRSS, lv.streams
				}
			}
			all = append(all, res)
		}
	}
	checkRecorder(b)

	if out := os.Getenv("ABPROXY_OVERHEAD_OUT"); out != "" && len(all) > 0 {
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "machine: %s\n\n", env.String())
		for _, r := range all {
			buf.WriteString(r.markdown())
			buf.WriteString("\n")
		}
		fmt.Fprintf(&buf, "abproxy %s; requests answered by abproxy: %d\n", recLine, targets[2].sent.Load())
		if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
			b.Error(err)
		}
	}
}

// ovhLevel is one concurrency level: streams workers each send perWorker
// requests back to back per round; rounds rounds per target.
type ovhLevel struct {
	streams, perWorker, rounds int
}

var ovhDefaultLevels = map[int]ovhLevel{
	1:    {1, 30, 4},
	16:   {16, 8, 4},
	200:  {200, 3, 4},
	1000: {1000, 2, 3},
}

// ovhTokens is the range of output lengths: ABPROXY_OVERHEAD_TOKENS=LO-HI,
// 64-256 unless set. Short outputs make TTFT-only runs many times quicker.
func ovhTokens(b *testing.B) (lo, hi int) {
	spec := os.Getenv("ABPROXY_OVERHEAD_TOKENS")
	if spec == "" {
		return 64, 256
	}
	a, z, ok := strings.Cut(spec, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(z)
	if !ok || err1 != nil || err2 != nil || lo < 1 || hi < lo {
		b.Fatalf("ABPROXY_OVERHEAD_TOKENS=%q: want LO-HI, such as 4-8", spec)
	}
	return lo, hi
}

// ovhPromptPad is the text put before the user message so that its body
// has about ABPROXY_OVERHEAD_PROMPT_BYTES bytes (genai-bench's default
// scenarios go up to 7,800 prompt tokens, some 30 KiB); empty by default.
var ovhPromptPad = sync.OnceValue(func() string {
	n, _ := strconv.Atoi(os.Getenv(ovhPromptBytesEnv))
	const line = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "
	return strings.Repeat(line, max(0, n/len(line)))
})

const ovhPromptBytesEnv = "ABPROXY_OVERHEAD_PROMPT_BYTES"

// ovhBodyBytes is the size of a request's JSON body.
func ovhBodyBytes() int {
	req := (&ovhTarget{}).request(8)
	_, body, _ := bytes.Cut(req, []byte("\r\n\r\n"))
	return len(body)
}

func ovhLevels(b *testing.B) []ovhLevel {
	spec := os.Getenv("ABPROXY_OVERHEAD_LEVELS")
	if spec == "" {
		spec = "1,16,200,1000"
	}
	scale := 1.0
	if s := os.Getenv("ABPROXY_OVERHEAD_SCALE"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			b.Fatalf("ABPROXY_OVERHEAD_SCALE=%q", s)
		}
		scale = v
	}
	if testing.Short() {
		scale *= 0.25
	}
	rounds := 0
	if s := os.Getenv("ABPROXY_OVERHEAD_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	var out []ovhLevel
	for _, f := range strings.Split(spec, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			b.Fatalf("ABPROXY_OVERHEAD_LEVELS: bad level %q", f)
		}
		lv, ok := ovhDefaultLevels[c]
		if !ok {
			lv = ovhLevel{c, max(1, 400/c), 3}
		}
		lv.perWorker = max(1, int(math.Round(float64(lv.perWorker)*scale)))
		if rounds > 0 {
			lv.rounds = rounds
		} else if testing.Short() {
			lv.rounds = 2
		}
		out = append(out, lv)
	}
	return out
}

// ovhTarget is one way to reach the sim: direct, nginx or abproxy.
type ovhTarget struct {
	name    string
	addr    string
	proc    *ovhProc // nil for direct
	conns   []*ovhConn
	idleRSS int64 // after one request, before any level
	// memory per stream is the RSS growth over the previous base (idle, or
	// the first level's peak) divided by the growth in streams
	baseRSS     int64
	baseStreams int
	sent        atomic.Int64 // requests answered with a status line, warm-ups included
	redials     atomic.Int64 // connections found closed and redialled
	seq         atomic.Int64
}

func (t *ovhTarget) connect(n int) error {
	for len(t.conns) < n {
		c, err := ovhDial(t.addr)
		if err != nil {
			return err
		}
		t.conns = append(t.conns, c)
	}
	return nil
}

func (t *ovhTarget) close() {
	for _, c := range t.conns {
		c.Close()
	}
	t.conns = nil
}

// request renders one streamed chat completion request.
func (t *ovhTarget) request(maxTokens int) []byte {
	body := fmt.Sprintf(`{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},`+
		`{"role":"user","content":"%sSummarise the benefits of continuous batching for LLM serving in a few paragraphs."}],`+
		`"max_tokens":%d,"ignore_eos":true,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`, ovhPromptPad(), maxTokens)
	return fmt.Appendf(nil, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nUser-Agent: ovh-bench\r\nContent-Type: application/json\r\n"+
		"Authorization: Bearer sk-bench\r\nX-Request-Id: ovh-%s-%d\r\nContent-Length: %d\r\n\r\n%s",
		t.addr, t.name, t.seq.Add(1), len(body), body)
}

// do sends one request on connection i, redialling once if the
// connection was closed while idle.
func (t *ovhTarget) do(i int, maxTokens int) (ovhResult, error) {
	res, err := t.conns[i].do(t.request(maxTokens))
	if res.answered {
		t.sent.Add(1)
	}
	if err != nil {
		t.redials.Add(1)
		t.conns[i].Close()
		c, derr := ovhDial(t.addr)
		if derr != nil {
			return res, fmt.Errorf("%v; redial: %v", err, derr)
		}
		t.conns[i] = c
	}
	return res, err
}

// warm sends one 1-token request on every connection (in parallel) so that
// client connections, the proxy's upstream pool and the sim are all warm
// before a measured round; a connection found closed is redialled.
func (t *ovhTarget) warm() error {
	var wg sync.WaitGroup
	errs := make([]error, len(t.conns))
	for i := range t.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; attempt < 2; attempt++ {
				if _, errs[i] = t.do(i, 1); errs[i] == nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr(errs)
}

func firstErr(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// ovhTruth collects the sim's truth lines (received, first content written,
// last byte written, per X-Request-Id).
type ovhTruth struct {
	mu  sync.Mutex
	buf bytes.Buffer
	off int
	m   map[string]sim.TruthRecord
}

func (t *ovhTruth) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.Write(p)
}

// lookup parses lines received so far and returns the record for id.
func (t *ovhTruth) lookup(id string) (sim.TruthRecord, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]sim.TruthRecord{}
	}
	if r, ok := t.m[id]; ok {
		return r, true
	}
	data := t.buf.Bytes()[t.off:]
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		var r sim.TruthRecord
		if json.Unmarshal(data[:i], &r) == nil {
			t.m[r.RequestID] = r
		}
		data = data[i+1:]
		t.off += i + 1
	}
	r, ok := t.m[id]
	return r, ok
}

// ovhStats accumulates one target's measurements over a level's rounds.
type ovhStats struct {
	ttft, e2e       []float64 // client-measured, ms
	hopTTFT, hopE2E []float64 // time spent outside the sim, ms (see report)
	simTTFT, simE2E []float64 // the sim's own received -> first content / last byte written, ms
	hopUp, hopDown  []float64 // client send -> sim received; sim first content written -> client received, ms
	hopEnd          []float64 // sim last byte written -> client received the end, ms
	// hop times again by round, for intervals that resample whole rounds
	hopTTFTRounds, hopE2ERounds [][]float64
	rounds                      int
	chunks                      int64
	requests                    int
	errors                      int
	firstErr                    error
	wall                        time.Duration
	streamTime                  time.Duration // Σ E2E, for the mean number of streams in flight
	procTicks                   int64         // proxy CPU, clock ticks
	selfTicks                   int64         // the client's and the sim's CPU
	sysBusy                     int64         // all CPUs, busy jiffies
	sysTotal                    int64
	peakRSS                     int64
	missingTruth                int
	pending                     []ovhResult // awaiting the sim's truth lines
}

type ovhLevelResult struct {
	machine string
	queueMS float64 // the sim's mean admission wait (vllm:request_queue_time_seconds)
	lv      ovhLevel
	mem     map[string]float64 // KiB per stream
	peak    map[string]float64 // peak RSS, MiB
	step    time.Duration
	stats   map[string]*ovhStats
	load    [2]string // /proc/loadavg before and after
	started time.Time
}

// ovhTargetNames are the targets in table order: direct, nginx, abproxy
// and, with ABPROXY_OVERHEAD_BIN_B, abproxy-b, and with
// ABPROXY_OVERHEAD_RELAY, go-relay.
var ovhTargetNames []string

// ovhRelayEnv=1 adds the Go relay (ovhChildRelay) as a target.
const ovhRelayEnv = "ABPROXY_OVERHEAD_RELAY"

// ovhBinBEnv names a second abproxy binary, measured as ovhNameB.
const (
	ovhBinBEnv = "ABPROXY_OVERHEAD_BIN_B"
	// ovhTruthEnv names a file for the sim's truth lines.
	ovhTruthEnv = "ABPROXY_OVERHEAD_TRUTH"
	ovhNameB    = "abproxy-b"
)

// ovhProxies are the targets other than direct.
func ovhProxies() []string { return ovhTargetNames[1:] }

// ovhRunLevel measures one level, every target in turn each round. simProc
// is the sim's process (its CPU counts with the client's), nil when the sim
// runs in this one.
func ovhRunLevel(b *testing.B, lv ovhLevel, targets []*ovhTarget, simProc *ovhProc, truth *ovhTruth, step time.Duration) *ovhLevelResult {
	res := &ovhLevelResult{lv: lv, step: step, stats: map[string]*ovhStats{}, started: time.Now()}
	res.load[0] = ovhLoadavg()
	for _, t := range targets {
		res.stats[t.name] = &ovhStats{}
		if err := t.connect(lv.streams); err != nil {
			b.Fatalf("%s: connect %d: %v", t.name, lv.streams, err)
		}
	}
	// Stagger the workers' first requests over up to a second (at most one
	// mean request duration), as a load generator ramping up would.
	lo, hi := ovhTokens(b)
	meanE2E := time.Duration((lo+hi)/2) * step
	stagger := min(time.Second, meanE2E)
	if lv.streams == 1 {
		stagger = 0
	}
	for round := 0; round < lv.rounds; round++ {
		// The same output lengths for every target in this round.
		rng := rand.New(rand.NewPCG(uint64(lv.streams), uint64(round)))
		tokens := make([][]int, lv.streams)
		for w := range tokens {
			tokens[w] = make([]int, lv.perWorker)
			for i := range tokens[w] {
				tokens[w][i] = lo + rng.IntN(hi-lo+1)
			}
		}
		for _, t := range ovhRoundOrder(targets, round) {
			ovhRound(b, t, simProc, res.stats[t.name], tokens, stagger)
		}
	}
	time.Sleep(300 * time.Millisecond) // the sim flushes truth every 200 ms
	res.mem, res.peak = map[string]float64{}, map[string]float64{}
	for _, t := range targets {
		st := res.stats[t.name]
		st.fillHops(truth)
		if t.proc != nil {
			res.peak[t.name] = float64(st.peakRSS) / (1 << 20)
			res.mem[t.name] = float64(st.peakRSS-t.baseRSS) / 1024 / float64(lv.streams-t.baseStreams)
		}
	}
	res.load[1] = ovhLoadavg()
	return res
}

// ovhRoundOrder is the order of the targets in a round: rotated by one
// each round, so that each target takes every place, and backwards in odd
// rounds, so that each target also follows a different one. With the
// cycle always forwards, abproxy always ran right after nginx and
// abproxy-b right after abproxy: an A/A run of one binary at 1,000
// streams put abproxy-b 0.38 ms ahead in TTFT p50 with an interval that
// excluded zero.
func ovhRoundOrder[T any](targets []T, round int) []T {
	n := len(targets)
	order := make([]T, n)
	for k := range order {
		if round%2 == 0 {
			order[k] = targets[(k+round)%n]
		} else {
			order[k] = targets[(n-1-k+round)%n]
		}
	}
	return order
}

// ovhRound runs one measured round against one target.
func ovhRound(b *testing.B, t *ovhTarget, simProc *ovhProc, st *ovhStats, tokens [][]int, stagger time.Duration) {
	if err := t.warm(); err != nil {
		b.Fatalf("%s: warm-up: %v", t.name, err)
	}
	round := st.rounds
	st.rounds++
	n := len(tokens)
	results := make([][]ovhResult, n)
	errs := make([]error, n)
	// sample RSS while the round runs
	stopRSS := make(chan struct{})
	rssDone := make(chan int64)
	go func() {
		var peak int64
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, t.proc.rss())
			select {
			case <-tick.C:
			case <-stopRSS:
				rssDone <- peak
				return
			}
		}
	}()
	p0, s0 := t.proc.cpuTicks(), ovhCPUTicks(os.Getpid())+simProc.cpuTicks()
	b0, tot0 := ovhSystemTicks()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if stagger > 0 {
				time.Sleep(time.Until(start.Add(stagger * time.Duration(w) / time.Duration(n))))
			}
			results[w] = make([]ovhResult, 0, len(tokens[w]))
			for _, mt := range tokens[w] {
				r, err := t.do(w, mt)
				if err != nil {
					errs[w] = err
					continue
				}
				results[w] = append(results[w], r)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	p1, s1 := t.proc.cpuTicks(), ovhCPUTicks(os.Getpid())+simProc.cpuTicks()
	b1, tot1 := ovhSystemTicks()
	close(stopRSS)
	st.peakRSS = max(st.peakRSS, <-rssDone)
	st.wall += wall
	st.procTicks += p1 - p0
	st.selfTicks += s1 - s0
	st.sysBusy += b1 - b0
	st.sysTotal += tot1 - tot0
	for w, rs := range results {
		if errs[w] != nil {
			st.errors += len(tokens[w]) - len(rs)
			if st.firstErr == nil {
				st.firstErr = errs[w]
			}
		}
		for _, r := range rs {
			st.requests++
			st.chunks += int64(r.chunks)
			st.ttft = append(st.ttft, float64(r.firstNS-r.sendNS)/1e6)
			st.e2e = append(st.e2e, float64(r.endNS-r.sendNS)/1e6)
			st.streamTime += time.Duration(r.endNS - r.sendNS)
			r.round = round
			st.pending = append(st.pending, r)
		}
	}
}

// fillHops joins the client's times with the sim's truth. A request's hop
// time is everything on its path that is not the sim's own work: from the
// client's send to the sim's receive, plus from the sim's write of the
// first content chunk (resp. last byte) to the client's receive of it. It
// does not contain the sim's batching delay, so it compares targets with
// far less noise than TTFT itself.
func (st *ovhStats) fillHops(truth *ovhTruth) {
	for _, r := range st.pending {
		tr, ok := truth.lookup(r.id)
		if !ok || tr.FirstContentNS == 0 {
			st.missingTruth++
			continue
		}
		up := tr.ReceivedNS - r.sendNS
		st.hopTTFT = append(st.hopTTFT, float64(up+r.firstNS-tr.FirstContentNS)/1e6)
		st.hopE2E = append(st.hopE2E, float64(up+r.endNS-tr.EndNS)/1e6)
		st.simTTFT = append(st.simTTFT, float64(tr.FirstContentNS-tr.ReceivedNS)/1e6)
		st.hopUp = append(st.hopUp, float64(up)/1e6)
		st.hopDown = append(st.hopDown, float64(r.firstNS-tr.FirstContentNS)/1e6)
		st.hopEnd = append(st.hopEnd, float64(r.endNS-tr.EndNS)/1e6)
		st.simE2E = append(st.simE2E, float64(tr.EndNS-tr.ReceivedNS)/1e6)
		for len(st.hopTTFTRounds) <= r.round {
			st.hopTTFTRounds, st.hopE2ERounds = append(st.hopTTFTRounds, nil), append(st.hopE2ERounds, nil)
		}
		st.hopTTFTRounds[r.round] = append(st.hopTTFTRounds[r.round], st.hopTTFT[len(st.hopTTFT)-1])
		st.hopE2ERounds[r.round] = append(st.hopE2ERounds[r.round], st.hopE2E[len(st.hopE2E)-1])
	}
	st.pending = nil
}

// ovhPct is the p-th percentile (0–100) of unsorted xs, by the project's one definition.
func ovhPct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return stats.Percentile(s, p)
}

func (st *ovhStats) chunksPerSec() float64 { return float64(st.chunks) / st.wall.Seconds() }

// cpuPer1k is CPU ms per 1,000 content chunks delivered.
func cpuPer1k(ticks, chunks int64) float64 {
	return float64(ticks) * (1000 / ovhClockTicks) / (float64(chunks) / 1000)
}

const ovhClockTicks = 100 // USER_HZ; Linux reports /proc times in 1/100 s

func (r *ovhLevelResult) added(name string, f func(*ovhStats) []float64, p float64) float64 {
	return ovhPct(f(r.stats[name]), p) - ovhPct(f(r.stats["direct"]), p)
}

func ttftOf(s *ovhStats) []float64    { return s.ttft }
func e2eOf(s *ovhStats) []float64     { return s.e2e }
func hopTTFTOf(s *ovhStats) []float64 { return s.hopTTFT }
func hopE2EOf(s *ovhStats) []float64  { return s.hopE2E }

func (r *ovhLevelResult) report(b *testing.B) {
	b.ReportMetric(0, "ns/op")
	for _, name := range ovhProxies() {
		st := r.stats[name]
		b.ReportMetric(r.added(name, ttftOf, 50), name+"_ttft_p50_added_ms")
		b.ReportMetric(r.added(name, ttftOf, 99), name+"_ttft_p99_added_ms")
		b.ReportMetric(r.added(name, e2eOf, 50), name+"_e2e_p50_added_ms")
		b.ReportMetric(r.added(name, e2eOf, 99), name+"_e2e_p99_added_ms")
		b.ReportMetric(r.added(name, hopTTFTOf, 50), name+"_hop_ttft_p50_added_ms")
		b.ReportMetric(cpuPer1k(st.procTicks, st.chunks), name+"_cpu_per_1k_chunks_ms")
		b.ReportMetric(r.mem[name], name+"_kib_per_stream")
	}
	b.ReportMetric(r.stats["abproxy"].chunksPerSec(), "abproxy_chunks/s")
	for _, line := range strings.Split(strings.TrimSpace(r.table()), "\n") {
		b.Log(line)
	}
	for _, name := range ovhTargetNames {
		st := r.stats[name]
		if st.errors > 0 {
			b.Errorf("%s: %d of %d requests failed, first: %v", name, st.errors, st.errors+st.requests, st.firstErr)
		}
	}
}

// table renders the level's figures for b.Log.
func (r *ovhLevelResult) table() string {
	var sb strings.Builder
	// testing keeps at most 9 lines of a benchmark's log: 8 here, 1 for
	// the recorder check after the last level (with abproxy-b, 9 here:
	// ABPROXY_OVERHEAD_OUT has everything)
	fmt.Fprintf(&sb, "streams=%d: %d rounds x %d requests/stream per target, sim step %.2f ms, sim admission wait mean %.2f ms; loadavg before %s, after %s; machine %s\n",
		r.lv.streams, r.lv.rounds, r.lv.perWorker, float64(r.step)/1e6, r.queueMS, r.load[0], r.load[1], r.machine)
	fmt.Fprintf(&sb, "%-9s %6s %9s %9s %9s %9s %8s %8s %8s %8s %9s %8s %8s %8s %7s %7s\n",
		"target", "reqs", "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "+ttft50", "+ttft99", "+e2e50", "+e2e99",
		"chunks/s", "hop50", "hop99", "cpu/1k", "KiB/st", "other%")
	for _, name := range ovhTargetNames {
		st := r.stats[name]
		fmt.Fprintf(&sb, "%-9s %6d %9.3f %9.3f %9.1f %9.1f %8.3f %8.3f %8.2f %8.2f %9.0f %8.3f %8.3f %8.1f %7.1f %7.0f\n",
			name, st.requests, ovhPct(st.ttft, 50), ovhPct(st.ttft, 99), ovhPct(st.e2e, 50), ovhPct(st.e2e, 99),
			r.added(name, ttftOf, 50), r.added(name, ttftOf, 99), r.added(name, e2eOf, 50), r.added(name, e2eOf, 99),
			st.chunksPerSec(), ovhPct(st.hopTTFT, 50), ovhPct(st.hopTTFT, 99),
			cpuPer1k(st.procTicks, st.chunks), r.mem[name], st.otherPct())
	}
	// the hop split into its ways, so that a gap can be placed: the
	// request's way up, the first content chunk's way down, the end's way down
	sb.WriteString("hop p50/p99 in ms, E2E and its ways (request up; first chunk down; end down):")
	for _, name := range ovhTargetNames {
		st := r.stats[name]
		fmt.Fprintf(&sb, " %s E2E %.3f/%.3f (%.3f/%.3f; %.3f/%.3f; %.3f/%.3f)", name,
			ovhPct(st.hopE2E, 50), ovhPct(st.hopE2E, 99), ovhPct(st.hopUp, 50), ovhPct(st.hopUp, 99), ovhPct(st.hopDown, 50), ovhPct(st.hopDown, 99),
			ovhPct(st.hopEnd, 50), ovhPct(st.hopEnd, 99))
		if name != ovhTargetNames[len(ovhTargetNames)-1] {
			sb.WriteString(",")
		}
	}
	sb.WriteString("\n")
	sb.WriteString(r.versus() + "\n")
	fmt.Fprintf(&sb, "sim-internal TTFT p50 %s ms, E2E p50 %s ms; client+sim process CPU per 1k chunks %s ms; mean streams in flight %s; truth misses %s (%s)\n",
		r.each("%.3f", func(st *ovhStats) any { return ovhPct(st.simTTFT, 50) }),
		r.each("%.1f", func(st *ovhStats) any { return ovhPct(st.simE2E, 50) }),
		r.each("%.1f", func(st *ovhStats) any { return cpuPer1k(st.selfTicks, st.chunks) }),
		r.each("%.0f", func(st *ovhStats) any { return st.inFlight() }),
		r.each("%d", func(st *ovhStats) any { return st.missingTruth }),
		strings.Join(ovhTargetNames, " / "))
	return sb.String()
}

// each formats f of every target's stats, in table order, joined by " / ".
func (r *ovhLevelResult) each(format string, f func(*ovhStats) any) string {
	parts := make([]string, len(ovhTargetNames))
	for i, name := range ovhTargetNames {
		parts[i] = fmt.Sprintf(format, f(r.stats[name]))
	}
	return strings.Join(parts, " / ")
}

// versus is abproxy's hop percentiles minus nginx's, each with the 95 %
// interval from resampling whole rounds (both targets' samples of a round
// together): requests within a round share its conditions, so resampling
// single requests would give intervals far too narrow. With the default
// 3–4 rounds the interval is coarse; ABPROXY_OVERHEAD_ROUNDS sharpens it.
// With abproxy-b, the line goes on with abproxy-b minus abproxy.
func (r *ovhLevelResult) versus() string {
	s := fmt.Sprintf("abproxy minus nginx, hop ms (95%% interval from resampling the %d rounds): %s",
		len(r.stats["nginx"].hopTTFTRounds), r.minus("nginx", "abproxy"))
	if _, ok := r.stats[ovhNameB]; ok {
		s += "; " + ovhNameB + " minus abproxy: " + r.minus("abproxy", ovhNameB)
	}
	if _, ok := r.stats[ovhRelayName]; ok {
		s += "; abproxy minus " + ovhRelayName + ": " + r.minus(ovhRelayName, "abproxy") +
			"; " + ovhRelayName + " minus nginx: " + r.minus("nginx", ovhRelayName)
	}
	return s
}

// minus is y's hop TTFT and E2E p50 and p99 minus x's, with intervals.
func (r *ovhLevelResult) minus(x, y string) string {
	xs, ys := r.stats[x], r.stats[y]
	diff := func(rounds func(*ovhStats) [][]float64, p float64) string {
		f := func(a, b []float64) float64 { return ovhPct(b, p) - ovhPct(a, p) }
		xr, yr := rounds(xs), rounds(ys)
		lo, hi := roundBootstrap(xr, yr, f)
		return fmt.Sprintf("%+.3f [%+.3f, %+.3f]", f(slices.Concat(xr...), slices.Concat(yr...)), lo, hi)
	}
	ttft := func(s *ovhStats) [][]float64 { return s.hopTTFTRounds }
	e2e := func(s *ovhStats) [][]float64 { return s.hopE2ERounds }
	return fmt.Sprintf("TTFT p50 %s, p99 %s; E2E p50 %s, p99 %s", diff(ttft, 50), diff(ttft, 99), diff(e2e, 50), diff(e2e, 99))
}

func (st *ovhStats) inFlight() float64 { return st.streamTime.Seconds() / st.wall.Seconds() }

// otherPct is the CPU used by everything but this benchmark and the proxy
// under test, as a percentage of one core, during the target's rounds:
// other engineers' builds and tests on a shared machine.
func (st *ovhStats) otherPct() float64 {
	if st.sysTotal == 0 {
		return math.NaN()
	}
	other := max(0, st.sysBusy-st.selfTicks-st.procTicks) // tick rounding can make it negative
	return 100 * float64(other) / float64(st.sysTotal) * float64(runtime.NumCPU())
}

// markdown renders the level as Markdown tables for docs/benchmarks.md.
func (r *ovhLevelResult) markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "#### %d concurrent streams\n\n", r.lv.streams)
	fmt.Fprintf(&sb, "%d rounds x %d requests per stream per target; sim step %.2f ms, mean admission wait %.2f ms; loadavg %s -> %s; started %s\n\n",
		r.lv.rounds, r.lv.perWorker, float64(r.step)/1e6, r.queueMS, r.load[0], r.load[1], r.started.Format(time.RFC3339))
	sb.WriteString("| target | requests | TTFT p50 | TTFT p99 | E2E p50 | E2E p99 | added TTFT p50 | added TTFT p99 | added E2E p50 | added E2E p99 | hop TTFT p50 | hop TTFT p99 | hop E2E p50 | hop E2E p99 | chunks/s | CPU ms / 1k chunks | KiB / stream | other load (% of a core) |\n")
	sb.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, name := range ovhTargetNames {
		st := r.stats[name]
		cpu, kib := "—", "—"
		if name != "direct" {
			cpu = fmt.Sprintf("%.1f", cpuPer1k(st.procTicks, st.chunks))
			kib = fmt.Sprintf("%.1f (peak %.1f MiB)", r.mem[name], r.peak[name])
		}
		add := func(f func(*ovhStats) []float64, p float64, prec int) string {
			if name == "direct" {
				return "—"
			}
			return fmt.Sprintf("%+.*f", prec, r.added(name, f, p))
		}
		fmt.Fprintf(&sb, "| %s | %d | %.3f | %.3f | %.1f | %.1f | %s | %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %.0f | %s | %s | %.0f |\n",
			name, st.requests, ovhPct(st.ttft, 50), ovhPct(st.ttft, 99), ovhPct(st.e2e, 50), ovhPct(st.e2e, 99),
			add(ttftOf, 50, 3), add(ttftOf, 99, 3), add(e2eOf, 50, 2), add(e2eOf, 99, 2),
			ovhPct(st.hopTTFT, 50), ovhPct(st.hopTTFT, 99), ovhPct(st.hopE2E, 50), ovhPct(st.hopE2E, 99),
			st.chunksPerSec(), cpu, kib, st.otherPct())
	}
	fmt.Fprintf(&sb, "\n%s\n", r.versus())
	fmt.Fprintf(&sb, "\nsim-internal TTFT p50 (%s): %s ms; client+sim process CPU ms per 1k chunks: %s; mean streams in flight: %s\n",
		strings.Join(ovhTargetNames, " / "),
		r.each("%.3f", func(st *ovhStats) any { return ovhPct(st.simTTFT, 50) }),
		r.each("%.1f", func(st *ovhStats) any { return cpuPer1k(st.selfTicks, st.chunks) }),
		r.each("%.0f", func(st *ovhStats) any { return st.inFlight() }))
	return sb.String()
}

// ovhQueueTime scrapes the sim's admission-wait histogram: sum (s) and
// count. Requests are admitted at the start of the next engine step, so
// with capacity to spare the mean wait is about half a step.
func ovhQueueTime(base string) (sum, count float64) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		name, _, _ := strings.Cut(f[0], "{")
		switch name {
		case "vllm:request_queue_time_seconds_sum":
			sum = v
		case "vllm:request_queue_time_seconds_count":
			count = v
		}
	}
	return sum, count
}

func ovhLoadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ovhEnv describes the machine.
type ovhEnv struct {
	sim   string // where the sim runs
	cpus  int
	model string
	mem   string
	kern  string
}

func (e *ovhEnv) describe() {
	e.cpus = runtime.NumCPU()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.model = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		e.mem = strings.Join(strings.Fields(l)[1:], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.kern = strings.TrimSpace(string(b))
	}
}

func (e ovhEnv) String() string {
	return fmt.Sprintf("%d CPUs (%s), MemTotal %s, Linux %s, %s, GOMAXPROCS %d, loadavg %s, sim %s",
		e.cpus, e.model, e.mem, e.kern, runtime.Version(), runtime.GOMAXPROCS(0), ovhLoadavg(), e.sim)
}

// TestOverheadRoundOrder: over two rounds every target takes two places
// and follows two different targets, so no target always runs right after
// the same one.
func TestOverheadRoundOrder(t *testing.T) {
	targets := []string{"direct", "nginx", "abproxy", "abproxy-b", "go-relay"}
	for _, n := range []int{3, 4, 5} {
		prev := map[string]map[string]bool{}
		for round := 0; round < 4; round++ {
			order := ovhRoundOrder(targets[:n], round)
			seen := map[string]bool{}
			for k, name := range order {
				seen[name] = true
				if k > 0 {
					if prev[name] == nil {
						prev[name] = map[string]bool{}
					}
					prev[name][order[k-1]] = true
				}
			}
			if len(seen) != n {
				t.Fatalf("round %d runs %v: not every target once", round, order)
			}
		}
		for _, name := range targets[:n] {
			if len(prev[name]) < 2 {
				t.Errorf("%d targets: %s always follows %v", n, name, prev[name])
			}
		}
	}
}
