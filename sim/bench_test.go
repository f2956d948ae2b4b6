package sim

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchClient streams one chat completion over a connected raw TCP socket
// and counts its content chunks. Raw TCP keeps the client cheap: it shares the
// machine's cores with the server it measures.
func benchClient(c net.Conn, req []byte, live *atomic.Int64) (int, error) {
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	pat := []byte(`{"content":"`)
	buf := make([]byte, 16<<10)
	k, n := 0, 0
	for {
		m, err := c.Read(buf[k:])
		seen := buf[:k+m]
		got := bytes.Count(seen, pat)
		n += got
		live.Add(int64(got))
		// Carry a pattern's length minus one so a match split across reads
		// is still counted once (the carry alone can never match).
		k = copy(buf, seen[max(0, len(seen)-len(pat)+1):])
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// BenchmarkStreamChunks serves many concurrent streams and reports the
// content chunks per second delivered to clients in the same process.
// StepBase 20 ms with no per-sequence cost means the engine asks for
// streams × 50 × speedup chunks per second; "paced" runs ask for less than
// the machine can deliver (the rate must be met), "saturated" asks for far
// more (the sim delivers what it can, coalescing chunks per write).
//
// "chunks/s" covers a whole round from the first request sent (connections
// are already open) to the last stream's end;
// "steady-chunks/s" is the rate between 10% and 90% of the round's chunks.
//
//	go test -run '^$' -bench StreamChunks -benchtime 1x ./sim/
func BenchmarkStreamChunks(b *testing.B) {
	for _, c := range []struct {
		name    string
		streams int
		tokens  int
		speedup float64
	}{
		{"streams=5000/paced-100k", 5000, 60, 0.4},
		{"streams=5000/paced-250k", 5000, 100, 1},
		{"streams=5000/saturated", 5000, 400, 20},
		{"streams=500/saturated", 500, 2000, 100},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := Profile{Name: "bench", MaxNumSeqs: 10_000, KVCapacityTokens: 1 << 30, MaxModelLen: 1 << 20,
				PrefillTokensPerSec: 1e12, StepBase: 20 * time.Millisecond, DefaultMaxTokens: 16}
			s, base, err := Start(Options{Profile: p, Speedup: c.speedup, Model: "m"}, "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			addr := strings.TrimPrefix(base, "http://")
			body := fmt.Sprintf(`{"messages":[{"role":"user","content":"hello"}],"max_tokens":%d,"ignore_eos":true,"stream":true}`, c.tokens)
			req := []byte(fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body))

			var total atomic.Int64
			var elapsed, steady time.Duration
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				var wg sync.WaitGroup
				var failed atomic.Int64
				var errOnce sync.Once
				var firstErr error
				var live atomic.Int64
				want := int64(c.streams * c.tokens)
				stopSampling := make(chan struct{})
				sampled := make(chan time.Duration)
				go func() { // time from 10% to 90% of the round's chunks
					var t10, t90 time.Time
					tick := time.NewTicker(time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-stopSampling:
							sampled <- t90.Sub(t10)
							return
						case now := <-tick.C:
							n := live.Load()
							if t10.IsZero() && n >= want/10 {
								t10 = now
							}
							if t90.IsZero() && n >= want*9/10 {
								t90 = now
							}
						}
					}
				}()
				// Connect first, untimed and a few at a time: a burst of 5000
				// SYNs overflows the listen backlog and costs 1 s retransmits,
				// which would measure the kernel, not the sim.
				conns := make([]net.Conn, c.streams)
				for i := range conns {
					if conns[i], err = net.Dial("tcp", addr); err != nil {
						b.Fatal(err)
					}
				}
				start := time.Now()
				for i := 0; i < c.streams; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n, err := benchClient(conns[i], req, &live)
						total.Add(int64(n))
						if err != nil || n != c.tokens {
							failed.Add(1)
							errOnce.Do(func() { firstErr = fmt.Errorf("%d chunks: %v", n, err) })
						}
					}()
				}
				wg.Wait()
				elapsed += time.Since(start)
				close(stopSampling)
				steady += <-sampled
				if f := failed.Load(); f > 0 {
					b.Fatalf("%d of %d streams failed, first: %v", f, c.streams, firstErr)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(total.Load())/elapsed.Seconds(), "chunks/s")
			b.ReportMetric(0.8*float64(total.Load())/steady.Seconds(), "steady-chunks/s")
			b.ReportMetric(float64(c.streams)*50*c.speedup, "asked-chunks/s")
			b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/round")
		})
	}
}

// BenchmarkEngineStep measures one scheduler step with 1000 decoding
// sequences: the per-step cost the scheduler pays at high speedup.
func BenchmarkEngineStep(b *testing.B) {
	p := Profile{Name: "bench", MaxNumSeqs: 1000, KVCapacityTokens: 1 << 30, MaxModelLen: 1 << 20,
		PrefillTokensPerSec: 1e12, PrefillChunkTokens: 4096, StepBase: time.Millisecond, DefaultMaxTokens: 16}
	e := newEngine(p, 1, 1, nil)
	e.m = newMetrics("m", e, p.KVCapacityTokens)
	for i := 0; i < 1000; i++ {
		q := &seq{promptTokens: 10, prefilled: 10, maxTokens: 1 << 30, target: 1 << 30, notify: make(chan struct{}, 1)}
		e.running = append(e.running, q)
	}
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.reapCancelled()
		e.admit()
		e.publishGauges()
		e.stepDuration(e.planPrefill())
		e.completeStep(now.Add(time.Duration(i) * time.Millisecond))
	}
}
