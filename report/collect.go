package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/abproxy/abproxy/recorder"
)

// Collector turns request records into a Report in one pass, keeping per
// group only counters and compact samples (float32 milliseconds per
// request, a µs-count histogram for ITL), never the records themselves:
// add every record with Add, then call Report. It is what Build uses over
// a database, and what tests use over records made in memory.
type Collector struct {
	opts   Options
	runs   map[string]recorder.Run
	order  map[string]int // run name → position (runs table order)
	groups map[groupKey]*acc
	wins   map[windowKey]*acc
	winRun map[windowKey]map[string]bool

	pending map[string]*half // mirrored rows waiting for their partner
	pairs   map[pairKey]*pairAcc

	counts     Counts
	other      map[string]int // endpoint → requests not counted
	unknownRun map[string]int // requests naming a run not in runs
	notes      []string
}

type groupKey struct{ run, backend, role string }

type windowKey struct {
	backend, role string
	start         int64 // window start, Unix ns
}

// acc accumulates one group.
type acc struct {
	requests, completed, failed int
	statuses                    map[int]int
	errors                      map[string]int
	firstStart, lastEnd         int64
	promptTok, complTok         int64
	ttft, tpot, e2e             []float32 // ms, completed requests
	tok                         []float32 // completion tokens, aligned with e2e
	itl                         usHist
	noITL                       bool
	met                         int // requests meeting the SLO
	noFirstToken                int // completed without a first token
	unknownTokens               int // completed with unknown completion_tokens
	e2eSorted                   []float32
	summarized                  bool
}

// NewCollector prepares a collector for records of the given runs (the
// runs table, or the selected part of it). Records naming other runs are
// still counted, as runs of kind "live" with no metadata.
func NewCollector(runs []recorder.Run, opts Options) *Collector {
	opts.defaults()
	c := &Collector{
		opts: opts, runs: map[string]recorder.Run{}, order: map[string]int{},
		groups: map[groupKey]*acc{}, wins: map[windowKey]*acc{}, winRun: map[windowKey]map[string]bool{},
		pending: map[string]*half{}, pairs: map[pairKey]*pairAcc{},
		other: map[string]int{}, unknownRun: map[string]int{},
	}
	for i, r := range runs {
		c.runs[r.Name] = r
		c.order[r.Name] = i
	}
	return c
}

// isGeneration reports whether a request is one the statistics are about:
// a chat or text completion. Other endpoints (GET /v1/models, health
// probes) are counted apart.
func isGeneration(endpoint string) bool {
	return endpoint == "" || strings.HasSuffix(endpoint, "/completions")
}

// failed reports whether a request failed: an error was recorded or the
// status is not 2xx.
func failed(r *recorder.Request) bool {
	return r.Error != "" || r.Status < 200 || r.Status > 299
}

func ms(ns int64) float32 { return float32(float64(ns) / 1e6) }

// Add counts one record. It never fails; the error return lets it be
// passed to recorder.ScanRequests directly.
func (c *Collector) Add(r *recorder.Request) error {
	c.counts.Requests++
	if !isGeneration(r.Endpoint) {
		c.other[r.Endpoint]++
		return nil
	}
	c.counts.Counted++
	if failed(r) {
		c.counts.Failed++
	}
	run, ok := c.runs[r.Run]
	if !ok {
		c.unknownRun[r.Run]++
		run = recorder.Run{Name: r.Run, Kind: recorder.KindLive}
		c.runs[r.Run] = run
		c.order[r.Run] = len(c.order)
	}
	role := r.Role
	if role == "" {
		role = recorder.RolePrimary
	}
	k := groupKey{r.Run, r.Backend, role}
	g := c.groups[k]
	if g == nil {
		g = &acc{}
		c.groups[k] = g
	}
	g.add(r, c.opts.SLO)
	if (run.Kind == recorder.KindLive || run.Kind == recorder.KindMirror) && r.StartNS != 0 {
		w := int64(c.opts.Window)
		start := r.StartNS - ((r.StartNS%w)+w)%w
		wk := windowKey{r.Backend, role, start}
		wa := c.wins[wk]
		if wa == nil {
			wa = &acc{noITL: true}
			c.wins[wk] = wa
			c.winRun[wk] = map[string]bool{}
		}
		wa.add(r, c.opts.SLO)
		c.winRun[wk][r.Run] = true
	}
	if r.PairID != "" {
		c.addHalf(r)
	}
	return nil
}

