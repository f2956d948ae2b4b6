package report

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/abproxy/abproxy/recorder"
)

// group is a finished group: its key, its run and its accumulator.
type group struct {
	key   groupKey
	run   recorder.Run
	acc   *acc
	stats Stats
}

// Report computes the report from everything added so far. It fails only
// when nothing was counted, with one sentence saying so.
func (c *Collector) Report() (*Report, error) {
	o := c.opts
	rep := &Report{
		Schema: SchemaID, GeneratedAt: o.Now.UTC(), Database: o.Database,
		Filters:   Filters{Runs: nonNil(o.Runs), Backends: nonNil(o.Backends), Window: o.Window.String()},
		SLO:       o.SLO,
		Bootstrap: BootstrapInfo{Resamples: o.Resamples, Seed: o.Seed, Confidence: 0.95, Method: "percentile"},
		Counts:    c.counts,
		Notes:     []string{},
	}
	if !o.Since.IsZero() {
		t := o.Since.UTC()
		rep.Filters.Since = &t
	}
	rep.Counts.OtherEndpoints = c.counts.Requests - c.counts.Counted
	if c.counts.Counted == 0 {
		return nil, noData(c.counts.Requests, c.other)
	}
	if rep.Counts.OtherEndpoints > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s to other endpoints (%s) %s not counted.",
			plural(rep.Counts.OtherEndpoints, "request", "requests"), countList(c.other), isAre(rep.Counts.OtherEndpoints)))
	}
	for _, name := range sortedKeys(c.unknownRun) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s name run %q, which is not in the runs table; reported as live traffic.", plural(c.unknownRun[name], "request", "requests"), name))
	}
	rep.Notes = append(rep.Notes, c.notes...)

	// groups, in run order, then backend, then role
	backendSet := map[string]bool{}
	var groups []*group
	for k, a := range c.groups {
		groups = append(groups, &group{key: k, run: c.runs[k.run], acc: a})
		backendSet[k.backend] = true
	}
	backends := sortedKeys(backendSet)
	baseline, err := pickBaseline(o.Baseline, backends)
	if err != nil {
		return nil, err
	}
	rep.Baseline = baseline
	rep.Backends = append([]string{baseline}, slices.DeleteFunc(slices.Clone(backends), func(b string) bool { return b == baseline })...)
	border := map[string]int{}
	for i, b := range rep.Backends {
		border[b] = i
	}
	slices.SortFunc(groups, func(a, b *group) int {
		return cmp.Or(cmp.Compare(c.order[a.key.run], c.order[b.key.run]),
			cmp.Compare(border[a.key.backend], border[b.key.backend]),
			cmp.Compare(roleOrder(a.key.role), roleOrder(b.key.role)))
	})
	for _, g := range groups {
		g.stats = g.acc.stats(g.run, g.key.backend, g.key.role, o.SLO)
		rep.Runs = append(rep.Runs, g.stats)
	}
	used := map[string]bool{}
	for _, g := range groups {
		used[g.key.run] = true
	}
	for _, name := range sortedKeys(used) {
		if r := c.runs[name]; r.EndedNS == 0 && r.Kind == recorder.KindBench {
			rep.Notes = append(rep.Notes, fmt.Sprintf("Run %s has no end time: it was interrupted or is still running.", name))
		}
	}

	c.studyTables(rep, groups, border)
	c.comparisons(rep, groups)
	c.curves(rep, groups, border)
	c.distributions(rep, groups)
	c.mirror(rep, border)
	c.live(rep, border)

	// provenance: every run that contributed, in table order
	names := sortedKeys(used)
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(c.order[a], c.order[b]) })
	for _, n := range names {
		rep.Provenance = append(rep.Provenance, runInfo(c.runs[n]))
	}
	fillEmpty(rep)
	return rep, nil
}

