// Package procs sizes the Go scheduler to the proxy's load: one P while
// only a few requests are in flight, every CPU as soon as more are.
//
// Why: with a second P idle, the runtime wakes an idle thread to look for
// work whenever it readies a goroutine, and on a small machine that thread
// takes the CPU that the backend or the client needed at that moment. On
// the 2-vCPU development VM a request's way from the client to the backend
// trailed nginx's by 47-56 µs at one stream with two Ps and by 4-19 µs
// with one (docs/benchmarks.md, "One P while quiet"). With many streams
// the second P is needed at once: each engine step delivers a chunk to
// every stream together, and one P relays that burst alone (at 200
// streams one P trailed nginx by 2.2 ms, two by 0.5 ms).
package procs

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Interval is how often a Governor running every P checks whether the
// proxy has been quiet.
const Interval = 100 * time.Millisecond

// DefaultHold is how long the proxy must stay quiet before one P again:
// long enough that a load going up and down does not switch back and forth
// (each switch stops the world for about 36 µs: BenchmarkSwitch).
const DefaultHold = time.Second

// Governor switches GOMAXPROCS between one and Max. The data plane calls
// Note with the number of requests in flight as each one starts.
type Governor struct {
	max, quiet int64 // P count when busy; most requests in flight for one P
	hold       int   // quiet Intervals in a row before one P
	restore    int   // GOMAXPROCS before Start
	onChange   func(procs int)
	inflight   func() int64

	one  atomic.Bool  // running one P
	peak atomic.Int64 // most requests in flight since the last check
	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Start returns a running Governor. With n > 0 GOMAXPROCS is n until Stop.
// With n == 0 it is one while at most quiet requests are in flight, and
// every CPU as soon as more are, until they have been at most quiet again
// for hold; inflight gives the number in flight now. With n == 0 and the
// GOMAXPROCS environment variable set (the user chose), or on one CPU,
// GOMAXPROCS is left alone. onChange, if not nil, is called after each
// switch. Only one Governor may run at a time.
func Start(n, quiet int, hold time.Duration, inflight func() int64, onChange func(procs int)) *Governor {
	g := &Governor{restore: runtime.GOMAXPROCS(0), quiet: int64(quiet), onChange: onChange, inflight: inflight,
		hold: max(1, int(hold/Interval)), wake: make(chan struct{}, 1), done: make(chan struct{})}
	g.max = int64(g.restore)
	switch {
	case n > 0:
		g.max = int64(n)
		runtime.GOMAXPROCS(n)
		return g
	case os.Getenv("GOMAXPROCS") != "" || g.max < 2:
		return g
	}
	g.one.Store(true)
	runtime.GOMAXPROCS(1)
	g.wg.Add(1)
	go g.run()
	return g
}

// Max is the P count under load: size per-CPU work (event loops) by it. A
// nil Governor gives the current GOMAXPROCS.
func (g *Governor) Max() int {
	if g == nil {
		return runtime.GOMAXPROCS(0)
	}
	return int(g.max)
}

// Note tells the Governor that a request started with inflight requests in
// flight, itself included. It never blocks; a nil Governor ignores it.
func (g *Governor) Note(inflight int64) {
	if g == nil || inflight <= g.quiet {
		return
	}
	if g.peak.Load() < inflight {
		g.peak.Store(inflight) // a lost race only loses a peak above quiet to another
	}
	if g.one.Load() {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
}

// Stop ends the Governor and restores GOMAXPROCS as it was before Start.
func (g *Governor) Stop() {
	if g == nil {
		return
	}
	g.once.Do(func() {
		close(g.done)
		g.wg.Wait()
		// only when changed: setting it also ends the runtime's own updates
		// of GOMAXPROCS from the CPU limit
		if runtime.GOMAXPROCS(0) != g.restore {
			runtime.GOMAXPROCS(g.restore)
		}
	})
}

func (g *Governor) run() {
	defer g.wg.Done()
	for {
		// one P: sleep until a request finds more than quiet in flight
		select {
		case <-g.done:
			return
		case <-g.wake:
		}
		g.set(int(g.max))
		// every P until a calm hold is confirmed
		for {
			if !g.calm() {
				return
			}
			select { // a wake-up sent while every P ran is stale
			case <-g.wake:
			default:
			}
			g.one.Store(true)
			if !g.busy() {
				break
			}
			// a request came between the last check and the store above,
			// and saw every P running: it sent no wake-up
			g.one.Store(false)
		}
		g.set(1)
	}
}

// calm waits until hold Intervals in a row have passed without a busy
// moment; false when the Governor stops meanwhile.
func (g *Governor) calm() bool {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for calm := 0; calm < g.hold; {
		select {
		case <-g.done:
			return false
		case <-t.C:
		}
		if g.busy() {
			calm = 0
		} else {
			calm++
		}
	}
	return true
}

// busy says whether more than quiet requests were in flight at some
// moment since the last call, or are now.
func (g *Governor) busy() bool {
	return g.peak.Swap(0) > g.quiet || g.inflight() > g.quiet
}

func (g *Governor) set(n int) {
	g.one.Store(n == 1)
	runtime.GOMAXPROCS(n)
	if g.onChange != nil {
		g.onChange(n)
	}
}
