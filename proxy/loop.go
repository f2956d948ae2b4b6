package proxy

import (
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/abproxy/abproxy/internal/wire"
)

// Event loops. A streaming response spends its life waiting for the next
// token. A goroutine per stream waiting in the runtime's poller pays a
// park, a wake-up and a cold goroutine stack per event, which at a
// thousand streams per engine step was the largest part of the CPU the
// proxy spent above nginx. Once a stream's header is through, its
// upstream socket is handed to one of a few loops (wire.Loop), which run
// pumpStep for each socket the kernel reports readable. The stream's own
// goroutine sleeps until the stream ends, waking only for the idle
// timeout and for a shutdown abort. A client that cannot take its bytes at
// once gets the stream back on its own goroutine, which may wait.
//
// A loop's wake-up is a wake-up of its own plus an epoll_wait, so a loop
// pays off only when several sockets become readable together: a stream joins
// one only while proxy.event_loop_min_streams requests are in flight.

// loopState is an exchange's part in an event loop.
type loopState struct {
	mu       sync.Mutex // held by whoever runs the stream: the loop or its goroutine
	st       *pumpState
	lp       *wire.Loop[exchange]
	slot     int32
	attached bool
	done     chan struct{} // closed by the loop when it lets go of the stream
}

// loop returns the event loop for the next stream, starting the loops on
// first use; nil when the proxy runs a goroutine per stream.
func (p *Proxy) loop() *wire.Loop[exchange] {
	p.loopsOnce.Do(p.startLoops)
	if len(p.loops) == 0 {
		return nil
	}
	return p.loops[p.loopNext.Add(1)%uint32(len(p.loops))]
}

func (p *Proxy) startLoops() {
	n := p.cfg.Proxy.EventLoops
	if n < 0 {
		return
	}
	if n == 0 {
		// One per CPU under load (not while quiet). More loops were worth
		// having at 1,000 streams only while a new stream's first token
		// waited behind its loop's batch; with first tokens served first,
		// 2 loops on 2 CPUs beat 8 at TTFT p99 in five pairs of runs
		// (docs/benchmarks.md, "First tokens first").
		n = p.procs.Max()
	}
	for range n {
		lp, err := wire.NewLoop(loopReady, loopFirst)
		if err != nil {
			p.log.Warn("event loops unavailable; each stream keeps its goroutine", zap.Error(err))
			p.closeLoops()
			return
		}
		p.loops = append(p.loops, lp)
		p.loopWG.Add(1)
		go func() {
			defer p.loopWG.Done()
			if err := lp.Run(); err != nil {
				p.log.Error("event loop stopped", zap.Error(err))
			}
		}()
	}
}

// closeLoops stops the loops once no stream is in them.
func (p *Proxy) closeLoops() {
	for _, lp := range p.loops {
		_ = lp.Close()
	}
	p.loopWG.Wait()
	p.loops = nil
}

// loopReady runs on a loop goroutine when x's upstream socket is readable.
func loopReady(x *exchange) {
	l := &x.ls
	l.mu.Lock()
	if l.attached {
		done := x.pumpStep(l.st)
		x.conn.drained = false // the next event means new bytes
		if done {
			x.detach()
			close(l.done)
		}
	}
	l.mu.Unlock()
}

// loopFirst: x waits for its first token, or has had data: [DONE] and
// waits only for the end of its body; either goes before other streams'
// tokens. A backend writes the chunked terminator after [DONE] in a write
// of its own (vLLM's server as much as the sim), and when the two were
// read apart, the terminator, which ends the client's response, queued
// behind a whole burst of other streams' tokens.
func loopFirst(x *exchange) bool { return x.firstSent.Load() == 0 || x.doneNS.Load() != 0 }

// detach takes the stream out of its loop; l.mu is held.
func (x *exchange) detach() {
	l := &x.ls
	l.attached = false
	l.lp.Remove(x.conn.fd, l.slot)
}

// pumpInLoop runs the stream in lp until it ends, its client's send
// buffer fills, or the loop cannot take it; st.ended says which.
func (x *exchange) pumpInLoop(lp *wire.Loop[exchange], st *pumpState) {
	if st.raw != nil {
		// the loop writes straight to the client's descriptor, held open
		// for the stream's stay; a Close meanwhile waits for it. If the
		// connection is closed already, the stream stays on its goroutine,
		// whose first write then fails.
		_ = st.raw.Hold(func(fd uintptr) {
			st.cfd = fd
			x.runInLoop(lp, st)
		})
	} else {
		x.runInLoop(lp, st)
	}
	if st.busy {
		// the client's send buffer was full: wait here for it to drain
		x.p.loopHandbacks.Add(1)
		st.busy = false
		_, err := st.raw.Write(st.pending)
		switch {
		case err != nil && !st.ended:
			x.clientGone(st, err)
		case err == nil:
			st.sentAll()
		}
		st.pending = nil
	}
}

// runInLoop is pumpInLoop's time in the loop: the bytes that came with
// the header, then the loop's steps until it lets go of the stream.
func (x *exchange) runInLoop(lp *wire.Loop[exchange], st *pumpState) {
	c, l := x.conn, &x.ls
	c.sessFD, c.inSess = c.fd, true // reads report an empty socket, never wait
	st.nonblock = true
	defer func() {
		c.inSess, c.drained, c.looped = false, false, false
		st.nonblock = false
		// the deadline was left alone in the loop: restart it before the
		// stream's goroutine waits on the socket again
		c.deadline.Arm(c.c)
	}()
	// bytes that came with the header, and any that followed, go out first
	done := x.pumpStep(st)
	c.drained = false
	if st.head {
		return // the headers still wait for events: a loop may not block on them
	}
	if done {
		return
	}
	l.st, l.lp, l.done = st, lp, make(chan struct{})
	l.mu.Lock()
	c.looped = true
	slot, err := lp.Add(c.fd, x)
	if err != nil {
		c.looped = false
		l.mu.Unlock()
		x.p.log.Warn("stream kept on its goroutine: event loop refused it", zap.Error(err))
		return
	}
	l.slot, l.attached = slot, true
	l.mu.Unlock()
	x.p.loopStreams.Add(1)
	x.awaitLoop()
}

// awaitLoop sleeps until the loop lets go of the stream, cutting it at the
// idle timeout (or the exchange's cap) and at a shutdown's abort.
func (x *exchange) awaitLoop() {
	l, c := &x.ls, x.conn
	start := now()
	var timer *time.Timer
	var tick <-chan time.Time
	// deadline is when the backend's silence becomes a timeout; l.mu is held
	deadline := func() int64 { return c.deadline.Due(max(c.rxNS, start)) }
	arm := func(d int64) {
		if d == 0 {
			return
		}
		wait := time.Duration(d-now()) + wire.IdleSlack(c.deadline.Idle)
		if timer == nil {
			timer = time.NewTimer(wait)
			tick = timer.C
		} else {
			timer.Reset(wait)
		}
	}
	l.mu.Lock()
	arm(deadline())
	l.mu.Unlock()
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var cut error
		select {
		case <-l.done:
			return
		case <-x.p.abortCh:
			cut = errAborted
		case <-tick:
			cut = os.ErrDeadlineExceeded
		}
		l.mu.Lock()
		if !l.attached { // the loop let go meanwhile
			l.mu.Unlock()
			return
		}
		if cut == os.ErrDeadlineExceeded {
			if d := deadline(); d > now() {
				arm(d) // bytes arrived since the timer was set
				l.mu.Unlock()
				continue
			}
		}
		x.detach()
		x.endStream(l.st, cut)
		l.mu.Unlock()
		return
	}
}