// fillEmpty makes every list an empty JSON array rather than null.
func fillEmpty(r *Report) {
	r.Runs = nonNil(r.Runs)
	r.MaxThroughput = nonNil(r.MaxThroughput)
	r.MinLatency = nonNil(r.MinLatency)
	r.Improvement = nonNil(r.Improvement)
	r.Comparisons = nonNil(r.Comparisons)
	r.Curves = nonNil(r.Curves)
	r.Distributions = nonNil(r.Distributions)
	r.Mirror = nonNil(r.Mirror)
	r.Live = nonNil(r.Live)
	r.Provenance = nonNil(r.Provenance)
	r.Backends = nonNil(r.Backends)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func roleOrder(role string) int {
	if role == recorder.RolePrimary {
		return 0
	}
	return 1
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// plural is "1 request" or "3 requests".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

func countList(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		name := k
		if name == "" {
			name = "unknown"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, m[k]))
	}
	return strings.Join(parts, ", ")
}

// pickBaseline applies --baseline or the default rule.
func pickBaseline(want string, backends []string) (string, error) {
	if want != "" {
		if !slices.Contains(backends, want) {
			return "", fmt.Errorf("--baseline %s is not a backend in the selected data (backends: %s)", want, strings.Join(backends, ", "))
		}
		return want, nil
	}
	if slices.Contains(backends, "baseline") {
		return "baseline", nil
	}
	return backends[0], nil
}

// stats turns an accumulator into Stats; it sorts the samples, so the
// comparisons after it read sorted slices.
func (g *acc) stats(run recorder.Run, backend, role string, slo SLO) Stats {
	s := Stats{
		Run: run.Name, Kind: run.Kind, Backend: backend, Role: role,
		Scenario: run.Scenario, Concurrency: run.Concurrency, RequestRate: run.RequestRate,
		Requests: g.requests, Completed: g.completed, Failed: g.failed,
		ErrorRate: float64(g.failed) / float64(g.requests),
		Statuses:  map[string]int{}, Errors: map[string]int{},
		PromptTokens: g.promptTok, CompletionTokens: g.complTok,
		Notes: []string{},
	}
	for st, n := range g.statuses {
		k := "none"
		if st != 0 {
			k = strconv.Itoa(st)
		}
		s.Statuses[k] += n
	}
	for e, n := range g.errors {
		s.Errors[e] = n
	}
	if g.firstStart != 0 {
		s.FirstStart = time.Unix(0, g.firstStart).UTC()
	}
	if g.lastEnd != 0 {
		s.LastEnd = time.Unix(0, g.lastEnd).UTC()
	}
	if g.firstStart != 0 && g.lastEnd > g.firstStart {
		d := float64(g.lastEnd-g.firstStart) / 1e9
		s.DurationS = d
		if g.completed > 0 {
			s.RequestThroughput = num(float64(g.completed) / d)
			s.OutputThroughput = num(float64(g.complTok) / d)
			s.TotalThroughput = num(float64(g.complTok+g.promptTok) / d)
		}
	}
	if !g.summarized {
		g.e2eSorted = slices.Clone(g.e2e)
		g.summarized = true
	}
	s.TTFT = summarize32(g.ttft)
	s.TPOT = summarize32(g.tpot)
	s.E2E = summarize32(g.e2eSorted)
	if !g.noITL {
		s.ITL = g.itl.summary()
	}
	if slo.Set() {
		gp := &Goodput{Met: g.met, Share: float64(g.met) / float64(g.requests)}
		if s.DurationS > 0 {
			gp.Rate = num(float64(g.met) / s.DurationS)
		}
		s.Goodput = gp
	}
	// one sentence per metric that has no samples
	switch {
	case g.completed == 0:
		s.Notes = append(s.Notes, fmt.Sprintf("No latency samples: all %d requests failed (%s).", g.requests, statusList(s.Statuses, s.Errors)))
	default:
		if s.TTFT.Count == 0 {
			s.Notes = append(s.Notes, "No TTFT samples: no completed request reported a first token (non-streamed requests have none).")
		}
		if s.TPOT.Count == 0 && s.TTFT.Count > 0 {
			s.Notes = append(s.Notes, "No TPOT samples: no completed request has more than one completion token.")
		}
		if !g.noITL && s.ITL.Count == 0 && s.TTFT.Count > 0 {
			s.Notes = append(s.Notes, "No ITL samples: no completed request streamed more than one content chunk.")
		}
		if g.unknownTokens > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%d completed requests have no completion token count; throughput counts them as 0 tokens.", g.unknownTokens))
		}
	}
	return s
}

