package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abproxy/abproxy/internal/randx"
	"github.com/abproxy/abproxy/recorder"
)

// RunSummary is one finished (or interrupted) run: one arm of one step.
type RunSummary struct {
	Name        string  `json:"name"`                   // run name (runs.name)
	Backend     string  `json:"backend"`                // backend the arm sent to
	Model       string  `json:"model"`                  // model in the request bodies
	Scenario    string  `json:"scenario"`               // canonical scenario
	Concurrency int     `json:"concurrency,omitempty"`  // closed-loop concurrency, or the open-loop cap
	RequestRate float64 `json:"request_rate,omitempty"` // open loop: requests per second
	Status      string  `json:"status"`                 // complete | incomplete
	StoppedBy   string  `json:"stopped_by"`             // max_requests | max_time | interrupted
	Stats       Stats   `json:"results"`                // client-side results of the measured requests
	// Proxy is how the client times joined the proxy's rows; nil without
	// a proxy (or a database).
	Proxy     *ProxyMatch `json:"proxy,omitempty"`
	ClientCPU CPUStats    `json:"client_cpu"` // bench's own CPU during the step
	// ScheduleLag is how late open-loop requests left after their
	// arrival time (waiting for --max-concurrency included), in ms.
	ScheduleLag *Dist `json:"schedule_lag_ms,omitempty"`
	StartedNS   int64 `json:"-"` // first measured request's start, Unix ns
	EndedNS     int64 `json:"-"` // last measured request's end, Unix ns
}

// CPUStats is bench's own CPU use during a step, all arms together.
type CPUStats struct {
	Seconds           float64 `json:"seconds"`            // user+system CPU of the bench process
	Chunks            int64   `json:"chunks"`             // content events read, warmup included
	MsPer1000Chunks   float64 `json:"ms_per_1000_chunks"` // CPU ms per 1,000 content events
	SharedByArms      int     `json:"shared_by_arms"`     // arms that ran in the step
	ChunksPerSecond   float64 `json:"chunks_per_s"`       // content events per wall second
	WallSeconds       float64 `json:"wall_seconds"`       // the step's duration
	GeneratorStalls   int64   `json:"generator_stalls"`   // a worker waited for its prompt: bench was the bottleneck
	RecorderDropped   int64   `json:"recorder_dropped,omitempty"`
	PromptShapeFailed int64   `json:"prompt_shape_failed,omitempty"` // prompts not cut exactly (never seen)
}

// Run runs every step (scenario × load level) in order and returns the
// runs' summaries. On ctx cancellation it stops sending, aborts the
// requests in flight, records what it has, marks the current runs
// incomplete and returns ErrInterrupted.
func (b *Bench) Run(ctx context.Context) ([]RunSummary, error) {
	steps := b.steps()
	var all []RunSummary
	b.printHeader(len(steps))
	if b.scrape != nil {
		sctx, stop := context.WithCancel(ctx)
		looped := make(chan struct{})
		go func() { defer close(looped); b.scrapeLoop(sctx) }()
		// a scrape in flight must land before Close shuts the recorder
		defer func() { stop(); <-looped }()
	}
	for i, st := range steps {
		if ctx.Err() != nil {
			return all, ErrInterrupted
		}
		sums, err := b.runStep(ctx, i, len(steps), st)
		all = append(all, sums...)
		if err != nil {
			return all, err
		}
		if ctx.Err() != nil {
			b.printTable(all)
			return all, ErrInterrupted
		}
	}
	b.printTable(all)
	return all, nil
}

// armRun is one arm running one step.
type armRun struct {
	b       *Bench
	arm     *arm
	st      step
	name    string // run name
	warm    string // warmup run name
	runID   int64
	planner *planner
	total   int         // warmup + measured requests; 0 is unbounded
	jobs    <-chan *job // planned requests, in order

	ctx       context.Context // the step's: cancelled on interruption
	stopCh    chan struct{}
	stopOnce  sync.Once
	stoppedBy atomic.Value // string

	startNS    atomic.Int64 // first measured request sent
	lastEndNS  atomic.Int64
	deadline   *time.Timer
	done       atomic.Int64 // measured requests finished
	failed     atomic.Int64
	chunkCount atomic.Int64 // content events, warmup included
	chunksAt   atomic.Int64 // chunks when the measured phase started
	stalls     atomic.Int64
	shapeFails atomic.Int64
	dropped    atomic.Int64

	mu      sync.Mutex
	ttfts   []float64 // measured requests' TTFT as they arrive, ms, for the live p50
	results []Result
}

