package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/abproxy/abproxy/internal/stats"
)

// meta is a run's metadata (runs.meta): every flag, the tokenizer, the
// dataset and its hash, the seed, whether counts are approximate, the
// target, and once the run ended its status and client-side results.
//
// A run's status is "running" while it runs, then "complete" or
// "incomplete" (interrupted; stopped_by says why). runs has no status
// column, so this is where it lives: meta->>'status'.
func (b *Bench) meta(ar *armRun, sum *RunSummary) map[string]any {
	flags := map[string]any{}
	if raw, err := json.Marshal(b.cfg); err == nil {
		_ = json.Unmarshal(raw, &flags)
	}
	flags["max_time_per_run_s"] = b.cfg.MaxTime.Seconds()
	flags["idle_timeout_s"] = b.cfg.IdleTimeout.Seconds()
	flags["match_timeout_s"] = b.cfg.MatchTimeout.Seconds()
	flags["scrape_interval_s"] = b.cfg.ScrapeInterval.Seconds()
	flags["api_key_set"] = b.cfg.APIKey != ""
	ds := map[string]any{"sha256": b.corpus.SHA256, "lines": len(b.corpus.Lines), "generated": b.corpus.Generated()}
	if !b.corpus.Generated() {
		ds["path"] = b.corpus.Path
	}
	mode := "closed_loop"
	if ar.st.rate > 0 {
		mode = "open_loop"
	}
	m := map[string]any{
		"command":            "bench",
		"version":            b.opts.Version,
		"args":               b.opts.Args,
		"flags":              flags,
		"target":             map[string]any{"url": b.cfg.Target, "proxy": b.proxy, "server_version": b.server},
		"backend":            ar.arm.backend,
		"arms":               b.Backends(),
		"model":              ar.arm.model,
		"scenario":           ar.st.sc.String(),
		"mode":               mode,
		"seed":               b.cfg.Seed,
		"tokenizer":          b.tokInfo,
		"approximate_counts": !b.shaper.Exact(),
		"prompt_tokens":      "planned counts include the chat template; minimum " + fmt.Sprint(b.shaper.MinPrompt()),
		"dataset":            ds,
		"warmup_requests":    b.cfg.Warmup,
		"status":             "running",
	}
	if b.scrape != nil {
		m["scraped"] = b.scrape.targets // where backend_metrics rows of this run come from
	}
	if ar.st.rate > 0 {
		m["request_rate"] = ar.st.rate
		m["burstiness"] = b.cfg.Burstiness
		m["max_concurrency"] = ar.st.conc
	} else {
		m["concurrency"] = ar.st.conc
	}
	if sum != nil {
		m["status"] = sum.Status
		m["stopped_by"] = sum.StoppedBy
		m["results"] = sum.Stats
		m["client_cpu"] = sum.ClientCPU
		if sum.Proxy != nil {
			m["proxy"] = sum.Proxy
		}
		if sum.ScheduleLag != nil {
			m["schedule_lag_ms"] = sum.ScheduleLag
		}
	}
	return m
}