// statusList is "HTTP 503 ×10, timeout ×2" for a failure summary.
func statusList(statuses, errors map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(statuses) {
		if k == "200" {
			continue
		}
		name := "HTTP " + k
		if k == "none" {
			name = "no HTTP status"
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", name, statuses[k]))
	}
	for _, k := range sortedKeys(errors) {
		if strings.HasPrefix(k, "http_") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", k, errors[k]))
	}
	return strings.Join(parts, ", ")
}

// step identifies a load level shared by runs of different backends.
type step struct {
	scenario string
	conc     int
	rate     float64
}

// isSweepRun reports whether a group is a primary bench run with a
// scenario: the material of the study's tables.
func isSweepRun(g *group) bool {
	return g.run.Kind == recorder.KindBench && g.run.Scenario != "" && g.key.role == recorder.RolePrimary
}

// latest keeps, per backend and step, the most recent run (the groups are
// in run order) and notes the ones it replaces.
func (c *Collector) latestByStep(rep *Report, groups []*group) (map[string]map[step]*group, []step) {
	by := map[string]map[step]*group{}
	var steps []step
	seen := map[step]bool{}
	for _, g := range groups {
		if !isSweepRun(g) {
			continue
		}
		st := step{g.run.Scenario, g.run.Concurrency, g.run.RequestRate}
		if !seen[st] {
			seen[st] = true
			steps = append(steps, st)
		}
		m := by[g.key.backend]
		if m == nil {
			m = map[step]*group{}
			by[g.key.backend] = m
		}
		if old := m[st]; old != nil && old.key.run != g.key.run {
			rep.Notes = append(rep.Notes, fmt.Sprintf("Run %s repeats the load level of %s on backend %s; the study tables and comparisons use the later one.",
				g.key.run, old.key.run, g.key.backend))
		}
		m[st] = g
	}
	return by, steps
}

// studyTables fills the Max Throughput and Min Latency tables and the
// Improvement Summary.
func (c *Collector) studyTables(rep *Report, groups []*group, border map[string]int) {
	by, steps := c.latestByStep(rep, groups)
	var scenarios []string
	for _, st := range steps {
		if !slices.Contains(scenarios, st.scenario) {
			scenarios = append(scenarios, st.scenario)
		}
	}
	maxRun := map[[2]string]*group{}
	minRun := map[[2]string]*group{}
	for _, sc := range scenarios {
		for _, b := range rep.Backends {
			var best, low *group
			n := 0
			for _, st := range steps {
				g := by[b][st]
				if g == nil || st.scenario != sc || st.rate != 0 || st.conc <= 0 {
					continue
				}
				n++
				if best == nil || val(g.stats.OutputThroughput) > val(best.stats.OutputThroughput) {
					best = g
				}
				if low == nil || (low.run.Concurrency != 2 && (g.run.Concurrency == 2 || g.run.Concurrency < low.run.Concurrency)) {
					low = g
				}
			}
			if best == nil {
				continue
			}
			maxRun[[2]string{sc, b}] = best
			minRun[[2]string{sc, b}] = low
			s := &best.stats
			rep.MaxThroughput = append(rep.MaxThroughput, MaxThroughputRow{
				Backend: b, Scenario: sc, Run: best.key.run, Concurrency: best.run.Concurrency, Runs: n,
				OutputThroughput: s.OutputThroughput, TotalThroughput: s.TotalThroughput,
				E2EP50: s.E2E.P50, E2EP99: s.E2E.P99, TTFTP50: s.TTFT.P50,
			})
			l := &low.stats
			rep.MinLatency = append(rep.MinLatency, MinLatencyRow{
				Backend: b, Scenario: sc, Run: low.key.run, Concurrency: low.run.Concurrency,
				OutputThroughput: l.OutputThroughput, E2EMean: l.E2E.Mean, E2EP50: l.E2E.P50, E2EMin: l.E2E.Min, E2EMax: l.E2E.Max,
			})
		}
	}
	base := rep.Baseline
	for _, sc := range scenarios {
		for _, b := range rep.Backends[1:] {
			bm, cm := maxRun[[2]string{sc, base}], maxRun[[2]string{sc, b}]
			if bm != nil && cm != nil {
				cp := c.compare("Max Throughput", "output_throughput", bm, cm)
				cp.Scenario = sc
				rep.Improvement = append(rep.Improvement, cp)
			}
			bl, cl := minRun[[2]string{sc, base}], minRun[[2]string{sc, b}]
			if bl != nil && cl != nil {
				if bl.run.Concurrency != cl.run.Concurrency {
					rep.Notes = append(rep.Notes, fmt.Sprintf("Scenario %s: the lowest load levels differ (%s c=%d, %s c=%d), so the Improvement Summary has no E2E P50 row for it.",
						sc, base, bl.run.Concurrency, b, cl.run.Concurrency))
					continue
				}
				cp := c.compare(fmt.Sprintf("E2E P50 (c=%d)", bl.run.Concurrency), "e2e_p50", bl, cl)
				cp.Scenario, cp.Concurrency = sc, bl.run.Concurrency
				rep.Improvement = append(rep.Improvement, cp)
			}
		}
	}
}

func val(p *float64) float64 {
	if p == nil {
		return math.Inf(-1)
	}
	return *p
}

// comparedMetrics are the metrics compared at every shared load level.
var comparedMetrics = []struct{ metric, label string }{
	{"output_throughput", "Output throughput"},
	{"ttft_p50", "TTFT P50"},
	{"tpot_p50", "TPOT P50"},
	{"e2e_p50", "E2E P50"},
	{"e2e_p99", "E2E P99"},
}

// comparisons compares the baseline with each other backend at every load
// level both ran, and within each live run that split traffic.
func (c *Collector) comparisons(rep *Report, groups []*group) {
	by, steps := c.latestByStepQuiet(groups)
	base := rep.Baseline
	for _, st := range steps {
		bg := by[base][st]
		if bg == nil {
			continue
		}
		for _, b := range rep.Backends[1:] {
			cg := by[b][st]
			if cg == nil {
				continue
			}
			for _, m := range comparedMetrics {
				cp := c.compare(m.label, m.metric, bg, cg)
				cp.Scenario, cp.Concurrency, cp.RequestRate = st.scenario, st.conc, st.rate
				rep.Comparisons = append(rep.Comparisons, cp)
			}
		}
	}
	// live runs: backends that shared one run (split traffic)
	live := map[string]map[string]*group{}
	var liveRuns []string
	for _, g := range groups {
		if g.key.role != recorder.RolePrimary || (g.run.Kind != recorder.KindLive && g.run.Kind != recorder.KindMirror) {
			continue
		}
		if live[g.key.run] == nil {
			live[g.key.run] = map[string]*group{}
			liveRuns = append(liveRuns, g.key.run)
		}
		live[g.key.run][g.key.backend] = g
	}
	for _, run := range liveRuns {
		bg := live[run][base]
		if bg == nil {
			continue
		}
		for _, b := range rep.Backends[1:] {
			cg := live[run][b]
			if cg == nil {
				continue
			}
			for _, m := range comparedMetrics {
				rep.Comparisons = append(rep.Comparisons, c.compare(m.label, m.metric, bg, cg))
			}
		}
	}
}

func (c *Collector) latestByStepQuiet(groups []*group) (map[string]map[step]*group, []step) {
	var scratch Report
	return c.latestByStep(&scratch, groups)
}

// compare builds one Comparison of metric between two groups.
func (c *Collector) compare(label, metric string, bg, cg *group) Comparison {
	cp := Comparison{Label: label, Metric: metric, Unit: "ms", HigherIsBetter: metric == "output_throughput"}
	if cp.HigherIsBetter {
		cp.Unit = "tok/s"
	}
	bv, bn := metricValue(bg, metric)
	cv, cn := metricValue(cg, metric)
	cp.Baseline = Side{Backend: bg.key.backend, Run: bg.key.run, Value: bv, Samples: bn}
	cp.Candidate = Side{Backend: cg.key.backend, Run: cg.key.run, Value: cv, Samples: cn}
	if bv != nil && cv != nil {
		cp.Diff = num(*cv - *bv)
		if *bv != 0 {
			cp.ChangePct = num(100 * (*cv / *bv - 1))
		}
	}
	if bn < minSamples || cn < minSamples || bv == nil || cv == nil {
		cp.Verdict = VerdictInsufficient
		cp.Sentence = fmt.Sprintf("Too few samples to compare %s (%s %d, %s %d; at least %d each are needed).",
			label, bg.key.backend, bn, cg.key.backend, cn, minSamples)
		return cp
	}
	key := strings.Join([]string{metric, bg.key.run, bg.key.backend, cg.key.run, cg.key.backend}, "|")
	r := newRNG(c.opts.Seed, key)
	br := replicates(r, bg, metric, c.opts.Resamples)
	crep := replicates(r, cg, metric, c.opts.Resamples)
	cp.DiffCI, cp.ChangeCIPct = diffIntervals(br, crep)
	cp.Verdict, cp.Sentence = verdict(label, cp.HigherIsBetter, bg.key.backend, cg.key.backend, cp.ChangePct, cp.ChangeCIPct, cp.Diff, cp.DiffCI, cp.Unit)
	return cp
}

// metricValue is a group's value of a compared metric and its samples.
func metricValue(g *group, metric string) (*float64, int) {
	s := &g.stats
	switch metric {
	case "output_throughput":
		return s.OutputThroughput, len(g.acc.e2e)
	case "ttft_p50":
		return s.TTFT.P50, s.TTFT.Count
	case "tpot_p50":
		return s.TPOT.P50, s.TPOT.Count
	case "e2e_p50":
		return s.E2E.P50, s.E2E.Count
	case "e2e_p99":
		return s.E2E.P99, s.E2E.Count
	}
	panic("report: unknown metric " + metric)
}

// replicates draws bootstrap replicates of a group's metric.
func replicates(rr *rand.Rand, g *group, metric string, b int) []float64 {
	switch metric {
	case "ttft_p50":
		return quantileReplicates(rr, g.acc.ttft, 50, b)
	case "tpot_p50":
		return quantileReplicates(rr, g.acc.tpot, 50, b)
	case "e2e_p50":
		return quantileReplicates(rr, g.acc.e2eSorted, 50, b)
	case "e2e_p99":
		return quantileReplicates(rr, g.acc.e2eSorted, 99, b)
	case "output_throughput":
		// throughput = Σtokens/duration; a replicate scales the measured
		// throughput by its resample's Σtokens/Σlatency relative to the
		// sample's, so it carries the requests' variability in both
		// (closed loop: throughput ≈ concurrency·Σtokens/Σlatency)
		obs := *g.stats.OutputThroughput
		sn, sd := 0.0, 0.0
		for i := range g.acc.tok {
			sn += float64(g.acc.tok[i])
			sd += float64(g.acc.e2e[i])
		}
		out := make([]float64, b)
		if sn == 0 || sd == 0 {
			for i := range out {
				out[i] = obs
			}
			return out
		}
		ratio := sn / sd
		out = ratioReplicates(rr, g.acc.tok, g.acc.e2e, b)
		for i := range out {
			out[i] = obs * out[i] / ratio
		}
		return out
	}
	panic("report: unknown metric " + metric)
}

// verdict says in words what an interval means.
func verdict(label string, higherIsBetter bool, base, cand string, change *float64, changeCI *Interval, diff *float64, diffCI *Interval, unit string) (string, string) {
	if diffCI == nil || diff == nil {
		return VerdictInsufficient, fmt.Sprintf("Too few samples to compare %s.", label)
	}
	desc := func(v float64, ci *Interval, pct bool) string {
		if pct {
			return fmt.Sprintf("%s (95%% CI %s to %s)", signedPct(v), signedPct(ci.Lo), signedPct(ci.Hi))
		}
		return fmt.Sprintf("%s %s (95%% CI %s to %s)", signed(v), unit, signed(ci.Lo), signed(ci.Hi))
	}
	var d string
	if change != nil && changeCI != nil {
		d = desc(*change, changeCI, true)
	} else {
		d = desc(*diff, diffCI, false)
	}
	switch {
	case diffCI.Lo > 0 || diffCI.Hi < 0:
		v := VerdictWorse
		if (diffCI.Lo > 0) == higherIsBetter {
			v = VerdictBetter
		}
		return v, fmt.Sprintf("%s is %s than %s on %s: %s.", cand, v, base, label, d)
	default:
		return VerdictSame, fmt.Sprintf("%s and %s cannot be told apart on %s: %s includes no change.", cand, base, label, d)
	}
}

func signedPct(v float64) string { return fmt.Sprintf("%+.1f%%", v) }

func signed(v float64) string { return fmt.Sprintf("%+.2f", v) }

// curves builds the throughput–latency curve of each backend × scenario.
func (c *Collector) curves(rep *Report, groups []*group, border map[string]int) {
	by, steps := c.latestByStepQuiet(groups)
	var scenarios []string
	for _, st := range steps {
		if !slices.Contains(scenarios, st.scenario) {
			scenarios = append(scenarios, st.scenario)
		}
	}
	for _, sc := range scenarios {
		for _, b := range rep.Backends {
			var pts []CurvePoint
			for _, st := range steps {
				g := by[b][st]
				if g == nil || st.scenario != sc {
					continue
				}
				s := &g.stats
				pts = append(pts, CurvePoint{
					Run: g.key.run, Concurrency: st.conc, RequestRate: st.rate,
					OutputThroughput: s.OutputThroughput, TotalThroughput: s.TotalThroughput, RequestThroughput: s.RequestThroughput,
					TTFTP50: s.TTFT.P50, TTFTP99: s.TTFT.P99, TPOTP50: s.TPOT.P50, E2EP50: s.E2E.P50, E2EP99: s.E2E.P99,
					ErrorRate: s.ErrorRate,
				})
			}
			if len(pts) == 0 {
				continue
			}
			slices.SortStableFunc(pts, func(a, b CurvePoint) int {
				return cmp.Or(cmp.Compare(a.RequestRate, b.RequestRate), cmp.Compare(a.Concurrency, b.Concurrency))
			})
			rep.Curves = append(rep.Curves, Curve{Backend: b, Scenario: sc, Points: pts})
		}
	}
}

// distributions merges each backend's primary groups into CDFs and an ITL
// histogram; the histograms share their bins so they can be overlaid.
func (c *Collector) distributions(rep *Report, groups []*group) {
	type merged struct {
		b              string
		n              int
		ttft, e2e, tpt []float32
		itl            usHist
	}
	var all []*merged
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, b := range rep.Backends {
		m := &merged{b: b}
		for _, g := range groups {
			if g.key.backend != b || g.key.role != recorder.RolePrimary {
				continue
			}
			m.n += g.acc.completed
			m.ttft = append(m.ttft, g.acc.ttft...)
			m.e2e = append(m.e2e, g.acc.e2eSorted...)
			m.tpt = append(m.tpt, g.acc.tpot...)
			m.itl.merge(&g.acc.itl)
		}
		if m.n == 0 {
			continue
		}
		all = append(all, m)
		if m.itl.n > 0 {
			q := m.itl.quantilesMS([]float64{0, 99})
			lo, hi = math.Min(lo, q[0]), math.Max(hi, q[1])
		}
	}
	for _, m := range all {
		rep.Distributions = append(rep.Distributions, Distribution{
			Backend: m.b, Requests: m.n, TTFTCDF: cdf(m.ttft), E2ECDF: cdf(m.e2e), TPOTCDF: cdf(m.tpt), ITL: itlBins(&m.itl, lo, hi),
		})
	}
}

// cdf is the 0th…100th percentiles of v.
func cdf(v []float32) []float64 {
	if len(v) == 0 {
		return nil
	}
	slices.Sort(v)
	out := make([]float64, 101)
	for p := range out {
		out[p] = round6(Percentile(v, float64(p)))
	}
	return out
}

func round6(v float64) float64 { return math.Round(v*1e6) / 1e6 }

// itlBins counts h in 40 equal-width bins over [lo, hi] ms (the smallest
// gap and the largest 99th percentile of all backends); the last bin also
// counts everything above.
func itlBins(h *usHist, lo, hi float64) []Bin {
	if h.n == 0 {
		return nil
	}
	const nb = 40
	width := (hi - lo) / nb
	if width <= 0 {
		return []Bin{{LoMs: lo, HiMs: lo + 0.001, Count: int(h.n)}}
	}
	bins := make([]Bin, nb)
	for i := range bins {
		bins[i] = Bin{LoMs: round6(lo + float64(i)*width), HiMs: round6(lo + float64(i+1)*width)}
	}
	h.each(func(us uint32, c uint32) {
		i := int((float64(us)/1000 - lo) / width)
		bins[min(max(i, 0), nb-1)].Count += int(c)
	})
	return bins
}

// mirror analyses the mirrored pairs.
func (c *Collector) mirror(rep *Report, border map[string]int) {
	if len(c.pending) > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s without a partner row (a shadow still running, dropped, or filtered out) %s left out of the pair analysis.",
			plural(len(c.pending), "mirrored request", "mirrored requests"), isAre(len(c.pending))))
	}
	keys := make([]pairKey, 0, len(c.pairs))
	for k := range c.pairs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b pairKey) int {
		return cmp.Or(cmp.Compare(border[a.primary], border[b.primary]), cmp.Compare(border[a.shadow], border[b.shadow]))
	})
	names := [3]string{"ttft", "tpot", "e2e"}
	labels := [3]string{"TTFT", "TPOT", "E2E"}
	for _, k := range keys {
		a := c.pairs[k]
		m := MirrorStats{Primary: k.primary, Shadow: k.shadow, Runs: sortedKeys(a.runs), Pairs: a.pairs, BothOK: a.bothOK,
			PrimaryFailed: a.primaryFailed, ShadowFailed: a.shadowFailed}
		for i := range names {
			m.Metrics = append(m.Metrics, c.paired(names[i], labels[i], k, a.p[i], a.s[i]))
		}
		ag := Agreement{Compared: a.compared, Identical: a.identical, BodiesCompared: a.bodies}
		if a.compared > 0 {
			ag.IdenticalShare = num(float64(a.identical) / float64(a.compared))
		}
		if a.bodies > 0 {
			ag.MeanCommonPrefixChars = num(a.prefixChars / float64(a.bodies))
			ag.MeanCommonPrefixShare = num(a.prefixSh / float64(a.bodies))
		}
		m.Agreement = ag
		rep.Mirror = append(rep.Mirror, m)
	}
}

