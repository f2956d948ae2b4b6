package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/recorder"
)

// DefaultScrapeSeries are the vLLM series a Scraper keeps by default:
// server state (running and waiting requests, KV-cache usage, preemptions),
// token counters and vLLM's own latency histograms. Counter names are given
// without "_total"; both spellings match.
var DefaultScrapeSeries = []string{
	"vllm:num_requests_running",
	"vllm:num_requests_waiting",
	"vllm:kv_cache_usage_perc",
	"vllm:gpu_cache_usage_perc", // vLLM before 0.10
	"vllm:num_preemptions",
	"vllm:prompt_tokens",
	"vllm:generation_tokens",
	"vllm:request_success",
	"vllm:time_to_first_token_seconds",
	"vllm:inter_token_latency_seconds",
	"vllm:time_per_output_token_seconds",
	"vllm:e2e_request_latency_seconds",
	"vllm:request_queue_time_seconds",
}

// ScrapeTarget is one backend whose Prometheus endpoint is scraped.
type ScrapeTarget struct {
	Backend string // backend name, stored in backend_metrics.backend
	URL     string // full metrics URL, e.g. http://host:8000/metrics
}

// Scraper polls each target's /metrics every Interval and stores the
// selected series through Store (recorder.WriteBackendMetrics). It runs
// on its own goroutines and never touches the data plane.
type Scraper struct {
	// Targets are the backends to scrape.
	Targets []ScrapeTarget
	// Interval between scrapes; default 5s.
	Interval time.Duration
	// Timeout bounds one scrape; default Interval (at most 10s).
	Timeout time.Duration
	// Keep selects series by family name; nil keeps DefaultScrapeSeries.
	Keep func(name string) bool
	// Store writes one scrape's rows; required.
	Store func([]recorder.BackendMetric) error
	// Client is the HTTP client; nil uses a private one.
	Client *http.Client
	// Metrics, when set, counts scrapes (abproxy_backend_scrapes_total, abproxy_backend_up).
	Metrics *Metrics
	// Logger logs failures, at most once per target until it recovers.
	Logger *zap.Logger

	failing sync.Map // backend -> bool, for log de-duplication
}

// Run scrapes every Interval until ctx is done. The first scrape is
// immediate.
func (s *Scraper) Run(ctx context.Context) {
	iv := s.Interval
	if iv <= 0 {
		iv = 5 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		s.ScrapeOnce(ctx) //nolint:errcheck // failures are logged and counted
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ScrapeOnce scrapes every target concurrently and stores what it got.
// It returns the first error; the other targets are still stored.
func (s *Scraper) ScrapeOnce(ctx context.Context) error {
	errs := make([]error, len(s.Targets))
	var wg sync.WaitGroup
	for i, tg := range s.Targets {
		wg.Go(func() {
			rows, err := s.scrape(ctx, tg)
			if err == nil && len(rows) > 0 {
				err = s.Store(rows)
			}
			errs[i] = err
			if err != nil && ctx.Err() != nil {
				return // cut by our own shutdown: says nothing about the backend
			}
			s.report(tg.Backend, err)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Scraper) report(backend string, err error) {
	if s.Metrics != nil {
		s.Metrics.scraped(backend, err == nil)
	}
	log := s.Logger
	if log == nil {
		return
	}
	_, wasFailing := s.failing.Load(backend)
	switch {
	case err != nil && !wasFailing:
		s.failing.Store(backend, true)
		log.Warn("scrape backend metrics", zap.String("backend", backend), zap.Error(err))
	case err == nil && wasFailing:
		s.failing.Delete(backend)
		log.Info("scrape backend metrics recovered", zap.String("backend", backend))
	}
}

func (s *Scraper) client() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	return http.DefaultClient
}

func (s *Scraper) scrape(ctx context.Context, tg ScrapeTarget) ([]recorder.BackendMetric, error) {
	to := s.Timeout
	if to <= 0 {
		to = min(max(s.Interval, time.Second), 10*time.Second)
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tg.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", tg.Backend, err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	sent := time.Now()
	resp, err := s.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", tg.Backend, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) //nolint:errcheck
		return nil, fmt.Errorf("scrape %s: %s answered %s", tg.Backend, tg.URL, resp.Status)
	}
	// The answer shows the backend as it was at some moment between
	// sending and now; the duration row lets the report tell.
	answered := time.Now()
	ts := answered.UnixNano()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: parse %s: %w", tg.Backend, tg.URL, err)
	}
	keep := s.Keep
	if keep == nil {
		keep = defaultKeep
	}
	rows := Flatten(tg.Backend, ts, fams, keep)
	return append(rows, recorder.BackendMetric{Backend: tg.Backend, TsNS: ts, Name: recorder.ScrapeDurationSeries, Labels: "{}",
		Value: answered.Sub(sent).Seconds()}), nil
}

var defaultSeries = func() map[string]bool {
	m := make(map[string]bool, len(DefaultScrapeSeries))
	for _, n := range DefaultScrapeSeries {
		m[n] = true
	}
	return m
}()

func defaultKeep(name string) bool {
	return defaultSeries[name] || defaultSeries[strings.TrimSuffix(name, "_total")]
}

// Flatten turns parsed metric families into backend_metrics rows, in the
// text format's own series names: histograms become NAME_bucket (label
// "le"), NAME_sum and NAME_count; summaries NAME (label "quantile"),
// NAME_sum and NAME_count. NaN samples are left out.
func Flatten(backend string, ts int64, fams map[string]*dto.MetricFamily, keep func(string) bool) []recorder.BackendMetric {
	names := make([]string, 0, len(fams))
	for n := range fams {
		if keep(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var out []recorder.BackendMetric
	add := func(name string, lp []*dto.LabelPair, extraK, extraV string, v float64) {
		if math.IsNaN(v) {
			return
		}
		out = append(out, recorder.BackendMetric{Backend: backend, TsNS: ts, Name: name, Labels: labelsJSON(lp, extraK, extraV), Value: v})
	}
	for _, n := range names {
		f := fams[n]
		for _, m := range f.GetMetric() {
			lp := m.GetLabel()
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				add(n, lp, "", "", m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(n, lp, "", "", m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				add(n, lp, "", "", m.GetUntyped().GetValue())
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					add(n+"_bucket", lp, "le", formatFloat(b.GetUpperBound()), float64(b.GetCumulativeCount()))
				}
				add(n+"_sum", lp, "", "", h.GetSampleSum())
				add(n+"_count", lp, "", "", float64(h.GetSampleCount()))
			case dto.MetricType_SUMMARY:
				sm := m.GetSummary()
				for _, q := range sm.GetQuantile() {
					add(n, lp, "quantile", formatFloat(q.GetQuantile()), q.GetValue())
				}
				add(n+"_sum", lp, "", "", sm.GetSampleSum())
				add(n+"_count", lp, "", "", float64(sm.GetSampleCount()))
			}
		}
	}
	return out
}

// formatFloat writes le/quantile bounds as Prometheus does ("+Inf", "0.1").
func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// labelsJSON encodes labels (plus one extra) as a JSON object with sorted
// keys, e.g. {"le":"0.1","model_name":"m"}.
func labelsJSON(lp []*dto.LabelPair, extraK, extraV string) string {
	m := make(map[string]string, len(lp)+1)
	for _, l := range lp {
		m[l.GetName()] = l.GetValue()
	}
	if extraK != "" {
		m[extraK] = extraV
	}
	b, _ := json.Marshal(m) // map keys are sorted by encoding/json
	return string(b)
}
