package bench

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Config is everything `abproxy bench` was asked to do, one field per flag.
// It is stored in every run's metadata (APIKey excepted), so the JSON names
// are the flag names.
type Config struct {
	// Target is the base URL requests go to: an abproxy proxy, or a backend
	// directly (then bench records its own measurements).
	Target string `json:"target"`
	// Backends are the backend names to send to through the proxy
	// (X-ABProxy-Backend). Two names run both arms at the same time on the
	// same prompt sequence. Without a proxy one name is only a label.
	Backends []string `json:"backend,omitempty"`
	// Scenarios are genai-bench traffic scenarios; empty means
	// DefaultScenarios.
	Scenarios []string `json:"traffic_scenario"`
	// Concurrency is the closed-loop concurrency sweep; empty means
	// DefaultConcurrency (unused with RequestRates).
	Concurrency []int `json:"num_concurrency,omitempty"`
	// RequestRates switches to open loop: requests per second, one run per
	// rate.
	RequestRates []float64 `json:"request_rate,omitempty"`
	// Burstiness is the gamma shape of open-loop inter-arrival times: 1 is
	// Poisson, below 1 burstier, above 1 more regular (vLLM's definition).
	Burstiness float64 `json:"burstiness"`
	// MaxConcurrency caps requests in flight in open loop; 0 is no cap.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// MaxRequests ends a run after this many measured requests; 0 is no
	// limit (MaxTime must be set).
	MaxRequests int `json:"max_requests_per_run"`
	// MaxTime ends a run this long after its first measured request; 0 is
	// no limit. In-flight requests finish and are recorded either way.
	MaxTime time.Duration `json:"-"`
	// Warmup requests are sent first in each run and excluded from it.
	Warmup int `json:"warmup"`
	// Model is the request's model; "" takes the first of GET /v1/models.
	Model string `json:"api_model_name,omitempty"`
	// AdditionalParams is a JSON object merged into every request body last.
	AdditionalParams string `json:"additional_request_params,omitempty"`
	// Dataset is the prompt corpus file; "" uses a generated corpus.
	Dataset string `json:"dataset,omitempty"`
	// Tokenizer is a model directory (tokenizer.json, or vocab.json and
	// merges.txt); "" means approximate prompt sizes.
	Tokenizer string `json:"tokenizer,omitempty"`
	// Seed makes the prompt and arrival sequences reproducible.
	Seed int64 `json:"seed"`
	// DB is the SQLite file; "" keeps nothing. Behind a proxy it must be
	// the proxy's file.
	DB string `json:"db"`
	// RunName prefixes run names; "" means bench-YYYYMMDD-HHMMSS.
	RunName string `json:"run_name"`
	// APIKey is sent as a bearer token; never stored.
	APIKey string `json:"-"`
	// IdleTimeout fails a request whose server sends nothing for this long.
	IdleTimeout time.Duration `json:"-"`
	// MatchTimeout bounds the wait for the proxy's rows after a run.
	MatchTimeout time.Duration `json:"-"`
	// Scrape are Prometheus endpoints to store in backend_metrics while
	// runs go, as NAME=URL (the backend's name, its base or /metrics URL).
	// Empty scrapes the target itself when it is a backend; behind a proxy,
	// serve scrapes its backends into the same file.
	Scrape []string `json:"scrape,omitempty"`
	// ScrapeInterval is how often they are scraped, besides once at each
	// run's start and end; 0 turns scraping off.
	ScrapeInterval time.Duration `json:"-"`
}