// paired analyses one metric over pairs where both values exist.
func (c *Collector) paired(metric, label string, k pairKey, pv, sv []float32) PairedMetric {
	var p, s, d []float32
	for i := range pv {
		if math.IsNaN(float64(pv[i])) || math.IsNaN(float64(sv[i])) {
			continue
		}
		p = append(p, pv[i])
		s = append(s, sv[i])
		d = append(d, sv[i]-pv[i])
	}
	pm := PairedMetric{Metric: metric, Pairs: len(d)}
	if len(d) == 0 {
		pm.Verdict = VerdictInsufficient
		pm.Sentence = fmt.Sprintf("No pair has a %s on both sides.", label)
		return pm
	}
	r := newRNG(c.opts.Seed, "pair|"+metric+"|"+k.primary+"|"+k.shadow)
	mean := meanReplicates(r, d, c.opts.Resamples) // before sorting d
	sumD := 0.0
	for _, x := range d {
		sumD += float64(x)
	}
	slices.Sort(p)
	slices.Sort(s)
	slices.Sort(d)
	pm.PrimaryP50 = num(Percentile(p, 50))
	pm.ShadowP50 = num(Percentile(s, 50))
	pm.MedianDiff = num(Percentile(d, 50))
	pm.MeanDiff = num(sumD / float64(len(d)))
	if *pm.PrimaryP50 != 0 {
		pm.MedianDiffPct = num(100 * *pm.MedianDiff / *pm.PrimaryP50)
	}
	if len(d) < minSamples {
		pm.Verdict = VerdictInsufficient
		pm.Sentence = fmt.Sprintf("Too few pairs to compare %s (%d; at least %d are needed).", label, len(d), minSamples)
		return pm
	}
	pm.MeanDiffCI = ci95(mean)
	pm.MedianDiffCI = ci95(quantileReplicates(r, d, 50, c.opts.Resamples))
	pr := quantileReplicates(r, p, 50, c.opts.Resamples)
	sr := quantileReplicates(r, s, 50, c.opts.Resamples)
	pm.UnpairedCI, _ = diffIntervals(pr, sr)
	ci := pm.MedianDiffCI
	switch {
	case ci.Lo > 0:
		pm.Verdict = VerdictWorse
		pm.Sentence = fmt.Sprintf("%s is slower than %s on %s for the same requests: median difference %s ms (95%% CI %s to %s ms).",
			k.shadow, k.primary, label, signed(*pm.MedianDiff), signed(ci.Lo), signed(ci.Hi))
	case ci.Hi < 0:
		pm.Verdict = VerdictBetter
		pm.Sentence = fmt.Sprintf("%s is faster than %s on %s for the same requests: median difference %s ms (95%% CI %s to %s ms).",
			k.shadow, k.primary, label, signed(*pm.MedianDiff), signed(ci.Lo), signed(ci.Hi))
	default:
		pm.Verdict = VerdictSame
		pm.Sentence = fmt.Sprintf("%s and %s cannot be told apart on %s for the same requests: median difference %s ms (95%% CI %s to %s ms includes no change).",
			k.shadow, k.primary, label, signed(*pm.MedianDiff), signed(ci.Lo), signed(ci.Hi))
	}
	return pm
}

