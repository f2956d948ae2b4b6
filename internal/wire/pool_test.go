package wire

import (
	"testing"
	"time"
)

type fakeConn struct {
	id     int
	closed bool
}

func (c *fakeConn) Close() error { c.closed = true; return nil }

func TestIdlePool(t *testing.T) {
	p := IdlePool[*fakeConn]{MaxIdle: time.Hour, Max: 2}
	a, b, c := &fakeConn{id: 1}, &fakeConn{id: 2}, &fakeConn{id: 3}
	p.Put(a)
	p.Put(b)
	p.Put(c) // over Max: closed, not kept
	if !c.closed {
		t.Fatal("a connection over Max was kept open")
	}
	if got, ok := p.Get(); !ok || got != b {
		t.Fatalf("Get = %v, %v; want the most recent (2)", got, ok)
	}
	p.MaxIdle = 0 // everything is now too old
	if got, ok := p.Get(); ok || !a.closed {
		t.Fatalf("Get = %v, %v; an expired connection must be closed, not returned", got, ok)
	}
	d := &fakeConn{id: 4}
	p.Put(d)
	p.CloseIdle()
	if !d.closed {
		t.Fatal("CloseIdle left a connection open")
	}
	if _, ok := p.Get(); ok {
		t.Fatal("Get after CloseIdle returned a connection")
	}
}
