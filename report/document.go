package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// The text, Markdown and HTML renderers share one document: a list of
// blocks built once from the Report, so the three always say the same.

type blockKind int

const (
	bHeading blockKind = iota
	bPara
	bBullets
	bTable
	bDetails // a collapsible code block (Markdown <details>, HTML <details>)
	bChart   // a chart, rendered by HTML only
)

type block struct {
	kind    blockKind
	level   int // headings: 1–3
	text    string
	items   []string
	table   *table
	summary string // details
	chart   string // chart id
}

// table is a table of preformatted cells.
type table struct {
	header []string
	rows   [][]string
	right  []bool // right-aligned (numeric) columns
	bold   bool   // first column in bold (the study's "Config" column)
}

type document struct{ blocks []block }

func (d *document) h(level int, text string) {
	d.blocks = append(d.blocks, block{kind: bHeading, level: level, text: text})
}
func (d *document) p(format string, args ...any) {
	d.blocks = append(d.blocks, block{kind: bPara, text: fmt.Sprintf(format, args...)})
}
func (d *document) bullets(items []string) {
	if len(items) > 0 {
		d.blocks = append(d.blocks, block{kind: bBullets, items: items})
	}
}
func (d *document) tbl(t *table) {
	if len(t.rows) > 0 {
		d.blocks = append(d.blocks, block{kind: bTable, table: t})
	}
}
func (d *document) details(summary, code string) {
	d.blocks = append(d.blocks, block{kind: bDetails, summary: summary, text: code})
}
func (d *document) chart(id string) { d.blocks = append(d.blocks, block{kind: bChart, chart: id}) }

func newTable(header ...string) *table {
	t := &table{header: header, right: make([]bool, len(header))}
	return t
}

// numeric marks columns as right-aligned.
func (t *table) numeric(cols ...int) *table {
	for _, c := range cols {
		t.right[c] = true
	}
	return t
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// sourceRuns is the provenance line under a table.
func sourceRuns(names []string) string {
	var uniq []string
	seen := map[string]bool{}
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			uniq = append(uniq, n)
		}
	}
	return "Runs: " + strings.Join(uniq, ", ") + " (recorded configuration under Provenance)."
}

// buildDocument lays the report out: the study's sections first, then
// everything the study did not have.
// scenarioTables writes one bold table per scenario of the study's tests
// (Max Throughput, Min Latency): rows of that scenario, what they are, and
// the runs they come from. row gives a row's scenario, run and cells.
func scenarioTables[R any](d *document, scenarios []string, rows []R, what string, head func() *table, row func(R) (scenario, run string, cells []string)) {
	for _, sc := range scenarios {
		t := head()
		t.bold = true
		var runs []string
		for _, r := range rows {
			rsc, run, cells := row(r)
			if rsc != sc {
				continue
			}
			t.add(cells...)
			runs = append(runs, run)
		}
		if len(t.rows) == 0 {
			continue
		}
		d.p("Scenario %s: %s.", sc, what)
		d.tbl(t)
		d.p("%s", sourceRuns(runs))
	}
}