func (a *armRun) halt(why string) {
	a.stopOnce.Do(func() {
		a.stoppedBy.Store(why)
		close(a.stopCh)
	})
}

func (a *armRun) stopped() bool {
	select {
	case <-a.stopCh:
		return true
	default:
	}
	if a.ctx.Err() != nil {
		a.halt("interrupted") // before the AfterFunc gets to it
		return true
	}
	return false
}

func (b *Bench) runStep(ctx context.Context, idx, n int, st step) ([]RunSummary, error) {
	total := 0
	if b.cfg.MaxRequests > 0 {
		total = b.cfg.Warmup + b.cfg.MaxRequests
	}
	var runs []*armRun
	for _, a := range b.arms {
		ar := &armRun{b: b, arm: a, st: st, name: b.runName(st, a), total: total, ctx: ctx, stopCh: make(chan struct{})}
		ar.warm = ar.name + warmupSuffix
		ar.planner = newPlanner(b.shaper, st.sc, b.cfg.Seed, st.key(), a.body, b.store != nil && !b.proxy)
		if b.store != nil {
			meta := b.meta(ar, nil)
			id, err := b.store.createRun(recorder.Run{Name: ar.name, Kind: recorder.KindBench, Backend: a.backend,
				Scenario: st.sc.String(), Concurrency: st.conc, RequestRate: st.rate, Meta: mustJSON(meta)})
			if err != nil {
				return nil, err
			}
			ar.runID = id
			if b.cfg.Warmup > 0 {
				if _, err := b.store.createRun(recorder.Run{Name: ar.warm, Kind: recorder.KindBench, Backend: a.backend,
					Scenario: st.sc.String(), Concurrency: st.conc, RequestRate: st.rate, Meta: mustJSON(b.warmMeta(ar, "running"))}); err != nil {
					return nil, err
				}
			}
		}
		runs = append(runs, ar)
	}

	// Plan the first requests of every arm before the clock starts, so the
	// first wave does not wait on prompt shaping.
	buffer := 1024
	if st.rate == 0 {
		buffer = min(max(2*st.conc, 64), 1<<16)
	}
	if total > 0 {
		buffer = min(buffer, total)
	}
	for _, ar := range runs {
		ar.jobs = ar.generate(buffer)
	}
	for _, ar := range runs {
		for deadline := time.Now().Add(30 * time.Second); len(ar.jobs) < cap(ar.jobs) && time.Now().Before(deadline) && ctx.Err() == nil; {
			time.Sleep(time.Millisecond)
		}
	}

	b.scrapeNow(ctx) // opens the runs' counter increases (before warmup, if any)
	cpu0, wall0 := cpuTime(), time.Now()
	prog := b.startProgress(idx, n, st, runs)
	t0 := time.Now().Add(5 * time.Millisecond) // open loop: both arms share the arrival clock
	var wg sync.WaitGroup
	for _, ar := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { ar.halt("interrupted") })
			defer stop()
			if st.rate > 0 {
				ar.openLoop(ctx, t0)
			} else {
				ar.closedLoop(ctx)
			}
			ar.halt("max_requests")
			if ar.deadline != nil {
				ar.deadline.Stop()
			}
		}()
	}
	wg.Wait()
	prog.stop()
	cpu := cpuTime() - cpu0
	wall := time.Since(wall0)
	b.scrapeNow(ctx) // closes them: every request of the step has ended

	var chunks, stalls, fails int64
	for _, ar := range runs {
		chunks += ar.chunkCount.Load()
		stalls += ar.stalls.Load()
		fails += ar.shapeFails.Load()
	}
	cs := CPUStats{Seconds: cpu.Seconds(), Chunks: chunks, SharedByArms: len(runs), WallSeconds: wall.Seconds(),
		GeneratorStalls: stalls, PromptShapeFailed: fails}
	if chunks > 0 {
		cs.MsPer1000Chunks = cpu.Seconds() * 1e3 / float64(chunks) * 1000
		cs.ChunksPerSecond = float64(chunks) / wall.Seconds()
	}

	if b.store != nil && !b.proxy {
		if err := b.store.flush(30 * time.Second); err != nil {
			fmt.Fprintf(b.prog, "warning: not every request row was written to %s: %v\n", b.cfg.DB, err)
		}
	}
	var sums []RunSummary
	for _, ar := range runs {
		sum := ar.summary(cs)
		if b.store != nil && b.proxy {
			mctx, cancel := context.WithTimeout(context.Background(), b.cfg.MatchTimeout+10*time.Second)
			m, err := b.store.match(mctx, ar.runID, ar.results, b.cfg.MatchTimeout)
			cancel()
			if err != nil {
				fmt.Fprintf(b.prog, "warning: matching client times to the proxy's records of %s failed: %v\n", ar.name, err)
			} else {
				sum.Proxy = &m
				if m.Unmatched > 0 {
					fmt.Fprintf(b.prog, "warning: %d of %d requests of %s have no record from the proxy in %s after %s\n",
						m.Unmatched, m.Matched+m.Unmatched, ar.name, b.cfg.DB, b.cfg.MatchTimeout)
				}
			}
		}
		if b.store != nil {
			sum.ClientCPU.RecorderDropped = ar.dropped.Load()
			if err := b.store.finishRun(ar.name, sum.StartedNS, sum.EndedNS, b.meta(ar, &sum)); err != nil {
				return sums, err
			}
			if b.cfg.Warmup > 0 {
				if err := b.store.finishRun(ar.warm, 0, sum.EndedNS, b.warmMeta(ar, sum.Status)); err != nil {
					return sums, err
				}
			}
		}
		b.printSummary(&sum)
		sums = append(sums, sum)
	}
	return sums, nil
}

