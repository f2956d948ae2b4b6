package wire

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// loopbackPair returns both ends of a TCP connection over loopback.
func loopbackPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// readArmed reads one byte from c after arming d, and returns how long it took.
func readArmed(c net.Conn, d *ReadDeadline) (time.Duration, error) {
	start := time.Now()
	d.Arm(c)
	_, err := c.Read(make([]byte, 1))
	return time.Since(start), err
}

func TestReadDeadlineCatchesASilentPeer(t *testing.T) {
	c, _ := loopbackPair(t)
	d := ReadDeadline{Idle: 200 * time.Millisecond}
	took, err := readArmed(c, &d)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want a deadline error", err)
	}
	if lo, hi := d.Idle, d.Idle+IdleSlack(d.Idle)+100*time.Millisecond; took < lo || took > hi {
		t.Fatalf("silent peer caught after %v, want %v to %v", took, lo, hi)
	}
}

// A peer that writes more often than the idle timeout is never cut, however
// long it goes on, although the deadline is not moved on every read.
func TestReadDeadlineFollowsAStream(t *testing.T) {
	c, s := loopbackPair(t)
	d := ReadDeadline{Idle: 200 * time.Millisecond}
	go func() {
		for i := 0; i < 40; i++ {
			time.Sleep(20 * time.Millisecond)
			if _, err := s.Write([]byte{'x'}); err != nil {
				return
			}
		}
	}()
	moves, last := 0, int64(0)
	for i := 0; i < 40; i++ { // 800 ms: past four idle timeouts
		if _, err := readArmed(c, &d); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if d.armed != last {
			moves, last = moves+1, d.armed
		}
	}
	// with 50 ms of slack a deadline serves about 2.5 reads 20 ms apart
	if moves > 25 {
		t.Fatalf("deadline moved %d times in 40 reads; the slack should spare about half of them", moves)
	}
}

// Until caps the idle deadline: a whole exchange ends on time even while
// its peer keeps talking.
func TestReadDeadlineUntilCapsTheExchange(t *testing.T) {
	c, s := loopbackPair(t)
	go func() {
		for i := 0; i < 20; i++ {
			time.Sleep(30 * time.Millisecond)
			if _, err := s.Write([]byte{'x'}); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	d := ReadDeadline{Idle: time.Second, Until: start.Add(150 * time.Millisecond).UnixNano()}
	var err error
	for err == nil {
		_, err = readArmed(c, &d)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want a deadline error", err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 400*time.Millisecond {
		t.Fatalf("exchange cut after %v, want about 150 ms", took)
	}
	// clearing both removes the deadline the connection still has
	d.Idle, d.Until = 0, 0
	d.Arm(c)
	if d.armed != 0 {
		t.Fatalf("armed %d after clearing, want 0", d.armed)
	}
	if _, err := readArmed(c, &d); err != nil {
		t.Fatalf("read after clearing: %v", err)
	}
}
