package bench

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Scraping: while runs go, bench stores the backends' own Prometheus
// series (vLLM's /metrics) in the backend_metrics table, so the report can
// put server state beside client latency for direct benchmarks too. The
// scraping itself is admin.Scraper's, plugged in through
// Options.NewScraper by the command, so that bench does not depend on
// the control plane.

// DefaultScrapeInterval is --scrape-interval's default: shorter than
// serve's 5 s because bench runs are often short, and the gauges of a run
// come from the scrapes within it.
const DefaultScrapeInterval = 2 * time.Second

// ScrapeTarget is one backend bench scrapes.
type ScrapeTarget struct {
	Backend string `json:"backend"` // name stored in backend_metrics.backend: the name the report joins runs on
	URL     string `json:"url"`     // its Prometheus endpoint, e.g. http://host:8000/metrics
}

// Scraper scrapes every target once and stores the samples, returning the
// first error; admin.Scraper is one. It must be safe for concurrent use.
type Scraper interface {
	ScrapeOnce(ctx context.Context) error
}

// scrapeState is a benchmark's scraper and whether a failure was shown.
type scrapeState struct {
	s       Scraper
	targets []ScrapeTarget
	warned  atomic.Bool
}

// parseScrape reads one --scrape value, NAME=URL.
func parseScrape(v string) (ScrapeTarget, error) {
	name, raw, ok := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return ScrapeTarget{}, fmt.Errorf("--scrape %q is not NAME=URL (the backend's name and its base or /metrics URL)", v)
	}
	u, err := metricsURL(strings.TrimSpace(raw))
	if err != nil {
		return ScrapeTarget{}, fmt.Errorf("--scrape %s: %w", name, err)
	}
	return ScrapeTarget{Backend: name, URL: u}, nil
}

// metricsURL is the Prometheus endpoint of a server: a base URL (with or
// without /v1) gets /metrics; a URL whose path is anything else is used as
// it is.
func metricsURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s)://host:port URL", raw)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if p == "" || p == "/v1" || strings.HasSuffix(p, "/v1") {
		u.Path = strings.TrimSuffix(p, "/v1") + "/metrics"
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// setupScraper picks what to scrape: the --scrape targets, else the target
// itself when it is a backend (behind a proxy, serve scrapes the backends
// into the same file). Nothing without a database, an interval or a
// scraper.
func (b *Bench) setupScraper() error {
	if b.cfg.ScrapeInterval <= 0 || b.opts.NewScraper == nil {
		return nil
	}
	var targets []ScrapeTarget
	for _, v := range b.cfg.Scrape {
		tg, err := parseScrape(v)
		if err != nil {
			return err
		}
		targets = append(targets, tg)
	}
	if len(targets) == 0 && !b.proxy {
		u, err := metricsURL(b.cfg.Target)
		if err != nil {
			return err
		}
		targets = []ScrapeTarget{{Backend: b.arms[0].backend, URL: u}}
	}
	if len(targets) == 0 {
		return nil
	}
	if b.store == nil {
		if len(b.cfg.Scrape) > 0 {
			return fmt.Errorf("--scrape stores into the database, but --db is empty: pass a database file")
		}
		return nil
	}
	b.scrape = &scrapeState{s: b.opts.NewScraper(targets, b.store.rec.WriteBackendMetrics), targets: targets}
	return nil
}

// scrapeNow scrapes every target once; the first failure is shown on the
// progress output, later ones only counted by the scraper.
func (b *Bench) scrapeNow(ctx context.Context) {
	sc := b.scrape
	if sc == nil {
		return
	}
	if err := sc.s.ScrapeOnce(context.WithoutCancel(ctx)); err != nil && sc.warned.CompareAndSwap(false, true) {
		fmt.Fprintf(b.prog, "warning: %v; the report will lack server state where it failed (--scrape-interval 0 turns scraping off)\n", err)
	}
}

// scrapeLoop scrapes every --scrape-interval until ctx is done; runSteps
// add one scrape at each run's start and end, so every run's counters are
// bracketed however short it is.
func (b *Bench) scrapeLoop(ctx context.Context) {
	t := time.NewTicker(b.cfg.ScrapeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.scrapeNow(ctx)
		}
	}
}

// ScrapeTargets lists the backends this benchmark scrapes (none when
// scraping is off).
func (b *Bench) ScrapeTargets() []ScrapeTarget {
	if b.scrape == nil {
		return nil
	}
	return append([]ScrapeTarget(nil), b.scrape.targets...)
}