// validate checks what can be checked without files or the network and
// fills defaults. Errors are one sentence naming the flag.
func (c *Config) validate() error {
	if c.Target == "" {
		return errors.New("--target is required: the proxy's URL (e.g. http://127.0.0.1:8080) or a backend's")
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = append([]string(nil), DefaultScenarios...)
	}
	for _, s := range c.Scenarios {
		if _, err := ParseScenario(s); err != nil {
			return err
		}
	}
	// each scenario × level is a run of its own name: a repeat would fail
	// only when its turn comes, after the runs before it
	if v, ok := repeated(c.Scenarios); ok {
		return fmt.Errorf("--traffic-scenario lists %q twice", v)
	}
	if v, ok := repeated(c.Concurrency); ok {
		return fmt.Errorf("--num-concurrency lists %d twice", v)
	}
	if v, ok := repeated(c.RequestRates); ok {
		return fmt.Errorf("--request-rate lists %v twice", v)
	}
	if len(c.RequestRates) > 0 {
		if len(c.Concurrency) > 0 {
			return errors.New("--num-concurrency and --request-rate exclude each other: cap an open-loop run with --max-concurrency")
		}
		for _, r := range c.RequestRates {
			if !(r > 0) || math.IsInf(r, 0) {
				return fmt.Errorf("--request-rate must be a positive number of requests per second, got %v", r)
			}
		}
	} else if len(c.Concurrency) == 0 {
		c.Concurrency = append([]int(nil), DefaultConcurrency...)
	}
	for _, n := range c.Concurrency {
		if n < 1 {
			return fmt.Errorf("--num-concurrency must be at least 1, got %d", n)
		}
	}
	if c.Burstiness == 0 {
		c.Burstiness = 1
	}
	if !(c.Burstiness > 0) || math.IsInf(c.Burstiness, 0) {
		return fmt.Errorf("--burstiness must be a positive number, got %v", c.Burstiness)
	}
	if c.MaxConcurrency < 0 {
		return fmt.Errorf("--max-concurrency must not be negative, got %d", c.MaxConcurrency)
	}
	if c.MaxConcurrency > 0 && len(c.RequestRates) == 0 {
		return errors.New("--max-concurrency caps --request-rate runs; for closed loop use --num-concurrency")
	}
	if c.MaxRequests < 0 {
		return fmt.Errorf("--max-requests-per-run must not be negative, got %d", c.MaxRequests)
	}
	if c.MaxTime < 0 {
		return fmt.Errorf("--max-time-per-run must not be negative, got %s", c.MaxTime)
	}
	if c.MaxRequests == 0 && c.MaxTime == 0 {
		return errors.New("--max-requests-per-run and --max-time-per-run are both 0: a run would never end")
	}
	if c.Warmup < 0 {
		return fmt.Errorf("--warmup must not be negative, got %d", c.Warmup)
	}
	if len(c.Backends) > 2 {
		return fmt.Errorf("--backend takes one or two names, got %d (%s)", len(c.Backends), strings.Join(c.Backends, ","))
	}
	for _, b := range c.Backends {
		if b == "" || strings.ContainsAny(b, "\r\n") {
			return fmt.Errorf("--backend name %q is empty or has a line break", b)
		}
	}
	if b, ok := repeated(c.Backends); ok {
		return fmt.Errorf("--backend names the same backend twice (%s)", b)
	}
	if strings.ContainsAny(c.RunName, "\r\n") {
		return errors.New("--run-name must not contain a line break")
	}
	for _, v := range c.Scrape {
		if _, err := parseScrape(v); err != nil {
			return err
		}
	}
	if c.ScrapeInterval < 0 {
		return fmt.Errorf("--scrape-interval must not be negative, got %s (0 turns scraping off)", c.ScrapeInterval)
	}
	if c.IdleTimeout < 0 || c.MatchTimeout < 0 {
		return errors.New("timeouts must not be negative")
	}
	if c.MatchTimeout == 0 {
		c.MatchTimeout = 15 * time.Second
	}
	return nil
}

// ParseMaxTime reads --max-time-per-run: a bare number is minutes, as in
// genai-bench ("30", "0.5"); anything else is a Go duration ("90s", "1h").
func ParseMaxTime(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > 1e6 {
			return 0, fmt.Errorf("--max-time-per-run %q is not a usable number of minutes", s)
		}
		return time.Duration(f * float64(time.Minute)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--max-time-per-run %q is neither minutes (30) nor a duration (90s, 1h)", s)
	}
	return d, nil
}

// repeated returns the first value that xs holds twice.
func repeated[T comparable](xs []T) (T, bool) {
	seen := make(map[T]bool, len(xs))
	for _, x := range xs {
		if seen[x] {
			return x, true
		}
		seen[x] = true
	}
	var zero T
	return zero, false
}