func (g *acc) add(r *recorder.Request, slo SLO) {
	g.requests++
	if g.statuses == nil {
		g.statuses = map[int]int{}
		g.errors = map[string]int{}
	}
	g.statuses[r.Status]++
	if r.StartNS != 0 && (g.firstStart == 0 || r.StartNS < g.firstStart) {
		g.firstStart = r.StartNS
	}
	if r.EndNS > g.lastEnd {
		g.lastEnd = r.EndNS
	}
	if failed(r) {
		g.failed++
		class := r.Error
		if class == "" {
			class = "http_" + strconv.Itoa(r.Status)
		}
		g.errors[class]++
		return
	}
	g.completed++
	if r.PromptTokens > 0 {
		g.promptTok += int64(r.PromptTokens)
	}
	if r.CompletionTokens >= 0 {
		g.complTok += int64(r.CompletionTokens)
	} else {
		g.unknownTokens++
	}
	meets := true
	var e2e, ttft, tpot float32 = -1, -1, -1
	if r.StartNS != 0 && r.EndNS != 0 {
		e2e = ms(r.EndNS - r.StartNS)
		g.e2e = append(g.e2e, e2e)
		g.tok = append(g.tok, float32(max(r.CompletionTokens, 0)))
	}
	if r.StartNS != 0 && r.FirstTokenNS != 0 {
		ttft = ms(r.FirstTokenNS - r.StartNS)
		g.ttft = append(g.ttft, ttft)
		if r.CompletionTokens > 1 && r.EndNS != 0 {
			tpot = float32(float64(r.EndNS-r.FirstTokenNS) / 1e6 / float64(r.CompletionTokens-1))
			g.tpot = append(g.tpot, tpot)
		}
	} else {
		g.noFirstToken++
	}
	if !g.noITL {
		for i := 1; i < len(r.ChunkNS); i++ {
			g.itl.add(r.ChunkNS[i] - r.ChunkNS[i-1])
		}
	}
	if slo.Set() {
		if slo.TTFTms > 0 && (ttft < 0 || float64(ttft) > slo.TTFTms) {
			meets = false
		}
		if slo.TPOTms > 0 && tpot >= 0 && float64(tpot) > slo.TPOTms {
			meets = false
		}
		if slo.E2Ems > 0 && (e2e < 0 || float64(e2e) > slo.E2Ems) {
			meets = false
		}
		if meets {
			g.met++
		}
	}
}

// half is one row of a mirrored pair, kept until its partner arrives.
type half struct {
	run, backend, role string
	ok                 bool
	ttft, tpot, e2e    float32 // NaN when absent
	sha, output        string
}

type pairKey struct{ primary, shadow string }

// pairAcc accumulates the pairs of one primary × shadow backend.
type pairAcc struct {
	runs                  map[string]bool
	pairs, bothOK         int
	primaryFailed         int
	shadowFailed          int
	p, s                  [3][]float32 // ttft, tpot, e2e of both-OK pairs; NaN when absent
	compared, identical   int
	bodies                int
	prefixChars, prefixSh float64
}

func nan32() float32 { return float32(math.NaN()) }

func (c *Collector) addHalf(r *recorder.Request) {
	h := &half{run: r.Run, backend: r.Backend, role: r.Role, ok: !failed(r),
		ttft: nan32(), tpot: nan32(), e2e: nan32(), sha: r.OutputSHA256, output: r.Output}
	if r.StartNS != 0 && r.FirstTokenNS != 0 {
		h.ttft = ms(r.FirstTokenNS - r.StartNS)
		if r.CompletionTokens > 1 && r.EndNS != 0 {
			h.tpot = float32(float64(r.EndNS-r.FirstTokenNS) / 1e6 / float64(r.CompletionTokens-1))
		}
	}
	if r.StartNS != 0 && r.EndNS != 0 {
		h.e2e = ms(r.EndNS - r.StartNS)
	}
	o, ok := c.pending[r.PairID]
	if !ok {
		c.pending[r.PairID] = h
		return
	}
	delete(c.pending, r.PairID)
	p, s := o, h
	if p.role == recorder.RoleShadow {
		p, s = s, p
	}
	if p.role != recorder.RolePrimary || s.role != recorder.RoleShadow {
		c.notes = append(c.notes, fmt.Sprintf("Pair %s has two %s rows and was left out of the mirror analysis.", r.PairID, p.role))
		return
	}
	k := pairKey{p.backend, s.backend}
	a := c.pairs[k]
	if a == nil {
		a = &pairAcc{runs: map[string]bool{}}
		c.pairs[k] = a
	}
	a.runs[p.run] = true
	a.runs[s.run] = true
	a.pairs++
	if !p.ok {
		a.primaryFailed++
	}
	if !s.ok {
		a.shadowFailed++
	}
	if !p.ok || !s.ok {
		return
	}
	a.bothOK++
	for i, v := range [3][2]float32{{p.ttft, s.ttft}, {p.tpot, s.tpot}, {p.e2e, s.e2e}} {
		a.p[i] = append(a.p[i], v[0])
		a.s[i] = append(a.s[i], v[1])
	}
	if p.sha != "" && s.sha != "" {
		a.compared++
		if p.sha == s.sha {
			a.identical++
		}
	}
	if p.output != "" || s.output != "" {
		n := commonPrefixRunes(p.output, s.output)
		longer := max(utf8.RuneCountInString(p.output), utf8.RuneCountInString(s.output))
		a.bodies++
		a.prefixChars += float64(n)
		if longer > 0 {
			a.prefixSh += float64(n) / float64(longer)
		}
	}
}

// commonPrefixRunes counts the characters two strings share from the start.
func commonPrefixRunes(a, b string) int {
	n := 0
	for len(a) > 0 && len(b) > 0 {
		ra, sa := utf8.DecodeRuneInString(a)
		rb, sb := utf8.DecodeRuneInString(b)
		if ra != rb {
			break
		}
		n++
		a, b = a[sa:], b[sb:]
	}
	return n
}
