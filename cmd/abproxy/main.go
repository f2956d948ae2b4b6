// Command abproxy is an OpenAI-compatible benchmarking proxy for LLM
// serving. This package only wires flags to the packages that do the work.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "abproxy:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

// exitError carries a specific exit status up to main.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "abproxy",
		Short: "OpenAI-compatible benchmarking proxy for A/B tests of LLM serving",
		Long: `abproxy sits in front of a baseline and an optimized inference backend,
routes or mirrors traffic to them, timestamps every streamed chunk
(TTFT, ITL, TPOT, end-to-end latency), keeps every measurement in SQLite
and reports the comparison.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.AddCommand(newServeCmd(), newSimCmd(), newDemoCmd(), newLaunchCmd(), newDownCmd(), newStatusCmd(), newBenchCmd(), newReportCmd())
	return root
}

// logFlags are the logging flags every long-running command shares.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.level, "log-level", "", "log level: debug, info, warn or error (default from config, else info)")
	cmd.Flags().StringVar(&l.format, "log-format", "", "log format: console or json (default from config, else console)")
}

// newLogger builds a zap logger writing to stderr.
func newLogger(level, format string) (*zap.Logger, error) {
	if level == "" {
		level = "info"
	}
	if format == "" {
		format = "console"
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q is not one of debug, info, warn, error", level)
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format %q is not console or json", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), nil
}
