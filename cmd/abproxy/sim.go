package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/sim"
	"github.com/abproxy/abproxy/tokenizer"
)

type simFlags struct {
	logFlags
	listen    string
	profile   string
	model     string
	seed      int64
	speedup   float64
	truth     string
	tokenizer string
}

func newSimCmd() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a simulated vLLM OpenAI server (no GPU) for tests, demos and what-ifs",
		Long: `Serve vLLM's OpenAI API with a continuous-batching timing model instead of
a model: /v1/models, /v1/chat/completions, /v1/completions, /health,
/version and /metrics, streaming in the byte format vLLM 0.13 writes.

Profiles: "baseline" and "optimized" are shaped after the reference study's
Qwen2.5-14B configurations (bf16 vs FP8 + chunked prefill); a TOML file
can set every parameter of the timing model.`,
		Example: `  abproxy sim --listen 127.0.0.1:8010 --profile baseline
  abproxy sim --listen 127.0.0.1:8011 --profile optimized --speedup 20 --truth truth.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(&f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:8010", "listen address")
	fl.StringVar(&f.profile, "profile", "baseline", "timing profile: baseline, optimized, or a TOML file")
	fl.StringVar(&f.model, "model", "Qwen/Qwen2.5-14B-Instruct", "served model name")
	fl.Int64Var(&f.seed, "seed", 0, "seed for output text and timing jitter")
	fl.Float64Var(&f.speedup, "speedup", 1, "divide every simulated duration by this factor")
	fl.StringVar(&f.truth, "truth", "", "write one JSON line per request with the sim's own timestamps to this file")
	fl.StringVar(&f.tokenizer, "tokenizer", "", "model directory (tokenizer.json, or vocab.json + merges.txt): count prompt tokens exactly, chat template included, as vLLM does")
	f.logFlags.register(cmd)
	return cmd
}

func runSim(f *simFlags) error {
	if f.speedup <= 0 {
		return fmt.Errorf("--speedup must be greater than 0, got %g", f.speedup)
	}
	log, err := newLogger(f.level, f.format)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	prof, err := sim.LoadProfile(f.profile)
	if err != nil {
		return err
	}
	opts := sim.Options{Profile: prof, Model: f.model, Seed: f.seed, Speedup: f.speedup, Logger: log.Named("sim")}
	if f.tokenizer != "" {
		tok, err := tokenizer.Load(f.tokenizer)
		if err != nil {
			return fmt.Errorf("--tokenizer: %w", err)
		}
		opts.CountPrompt = tok.CountPrompt
	}
	var truthFile *os.File
	var truthBuf *bufio.Writer
	if f.truth != "" {
		truthFile, err = os.Create(f.truth)
		if err != nil {
			return fmt.Errorf("truth file: %w", err)
		}
		defer truthFile.Close()
		truthBuf = bufio.NewWriterSize(truthFile, 64<<10)
		opts.Truth = truthBuf
	}
	s, err := sim.New(opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	log.Info("sim serving", zap.String("listen", ln.Addr().String()), zap.String("profile", prof.Name),
		zap.String("model", f.model), zap.Float64("speedup", f.speedup))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	select {
	case err = <-errc:
	case <-sigs:
	}
	cerr := s.Close()
	if truthBuf != nil {
		if ferr := truthBuf.Flush(); ferr != nil && cerr == nil {
			cerr = ferr
		}
	}
	if err != nil {
		return err
	}
	return cerr
}
