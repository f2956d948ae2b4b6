package report

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Options select and shape a report. The zero value reports everything
// with the defaults.
type Options struct {
	// Database labels the report (the file path as the user gave it).
	Database string
	// Runs selects runs by name: an exact name, a prefix ending at a "/"
	// ("demo" selects "demo/D(100,100)/c2/baseline"), or a pattern where *
	// matches any text and ? one character. Empty selects every run.
	Runs []string
	// Backends keeps only these backends; empty keeps all.
	Backends []string
	// Since keeps requests that started at or after it; zero keeps all.
	Since time.Time
	// Baseline is the backend the others are compared with; "" means the
	// backend named "baseline" if there is one, else the first by name.
	Baseline string
	// SLO sets the goodput objectives; zero computes no goodput.
	SLO SLO
	// Window is the live-traffic window; 0 means DefaultWindow.
	Window time.Duration
	// Seed seeds the bootstrap; 0 means DefaultSeed.
	Seed uint64
	// Resamples is the number of bootstrap replicates; 0 means
	// DefaultResamples.
	Resamples int
	// Now is the report's time (GeneratedAt); zero means time.Now().
	Now time.Time
}

// Defaults for Options.
const (
	DefaultWindow = 5 * time.Minute
	DefaultSeed   = 1
)

func (o *Options) defaults() {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Seed == 0 {
		o.Seed = DefaultSeed
	}
	if o.Resamples <= 0 {
		o.Resamples = DefaultResamples
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
}

// ParseSLO reads "ttft=500ms,tpot=50ms,e2e=10s": any subset of ttft, tpot
// and e2e, each a Go duration (a bare number is milliseconds).
func ParseSLO(s string) (SLO, error) {
	var slo SLO
	s = strings.TrimSpace(s)
	if s == "" {
		return slo, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return SLO{}, fmt.Errorf("--slo %q: %q is not NAME=DURATION (names: ttft, tpot, e2e)", s, part)
		}
		ms, err := parseMS(strings.TrimSpace(v))
		if err != nil || ms <= 0 {
			return SLO{}, fmt.Errorf("--slo %q: %q is not a positive duration such as 500ms or 10s", s, v)
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "ttft":
			slo.TTFTms = ms
		case "tpot":
			slo.TPOTms = ms
		case "e2e":
			slo.E2Ems = ms
		default:
			return SLO{}, fmt.Errorf("--slo %q: unknown objective %q (names: ttft, tpot, e2e)", s, k)
		}
	}
	return slo, nil
}

func parseMS(v string) (float64, error) {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		return f, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	return float64(d) / 1e6, nil
}

// String renders the SLO as ParseSLO reads it.
func (s SLO) String() string {
	var parts []string
	add := func(k string, ms float64) {
		if ms > 0 {
			parts = append(parts, k+"="+time.Duration(ms*1e6).String())
		}
	}
	add("ttft", s.TTFTms)
	add("tpot", s.TPOTms)
	add("e2e", s.E2Ems)
	return strings.Join(parts, ",")
}

// ParseSince reads --since: a duration back from now ("2h", "30m"), an
// RFC 3339 time ("2025-01-02T15:04:05Z"), or a date ("2025-01-02", UTC).
func ParseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: a duration back from now must not be negative", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q is neither a duration back from now (2h), an RFC 3339 time nor a date (2025-01-02)", s)
}

// Formats are the output formats, in the order help texts list them.
var Formats = []string{"text", "markdown", "json", "csv", "html"}
