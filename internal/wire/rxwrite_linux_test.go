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
