package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/report"
)

type reportFlags struct {
	db       string
	format   string
	out      string
	runs     []string
	backends []string
	since    string
	baseline string
	slo      string
	window   time.Duration
}

func newReportCmd() *cobra.Command {
	var f reportFlags
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Report the A/B comparison from the SQLite file: the study's tables, intervals, verdicts, charts",
		Long: `Read an abproxy database and report what was measured: per backend the
reference study's Max Throughput, Min Latency and Improvement Summary tables;
per run TTFT, TPOT, ITL and E2E (mean, P50, P90, P95, P99, min, max),
throughput, error rate with HTTP status counts and goodput; for every
compared metric the baseline-vs-candidate difference with a 95% bootstrap
confidence interval and a plain verdict; mirrored pairs (paired differences,
output agreement); live traffic by time window; and each run's recorded
configuration. The JSON schema is documented in docs/report.md.`,
		Example: `  abproxy report --db study.db
  abproxy report --db study.db --format html --out report.html
  abproxy report --db study.db --run 'bench-2025*' --baseline baseline --slo ttft=500ms,tpot=50ms,e2e=10s
  abproxy report --db prod.db --since 2h --window 10m --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("format") && f.out != "" {
				f.format = formatFromExt(f.out, f.format)
			}
			return runReport(cmd.Context(), cmd.OutOrStdout(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.db, "db", "abproxy.db", "SQLite file to read")
	fl.StringVarP(&f.format, "format", "f", "text", "output format: "+strings.Join(report.Formats, ", ")+" (default from --out's extension)")
	fl.StringVarP(&f.out, "out", "o", "", "write to FILE instead of standard output")
	fl.StringSliceVar(&f.runs, "run", nil, "runs to report: NAME, a prefix ending at / (NAME/...), or a pattern with * and ?; repeatable")
	fl.StringSliceVar(&f.backends, "backend", nil, "backends to report; repeatable or comma-separated (default all)")
	fl.StringVar(&f.since, "since", "", "only requests started since: a duration back from now (2h), an RFC 3339 time or a date")
	fl.StringVar(&f.baseline, "baseline", "", `backend the others are compared with (default "baseline" if present, else the first by name)`)
	fl.StringVar(&f.slo, "slo", "", "goodput objectives, e.g. ttft=500ms,tpot=50ms,e2e=10s (any subset)")
	fl.DurationVar(&f.window, "window", report.DefaultWindow, "time window for live traffic")
	return cmd
}

// formatFromExt picks the format from --out's extension.
func formatFromExt(out, def string) string {
	switch strings.ToLower(filepath.Ext(out)) {
	case ".html", ".htm":
		return "html"
	case ".md", ".markdown":
		return "markdown"
	case ".json":
		return "json"
	case ".csv":
		return "csv"
	case ".txt":
		return "text"
	}
	return def
}

func runReport(ctx context.Context, stdout io.Writer, f *reportFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if f.format == "md" {
		f.format = "markdown"
	}
	if !slices.Contains(report.Formats, f.format) {
		return fmt.Errorf("--format %q is not one of %s", f.format, strings.Join(report.Formats, ", "))
	}
	if f.window <= 0 {
		return fmt.Errorf("--window must be positive, got %s", f.window)
	}
	slo, err := report.ParseSLO(f.slo)
	if err != nil {
		return err
	}
	now := time.Now()
	since, err := report.ParseSince(f.since, now)
	if err != nil {
		return err
	}
	db, err := recorder.OpenReadOnly(f.db)
	if err != nil {
		return err
	}
	defer db.Close()
	rep, err := report.Build(ctx, db, report.Options{
		Database: f.db, Runs: f.runs, Backends: f.backends, Since: since,
		Baseline: f.baseline, SLO: slo, Window: f.window, Now: now,
	})
	if err != nil {
		return err
	}
	if f.out == "" || f.out == "-" {
		return report.Render(stdout, rep, f.format)
	}
	return writeFileAtomic(f.out, func(w io.Writer) error { return report.Render(w, rep, f.format) })
}

// writeFileAtomic writes path through a temporary file in the same
// directory, so a failed write never leaves half a report.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
