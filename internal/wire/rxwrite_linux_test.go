package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// A write larger than the socket buffers fills it, waits in the poller
// for room (EAGAIN) and still delivers every byte in order.
func TestRxReaderWriteWaitsForRoom(t *testing.T) {
	c, s := loopbackPair(t)
	rx := NewRxReader(c)
	if rx == nil {
		t.Skip("no kernel timestamps on this system")
	}
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	got := make(chan []byte)
	go func() {
		time.Sleep(100 * time.Millisecond) // let the writer hit a full buffer
		b, _ := io.ReadAll(s)
		got <- b
	}()
	n, err := rx.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("wrote %d of %d: %v", n, len(want), err)
	}
	c.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, not the %d written", len(b), len(want))
	}
}

// Writing to a connection the peer has reset fails like net.Conn.Write:
// a *net.OpError.
func TestRxReaderWriteReportsAReset(t *testing.T) {
	c, s := loopbackPair(t)
	rx := NewRxReader(c)
	if rx == nil {
		t.Skip("no kernel timestamps on this system")
	}
	s.(*net.TCPConn).SetLinger(0)
	s.Close() // RST
	time.Sleep(50 * time.Millisecond)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = rx.Write([]byte("data"))
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("write after reset: %v (%T), want a *net.OpError", err, err)
	}
}

// drainPeer reads s until it is closed, so that writes to its peer never
// find the send buffer full.
func drainPeer(s net.Conn) { go io.Copy(io.Discard, s) }

// A write that the socket takes at once, and a read, allocate nothing: a
// write runs once per chunk relayed.
func TestRxWritesDoNotAllocate(t *testing.T) {
	if !rawSyscalls {
		t.Skip("under the race detector the socket calls go through the syscall package")
	}
	c, s := loopbackPair(t)
	drainPeer(s)
	rc := NewRxConn(c)
	if rc == nil {
		t.Skip("no kernel timestamps on this system")
	}
	p := []byte("data: {}\n\n")
	var fd uintptr
	rc.Hold(func(f uintptr) { fd = f }) // the test keeps c open
	tryWrite := func(p []byte) (int, error) { return TryWriteFD(fd, p) }
	for name, write := range map[string]func([]byte) (int, error){"Write": rc.Write, "TryWriteFD": tryWrite} {
		if a := testing.AllocsPerRun(200, func() { write(p) }); a != 0 {
			t.Errorf("%s allocates %.0f times per call", name, a)
		}
	}
	buf := make([]byte, 64)
	read := func() {
		s.Write(p[:1])
		if _, _, err := rc.rx.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	read() // the first read sets up the poller
	if a := testing.AllocsPerRun(100, read); a != 0 {
		t.Errorf("Read allocates %.0f times per call", a)
	}
}

// BenchmarkRxWrite is one small write through RxConn.Write and
// TryWriteFD.
func BenchmarkRxWrite(b *testing.B) {
	c, s := loopbackPair(b)
	drainPeer(s)
	rc := NewRxConn(c)
	p := bytes.Repeat([]byte("x"), 200)
	b.Run("Write", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rc.Write(p)
		}
	})
	b.Run("TryWriteFD", func(b *testing.B) {
		b.ReportAllocs()
		rc.Hold(func(fd uintptr) {
			for b.Loop() {
				TryWriteFD(fd, p)
			}
		})
	})
}
