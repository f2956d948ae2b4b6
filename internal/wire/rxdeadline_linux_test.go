package wire

import (
	"errors"
	"os"
	"testing"
	"time"
)

// readWithin reads c and reports whether it returned data, or timed out,
// within limit; the test fails on anything else.
func readWithin(t *testing.T, c *RxConn, limit time.Duration) (timedOut bool) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 16))
		done <- err
	}()
	select {
	case err := <-done:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return true
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return false
	case <-time.After(limit):
		t.Fatalf("read still waiting after %v", limit)
		return false
	}
}

// SetReadDeadline keeps a deadline that is at most a little earlier than the
// one asked for, keeps a far one when asked to clear, and otherwise does
// what net.Conn's does: a sooner deadline, a clear of a near one, and a
// deadline that has passed are all applied.
func TestRxConnLazyReadDeadline(t *testing.T) {
	c0, s := loopbackPair(t)
	c := NewRxConn(c0)
	if c == nil {
		t.Skip("no kernel timestamps on this system")
	}
	armed := func() int64 { c.dmu.Lock(); defer c.dmu.Unlock(); return c.armed }

	// a deadline asked for just after one a little earlier: kept
	idle := time.Now().Add(90 * time.Second)
	c.SetReadDeadline(idle)
	c.SetReadDeadline(idle.Add(500 * time.Millisecond))
	if armed() != idle.UnixNano() {
		t.Fatalf("armed %d, want the first deadline %d kept", armed(), idle.UnixNano())
	}
	// a clear while it is far ahead: kept
	c.SetReadDeadline(time.Time{})
	if armed() != idle.UnixNano() {
		t.Fatalf("armed %d after a clear, want the far deadline kept", armed())
	}
	// a sooner deadline is applied at once
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	if !readWithin(t, c, 2*time.Second) {
		t.Fatal("read returned data, want a timeout")
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("timed out after %v, before the deadline", took)
	}
	// a passed deadline is replaced, not kept: the read now gets its data
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if armed() <= time.Now().UnixNano() {
		t.Fatal("a passed deadline was kept")
	}
	// a clear while the deadline is near: applied
	c.SetReadDeadline(time.Time{})
	if armed() != 0 {
		t.Fatalf("armed %d after clearing a deadline 10 s ahead, want none", armed())
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		s.Write([]byte("late"))
	}()
	if readWithin(t, c, 5*time.Second) {
		t.Fatal("read timed out with the deadline cleared")
	}
	// a deadline far later than the one set is applied
	c.SetReadDeadline(time.Now().Add(time.Minute))
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if d := armed() - time.Now().UnixNano(); d < int64(110*time.Second) {
		t.Fatalf("deadline %v ahead, want the later one (2 min)", time.Duration(d))
	}
}
