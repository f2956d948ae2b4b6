package proxy

import (
	"sync"
	"time"

	"github.com/abproxy/abproxy/recorder"
)

// ObserveDelay is how long a finished request waits, at most, before the
// Observer sees it. Observations go out in batches on a goroutine of their
// own: a request's goroutine only appends to a list, so the client's next
// request on the connection is read at once. Observing on the request's
// goroutine held that read up by 27-34 µs per stream at one stream (cold
// caches after the stream; docs/benchmarks.md, "Observations off the
// request's way"), and with one P a goroutine woken per request would have
// run at that same moment.
const ObserveDelay = 50 * time.Millisecond

// observations queues finished requests for the Observer. The first one
// queued arms a timer; when it fires, everything queued by then is
// observed in one batch.
type observations struct {
	obs   Observer
	delay time.Duration
	timer *time.Timer

	mu      sync.Mutex // guards pending, which is not empty while the timer is armed
	pending []Observation

	dmu   sync.Mutex // one batch at a time, so Observe calls never overlap; guards spare
	spare []Observation
}

func newObservations(obs Observer, delay time.Duration) *observations {
	q := &observations{obs: obs, delay: delay}
	q.timer = time.AfterFunc(time.Hour, q.drain)
	q.timer.Stop()
	return q
}

// add queues one finished request. It never waits on the Observer.
func (q *observations) add(rec *recorder.Request, firstSentNS int64) {
	q.mu.Lock()
	arm := len(q.pending) == 0 // the first since the last batch
	q.pending = append(q.pending, Observation{Record: rec, FirstTokenSentNS: firstSentNS})
	q.mu.Unlock()
	if arm {
		q.timer.Reset(q.delay)
	}
}

// drain observes everything queued so far. The timer calls it, and
// Shutdown once the last request has finished.
func (q *observations) drain() {
	q.dmu.Lock()
	defer q.dmu.Unlock()
	q.mu.Lock()
	batch := q.pending
	q.pending, q.spare = q.spare, nil
	q.mu.Unlock()
	for i := range batch {
		q.obs.Observe(&batch[i])
	}
	clear(batch) // let the records be collected
	if cap(batch) <= 4096 {
		q.spare = batch[:0]
	}
}

// flush stops the timer and observes what is queued.
func (q *observations) flush() {
	q.timer.Stop()
	q.drain()
}
