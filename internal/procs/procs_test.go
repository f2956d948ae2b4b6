package procs

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestGovernorFollowsLoad: more than quiet requests in flight raise the P
// count at once; at most quiet for hold lowers it again, but not while
// requests that started busy are still in flight.
func TestGovernorFollowsLoad(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs")
	}
	t.Setenv("GOMAXPROCS", "") // an empty variable does not count as set
	before := runtime.GOMAXPROCS(0)
	var inflight atomic.Int64
	var changes atomic.Int32
	g := Start(0, 2, 3*Interval, inflight.Load, func(int) { changes.Add(1) })
	defer func() {
		g.Stop()
		if got := runtime.GOMAXPROCS(0); got != before {
			t.Errorf("after Stop GOMAXPROCS = %d, want %d", got, before)
		}
	}()
	if runtime.GOMAXPROCS(0) != 1 || g.Max() != before {
		t.Fatalf("at the start: %d Ps, Max %d; want 1 and %d", runtime.GOMAXPROCS(0), g.Max(), before)
	}
	start := func() { g.Note(inflight.Add(1)) }
	start()
	start() // two in flight: still quiet
	time.Sleep(2 * Interval)
	if runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("%d Ps with 2 requests in flight and quiet = 2", runtime.GOMAXPROCS(0))
	}
	start() // the third makes it busy
	waitProcs(t, before, time.Second)
	// the requests that made it busy are still running: no way back
	time.Sleep(6 * Interval)
	if runtime.GOMAXPROCS(0) != before {
		t.Fatalf("went back to %d P while 3 requests were in flight", runtime.GOMAXPROCS(0))
	}
	inflight.Add(-1)
	tBack := time.Now()
	waitProcs(t, 1, 2*time.Second)
	// hold is counted in ticks of a ticker already running: one may be short
	if d := time.Since(tBack); d < 2*Interval {
		t.Errorf("back to one P after %v, well before hold (%v)", d, 3*Interval)
	}
	start()
	waitProcs(t, before, time.Second)
	if n := changes.Load(); n != 3 {
		t.Errorf("onChange called %d times, want 3", n)
	}
}

func waitProcs(t *testing.T, want int, limit time.Duration) {
	t.Helper()
	for end := time.Now().Add(limit); runtime.GOMAXPROCS(0) != want; {
		if time.Now().After(end) {
			t.Fatalf("GOMAXPROCS stayed %d for %v, want %d", runtime.GOMAXPROCS(0), limit, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGovernorFixed(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	g := Start(3, 2, time.Second, func() int64 { return 0 }, nil)
	if runtime.GOMAXPROCS(0) != 3 || g.Max() != 3 {
		t.Fatalf("Start(3): %d Ps, Max %d; want 3 and 3", runtime.GOMAXPROCS(0), g.Max())
	}
	g.Note(100)
	g.Stop()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("after Stop: GOMAXPROCS %d, want %d", got, before)
	}
}

func TestGovernorLeavesAChosenGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	before := runtime.GOMAXPROCS(0)
	g := Start(0, 2, time.Second, func() int64 { return 0 }, nil)
	defer g.Stop()
	if got := runtime.GOMAXPROCS(0); got != before || g.Max() != before {
		t.Fatalf("with GOMAXPROCS set, Start(0) gave %d Ps (Max %d), want %d", got, g.Max(), before)
	}
}

func TestNilGovernor(t *testing.T) {
	var g *Governor
	g.Note(5)
	g.Stop()
	if g.Max() != runtime.GOMAXPROCS(0) {
		t.Fatalf("nil Governor's Max is %d, want GOMAXPROCS %d", g.Max(), runtime.GOMAXPROCS(0))
	}
}

// BenchmarkSwitch is the cost of one switch between one P and two: the
// runtime stops the world to resize its Ps.
func BenchmarkSwitch(b *testing.B) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	for i := 0; b.Loop(); i++ {
		runtime.GOMAXPROCS(1 + i%2)
	}
}
