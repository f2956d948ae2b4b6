package sim

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// maxLag bounds how far the scheduler may run behind its virtual clock
// before it forgives the debt. Small lags (timer granularity, a busy CPU)
// are caught up by running steps back to back so the average step rate stays
// exact; a long stall (the machine was suspended, the CPU was saturated) is
// dropped rather than paid back as a burst of tokens.
const maxLag = 50 * time.Millisecond

// seq is one request inside the engine. The fields above the line are set
// before submission and never change; the scheduler goroutine alone owns the
// middle block; the atomics and notify are how it talks to the HTTP side.
type seq struct {
	promptTokens int
	maxTokens    int // reserved with the prompt in the KV budget
	target       int // tokens this request will generate (≤ maxTokens)
	finish       string
	received     time.Time
	// ---- scheduler-owned
	prefilled int
	generated int
	chunk     int // prefill tokens planned for the current step
	admitted  time.Time
	firstTok  time.Time
	lastTok   time.Time
	// ---- shared
	produced  atomic.Int64  // tokens generated so far, published per step
	cancelled atomic.Bool   // set by the HTTP side when the client is gone
	notify    chan struct{} // cap 1: "produced moved"; never blocks the scheduler
}

func (q *seq) reserve() int { return q.promptTokens + q.maxTokens }

// signal wakes the request's writer without ever blocking: a pending signal
// already means "look at produced again".
func (q *seq) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// engine is the continuous-batching scheduler: one goroutine runs steps,
// admitting waiting requests FIFO while the batch and KV budget have room.
type engine struct {
	prof    Profile
	speedup float64
	m       *metrics

	mu       sync.Mutex
	incoming []*seq // submitted since the last step; guarded by mu
	spare    []*seq // the other half of the incoming double buffer

	wake chan struct{} // cap 1; submit signals it so an idle scheduler wakes
	stop chan struct{}
	done chan struct{}

	// scheduler-owned
	waiting  []*seq
	running  []*seq
	reserved int // KV tokens reserved by running requests
	rng      *rand.Rand

	// published for /metrics (GaugeFunc reads them at scrape time)
	nRunning  atomic.Int64
	nWaiting  atomic.Int64
	nReserved atomic.Int64
	steps     atomic.Int64 // engine steps run; lets tests see the loop is idle
}

func newEngine(p Profile, speedup float64, seed int64, m *metrics) *engine {
	return &engine{
		prof:    p,
		speedup: speedup,
		m:       m,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		rng:     rand.New(rand.NewPCG(uint64(seed), 0x51c0ffee)),
	}
}

// submit hands a request to the scheduler. It never blocks on the
// scheduler's progress: the request is queued and the scheduler woken.
func (e *engine) submit(q *seq) {
	e.mu.Lock()
	e.incoming = append(e.incoming, q)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *engine) close() {
	close(e.stop)
	<-e.done
}

// run is the scheduler loop. Steps follow a virtual clock (deadline) so
// that timer overshoot does not accumulate: a step that wakes late is
// followed by a shorter sleep, or none.
func (e *engine) run() {
	defer close(e.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var deadline time.Time
	for {
		e.drainIncoming()
		e.reapCancelled()
		e.admit()
		e.publishGauges()
		if len(e.running) == 0 {
			// Idle: block until a request arrives; no busy loop.
			select {
			case <-e.wake:
			case <-e.stop:
				return
			}
			deadline = time.Time{}
			continue
		}
		prefill := e.planPrefill()
		dur := e.stepDuration(prefill)
		now := time.Now()
		if deadline.IsZero() || now.Sub(deadline) > maxLag {
			deadline = now
		}
		deadline = deadline.Add(dur)
		if d := deadline.Sub(now); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-e.stop:
				timer.Stop()
				return
			}
		} else {
			select {
			case <-e.stop:
				return
			default:
			}
		}
		e.completeStep(deadline)
	}
}

func (e *engine) drainIncoming() {
	e.mu.Lock()
	in := e.incoming
	e.incoming = e.spare[:0]
	e.mu.Unlock()
	e.waiting = append(e.waiting, in...)
	clear(in)
	e.spare = in[:0]
}