// warmMeta is the metadata of a run's warmup run: the run's, marked
// "warmup": true (abproxy report leaves such runs out) with the run's name.
func (b *Bench) warmMeta(ar *armRun, status string) map[string]any {
	m := b.meta(ar, nil)
	m["warmup"] = true
	m["warmup_of"] = ar.name
	m["status"] = status
	return m
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (b *Bench) printHeader(steps int) {
	mode := "directly (bench records its own measurements)"
	if b.proxy {
		mode = "through the abproxy proxy"
	}
	counts := "exact prompt sizes (tokenizer " + b.cfg.Tokenizer + ")"
	if !b.shaper.Exact() {
		counts = "approximate prompt sizes (no --tokenizer)"
	}
	db := "nothing stored (--db '')"
	if b.store != nil {
		db = "recording into " + b.cfg.DB
	}
	fmt.Fprintf(b.prog, "abproxy bench: %d load steps × %d backend(s) [%s] against %s %s; %s; %s; runs %s/…\n",
		steps, len(b.arms), strings.Join(b.Backends(), ", "), b.cfg.Target, mode, counts, db, b.prefix)
}

// progress prints one line per arm while a step runs: redrawn in place
// on a terminal, plain lines every ProgressInterval otherwise.
type progress struct {
	stopCh chan struct{}
	done   chan struct{}
}

func (p *progress) stop() {
	close(p.stopCh)
	<-p.done
}

func (b *Bench) startProgress(idx, n int, st step, runs []*armRun) *progress {
	p := &progress{stopCh: make(chan struct{}), done: make(chan struct{})}
	interval := b.opts.ProgressInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if b.opts.TTY {
		interval = 250 * time.Millisecond
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		drawn := 0
		draw := func(final bool) {
			var sb strings.Builder
			if b.opts.TTY && drawn > 0 {
				fmt.Fprintf(&sb, "\x1b[%dA", drawn)
			}
			for _, ar := range runs {
				if b.opts.TTY {
					sb.WriteString("\r\x1b[2K")
				}
				sb.WriteString(ar.progressLine(idx, n, final))
				sb.WriteByte('\n')
			}
			drawn = len(runs)
			_, _ = b.prog.Write([]byte(sb.String()))
		}
		if b.opts.TTY {
			draw(false)
		}
		for {
			select {
			case <-t.C:
				draw(false)
			case <-p.stopCh:
				draw(true)
				return
			}
		}
	}()
	return p
}

func (a *armRun) progressLine(idx, n int, final bool) string {
	target := "∞"
	if a.b.cfg.MaxRequests > 0 {
		target = fmt.Sprint(a.b.cfg.MaxRequests)
	}
	done := a.done.Load()
	elapsed := 0.0
	toks := 0.0
	phase := "starting"
	if a.b.cfg.Warmup > 0 {
		phase = "warmup"
	}
	if start := a.startNS.Load(); start != 0 {
		phase = ""
		end := time.Now().UnixNano()
		if final {
			if l := a.lastEndNS.Load(); l > start {
				end = l
			}
		}
		elapsed = float64(end-start) / 1e9
		if elapsed > 0 {
			toks = float64(a.chunkCount.Load()-a.chunksAt.Load()) / elapsed
		}
	}
	a.mu.Lock()
	ttfts := slices.Clone(a.ttfts)
	a.mu.Unlock()
	ttft := "    -"
	if len(ttfts) > 0 {
		slices.Sort(ttfts)
		ttft = fmtMS(stats.Percentile(ttfts, 50))
	}
	state := phase
	if final {
		why, _ := a.stoppedBy.Load().(string)
		state = "done (" + why + ")"
	}
	bar := ""
	if a.b.opts.TTY {
		frac := 0.0
		switch {
		case a.b.cfg.MaxRequests > 0:
			frac = float64(done) / float64(a.b.cfg.MaxRequests)
		case a.b.cfg.MaxTime > 0:
			frac = elapsed / a.b.cfg.MaxTime.Seconds()
		}
		w := int(math.Round(min(max(frac, 0), 1) * 20))
		bar = "[" + strings.Repeat("=", w) + strings.Repeat(" ", 20-w) + "] "
	}
	return fmt.Sprintf("[%d/%d] %s %s %s  %s%d/%s req  %.1fs  TTFT p50 %s  %.0f out tok/s  %d failed  %s",
		idx+1, n, a.st.sc, a.st.level(), a.arm.backend, bar, done, target, elapsed, ttft, toks, a.failed.Load(), state)
}

func (b *Bench) printSummary(s *RunSummary) {
	st := &s.Stats
	line := fmt.Sprintf("%s: %s, %d ok, %d failed; TTFT p50 %s p99 %s; E2E p50 %s p99 %s; %.1f output tok/s, %.1f total tok/s",
		s.Name, s.Status, st.Completed, st.Failed, fmtMS(st.TTFT.P50), fmtMS(st.TTFT.P99), fmtMS(st.E2E.P50), fmtMS(st.E2E.P99),
		st.OutputTokensPerS, st.TotalTokensPerS)
	if p := s.Proxy; p != nil && p.Matched > 0 {
		line += fmt.Sprintf("; proxy overhead TTFT p50 %s p99 %s, E2E p50 %s (%d/%d matched)",
			fmtMS(p.TTFTOverhead.P50), fmtMS(p.TTFTOverhead.P99), fmtMS(p.E2EOverhead.P50), p.Matched, p.Matched+p.Unmatched)
	}
	if st.FirstError != "" {
		line += "; first error: " + st.FirstError
	}
	if st.PromptMismatch > 0 {
		line += fmt.Sprintf("; %d prompts' prompt_tokens differ from the plan", st.PromptMismatch)
	}
	fmt.Fprintln(b.prog, line)
}

// printTable writes the final table of all runs to Out.
func (b *Bench) printTable(all []RunSummary) {
	if len(all) == 0 {
		return
	}
	tw := tabwriter.NewWriter(b.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tload\tbackend\tstatus\tok\tfailed\tTTFT p50\tTTFT p99\tE2E p50\tE2E p99\tout tok/s\ttotal tok/s\treq/s\tproxy +TTFT p50\t")
	for i := range all {
		s := &all[i]
		st := &s.Stats
		load := fmt.Sprintf("c=%d", s.Concurrency)
		if s.RequestRate > 0 {
			load = fmt.Sprintf("%g req/s", s.RequestRate)
		}
		over := "-"
		if p := s.Proxy; p != nil && p.Matched > 0 {
			over = fmtMS(p.TTFTOverhead.P50)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.2f\t%s\t\n",
			s.Scenario, load, s.Backend, s.Status, st.Completed, st.Failed, fmtMS(st.TTFT.P50), fmtMS(st.TTFT.P99),
			fmtMS(st.E2E.P50), fmtMS(st.E2E.P99), st.OutputTokensPerS, st.TotalTokensPerS, st.RequestsPerS, over)
	}
	tw.Flush()
}

// fmtMS prints milliseconds readably: µs below 1 ms, s above 10 s.
func fmtMS(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1 && v > -1:
		return fmt.Sprintf("%.0fµs", v*1000)
	case v >= 10000:
		return fmt.Sprintf("%.2fs", v/1000)
	default:
		return fmt.Sprintf("%.1fms", v)
	}
}
