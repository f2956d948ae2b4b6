package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/wire"
)

// loopsAlways turns the loops on and puts every stream in one, however
// few are in flight.
func loopsAlways(c *config.Config) { c.Proxy.EventLoops, c.Proxy.EventLoopMinStreams = 0, 0 }

// relay is one way of relaying a stream: on its own goroutine (a single
// stream is below the default event_loop_min_streams) or in an event loop.
type relay struct {
	name string
	mod  func(*config.Config)
	loop bool
}

// forRelays runs test once for each relay.
func forRelays(t *testing.T, test func(t *testing.T, r relay)) {
	for _, r := range []relay{{"goroutine", func(*config.Config) {}, false}, {"event loop", loopsAlways, true}} {
		t.Run(r.name, func(t *testing.T) { test(t, r) })
	}
}

// with applies the relay's settings after mod's.
func (r relay) with(mod func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) { mod(c); r.mod(c) }
}

// check fails t unless p's streams took the relay's path.
func (r relay) check(t *testing.T, p *Proxy) {
	t.Helper()
	if n := p.loopStreams.Load(); (n > 0) != r.loop {
		t.Fatalf("%d streams went through event loops, relaying on a %s", n, r.name)
	}
}

// A client that stops reading fills its socket's send buffer; an event
// loop may not wait for it, so the stream goes back to its goroutine,
// which waits, and nothing is lost or reordered on the way.
func TestEventLoopHandsBackASlowClient(t *testing.T) { testHandBack(t, 0, 0) }

// The loop leaves the read deadline alone while it has the stream (its
// waiter keeps the idle timeout), so a stream handed back after longer
// than the idle timeout must get a fresh deadline, not an instant timeout.
func TestHandBackAfterLongerThanIdle(t *testing.T) {
	testHandBack(t, 400*time.Millisecond, 12)
}