// live reports live traffic per window.
func (c *Collector) live(rep *Report, border map[string]int) {
	keys := make([]windowKey, 0, len(c.wins))
	for k := range c.wins {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(border[a.backend], border[b.backend]),
			cmp.Compare(roleOrder(a.role), roleOrder(b.role))) < 0
	})
	for _, k := range keys {
		runs := sortedKeys(c.winRun[k])
		kind := recorder.KindLive
		for _, r := range runs {
			if c.runs[r].Kind == recorder.KindMirror {
				kind = recorder.KindMirror
			}
		}
		s := c.wins[k].stats(recorder.Run{Name: strings.Join(runs, ","), Kind: kind}, k.backend, k.role, c.opts.SLO)
		ws := time.Unix(0, k.start).UTC()
		we := ws.Add(c.opts.Window)
		s.WindowStart, s.WindowEnd = &ws, &we
		rep.Live = append(rep.Live, s)
	}
}

// runInfo is a run as recorded.
func runInfo(r recorder.Run) RunInfo {
	ri := RunInfo{ID: r.ID, Name: r.Name, Kind: r.Kind, Backend: r.Backend, Scenario: r.Scenario,
		Concurrency: r.Concurrency, RequestRate: r.RequestRate, Meta: r.Meta}
	if r.StartedNS != 0 {
		t := time.Unix(0, r.StartedNS).UTC()
		ri.Started = &t
	}
	if r.EndedNS != 0 {
		t := time.Unix(0, r.EndedNS).UTC()
		ri.Ended = &t
	}
	return ri
}
