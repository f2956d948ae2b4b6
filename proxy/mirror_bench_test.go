package proxy

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
)

// BenchmarkMirrorStalledShadow measures what a shadow that never answers
// costs the client: the same closed-loop load (16 streams) through a proxy
// without mirroring and through one mirroring every request to a stalled
// shadow, alternating in rounds within one run so drift hits both alike.
// It reports client TTFT and E2E p99 for each and their ratio; the target
// is a ratio within 1.05.
func BenchmarkMirrorStalledShadow(b *testing.B) {
	primary := startSimSeed(b, 1)
	stall, _ := stallBackend(b)
	pxOff, _, sinkOff := startProxy(b, nil, config.Backend{Name: "a", URL: primary}, config.Backend{Name: "s", URL: stall})
	pxOn, _, sinkOn := startProxy(b, func(c *config.Config) {
		mirrorRoute("a", "s")(c)
		c.Route.ShadowTimeout.Duration = time.Hour
		c.Route.MaxShadowInflight = 1 << 20
	}, config.Backend{Name: "a", URL: primary}, config.Backend{Name: "s", URL: stall})
	var recTTFT [2][]float64
	var recMu sync.Mutex
	collectTTFT := func(arm int, s *memSink) {
		for r := range s.ch {
			if r.Role == "primary" && r.FirstTokenNS > 0 {
				recMu.Lock()
				recTTFT[arm] = append(recTTFT[arm], float64(r.FirstTokenNS-r.StartNS)/1e6)
				recMu.Unlock()
			}
		}
	}
	go collectTTFT(0, sinkOff)
	go collectTTFT(1, sinkOn)
	// 6 rounds x 640 per arm: a p99 of 3,840 requests rests on ~38 of them,
	// not on the 6 worst of 640 (whose run-to-run spread was ±15 %)
	const streams, perRound, rounds = 16, 640, 6
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var ttft, e2e [2][]float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for round := 0; round < rounds; round++ {
			for arm, px := range []string{pxOff, pxOn} {
				t, e := closedLoop(b, client, px, streams, perRound)
				ttft[arm] = append(ttft[arm], t...)
				e2e[arm] = append(e2e[arm], e...)
			}
		}
	}
	b.StopTimer()
	p99 := func(v []float64) float64 { sort.Float64s(v); return v[len(v)*99/100] }
	tOff, tOn, eOff, eOn := p99(ttft[0]), p99(ttft[1]), p99(e2e[0]), p99(e2e[1])
	b.ReportMetric(tOff, "ttft_p99_ms_off")
	b.ReportMetric(tOn, "ttft_p99_ms_mirrored")
	b.ReportMetric(eOff, "e2e_p99_ms_off")
	b.ReportMetric(eOn, "e2e_p99_ms_mirrored")
	b.ReportMetric(eOn/eOff, "e2e_p99_ratio")
	b.ReportMetric(tOn/tOff, "ttft_p99_ratio")
	// how much of a ratio is noise: a percentile bootstrap of each p99
	eLo, eHi := p99RatioCI(e2e[0], e2e[1])
	tLo, tHi := p99RatioCI(ttft[0], ttft[1])
	b.ReportMetric(eLo, "e2e_p99_ratio_ci_lo")
	b.ReportMetric(eHi, "e2e_p99_ratio_ci_hi")
	b.Logf("p99 ratio 95%% bootstrap intervals: E2E %.3f [%.3f, %.3f], TTFT %.3f [%.3f, %.3f]", eOn/eOff, eLo, eHi, tOn/tOff, tLo, tHi)
	recMu.Lock()
	b.Logf("recorded at the proxy: TTFT p99 %.2f ms off, %.2f ms mirrored", p99(recTTFT[0]), p99(recTTFT[1]))
	recMu.Unlock()
	pct := func(v []float64) string {
		sort.Float64s(v)
		return fmt.Sprintf("p50 %.2f p90 %.2f p99 %.2f max %.2f", v[len(v)/2], v[len(v)*9/10], v[len(v)*99/100], v[len(v)-1])
	}
	b.Logf("E2E ms without mirroring: %s", pct(e2e[0]))
	b.Logf("E2E ms, stalled shadow:   %s", pct(e2e[1]))
	b.Logf("%d requests per arm: TTFT p99 %.2f ms off, %.2f ms with a stalled shadow; E2E p99 %.2f / %.2f ms (ratio %.3f)",
		len(e2e[0]), tOff, tOn, eOff, eOn, eOn/eOff)
}

// p99RatioCI is the 95 % percentile-bootstrap interval of p99(on)/p99(off),
// from 1,000 resamples of each arm with replacement.
func p99RatioCI(off, on []float64) (lo, hi float64) {
	r := rand.New(rand.NewPCG(1, 2))
	res := func(v, buf []float64) float64 {
		for i := range buf {
			buf[i] = v[r.IntN(len(v))]
		}
		slices.Sort(buf)
		return buf[len(buf)*99/100]
	}
	bOff, bOn := make([]float64, len(off)), make([]float64, len(on))
	ratios := make([]float64, 1000)
	for i := range ratios {
		ratios[i] = res(on, bOn) / res(off, bOff)
	}
	slices.Sort(ratios)
	return ratios[len(ratios)*25/1000], ratios[len(ratios)*975/1000]
}

// closedLoop runs n requests with the given concurrency and returns the
// client-side TTFT (first body byte) and E2E in ms.
func closedLoop(tb testing.TB, client *http.Client, px string, conc, n int) (ttft, e2e []float64) {
	var mu sync.Mutex
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := range jobs {
				body := `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"r` + strings.Repeat("z", i%50) + `"}],"max_tokens":32,"ignore_eos":true,"stream":true}`
				start := time.Now()
				resp, err := client.Post(px+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					tb.Error(err)
					return
				}
				_, err = resp.Body.Read(buf)
				first := time.Since(start)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
				}
				resp.Body.Close()
				end := time.Since(start)
				if err != nil && err != io.EOF {
					tb.Error(err)
					return
				}
				mu.Lock()
				ttft = append(ttft, float64(first)/1e6)
				e2e = append(e2e, float64(end)/1e6)
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return ttft, e2e
}
