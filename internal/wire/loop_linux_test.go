package wire

import (
	"io"
	"net"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

type loopConn struct {
	id    int
	rx    *RxReader
	first bool
}

// loopListener listens on loopback until the test ends.
func loopListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// drain reads the socket until it is empty, as a Ready must.
func (c *loopConn) drain() {
	buf := make([]byte, 64)
	for {
		if m, _, err := c.rx.ReadFD(c.rx.FD(), buf); err != nil || m == 0 {
			return
		}
	}
}

// dialAccepted connects to ln and returns both ends, closed at the
// test's end.
func dialAccepted(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c, s
}

// The loop calls Ready for the socket that has bytes, keeps calling it for
// later bytes (edge-triggered: after each read that empties it), stops
// after Remove, and Run returns nil after Close.
func TestLoopDeliversUntilRemoved(t *testing.T) {
	ln := loopListener(t)
	got := make(chan int, 100)
	lp, err := NewLoop(func(c *loopConn) {
		buf := make([]byte, 64)
		for {
			n, _, err := c.rx.ReadFD(c.rx.FD(), buf)
			if err != nil || n == 0 {
				return // ErrWouldBlock: emptied
			}
			for range n {
				got <- c.id
			}
		}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- lp.Run() }()

	const n = 3
	var clients []net.Conn
	var conns []*loopConn
	var slots []int32
	for i := range n {
		c, s := dialAccepted(t, ln)
		lc := &loopConn{id: i, rx: NewRxReader(s)}
		slot, err := lp.Add(lc.rx.FD(), lc)
		if err != nil {
			t.Fatal(err)
		}
		clients, conns, slots = append(clients, c), append(conns, lc), append(slots, slot)
	}
	expect := func(id int) {
		t.Helper()
		select {
		case g := <-got:
			if g != id {
				t.Fatalf("byte for conn %d, want %d", g, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no Ready for conn %d", id)
		}
	}
	for round := range 3 { // later bytes need later edges
		for i, c := range clients {
			if _, err := c.Write([]byte{byte(round)}); err != nil {
				t.Fatal(err)
			}
			expect(i)
		}
	}
	lp.Remove(conns[1].rx.FD(), slots[1])
	clients[1].Write([]byte{9})
	clients[2].Write([]byte{9})
	expect(2)
	select {
	case g := <-got:
		t.Fatalf("Ready for conn %d after its Remove", g)
	case <-time.After(100 * time.Millisecond):
	}
	if err := lp.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

// In one batch the streams First picks are served before the others,
// whatever order the kernel reported them in.
func TestLoopServesFirstAhead(t *testing.T) {
	ln := loopListener(t)
	var order []int // only the loop goroutine appends
	done := make(chan struct{})
	const n = 6
	lp, err := NewLoop(func(c *loopConn) {
		c.drain()
		order = append(order, c.id)
		if len(order) == n {
			close(done)
		}
	}, func(c *loopConn) bool { return c.first })
	if err != nil {
		t.Fatal(err)
	}
	defer lp.Close()
	for i := range n {
		c, s := dialAccepted(t, ln)
		lc := &loopConn{id: i, rx: NewRxReader(s), first: i == 2 || i == 5}
		if _, err := lp.Add(lc.rx.FD(), lc); err != nil {
			t.Fatal(err)
		}
		// readable in id order before Run starts: one batch, kernel order 0..5
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // let loopback deliver every byte
	go lp.Run()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("served %v of %d streams", order, n)
	}
	if want := []int{2, 5, 0, 1, 3, 4}; !slices.Equal(order, want) {
		t.Fatalf("served in order %v, want %v", order, want)
	}
}

// A loop with a burst of more than loopSlice streams yields between
// slices: a goroutine the network readied during the burst runs before the
// burst is through, even with one P, and the rest of the burst is still
// served (the loop's kick brings it back).
func TestLoopYieldsDuringABurst(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ln := loopListener(t)
	// a goroutine parked in the runtime's poller, readied by the loop's first Ready
	wake, other := dialAccepted(t, ln)
	ranAt := make(chan int64, 1)
	var served atomic.Int64
	go func() {
		other.Read(make([]byte, 1))
		ranAt <- served.Load()
	}()
	n := 3 * loopSlice
	done := make(chan struct{})
	lp, err := NewLoop(func(c *loopConn) {
		c.drain()
		if served.Add(1) == 1 {
			wake.Write([]byte{1})
		}
		if served.Load() == int64(n) {
			close(done)
		}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lp.Close()
	for i := range n {
		c, s := dialAccepted(t, ln)
		lc := &loopConn{id: i, rx: NewRxReader(s)}
		if _, err := lp.Add(lc.rx.FD(), lc); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // every byte delivered, the reader parked
	go lp.Run()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the loop served %d of %d streams", served.Load(), n)
	}
	if at := <-ranAt; at >= int64(n) {
		t.Fatalf("the readied goroutine ran after the whole burst (%d of %d served); want it to run between slices of %d", at, n, loopSlice)
	}
}

// TryWriteFD reports a full send buffer instead of waiting, with what the
// socket took.
func TestTryWriteWouldBlock(t *testing.T) {
	c, _ := loopbackPair(t) // the peer never reads
	rc := NewRxConn(c)
	p := make([]byte, 64<<20)
	var n int
	var err error
	if herr := rc.Hold(func(fd uintptr) { n, err = TryWriteFD(fd, p) }); herr != nil {
		t.Fatal(herr)
	}
	if err != ErrWouldBlock || n <= 0 || n >= len(p) {
		t.Fatalf("TryWriteFD of 64 MiB to a peer that does not read: %d, %v", n, err)
	}
}

// A Close while the descriptor is held waits for Hold's function to
// return, so a write inside it still reaches this connection's peer and
// never a connection that was given the same number meanwhile.
func TestHoldKeepsTheDescriptor(t *testing.T) {
	c, s := loopbackPair(t)
	rc := NewRxConn(c)
	closed := make(chan struct{})
	var n int
	var werr error
	err := rc.Hold(func(fd uintptr) {
		go func() { rc.Close(); close(closed) }()
		select {
		case <-closed:
			t.Error("Close returned while the descriptor was held")
		case <-time.After(100 * time.Millisecond):
		}
		n, werr = TryWriteFD(fd, []byte("still ours"))
	})
	if err != nil || werr != nil || n != len("still ours") {
		t.Fatalf("Hold: %v; write inside it: %d, %v", err, n, werr)
	}
	<-closed
	got, _ := io.ReadAll(s)
	if string(got) != "still ours" {
		t.Fatalf("peer got %q", got)
	}
	if err := rc.Hold(func(uintptr) { t.Error("Hold ran on a closed connection") }); err == nil {
		t.Error("Hold on a closed connection returned no error")
	}
}

// SkipNext drops bytes already sent from the front of the next writes,
// also when they arrive split or followed by more, and passes on a write
// that does not start with them.
func TestSkipNext(t *testing.T) {
	c, s := loopbackPair(t)
	rc := NewRxConn(c)
	rc.SkipNext([]byte("0\r\n\r\n"))
	rc.Write([]byte("0\r\n"))
	rc.Write([]byte("\r\nHTTP/1.1 200 OK\r\n"))
	rc.SkipNext([]byte("0\r\n\r\n"))
	rc.Write([]byte("other"))
	rc.Write([]byte("0\r\n\r\n")) // skip was cleared by the mismatch
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(s)
	if want := "HTTP/1.1 200 OK\r\nother0\r\n\r\n"; string(got) != want {
		t.Fatalf("peer got %q, want %q", got, want)
	}
}