func (a *armRun) summary(cs CPUStats) RunSummary {
	why, _ := a.stoppedBy.Load().(string)
	s := RunSummary{Name: a.name, Backend: a.arm.backend, Model: a.arm.model, Scenario: a.st.sc.String(),
		Concurrency: a.st.conc, RequestRate: a.st.rate, StoppedBy: why, Status: "complete", ClientCPU: cs}
	if why == "interrupted" {
		s.Status = "incomplete"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s.Stats = summarize(a.results)
	var lags []float64
	for i := range a.results {
		r := &a.results[i]
		if r.Warmup {
			continue
		}
		if r.ScheduledNS != 0 {
			lags = append(lags, ms(r.StartNS-r.ScheduledNS))
		}
		if s.StartedNS == 0 || (r.StartNS != 0 && r.StartNS < s.StartedNS) {
			s.StartedNS = r.StartNS
		}
		s.EndedNS = max(s.EndedNS, r.EndNS)
	}
	if len(lags) > 0 {
		d := newDist(lags)
		s.ScheduleLag = &d
	}
	if s.EndedNS == 0 {
		s.EndedNS = time.Now().UnixNano()
	}
	return s
}

// generate plans requests in order into a channel, ahead of the workers,
// so shaping a prompt is never on the timed path. It stops at a.total or
// when the run stops.
func (a *armRun) generate(buffer int) <-chan *job {
	jobs := make(chan *job, buffer)
	go func() {
		defer close(jobs)
		for i := 0; a.total == 0 || i < a.total; i++ {
			j := a.planner.job(i, i < a.b.cfg.Warmup)
			if !j.exact && a.b.shaper.Exact() && a.st.sc.Kind != Dataset {
				a.shapeFails.Add(1)
			}
			select {
			case jobs <- j:
			case <-a.stopCh:
				return
			}
		}
	}()
	return jobs
}

// take receives the next job, counting a stall when none was ready.
func (a *armRun) take(jobs <-chan *job) (*job, bool) {
	select {
	case j, ok := <-jobs:
		return j, ok
	default:
	}
	a.stalls.Add(1)
	select {
	case j, ok := <-jobs:
		return j, ok
	case <-a.stopCh:
		return nil, false
	}
}

// closedLoop is genai-bench's load: conc workers, each sending its next
// request as soon as the previous one ended.
func (a *armRun) closedLoop(ctx context.Context) {
	jobs := a.jobs
	var wg sync.WaitGroup
	for range a.st.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := sessions.Get().(*session)
			defer sessions.Put(s)
			for !a.stopped() {
				j, ok := a.take(jobs)
				if !ok || a.stopped() {
					return
				}
				a.send(ctx, s, j, 0)
			}
		}()
	}
	wg.Wait()
}