// reapCancelled drops requests whose client went away, freeing their batch
// slot and KV reservation before this step's admission.
func (e *engine) reapCancelled() {
	w := e.waiting[:0]
	for _, q := range e.waiting {
		if q.cancelled.Load() {
			e.m.aborted()
			continue
		}
		w = append(w, q)
	}
	clear(e.waiting[len(w):])
	e.waiting = w

	r := e.running[:0]
	for _, q := range e.running {
		if q.cancelled.Load() {
			e.reserved -= q.reserve()
			e.m.aborted()
			continue
		}
		r = append(r, q)
	}
	clear(e.running[len(r):])
	e.running = r
}

// admit moves waiting requests to the batch in arrival order while the batch
// and the KV budget have room. Strict FIFO: a large request at the head
// blocks smaller ones behind it, as in vLLM's FCFS policy.
func (e *engine) admit() {
	n := 0
	now := time.Now()
	for _, q := range e.waiting {
		if len(e.running) >= e.prof.MaxNumSeqs || e.reserved+q.reserve() > e.prof.KVCapacityTokens {
			break
		}
		e.reserved += q.reserve()
		q.admitted = now
		e.m.queueTime.Observe(now.Sub(q.received).Seconds())
		e.running = append(e.running, q)
		n++
	}
	if n > 0 {
		rest := copy(e.waiting, e.waiting[n:])
		clear(e.waiting[rest:])
		e.waiting = e.waiting[:rest]
	}
}

func (e *engine) publishGauges() {
	e.nRunning.Store(int64(len(e.running)))
	e.nWaiting.Store(int64(len(e.waiting)))
	e.nReserved.Store(int64(e.reserved))
}

// planPrefill assigns this step's prefill tokens to prefilling requests in
// admission order and returns their sum.
func (e *engine) planPrefill() int {
	budget := e.prof.PrefillChunkTokens
	whole := budget == 0
	if whole {
		budget = max(e.prof.MaxModelLen, 2048)
	}
	used := 0
	for _, q := range e.running {
		q.chunk = 0
		left := q.promptTokens - q.prefilled
		if left <= 0 || used >= budget {
			continue
		}
		if whole {
			// Without chunking a prompt is never split; the first one always
			// fits (MaxModelLen ≤ budget), later ones only if room is left.
			if used > 0 && used+left > budget {
				continue
			}
			q.chunk = left
		} else {
			q.chunk = min(left, budget-used)
		}
		used += q.chunk
	}
	return used
}

func (e *engine) stepDuration(prefillTokens int) time.Duration {
	d := float64(e.prof.StepBase) + float64(e.prof.StepPerSeq)*float64(len(e.running))
	if prefillTokens > 0 {
		d += float64(prefillTokens) / e.prof.PrefillTokensPerSec * float64(time.Second)
	}
	if j := e.prof.Jitter; j > 0 {
		d *= 1 + j*(2*e.rng.Float64()-1)
	}
	return time.Duration(d / e.speedup)
}

// completeStep ends a step at virtual time t: requests whose prefill
// finished emit their first token, decoding requests emit one token each,
// and finished requests leave the batch and free their KV reservation.
func (e *engine) completeStep(t time.Time) {
	e.steps.Add(1)
	gen := 0
	r := e.running[:0]
	for _, q := range e.running {
		if q.cancelled.Load() {
			e.reserved -= q.reserve()
			e.m.aborted()
			continue
		}
		// While catching up, the virtual step end can precede this request's
		// admission (a wall time); clamp so its metrics never go negative.
		ts := t
		if ts.Before(q.admitted) {
			ts = q.admitted
		}
		if q.prefilled < q.promptTokens {
			if q.chunk == 0 {
				r = append(r, q)
				continue
			}
			q.prefilled += q.chunk
			e.m.promptTokens.Add(float64(q.chunk))
			if q.prefilled < q.promptTokens {
				r = append(r, q)
				continue
			}
			// Prefill done: this step also produced the first token.
			q.firstTok = ts
			e.m.ttft.Observe(ts.Sub(q.received).Seconds())
			e.m.prefillTime.Observe(ts.Sub(q.admitted).Seconds())
		} else {
			if ts.Before(q.lastTok) {
				ts = q.lastTok
			}
			e.m.itl.Observe(ts.Sub(q.lastTok).Seconds())
		}
		q.lastTok = ts
		q.generated++
		gen++
		q.produced.Store(int64(q.generated))
		q.signal()
		if q.generated >= q.target {
			e.reserved -= q.reserve()
			e.m.finished(q, ts)
			continue
		}
		r = append(r, q)
	}
	clear(e.running[len(r):])
	e.running = r
	if gen > 0 {
		e.m.genTokens.Add(float64(gen))
	}
}
