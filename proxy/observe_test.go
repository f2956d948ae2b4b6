package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
)

// gateObserver blocks in Observe until its gate opens, counts calls that
// overlap, and keeps what it saw.
type gateObserver struct {
	gate    chan struct{}
	active  atomic.Int32
	overlap atomic.Bool
	mu      sync.Mutex
	seen    map[string]Observation // by record id
	got     chan struct{}
}

func newGateObserver(open bool) *gateObserver {
	o := &gateObserver{gate: make(chan struct{}), seen: map[string]Observation{}, got: make(chan struct{}, 1000)}
	if open {
		close(o.gate)
	}
	return o
}

func (o *gateObserver) Observe(ob *Observation) {
	if o.active.Add(1) > 1 {
		o.overlap.Store(true)
	}
	defer o.active.Add(-1)
	<-o.gate
	o.mu.Lock()
	o.seen[ob.Record.ID] = *ob
	o.mu.Unlock()
	o.got <- struct{}{}
}

func (o *gateObserver) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.seen)
}

// startObserved serves a proxy with obs as its Observer in front of a sim.
func startObserved(t *testing.T, obs Observer) (string, *Proxy, *memSink) {
	t.Helper()
	simURL := startSim(t, 200, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startProxyWith(t, ln, nil, func(o *Options) { o.Observer = obs },
		config.Backend{Name: "sim", URL: simURL, Model: "Qwen/Qwen2.5-14B-Instruct"})
}

func streamBody(i int) string {
	return fmt.Sprintf(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"observe %d"}],"max_tokens":6,"ignore_eos":true,"stream":true}`, i)
}

// TestObserverOffTheRequestsWay: an Observer that does not return must not
// hold up the client's next request on the same connection (it did while
// Observe ran on the request's goroutine); every request is observed once
// the Observer moves again, and Shutdown returns after the last one.
func TestObserverOffTheRequestsWay(t *testing.T) {
	obs := newGateObserver(false)
	px, p, sink := startObserved(t, obs)
	opened := sync.OnceFunc(func() { close(obs.gate) })
	t.Cleanup(opened) // before the proxy's Shutdown, which waits for the Observer

	// one connection, one request after another
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	const n = 4
	for i := range n {
		req, _ := http.NewRequest("POST", px+"/v1/chat/completions", strings.NewReader(streamBody(i)))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d while the Observer is stuck: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
			t.Fatalf("request %d: %v, body %q", i, err, b)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	recs := map[string]bool{}
	for range n {
		recs[sink.wait(t).ID] = true
	}
	if c := obs.count(); c != 0 {
		t.Fatalf("the stuck Observer recorded %d observations", c)
	}

	opened()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c := obs.count(); c != n {
		t.Fatalf("after Shutdown the Observer has seen %d of %d requests", c, n)
	}
	for id, ob := range obs.seen {
		if !recs[id] {
			t.Errorf("observed %s, which the sink never got", id)
		}
		r := ob.Record
		if r.FirstTokenNS == 0 || ob.FirstTokenSentNS < r.FirstTokenNS || ob.FirstTokenSentNS > r.EndNS+int64(time.Second) {
			t.Errorf("%s: first token at %d, sent at %d, end %d", id, r.FirstTokenNS, ob.FirstTokenSentNS, r.EndNS)
		}
	}
	if obs.overlap.Load() {
		t.Error("Observe calls overlapped")
	}
}

// TestObserverWithoutShutdown: observations arrive by themselves, about
// ObserveDelay after the requests end, and concurrent requests never make
// Observe calls overlap.
func TestObserverWithoutShutdown(t *testing.T) {
	obs := newGateObserver(true)
	px, _, _ := startObserved(t, obs)
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, _ := post(t, px+"/v1/chat/completions", streamBody(i), nil)
			if resp.StatusCode != 200 {
				t.Errorf("request %d: status %d", i, resp.StatusCode)
			}
		})
	}
	wg.Wait()
	deadline := time.After(ObserveDelay + 5*time.Second)
	for range n {
		select {
		case <-obs.got:
		case <-deadline:
			t.Fatalf("%d of %d requests observed without a Shutdown", obs.count(), n)
		}
	}
	if obs.overlap.Load() {
		t.Error("Observe calls overlapped")
	}
}
