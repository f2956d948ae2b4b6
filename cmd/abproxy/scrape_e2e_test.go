package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeScrapesIntoReport runs two sims, `abproxy serve` scraping their
// /metrics every 200 ms, and `abproxy bench` through the proxy on both
// arms, then `abproxy report`: every run has its backend's server state,
// and vLLM's own TTFT histogram counted exactly the run's requests.
func TestServeScrapesIntoReport(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "study.db")
	base, opt, proxyAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	start(t, "sim", "--listen", base, "--profile", "baseline", "--speedup", "20")
	start(t, "sim", "--listen", opt, "--profile", "optimized", "--speedup", "20")
	waitHealthy(t, "http://"+base)
	waitHealthy(t, "http://"+opt)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
[proxy]
listen = %q
[recorder]
path = %q
[admin]
scrape_interval = "200ms"
[[backend]]
name = "baseline"
url = "http://%s"
[[backend]]
name = "optimized"
url = "http://%s"
`, proxyAddr, db, base, opt)), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "serve", "--config", cfg, "--admin-listen", "off")
	waitHealthy(t, "http://"+proxyAddr)

	out, err := exec.Command(binPath, "bench", "--target", "http://"+proxyAddr, "--db", db, "--backend", "baseline,optimized",
		"--traffic-scenario", "D(60,200)", "--num-concurrency", "2", "--max-requests-per-run", "8", "--run-name", "scr").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	time.Sleep(600 * time.Millisecond) // a scrape after the last request

	out, err = exec.Command(binPath, "report", "--db", db, "--format", "json").Output()
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	var rep struct {
		Runs []struct {
			Run       string `json:"run"`
			Backend   string `json:"backend"`
			Completed int    `json:"completed"`
			TTFT      struct {
				P50 *float64 `json:"p50"`
			} `json:"ttft_ms"`
			Server *struct {
				Samples      int      `json:"samples"`
				RunningMax   *float64 `json:"running_max"`
				KVCacheMax   *float64 `json:"kv_cache_usage_max"`
				Preemptions  *float64 `json:"preemptions"`
				TTFTRequests *float64 `json:"ttft_requests"`
				TTFTP50      *float64 `json:"ttft_p50_ms"`
			} `json:"server"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, r := range rep.Runs {
		if !strings.HasPrefix(r.Run, "scr/") {
			continue
		}
		seen++
		s := r.Server
		if s == nil {
			t.Errorf("%s: no server state", r.Run)
			continue
		}
		if s.TTFTRequests == nil || int(*s.TTFTRequests) != r.Completed || r.Completed != 8 {
			t.Errorf("%s: vLLM counted %v requests, the run has %d completed (want 8)", r.Run, s.TTFTRequests, r.Completed)
		}
		if s.Samples == 0 || s.RunningMax == nil || s.KVCacheMax == nil || s.Preemptions == nil || s.TTFTP50 == nil || r.TTFT.P50 == nil {
			t.Errorf("%s: server state incomplete: %+v", r.Run, *s)
			continue
		}
		t.Logf("%s: %d scrapes, running max %.0f, KV max %.1f%%, vLLM TTFT P50 %.1f ms, client %.1f ms",
			r.Run, s.Samples, *s.RunningMax, 100**s.KVCacheMax, *s.TTFTP50, *r.TTFT.P50)
	}
	if seen != 2 {
		t.Fatalf("%d bench runs in the report, want 2", seen)
	}
	out, err = exec.Command(binPath, "report", "--db", db).Output()
	if err != nil || !strings.Contains(string(out), "Server State") {
		t.Errorf("text report without the server section (%v)", err)
	}
}