// testHandBack streams 4,000 events to a client that reads only after
// they have been sent; the first trickle events come 100 ms apart.
func testHandBack(t *testing.T, idle time.Duration, trickle int) {
	const events = 4000
	event := func(i int) string {
		return fmt.Sprintf(`data: {"choices":[{"index":0,"delta":{"content":"%06d %s"}}]}`+"\n\n", i, strings.Repeat("x", 200))
	}
	backend := startFault(t, func(c net.Conn, _ *faultBackend) {
		w := bufio.NewWriter(c)
		io.WriteString(w, sseHead)
		for i := range events {
			if i == 10 || i < trickle { // by i = 10 the stream is in its loop
				w.Flush()
				time.Sleep(100 * time.Millisecond)
			}
			io.WriteString(w, chunk(event(i)))
		}
		io.WriteString(w, "0\r\n\r\n")
		w.Flush()
	})
	// a small send buffer on the proxy's side of the client connection
	// (accepted sockets inherit it from the listener), so that a client
	// that does not read soon leaves the proxy unable to write
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10) })
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px, p, sink := startProxyOn(t, ln, func(c *config.Config) {
		loopsAlways(c)
		if idle > 0 {
			c.Proxy.IdleTimeout.Duration = idle
		}
	}, config.Backend{Name: "b", URL: backend})

	c, err := net.Dial("tcp", strings.TrimPrefix(px, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	// ~900 KB are waiting for us by then
	time.Sleep(300*time.Millisecond + time.Duration(trickle)*100*time.Millisecond)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range events {
		want.WriteString(event(i))
	}
	if string(got) != want.String() {
		t.Fatalf("client got %d bytes, want %d (first difference at %d)", len(got), want.Len(), firstDiff(string(got), want.String()))
	}
	rec := sink.wait(t)
	if rec.Error != "" || len(rec.ChunkNS) != events || rec.BytesOut != int64(want.Len()) {
		t.Fatalf("record: error %q, %d chunks, %d bytes out", rec.Error, len(rec.ChunkNS), rec.BytesOut)
	}
	if p.loopStreams.Load() == 0 || p.loopHandbacks.Load() == 0 {
		t.Fatalf("streams in loops %d, handed back %d: the test did not fill the client's buffer in a loop",
			p.loopStreams.Load(), p.loopHandbacks.Load())
	}
	// the connection is still good for another request
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(resp.Body); err != nil || len(got) != want.Len() {
		t.Fatalf("second response on the connection: %d bytes, %v", len(got), err)
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Shadows' streams are relayed by the loops too (their output is
// discarded, which never waits), and are timed and cut like the primary's.
func TestShadowStreamsInLoops(t *testing.T) {
	paced := func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead)
		for range 5 { // the first event comes alone: the stream waits in a loop for the rest
			io.WriteString(c, chunk(contentEvent))
			time.Sleep(20 * time.Millisecond)
		}
		io.WriteString(c, chunk("data: [DONE]\n\n")+"0\r\n\r\n")
	}
	a, b := startFault(t, paced), startFault(t, paced)
	px, p, sink := startProxy(t, func(c *config.Config) { mirrorRoute("a", "b")(c); loopsAlways(c) },
		config.Backend{Name: "a", URL: a}, config.Backend{Name: "b", URL: b})
	resp, body := post(t, px+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`, nil)
	if resp.StatusCode != 200 || strings.Count(string(body), `"content":"tok"`) != 5 {
		t.Fatalf("client got %d %q", resp.StatusCode, body)
	}
	recs := collect(t, sink, 2)
	for _, name := range []string{"a", "b"} {
		if r := recs[name]; r == nil || r.Error != "" || len(r.ChunkNS) != 5 {
			t.Fatalf("record of %s: %+v", name, r)
		}
	}
	if n := p.loopStreams.Load(); n != 2 {
		t.Fatalf("%d streams went through event loops, want the primary's and the shadow's", n)
	}
}

// TestLoopCount: with event_loops = 0 new streams go round one loop per
// CPU, however many are in flight; a configured count is used as it is.
func TestLoopCount(t *testing.T) {
	used := func(p *Proxy, inflight int64) int {
		p.inflightN.Store(inflight)
		defer p.inflightN.Store(0)
		seen := map[any]bool{}
		for range 64 {
			seen[p.loop()] = true
		}
		return len(seen)
	}
	sim := startSim(t, 50, nil)
	_, p, _ := startProxy(t, nil, config.Backend{Name: "sim", URL: sim})
	_, q, _ := startProxy(t, func(c *config.Config) { c.Proxy.EventLoops = 3 }, config.Backend{Name: "sim", URL: sim})
	for _, n := range []int64{1, 1000, 100000} {
		if got, want := used(p, n), p.procs.Max(); got != want {
			t.Errorf("event_loops = 0, %d in flight: new streams went to %d loops, want %d (one per CPU)", n, got, want)
		}
		if got := used(q, n); got != 3 {
			t.Errorf("event_loops = 3, %d in flight: new streams went to %d loops", n, got)
		}
	}
}

// In an event loop, a stream's first token goes out before the tokens of
// streams that already have theirs, though the backend wrote it last: the kernel lists sockets in the order they became readable, so a
// new request's first token would otherwise wait for the whole burst.
func TestLoopServesFirstTokensFirst(t *testing.T) {
	const k = 6 // k-1 streams with a first token, then one without
	addr, p, conns := oneLoopProxy(t, k, sseHead, chunk("data: [DONE]\n\n")+"0\r\n\r\n")
	clients := make([]*wire.RxReader, k)
	ups := make([]net.Conn, k)
	buf := make([]byte, 64<<10)
	// readUntil reads c until it has seen n content events; the kernel
	// receive time of the read that completed them
	seen := make([]int, k)
	readUntil := func(i, n int) int64 {
		t.Helper()
		c := clients[i]
		for seen[i] < n {
			m, rx, err := c.Read(buf)
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			seen[i] += strings.Count(string(buf[:m]), `"content":"tok"`)
			if seen[i] >= n {
				return rx
			}
		}
		return 0
	}
	for i := range k {
		clients[i], ups[i] = streamThrough(t, addr, conns)
		waitLoopStreams(t, p, i+1)
		if i < k-1 { // its first token goes through the loop
			io.WriteString(ups[i], chunk(contentEvent))
			readUntil(i, 1)
		}
	}
	// One P: the loop cannot run until every write below is done, so it
	// finds all k sockets readable in one batch, the new one listed last.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, c := range ups {
		io.WriteString(c, chunk(contentEvent))
	}
	var rx [k]int64
	for i := range k {
		rx[i] = readUntil(i, seen[i]+1)
	}
	for i := range k - 1 {
		if rx[k-1] > rx[i] {
			t.Fatalf("the new stream's first token reached its client %.0f µs after stream %d's token (arrivals %v)",
				float64(rx[k-1]-rx[i])/1e3, i, rx)
		}
	}
}

// A stream that has had data: [DONE] but not yet the chunked terminator
// behind it (a backend writes the two apart) is served before the tokens
// of other streams: the terminator ends its client's response, and the
// client's next request waits for it.
func TestLoopServesEndsFirst(t *testing.T) {
	const k = 6 // k-1 streams mid-answer, then one waiting for its terminator
	addr, p, conns := oneLoopProxy(t, k, sseHead+chunk(contentEvent), "")
	clients := make([]*wire.RxReader, k)
	ups := make([]net.Conn, k)
	buf := make([]byte, 64<<10)
	got := make([]string, k)
	// readUntil reads client i until what it got contains want; the kernel
	// receive time of the read that completed it
	readUntil := func(i int, want string, n int) int64 {
		t.Helper()
		for strings.Count(got[i], want) < n {
			m, rx, err := clients[i].Read(buf)
			if err != nil {
				t.Fatalf("client %d: %v (got %q)", i, err, got[i])
			}
			got[i] += string(buf[:m])
			if strings.Count(got[i], want) >= n {
				return rx
			}
		}
		return 0
	}
	for i := range k {
		clients[i], ups[i] = streamThrough(t, addr, conns)
		readUntil(i, `"content":"tok"`, 1) // the first token came with the header
		waitLoopStreams(t, p, i+1)
		// a second token, through the loop
		io.WriteString(ups[i], chunk(contentEvent))
		readUntil(i, `"content":"tok"`, 2)
	}
	defer func() { // end the others' streams, so the proxy's shutdown need not wait
		for _, c := range ups[:k-1] {
			io.WriteString(c, chunk("data: [DONE]\n\n")+"0\r\n\r\n")
		}
	}()
	// the last stream's [DONE] goes through on its own
	io.WriteString(ups[k-1], chunk("data: [DONE]\n\n"))
	readUntil(k-1, "[DONE]", 1)
	// One P: the loop cannot run until every write below is done, so it
	// finds all k sockets readable in one batch, the ending one listed last.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, c := range ups[:k-1] {
		io.WriteString(c, chunk(contentEvent))
	}
	io.WriteString(ups[k-1], "0\r\n\r\n")
	end := readUntil(k-1, "0\r\n\r\n", 1)
	for i := range k - 1 {
		if rx := readUntil(i, `"content":"tok"`, 3); end > rx {
			t.Fatalf("the ending stream's response ended %.0f µs after stream %d's token reached its client",
				float64(end-rx)/1e3, i)
		}
	}
}

// streamThrough sends a streamed chat request to the proxy at addr and
// returns the client's reader, with kernel receive times, and the
// backend's side of the upstream connection, taken from conns.
func streamThrough(t *testing.T, addr string, conns <-chan net.Conn) (*wire.RxReader, net.Conn) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	rx := wire.NewRxReader(nc)
	if rx == nil {
		t.Skip("no kernel receive timestamps here")
	}
	body := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`
	fmt.Fprintf(nc, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	select {
	case up := <-conns:
		return rx, up
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the backend")
		return nil, nil
	}
}

// waitLoopStreams waits until n streams have joined p's loops.
func waitLoopStreams(t *testing.T, p *Proxy, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); p.loopStreams.Load() < int64(n); {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d streams joined the loop", p.loopStreams.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// oneLoopProxy starts a proxy with one event loop that takes every stream,
// in front of a backend that answers each of up to k requests with head,
// hands its side of the connection to conns, and writes tail when the
// test ends.
func oneLoopProxy(t *testing.T, k int, head, tail string) (addr string, p *Proxy, conns chan net.Conn) {
	t.Helper()
	conns = make(chan net.Conn, k)
	hold := make(chan struct{})
	be := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, head)
		conns <- c
		<-hold
		io.WriteString(c, tail)
	})
	px, p, _ := startProxy(t, func(c *config.Config) { loopsAlways(c); c.Proxy.EventLoops = 1 },
		config.Backend{Name: "b", URL: be})
	t.Cleanup(func() { close(hold) }) // before the proxy's shutdown, which waits for the streams
	return strings.TrimPrefix(px, "http://"), p, conns
}
