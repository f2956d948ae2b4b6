package wire

import (
	"io"
	"sync"
	"time"
)

// IdlePool keeps idle keep-alive connections for reuse, the most recently
// used first. The proxy's upstream client and bench's client share it.
// The zero value is ready to use; set the fields before the first Put.
type IdlePool[C io.Closer] struct {
	// MaxIdle drops connections idle at least this long instead of reusing
	// them: uvicorn (vLLM's server) closes idle keep-alive connections
	// after 5 s, and reusing one just before that races with its close.
	MaxIdle time.Duration
	// Max bounds the idle connections kept; 0 keeps all.
	Max int

	mu   sync.Mutex
	idle []idleConn[C]
}

type idleConn[C io.Closer] struct {
	c     C
	since time.Time
}

// Get returns an idle connection young enough to reuse, closing the ones
// that are too old on the way; ok is false when there is none.
func (p *IdlePool[C]) Get() (c C, ok bool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		ic := p.idle[n-1]
		p.idle[n-1] = idleConn[C]{}
		p.idle = p.idle[:n-1]
		if now.Sub(ic.since) < p.MaxIdle {
			return ic.c, true
		}
		_ = ic.c.Close()
	}
	return c, false
}

// Put keeps c for reuse, or closes it when the pool is full.
func (p *IdlePool[C]) Put(c C) {
	p.mu.Lock()
	if p.Max <= 0 || len(p.idle) < p.Max {
		p.idle = append(p.idle, idleConn[C]{c: c, since: time.Now()})
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = c.Close()
}

// CloseIdle closes every idle connection.
func (p *IdlePool[C]) CloseIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, ic := range idle {
		_ = ic.c.Close()
	}
}