// openLoop releases requests at the arrival times of a gamma process of
// rate st.rate and shape Burstiness (Poisson at 1), as vLLM's benchmark
// does, optionally capped at st.conc in flight: a request over the cap
// waits for a slot and its start is when it is sent.
func (a *armRun) openLoop(ctx context.Context, t0 time.Time) {
	jobs := a.jobs
	arr := newArrivals(a.b.cfg.Seed, a.st.key(), a.st.rate, a.b.cfg.Burstiness)
	var sem chan struct{}
	if a.st.conc > 0 {
		sem = make(chan struct{}, a.st.conc)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wg sync.WaitGroup
	offset := 0.0
	for !a.stopped() {
		j, ok := a.take(jobs)
		if !ok {
			break
		}
		due := t0.Add(time.Duration(offset * float64(time.Second)))
		offset += arr.next()
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-a.stopCh:
			}
		}
		if a.stopped() {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sem != nil {
				select {
				case sem <- struct{}{}:
				case <-a.stopCh:
					return
				}
				defer func() { <-sem }()
				if a.stopped() {
					return
				}
			}
			s := sessions.Get().(*session)
			a.send(ctx, s, j, due.UnixNano())
			sessions.Put(s)
		}()
	}
	wg.Wait()
}

// send runs one request and keeps its result.
func (a *armRun) send(ctx context.Context, s *session, j *job, scheduled int64) {
	res := Result{
		Index: j.index, Warmup: j.warmup, ID: a.b.ids.Next(), Backend: a.arm.backend, ScheduledNS: scheduled,
		PlannedPrompt: j.planIn, PlannedOutput: j.planOut, Raised: j.raised, Exact: j.exact, PromptSHA256: j.promptSHA,
	}
	hint := j.planOut + 2
	if j.planOut <= 0 {
		hint = 256
	}
	res.ChunkNS = make([]int64, 0, min(hint, 1<<16))
	if !j.warmup && a.startNS.Load() == 0 {
		now := time.Now().UnixNano()
		if a.startNS.CompareAndSwap(0, now) {
			a.chunksAt.Store(a.chunkCount.Load())
			if d := a.b.cfg.MaxTime; d > 0 {
				a.deadline = time.AfterFunc(d, func() { a.halt("max_time") })
			}
		}
	}
	c := call{method: "POST", path: chatPath, body: j.body, id: res.ID, run: a.name, warmup: j.warmup}
	if j.warmup {
		c.run = a.warm
	}
	if a.b.proxy {
		c.backend = a.arm.backend
	}
	a.b.ep.exchange(ctx, s, &c, &res, a)
	a.collect(&res)
}

// collect files a result: the live counters, the database (without a
// proxy) and the run's result list.
func (a *armRun) collect(r *Result) {
	r.Chunks = len(r.ChunkNS) // the slice itself goes to the recorder
	if !r.Warmup {
		a.done.Add(1)
		if !r.OK() {
			a.failed.Add(1)
		}
	}
	if st := a.b.store; st != nil && !a.b.proxy {
		run := a.name
		if r.Warmup {
			run = a.warm
		}
		rec := r.record(run, chatPath, a.arm.model)
		if !st.rec.Submit(rec) {
			a.dropped.Add(1)
		}
	}
	r.ChunkNS = nil
	a.mu.Lock()
	a.results = append(a.results, *r)
	a.mu.Unlock()
	if f := a.b.opts.OnResult; f != nil {
		f(r)
	}
	if r.EndNS > a.lastEndNS.Load() {
		a.lastEndNS.Store(r.EndNS)
	}
}

func (a *armRun) chunks(n int64) { a.chunkCount.Add(n) }

func (a *armRun) firstToken(warmup bool, ttft float64) {
	if warmup {
		return
	}
	a.mu.Lock()
	a.ttfts = append(a.ttfts, ttft)
	a.mu.Unlock()
}

// arrivals draws inter-arrival times of a gamma process: shape k =
// burstiness and scale 1/(rate·k), so the mean is 1/rate and k = 1 is
// Poisson (exponential gaps).
type arrivals struct {
	r     *rand.Rand
	shape float64
	scale float64
}

func newArrivals(seed int64, key string, rate, burstiness float64) *arrivals {
	p := newPlanner(nil, Scenario{}, seed, key+"/arrivals", nil, false)
	return &arrivals{r: p.rng(0), shape: burstiness, scale: 1 / (rate * burstiness)}
}

// next returns the next gap in seconds.
func (a *arrivals) next() float64 { return randx.Gamma(a.r, a.shape) * a.scale }
