package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/abproxy/abproxy/bench"
	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/report"
	"github.com/abproxy/abproxy/sim"
)

// The demo's load: two of genai-bench's default scenarios (chat and RAG)
// over a small concurrency sweep that takes the baseline past its KV
// budget, so the report tells the reference study's story in a minute.
var (
	demoScenarios   = []string{"D(100,100)", "D(2000,200)"}
	demoConcurrency = []int{2, 8, 32}
	// demoSLO is the goodput objective at the sims' speed (real-time
	// objectives divided by the default speed-up).
	demoSLO = "ttft=200ms,tpot=5ms"
)

type demoFlags struct {
	db       string
	html     string
	requests int
	speedup  float64
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole product on two built-in simulated backends (no GPU needed)",
		Long: `Start a baseline and an optimized simulated vLLM server and the proxy in
front of them, benchmark both at once through the proxy (two scenarios, a
small concurrency sweep, sims sped up), then print the A/B report and write
it as a self-contained HTML page beside the SQLite file. About a minute on
two cores; no flags needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), cmd.OutOrStdout(), &f) },
	}
	cmd.Flags().StringVar(&f.db, "db", "abproxy-demo.db", "SQLite file to write (replaced if it exists)")
	cmd.Flags().StringVar(&f.html, "html", "", "HTML report to write (default report.html beside --db)")
	cmd.Flags().IntVar(&f.requests, "requests", 64, "requests per run (one run per scenario × concurrency × backend)")
	cmd.Flags().Float64Var(&f.speedup, "speedup", 8, "sim speed-up factor")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, f *demoFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if f.requests < 1 || f.speedup <= 0 {
		return fmt.Errorf("--requests and --speedup must be positive")
	}
	if f.html == "" {
		f.html = filepath.Join(filepath.Dir(f.db), "report.html")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(f.db + suffix); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove old demo database: %w", err)
		}
	}
	start := time.Now()

	// two simulated servers
	cfg := config.Default()
	const model = "Qwen/Qwen2.5-14B-Instruct"
	for _, name := range []string{"baseline", "optimized"} {
		prof, _ := sim.BuiltinProfile(name)
		s, url, err := sim.Start(sim.Options{Profile: prof, Model: model, Speedup: f.speedup, Seed: 1}, "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("start %s sim: %w", name, err)
		}
		defer s.Close()
		cfg.Backends = append(cfg.Backends, config.Backend{Name: name, URL: url, Model: model})
		fmt.Fprintf(out, "sim %-9s %s  profile %s: KV %d tokens, step %s + %s/seq, prefill %.0f tok/s, chunked prefill %d; %gx speed\n",
			name, url, name, prof.KVCapacityTokens, prof.StepBase, prof.StepPerSeq, prof.PrefillTokensPerSec, prof.PrefillChunkTokens, f.speedup)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	// the proxy, recording into the demo database
	rec, err := recorder.Open(recorder.Options{Path: f.db, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		return err
	}
	recOpen := true
	defer func() {
		if recOpen {
			rec.Close()
		}
	}()
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Run: "demo-proxy"})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go p.Serve(ln) //nolint:errcheck // ends with Shutdown
	target := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "proxy         %s  recording into %s\n\n", target, f.db)

	// the benchmark: both backends at once through the proxy
	// the sims' own /metrics go into the same file, as serve would scrape them
	var scrape []string
	for _, b := range cfg.Backends {
		scrape = append(scrape, b.Name+"="+b.URL)
	}
	benchErr := runDemoBench(ctx, out, target, scrape, f)
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx)
	recOpen = false
	if err := rec.Close(); err != nil {
		return err
	}
	if benchErr != nil {
		return benchErr
	}

	// the report
	db, err := recorder.OpenReadOnly(f.db)
	if err != nil {
		return err
	}
	defer db.Close()
	slo, _ := report.ParseSLO(demoSLO)
	rep, err := report.Build(ctx, db, report.Options{Database: f.db, SLO: slo})
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	if err := report.WriteText(out, rep); err != nil {
		return err
	}
	if err := writeFileAtomic(f.html, func(w io.Writer) error { return report.WriteHTML(w, rep) }); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nDemo finished in %.0fs. Every request is in %s; the report with charts is %s.\nTry: abproxy report --db %s --format markdown\n",
		time.Since(start).Seconds(), f.db, f.html, f.db)
	return nil
}

// runDemoBench runs the demo's benchmark with live progress on out.
func runDemoBench(ctx context.Context, out io.Writer, target string, scrape []string, f *demoFlags) error {
	tty := false
	if fd, ok := out.(interface{ Fd() uintptr }); ok {
		tty = isatty.IsTerminal(fd.Fd())
	}
	b, err := bench.New(ctx, bench.Config{
		Target:         target,
		Backends:       []string{"baseline", "optimized"},
		Scenarios:      demoScenarios,
		Concurrency:    demoConcurrency,
		MaxRequests:    f.requests,
		MaxTime:        time.Minute,
		Seed:           1,
		DB:             f.db,
		RunName:        "demo",
		IdleTimeout:    30 * time.Second,
		MatchTimeout:   10 * time.Second,
		Scrape:         scrape,
		ScrapeInterval: time.Second,
	}, bench.Options{
		NewScraper:       newBenchScraper(time.Second),
		Out:              io.Discard, // the report below replaces bench's own table
		Progress:         out,
		TTY:              tty,
		ProgressInterval: 2 * time.Second,
		Version:          version,
		Args:             os.Args[1:],
	})
	if err != nil {
		return fmt.Errorf("demo benchmark: %w", err)
	}
	_, err = b.Run(ctx)
	if cerr := b.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if errors.Is(err, bench.ErrInterrupted) {
		return exitError{130, errors.New("demo interrupted")}
	}
	return err
}
