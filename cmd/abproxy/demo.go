package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

type demoFlags struct {
	db          string
	requests    int
	concurrency int
	speedup     float64
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole product on two built-in simulated backends (no GPU needed)",
		Long: `Start a baseline and an optimized simulated vLLM server, the proxy in front
of them and a short streaming load against each, then print what was
measured and where the SQLite file is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), cmd.OutOrStdout(), &f) },
	}
	cmd.Flags().StringVar(&f.db, "db", "abproxy-demo.db", "SQLite file to write (replaced if it exists)")
	cmd.Flags().IntVar(&f.requests, "requests", 96, "requests per backend")
	cmd.Flags().IntVar(&f.concurrency, "concurrency", 16, "concurrent streams per backend")
	cmd.Flags().Float64Var(&f.speedup, "speedup", 10, "sim speed-up factor")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, f *demoFlags) error {
	if f.requests < 1 || f.concurrency < 1 || f.speedup <= 0 {
		return fmt.Errorf("--requests, --concurrency and --speedup must be positive")
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(f.db + suffix); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove old demo database: %w", err)
		}
	}
	cfg := config.Default()
	for _, name := range []string{"baseline", "optimized"} {
		prof, _ := sim.BuiltinProfile(name)
		s, url, err := sim.Start(sim.Options{Profile: prof, Speedup: f.speedup, Seed: 1}, "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("start %s sim: %w", name, err)
		}
		defer s.Close()
		cfg.Backends = append(cfg.Backends, config.Backend{Name: name, URL: url, Model: "Qwen/Qwen2.5-14B-Instruct"})
		fmt.Fprintf(out, "sim %-9s  %s  (profile %s, %gx speed)\n", name, url, name, f.speedup)
	}
	rec, err := recorder.Open(recorder.Options{Path: f.db})
	if err != nil {
		return err
	}
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Run: "demo"})
	if err != nil {
		rec.Close()
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		rec.Close()
		return err
	}
	go p.Serve(ln) //nolint:errcheck
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "proxy          %s\n\n", base)

	var done, failed atomic.Int64
	total := int64(f.requests * len(cfg.Backends))
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * f.concurrency}}
	start := time.Now()
	for _, b := range cfg.Backends {
		jobs := make(chan int)
		for w := 0; w < f.concurrency; w++ {
			wg.Add(1)
			go func(backend string) {
				defer wg.Done()
				for i := range jobs {
					if err := demoRequest(client, base, backend, i); err != nil {
						failed.Add(1)
					}
					done.Add(1)
				}
			}(b.Name)
		}
		go func() {
			for i := 0; i < f.requests; i++ {
				jobs <- i
			}
			close(jobs)
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-finished:
			break loop
		case <-tick.C:
			fmt.Fprintf(out, "\r  %d/%d requests, %d failed, %.1fs", done.Load(), total, failed.Load(), time.Since(start).Seconds())
		}
	}
	fmt.Fprintf(out, "\r  %d/%d requests, %d failed, %.1fs\n\n", done.Load(), total, failed.Load(), time.Since(start).Seconds())
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx)
	if err := rec.Close(); err != nil {
		return err
	}
	if err := demoSummary(out, f.db); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nEvery request is in %s; try:\n  sqlite3 %s 'select backend, count(*), avg(first_token_ns-start_ns)/1e6 from requests group by 1'\n", f.db, f.db)
	return nil
}

func demoRequest(c *http.Client, base, backend string, i int) error {
	words := 20 + (i*37)%200
	body := fmt.Sprintf(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"request %d: %s"}],"max_tokens":%d,"ignore_eos":true,"stream":true}`,
		i, strings.Repeat("word ", words), 32+(i*13)%96)
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(proxy.HeaderBackend, backend)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

// demoSummary prints per-backend medians straight from the SQLite file, to
// show that what the demo measured is on disk.
func demoSummary(out io.Writer, path string) error {
	db, err := recorder.OpenReadOnly(path)
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.Query(`SELECT backend, error, first_token_ns - start_ns, end_ns - start_ns, completion_tokens, start_ns, end_ns FROM requests ORDER BY backend`)
	if err != nil {
		return err
	}
	defer rows.Close()
	type agg struct {
		n, errs     int
		ttft, e2e   []float64
		tokens      int64
		first, last int64
	}
	by := map[string]*agg{}
	var names []string
	for rows.Next() {
		var backend string
		var errClass sql.NullString
		var ttft, e2e, tokens, s, e sql.NullInt64
		if err := rows.Scan(&backend, &errClass, &ttft, &e2e, &tokens, &s, &e); err != nil {
			return err
		}
		a := by[backend]
		if a == nil {
			a = &agg{first: s.Int64}
			by[backend] = a
			names = append(names, backend)
		}
		a.n++
		if errClass.String != "" {
			a.errs++
			continue
		}
		a.ttft = append(a.ttft, float64(ttft.Int64)/1e6)
		a.e2e = append(a.e2e, float64(e2e.Int64)/1e6)
		a.tokens += tokens.Int64
		a.first = min(a.first, s.Int64)
		a.last = max(a.last, e.Int64)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%-10s %8s %7s %13s %13s %14s\n", "backend", "requests", "errors", "TTFT p50 ms", "E2E p50 ms", "output tok/s")
	for _, n := range names {
		a := by[n]
		tput := 0.0
		if a.last > a.first {
			tput = float64(a.tokens) / (float64(a.last-a.first) / 1e9)
		}
		fmt.Fprintf(out, "%-10s %8d %7d %13.1f %13.1f %14.1f\n", n, a.n, a.errs, median(a.ttft), median(a.e2e), tput)
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
