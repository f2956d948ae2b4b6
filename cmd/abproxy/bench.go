package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/abproxy/abproxy/admin"
	"github.com/abproxy/abproxy/bench"
	"github.com/abproxy/abproxy/recorder"
)

type benchFlags struct {
	cfg          bench.Config
	maxTime      string
	progressEach time.Duration
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Send genai-bench-style synthetic traffic: scenarios, concurrency sweeps, request-rate load",
		Long: `Generate synthetic chat traffic against the proxy (or a backend directly) and
record every request. Flags take genai-bench's names, so a genai-bench
command translates one to one.

Each scenario × load level × backend is one run in the database (kind
"bench", full metadata in runs.meta). Through the proxy, bench files its
requests under the run (X-ABProxy-Run), pins the backend
(X-ABProxy-Backend) and afterwards adds its client-side times to the
proxy's records; the difference is the proxy's overhead, reported per run.
Against a backend directly, bench writes complete request rows itself,
and stores the backend's own /metrics in backend_metrics while it runs
(--scrape-interval; behind a proxy, serve does that), so the report can
show server state beside client latency.

Prompt sizes are exact with --tokenizer: the prompt_tokens the server
reports equals the planned count, chat template included. Ctrl-C stops:
finished runs are kept, the current one is marked incomplete.`,
		Example: `  abproxy bench --target http://127.0.0.1:8080 --backend baseline,optimized \
    --traffic-scenario "D(100,1000)" --num-concurrency 1,2,4,8 \
    --max-requests-per-run 256 --max-time-per-run 10 \
    --dataset sonnet.txt --tokenizer /models/Qwen2.5-14B-Instruct
  abproxy bench --target http://127.0.0.1:8010 --db direct.db \
    --traffic-scenario "N(480,240)/(300,150)" --request-rate 4 --burstiness 0.5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	c := &f.cfg
	fl.StringVar(&c.Target, "target", "", "base URL to send to: the abproxy proxy, or a backend directly (required)")
	fl.StringSliceVar(&c.Backends, "backend", nil, "backend NAME, or NAME,NAME to run both arms at once (through the proxy)")
	fl.StringArrayVar(&c.Scenarios, "traffic-scenario", nil, "genai-bench scenario, repeatable: D(in,out), N(mi,si)/(mo,so), U(lo,hi)/(lo,hi), U(hi_in,hi_out), dataset (default the 5 genai-bench defaults)")
	fl.IntSliceVar(&c.Concurrency, "num-concurrency", nil, "closed-loop concurrency, repeatable or comma-separated (default 1,2,4,...,256)")
	fl.Float64SliceVar(&c.RequestRates, "request-rate", nil, "open loop: requests per second, repeatable or comma-separated")
	fl.Float64Var(&c.Burstiness, "burstiness", 1, "open-loop gamma shape: 1 Poisson, <1 burstier, >1 more regular")
	fl.IntVar(&c.MaxConcurrency, "max-concurrency", 0, "cap on requests in flight in open loop (0: none)")
	fl.IntVar(&c.MaxRequests, "max-requests-per-run", 1024, "measured requests per run (0: no limit)")
	fl.StringVar(&f.maxTime, "max-time-per-run", "30", "time limit per run: minutes as in genai-bench, or a duration like 90s (0: none)")
	fl.IntVar(&c.Warmup, "warmup", 0, "warmup requests per run, sent first and excluded from the run")
	fl.StringVar(&c.Model, "api-model-name", "", "model in the request body (default: the first of GET /v1/models)")
	fl.StringVar(&c.AdditionalParams, "additional-request-params", "", `JSON object merged into every request body last, e.g. '{"temperature":0.7}'`)
	fl.StringVar(&c.Dataset, "dataset", "", "prompt corpus: text file of lines (genai-bench's sonnet.txt) or .jsonl (default: a generated corpus)")
	fl.StringVar(&c.Tokenizer, "tokenizer", "", "model directory with tokenizer.json or vocab.json + merges.txt, for exact prompt sizes")
	fl.Int64Var(&c.Seed, "seed", 0, "seed of the prompt and arrival sequences")
	fl.StringVar(&c.DB, "db", "abproxy.db", "SQLite file; through the proxy, the proxy's file ('' stores nothing)")
	fl.StringVar(&c.RunName, "run-name", "", "prefix of run names (default bench-YYYYMMDD-HHMMSS)")
	fl.StringVar(&c.APIKey, "api-key", "", "bearer token for the target (default $OPENAI_API_KEY); never stored")
	fl.DurationVar(&c.IdleTimeout, "idle-timeout", 5*time.Minute, "fail a request when the server sends nothing for this long")
	fl.DurationVar(&c.MatchTimeout, "match-timeout", 15*time.Second, "how long to wait for the proxy's records after each run")
	fl.DurationVar(&f.progressEach, "progress-interval", 10*time.Second, "progress line interval when not on a terminal")
	fl.StringArrayVar(&c.Scrape, "scrape", nil, "NAME=URL: a backend's Prometheus endpoint (base or /metrics URL) to store in backend_metrics while benchmarking, repeatable (default: the target itself when it is a backend; behind a proxy, serve scrapes)")
	fl.DurationVar(&c.ScrapeInterval, "scrape-interval", bench.DefaultScrapeInterval, "how often to scrape backend /metrics, besides at each run's start and end (0: no scraping)")
	return cmd
}

func runBench(ctx context.Context, f *benchFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	d, err := bench.ParseMaxTime(f.maxTime)
	if err != nil {
		return err
	}
	f.cfg.MaxTime = d
	if f.cfg.APIKey == "" {
		f.cfg.APIKey = os.Getenv("OPENAI_API_KEY")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	finished := make(chan struct{})
	defer close(finished) // runs before stop
	go func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		select {
		case <-finished:
			return // stop() at the end, not a signal
		default:
		}
		stop() // a second Ctrl-C ends the process at once
		fmt.Fprintln(os.Stderr, "abproxy bench: interrupted; recording what finished (Ctrl-C again to quit now)")
	}()
	b, err := bench.New(ctx, f.cfg, bench.Options{
		Out:              os.Stdout,
		Progress:         os.Stderr,
		TTY:              isatty.IsTerminal(os.Stderr.Fd()),
		ProgressInterval: f.progressEach,
		Version:          version,
		Args:             os.Args[1:],
		NewScraper:       newBenchScraper(f.cfg.ScrapeInterval),
	})
	if err != nil {
		if errors.Is(err, bench.ErrInterrupted) {
			return exitError{130, err}
		}
		return err
	}
	_, err = b.Run(ctx)
	if cerr := b.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if errors.Is(err, bench.ErrInterrupted) {
		return exitError{130, fmt.Errorf("interrupted: finished runs are kept, the current one is marked incomplete")}
	}
	return err
}

// newBenchScraper plugs admin.Scraper into bench (which does not import
// the control plane): each scrape is bounded by the interval (1–10 s).
func newBenchScraper(interval time.Duration) func([]bench.ScrapeTarget, func([]recorder.BackendMetric) error) bench.Scraper {
	return func(targets []bench.ScrapeTarget, store func([]recorder.BackendMetric) error) bench.Scraper {
		s := &admin.Scraper{Interval: interval, Store: store}
		for _, t := range targets {
			s.Targets = append(s.Targets, admin.ScrapeTarget{Backend: t.Backend, URL: t.URL})
		}
		return s
	}
}