func buildDocument(r *Report, withCharts bool) *document {
	d := &document{}
	d.h(1, "abproxy report")
	sel := "all runs"
	if len(r.Filters.Runs) > 0 {
		sel = "runs " + strings.Join(r.Filters.Runs, ", ")
	}
	if len(r.Filters.Backends) > 0 {
		sel += "; backends " + strings.Join(r.Filters.Backends, ", ")
	}
	if r.Filters.Since != nil {
		sel += "; since " + fTime(r.Filters.Since)
	}
	slo := "none (pass --slo ttft=500ms,tpot=50ms,e2e=10s for goodput)"
	if r.SLO.Set() {
		slo = r.SLO.String()
	}
	d.bullets([]string{
		"Database: " + r.Database,
		"Generated: " + fTime(&r.GeneratedAt),
		"Selection: " + sel,
		fmt.Sprintf("Requests: %d counted, %d failed (%s)", r.Counts.Counted, r.Counts.Failed, fShare(float64(r.Counts.Failed)/float64(max(r.Counts.Counted, 1)))),
		"Backends: " + strings.Join(r.Backends, ", ") + " (baseline: " + r.Baseline + ")",
		"SLO: " + slo,
		fmt.Sprintf("Confidence intervals: 95%%, percentile bootstrap, %d resamples, seed %d", r.Bootstrap.Resamples, r.Bootstrap.Seed),
	})
	if len(r.Notes) > 0 {
		d.h(2, "Notes")
		d.bullets(r.Notes)
	}

	if len(r.Improvement) > 0 || len(r.Mirror) > 0 {
		d.h(2, "Verdict")
		var items []string
		for _, c := range r.Improvement {
			items = append(items, scenarioPrefix(c.Scenario)+c.Sentence)
		}
		for _, m := range r.Mirror {
			for _, pm := range m.Metrics {
				items = append(items, "Mirrored: "+pm.Sentence)
			}
			if m.Agreement.IdenticalShare != nil {
				items = append(items, fmt.Sprintf("Mirrored: %s answered identically to %s in %s of %d compared pairs.",
					m.Shadow, m.Primary, fShare(*m.Agreement.IdenticalShare), m.Agreement.Compared))
			}
		}
		d.bullets(items)
	}

	scenarios := scenariosOf(r)
	if len(r.MaxThroughput) > 0 {
		d.h(2, "Max Throughput Test")
		scenarioTables(d, scenarios, r.MaxThroughput, "the run with the highest output throughput of each backend's concurrency sweep",
			func() *table {
				return newTable("Config", "Concurrency", "Output Throughput", "Total Throughput", "E2E P50", "E2E P99", "TTFT P50").numeric(1, 2, 3, 4, 5, 6)
			},
			func(m MaxThroughputRow) (string, string, []string) {
				return m.Scenario, m.Run, []string{m.Backend, fmt.Sprint(m.Concurrency), fTok(m.OutputThroughput), fTok(m.TotalThroughput), fAuto(m.E2EP50), fAuto(m.E2EP99), fAuto(m.TTFTP50)}
			})
		if withCharts {
			d.chart("throughput")
			d.chart("ttft")
			d.chart("curve")
		}
	}
	if len(r.MinLatency) > 0 {
		d.h(2, "Min Latency Test")
		scenarioTables(d, scenarios, r.MinLatency, "the concurrency-2 run of each backend (its lowest concurrency if it has none)",
			func() *table {
				return newTable("Config", "Concurrency", "Throughput", "E2E Mean", "E2E P50", "E2E Min", "E2E Max").numeric(1, 2, 3, 4, 5, 6)
			},
			func(m MinLatencyRow) (string, string, []string) {
				return m.Scenario, m.Run, []string{m.Backend, fmt.Sprint(m.Concurrency), fTok(m.OutputThroughput), fMs(m.E2EMean), fMs(m.E2EP50), fMs(m.E2EMin), fMs(m.E2EMax)}
			})
	}
	if len(r.Improvement) > 0 {
		d.h(2, "Improvement Summary")
		cands := candidates(r.Improvement)
		single := len(cands) == 1
		hdr := []string{"Scenario", "Metric", "Baseline"}
		if single {
			hdr = append(hdr, cands[0])
		} else {
			hdr = append(hdr, "Backend", "Candidate")
		}
		hdr = append(hdr, "Change", "95% CI", "Verdict")
		t := newTable(hdr...)
		t.bold = true
		off := 0
		if !single {
			off = 1
		}
		t.numeric(2, 3+off, 4+off, 5+off)
		var runs []string
		for _, c := range r.Improvement {
			row := []string{c.Scenario, c.Label, fValue(c, c.Baseline.Value)}
			if !single {
				row = append(row, c.Candidate.Backend)
			}
			row = append(row, fValue(c, c.Candidate.Value), fPct(c.ChangePct), fCI(c), verdictWord(c.Verdict))
			t.add(row...)
			runs = append(runs, c.Baseline.Run, c.Candidate.Run)
		}
		d.p("Baseline: %s. Change is (candidate − baseline) / baseline; the interval is the bootstrap 95%% confidence interval of that change.", r.Baseline)
		d.tbl(t)
		d.p("%s", sourceRuns(runs))
	}
	if len(r.Comparisons) > 0 {
		d.h(2, "Comparison by Load Level")
		d.p("Every load level both backends ran, and every live run that split traffic between them.")
		t := newTable("Scenario", "Load", "Metric", "Baseline", "Candidate", "Change", "95% CI", "Verdict").numeric(3, 4, 5, 6)
		for _, c := range r.Comparisons {
			sc := c.Scenario
			if sc == "" {
				sc = "live " + c.Baseline.Run
			}
			t.add(sc, fLoad(c.Concurrency, c.RequestRate), c.Label,
				c.Baseline.Backend+" "+fValue(c, c.Baseline.Value), c.Candidate.Backend+" "+fValue(c, c.Candidate.Value),
				fPct(c.ChangePct), fCI(c), verdictWord(c.Verdict))
		}
		d.tbl(t)
	}

	if len(r.Runs) > 0 {
		d.h(2, "Runs")
		d.p("Per run and backend. Error rate counts failed requests over all requests; throughput is over last end − first start.")
		t := newTable("Run", "Backend", "Role", "Load", "Requests", "Failed", "Error rate", "Output tok/s", "Total tok/s", "Req/s",
			"TTFT P50", "TPOT P50", "ITL P50", "E2E P50", "E2E P99", "Goodput").numeric(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
		for _, s := range r.Runs {
			t.add(s.Run, s.Backend, s.Role, fLoad(s.Concurrency, s.RequestRate), fmt.Sprint(s.Requests), fmt.Sprint(s.Failed), fShare(s.ErrorRate),
				fNum(s.OutputThroughput, 2), fNum(s.TotalThroughput, 2), fNum(s.RequestThroughput, 2),
				fAuto(s.TTFT.P50), fAuto(s.TPOT.P50), fAuto(s.ITL.P50), fAuto(s.E2E.P50), fAuto(s.E2E.P99), fGoodput(s.Goodput))
		}
		d.tbl(t)
		var failed []Stats
		var notes []string
		for _, s := range r.Runs {
			if s.Failed > 0 {
				failed = append(failed, s)
			}
			for _, n := range s.Notes {
				notes = append(notes, s.Run+" ("+s.Backend+"): "+n)
			}
		}
		if len(failed) > 0 {
			d.h(3, "Errors")
			et := newTable("Run", "Backend", "Requests", "Failed", "Error rate", "HTTP statuses", "Error classes").numeric(2, 3, 4)
			for _, s := range failed {
				et.add(s.Run, s.Backend, fmt.Sprint(s.Requests), fmt.Sprint(s.Failed), fShare(s.ErrorRate), fStatuses(s.Statuses), fStatuses(s.Errors))
			}
			d.tbl(et)
		}
		d.bullets(notes)

		d.h(3, "Latency Distributions")
		d.p("Milliseconds. TTFT and E2E over completed requests, TPOT over those with more than one output token, ITL over every gap between content chunks.")
		lt := newTable("Run", "Backend", "Metric", "Samples", "Mean", "P50", "P90", "P95", "P99", "Min", "Max").numeric(3, 4, 5, 6, 7, 8, 9, 10)
		for _, s := range r.Runs {
			for _, m := range []struct {
				name string
				s    Summary
			}{{"TTFT", s.TTFT}, {"TPOT", s.TPOT}, {"ITL", s.ITL}, {"E2E", s.E2E}} {
				x := m.s
				lt.add(s.Run, s.Backend, m.name, fmt.Sprint(x.Count), fNum(x.Mean, 2), fNum(x.P50, 2), fNum(x.P90, 2), fNum(x.P95, 2), fNum(x.P99, 2), fNum(x.Min, 2), fNum(x.Max, 2))
			}
		}
		d.tbl(lt)
		if withCharts && len(r.Distributions) > 0 {
			d.chart("cdf-e2e")
			d.chart("cdf-ttft")
			d.chart("itl")
		}
		serverSection(d, r)
	}

	if len(r.Mirror) > 0 {
		d.h(2, "Mirrored Traffic")
		d.p("The same requests served by both backends: per-pair differences (shadow − primary) over pairs where both completed. The unpaired interval is what two independent runs of the same size would give.")
		mt := newTable("Primary", "Shadow", "Metric", "Pairs", "Primary P50", "Shadow P50", "Median diff", "95% CI (paired)", "95% CI (unpaired)", "Verdict").numeric(3, 4, 5, 6, 7, 8)
		at := newTable("Primary", "Shadow", "Pairs", "Both OK", "Compared", "Identical", "Identical share", "Mean common prefix").numeric(2, 3, 4, 5, 6, 7)
		var runs []string
		for _, m := range r.Mirror {
			for _, pm := range m.Metrics {
				mt.add(m.Primary, m.Shadow, strings.ToUpper(pm.Metric), fmt.Sprint(pm.Pairs), fMs(pm.PrimaryP50), fMs(pm.ShadowP50),
					fSignedMs(pm.MedianDiff), fIntervalMs(pm.MedianDiffCI), fIntervalMs(pm.UnpairedCI), verdictWord(pm.Verdict))
			}
			ag := m.Agreement
			share, prefix := dash, "outputs not stored (store_bodies = false)"
			if ag.IdenticalShare != nil {
				share = fShare(*ag.IdenticalShare)
			}
			if ag.MeanCommonPrefixChars != nil {
				prefix = fmt.Sprintf("%.1f chars (%s of the longer)", *ag.MeanCommonPrefixChars, fShare(*ag.MeanCommonPrefixShare))
			}
			at.add(m.Primary, m.Shadow, fmt.Sprint(m.Pairs), fmt.Sprint(m.BothOK), fmt.Sprint(ag.Compared), fmt.Sprint(ag.Identical), share, prefix)
			runs = append(runs, m.Runs...)
		}
		d.tbl(mt)
		d.h(3, "Output Agreement")
		d.tbl(at)
		d.p("%s", sourceRuns(runs))
	}

	if len(r.Live) > 0 {
		d.h(2, "Live Traffic")
		d.p("Windows of %s by request start.", r.Filters.Window)
		t := newTable("Window start", "Backend", "Role", "Requests", "Failed", "Error rate", "Output tok/s", "TTFT P50", "TTFT P99", "TPOT P50", "E2E P50", "E2E P99", "Goodput").numeric(3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
		var runs []string
		for _, s := range r.Live {
			t.add(fTime(s.WindowStart), s.Backend, s.Role, fmt.Sprint(s.Requests), fmt.Sprint(s.Failed), fShare(s.ErrorRate),
				fNum(s.OutputThroughput, 2), fAuto(s.TTFT.P50), fAuto(s.TTFT.P99), fAuto(s.TPOT.P50), fAuto(s.E2E.P50), fAuto(s.E2E.P99), fGoodput(s.Goodput))
			runs = append(runs, strings.Split(s.Run, ",")...)
		}
		d.tbl(t)
		d.p("%s", sourceRuns(runs))
	}

	if len(r.Provenance) > 0 {
		d.h(2, "Provenance")
		d.p("Every run used, with its configuration exactly as recorded in runs.meta.")
		t := newTable("Run", "Kind", "Backend", "Scenario", "Load", "Started", "Ended", "Command")
		for _, ri := range r.Provenance {
			t.add(ri.Name, ri.Kind, orDash(ri.Backend), orDash(ri.Scenario), fLoad(ri.Concurrency, ri.RequestRate), fTime(ri.Started), fTime(ri.Ended), metaCommand(ri.Meta))
		}
		d.tbl(t)
		for _, ri := range r.Provenance {
			if len(ri.Meta) > 0 {
				d.details(ri.Name, indentJSON(ri.Meta))
			}
		}
	}
	return d
}

// serverSection puts each backend's own metrics (scraped from its
// /metrics) beside the run's client-side TTFT; nothing when none were
// scraped.
func serverSection(d *document, r *Report) {
	t := newTable("Run", "Backend", "Role", "Scrapes", "Running mean", "Running max", "Waiting mean", "Waiting max",
		"KV cache mean", "KV cache max", "Preemptions", "Client TTFT P50", "vLLM TTFT P50", "vLLM TTFT mean", "vLLM requests").numeric(3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)
	gpu := false
	for _, s := range r.Runs {
		v := s.Server
		if v == nil {
			continue
		}
		gpu = gpu || v.KVCacheMetric == seriesGPUCache
		t.add(s.Run, s.Backend, s.Role, fmt.Sprint(v.Samples), fNum(v.RunningMean, 1), fNum(v.RunningMax, 0),
			fNum(v.WaitingMean, 1), fNum(v.WaitingMax, 0), fSharePtr(v.KVCacheMean), fSharePtr(v.KVCacheMax),
			fNum(v.Preemptions, 0), fAuto(s.TTFT.P50), fAuto(v.TTFTP50), fAuto(v.TTFTMean), fNum(v.TTFTRequests, 0))
	}
	if len(t.rows) == 0 {
		return
	}
	d.h(3, "Server State")
	kv := "vllm:kv_cache_usage_perc"
	if gpu {
		kv += " (vllm:gpu_cache_usage_perc where only that is exposed)"
	}
	d.p("From each backend's own /metrics, scraped into backend_metrics while the run went: running and waiting requests (vllm:num_requests_running, vllm:num_requests_waiting) and KV-cache usage (%s) over the scrapes within the run; preemptions and vLLM's TTFT from the increase of vllm:num_preemptions_total and of its vllm:time_to_first_token_seconds histogram between the scrapes just before and just after the run. Client TTFT P50 is the one measured here, as in the Runs table; vLLM's P50 is interpolated within a histogram bucket, so it is coarse, and vLLM's TTFT starts when the server received the request.", kv)
	d.tbl(t)
}

// fSharePtr is fShare of a value that may be missing.
func fSharePtr(v *float64) string {
	if v == nil {
		return dash
	}
	return fShare(*v)
}

func fSignedMs(v *float64) string {
	if v == nil {
		return dash
	}
	return fmt.Sprintf("%+.2f ms", *v)
}

func fIntervalMs(c *Interval) string {
	if c == nil {
		return dash
	}
	return fmt.Sprintf("%+.2f to %+.2f ms", c.Lo, c.Hi)
}

func orDash(s string) string {
	if s == "" {
		return dash
	}
	return s
}

func scenarioPrefix(sc string) string {
	if sc == "" {
		return ""
	}
	return sc + ": "
}

func scenariosOf(r *Report) []string {
	var out []string
	for _, m := range r.MaxThroughput {
		if !contains(out, m.Scenario) {
			out = append(out, m.Scenario)
		}
	}
	return out
}

func candidates(cs []Comparison) []string {
	var out []string
	for _, c := range cs {
		if !contains(out, c.Candidate.Backend) {
			out = append(out, c.Candidate.Backend)
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// metaCommand is the recorded command line, when the meta has one:
// "abproxy bench --target …" from args, else the command name.
func metaCommand(meta json.RawMessage) string {
	var m struct {
		Command string   `json:"command"`
		Args    []string `json:"args"`
		Version string   `json:"version"`
	}
	if len(meta) == 0 || json.Unmarshal(meta, &m) != nil {
		return dash
	}
	s := m.Command
	if len(m.Args) > 0 {
		s = "abproxy " + strings.Join(m.Args, " ")
	}
	if s == "" {
		return dash
	}
	if m.Version != "" {
		s += " (abproxy " + m.Version + ")"
	}
	return s
}

func indentJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Indent(&b, raw, "", "  ") != nil {
		return string(raw)
	}
	return b.String()
}
