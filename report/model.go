package report

import (
	"encoding/json"
	"time"
)

// SchemaID names the JSON schema of [Report]; it changes only when a field
// changes meaning or disappears (adding a field keeps it).
const SchemaID = "abproxy.report/v1"

// Report is everything `abproxy report` shows. Its JSON form (the Go field
// tags below) is a stable, documented interface: docs/report.md.
//
// Units: latencies in milliseconds (fields ending _ms, and the Summary
// values in them), throughputs per second (tokens or requests), shares as
// fractions 0–1, changes in percent (fields ending _pct). A number that
// cannot be computed (no samples, zero duration) is null, never 0.
type Report struct {
	Schema        string             `json:"schema"`         // SchemaID
	GeneratedAt   time.Time          `json:"generated_at"`   // when the report was made, UTC
	Database      string             `json:"database"`       // the SQLite file, as given
	Filters       Filters            `json:"filters"`        // what was selected
	Baseline      string             `json:"baseline"`       // backend the others are compared with
	Backends      []string           `json:"backends"`       // backends in the selected data, baseline first
	SLO           SLO                `json:"slo"`            // goodput objectives
	Bootstrap     BootstrapInfo      `json:"bootstrap"`      // how intervals were computed
	Counts        Counts             `json:"counts"`         // requests read and counted
	Notes         []string           `json:"notes"`          // one sentence each: what was excluded or could not be computed
	Runs          []Stats            `json:"runs"`           // one entry per run × backend × role
	MaxThroughput []MaxThroughputRow `json:"max_throughput"` // the study's Max Throughput Test
	MinLatency    []MinLatencyRow    `json:"min_latency"`    // the study's Min Latency Test
	Improvement   []Comparison       `json:"improvement"`    // the study's Improvement Summary, with intervals
	Comparisons   []Comparison       `json:"comparisons"`    // baseline vs each other backend at every shared load level
	Curves        []Curve            `json:"curves"`         // throughput–latency curve per backend × scenario
	Distributions []Distribution     `json:"distributions"`  // per backend: latency CDFs and the ITL histogram
	Mirror        []MirrorStats      `json:"mirror"`         // mirrored pairs per primary × shadow backend
	Live          []Stats            `json:"live"`           // live traffic per backend × role × time window
	Provenance    []RunInfo          `json:"provenance"`     // every run used, as recorded
}

// Filters echoes the selection the report was made with.
type Filters struct {
	Runs     []string   `json:"runs"`     // --run patterns; empty = all runs
	Backends []string   `json:"backends"` // --backend; empty = all
	Since    *time.Time `json:"since"`    // --since; null = no limit
	Window   string     `json:"window"`   // --window, the live-traffic window (Go duration)
}

// SLO holds goodput objectives; a zero field is not checked.
type SLO struct {
	TTFTms float64 `json:"ttft_ms,omitempty"` // time to first token at most
	TPOTms float64 `json:"tpot_ms,omitempty"` // time per output token at most
	E2Ems  float64 `json:"e2e_ms,omitempty"`  // end-to-end latency at most
}

// Set reports whether any objective is given.
func (s SLO) Set() bool { return s.TTFTms > 0 || s.TPOTms > 0 || s.E2Ems > 0 }

// BootstrapInfo says how the confidence intervals were computed.
type BootstrapInfo struct {
	Resamples  int     `json:"resamples"`  // replicates per interval
	Seed       uint64  `json:"seed"`       // RNG seed (intervals are reproducible)
	Confidence float64 `json:"confidence"` // 0.95
	Method     string  `json:"method"`     // "percentile"
}

// Counts are the requests the report read and what it did with them.
type Counts struct {
	Requests       int `json:"requests"`        // rows matching the filters
	Counted        int `json:"counted"`         // completions requests in the statistics
	OtherEndpoints int `json:"other_endpoints"` // e.g. GET /v1/models, not counted
	Failed         int `json:"failed"`          // counted requests that failed
}

// Stats are one group of requests: a run's requests to one backend in one
// role, or for live traffic one time window of one backend.
type Stats struct {
	Run         string     `json:"run"`                    // run name
	Kind        string     `json:"kind"`                   // bench | live | mirror
	Backend     string     `json:"backend"`                // backend name
	Role        string     `json:"role"`                   // primary | shadow
	Scenario    string     `json:"scenario"`               // traffic scenario; "" for live traffic
	Concurrency int        `json:"concurrency"`            // closed-loop concurrency; 0 if none
	RequestRate float64    `json:"request_rate"`           // open-loop requests/s; 0 if none
	WindowStart *time.Time `json:"window_start,omitempty"` // live windows only
	WindowEnd   *time.Time `json:"window_end,omitempty"`   // live windows only

	Requests  int            `json:"requests"`   // all requests, failures included
	Completed int            `json:"completed"`  // finished without error with a 2xx status
	Failed    int            `json:"failed"`     // error recorded or non-2xx status
	ErrorRate float64        `json:"error_rate"` // failed / requests
	Statuses  map[string]int `json:"statuses"`   // HTTP status → requests; "none" = no status
	Errors    map[string]int `json:"errors"`     // error class → requests

	FirstStart        time.Time `json:"first_start"`        // earliest start of any request
	LastEnd           time.Time `json:"last_end"`           // latest end of any request
	DurationS         float64   `json:"duration_s"`         // last end − first start
	PromptTokens      int64     `json:"prompt_tokens"`      // Σ over completed requests
	CompletionTokens  int64     `json:"completion_tokens"`  // Σ over completed requests
	RequestThroughput *float64  `json:"request_throughput"` // completed / duration
	OutputThroughput  *float64  `json:"output_throughput"`  // completion tokens / duration
	TotalThroughput   *float64  `json:"total_throughput"`   // (prompt + completion tokens) / duration

	TTFT Summary `json:"ttft_ms"` // first token − start, completed requests
	TPOT Summary `json:"tpot_ms"` // (E2E − TTFT)/(completion_tokens − 1), completion_tokens > 1
	ITL  Summary `json:"itl_ms"`  // gaps between consecutive content chunks (not per window)
	E2E  Summary `json:"e2e_ms"`  // end − start, completed requests

	Goodput *Goodput `json:"goodput"` // null without an SLO
	Notes   []string `json:"notes"`   // e.g. why a metric has no samples

	// Server is the backend's own metrics around the run (runs[] only),
	// absent when none were scraped then.
	Server *ServerStats `json:"server,omitempty"`
}

// Goodput is the share of requests meeting every objective of the SLO.
// Failed requests are in the denominator and never meet it.
type Goodput struct {
	Met   int      `json:"met"`   // requests meeting the SLO
	Share float64  `json:"share"` // met / requests
	Rate  *float64 `json:"rate"`  // met / duration, requests/s
}

// MaxThroughputRow is one line of the Max Throughput Test: for one backend
// and scenario, the closed-loop run with the highest output throughput.
type MaxThroughputRow struct {
	Backend          string   `json:"backend"`
	Scenario         string   `json:"scenario"`
	Run              string   `json:"run"`         // the chosen run
	Concurrency      int      `json:"concurrency"` // its concurrency
	Runs             int      `json:"runs"`        // runs it was chosen from
	OutputThroughput *float64 `json:"output_throughput"`
	TotalThroughput  *float64 `json:"total_throughput"`
	E2EP50           *float64 `json:"e2e_p50_ms"`
	E2EP99           *float64 `json:"e2e_p99_ms"`
	TTFTP50          *float64 `json:"ttft_p50_ms"`
}

// MinLatencyRow is one line of the Min Latency Test: the concurrency-2
// run of a backend and scenario (the lowest concurrency when none ran at 2).
type MinLatencyRow struct {
	Backend          string   `json:"backend"`
	Scenario         string   `json:"scenario"`
	Run              string   `json:"run"`
	Concurrency      int      `json:"concurrency"`
	OutputThroughput *float64 `json:"output_throughput"`
	E2EMean          *float64 `json:"e2e_mean_ms"`
	E2EP50           *float64 `json:"e2e_p50_ms"`
	E2EMin           *float64 `json:"e2e_min_ms"`
	E2EMax           *float64 `json:"e2e_max_ms"`
}

// Comparison is one metric of the baseline against another backend, with
// the bootstrap interval of the difference and a verdict.
type Comparison struct {
	Label          string    `json:"label"`            // e.g. "Max Throughput", "E2E P50 (c=2)", "TTFT P50"
	Scenario       string    `json:"scenario"`         // "" for live traffic
	Concurrency    int       `json:"concurrency"`      // load level compared; 0 if none
	RequestRate    float64   `json:"request_rate"`     // open-loop load level; 0 if none
	Metric         string    `json:"metric"`           // output_throughput | ttft_p50 | tpot_p50 | e2e_p50 | e2e_p99
	Unit           string    `json:"unit"`             // "tok/s" or "ms"
	HigherIsBetter bool      `json:"higher_is_better"` // true for throughput
	Baseline       Side      `json:"baseline"`
	Candidate      Side      `json:"candidate"`
	Diff           *float64  `json:"diff"`          // candidate − baseline, in unit
	DiffCI         *Interval `json:"diff_ci"`       // 95% interval of Diff
	ChangePct      *float64  `json:"change_pct"`    // 100·(candidate/baseline − 1)
	ChangeCIPct    *Interval `json:"change_ci_pct"` // 95% interval of ChangePct
	Verdict        string    `json:"verdict"`       // better | worse | indistinguishable | insufficient_data
	Sentence       string    `json:"sentence"`      // the verdict in words
}

// Verdicts of a Comparison or a paired metric.
const (
	VerdictBetter       = "better"            // the interval excludes no change, in the good direction
	VerdictWorse        = "worse"             // the interval excludes no change, in the bad direction
	VerdictSame         = "indistinguishable" // the interval includes no change
	VerdictInsufficient = "insufficient_data" // too few samples on a side
)

// Side is one backend's value in a Comparison.
type Side struct {
	Backend string   `json:"backend"`
	Run     string   `json:"run"`     // run the value comes from
	Value   *float64 `json:"value"`   // in the comparison's unit
	Samples int      `json:"samples"` // requests behind it
}

// Curve is one backend's sweep in one scenario, by increasing load.
type Curve struct {
	Backend  string       `json:"backend"`
	Scenario string       `json:"scenario"`
	Points   []CurvePoint `json:"points"`
}

// CurvePoint is one run of a sweep.
type CurvePoint struct {
	Run               string   `json:"run"`
	Concurrency       int      `json:"concurrency"`
	RequestRate       float64  `json:"request_rate"`
	OutputThroughput  *float64 `json:"output_throughput"`
	TotalThroughput   *float64 `json:"total_throughput"`
	RequestThroughput *float64 `json:"request_throughput"`
	TTFTP50           *float64 `json:"ttft_p50_ms"`
	TTFTP99           *float64 `json:"ttft_p99_ms"`
	TPOTP50           *float64 `json:"tpot_p50_ms"`
	E2EP50            *float64 `json:"e2e_p50_ms"`
	E2EP99            *float64 `json:"e2e_p99_ms"`
	ErrorRate         float64  `json:"error_rate"`
}

// Distribution is one backend's latency distributions over all of its
// selected primary requests (filter with --run to see one load level).
type Distribution struct {
	Backend  string    `json:"backend"`
	Requests int       `json:"requests"`      // completed requests
	TTFTCDF  []float64 `json:"ttft_cdf_ms"`   // 101 values: the 0th…100th percentiles; null without samples
	E2ECDF   []float64 `json:"e2e_cdf_ms"`    // likewise
	TPOTCDF  []float64 `json:"tpot_cdf_ms"`   // likewise
	ITL      []Bin     `json:"itl_histogram"` // ITL counts in 40 equal-width bins shared by all backends, up to the largest 99th percentile; the last bin also holds the rest
}

// Bin is one histogram bin [lo, hi) in milliseconds.
type Bin struct {
	LoMs  float64 `json:"lo_ms"`
	HiMs  float64 `json:"hi_ms"` // the last bin also holds everything above
	Count int     `json:"count"`
}

// MirrorStats compare mirrored pairs: the same request served by the
// primary backend (answered to the client) and the shadow backend.
type MirrorStats struct {
	Primary       string         `json:"primary"` // primary backend
	Shadow        string         `json:"shadow"`  // shadow backend
	Runs          []string       `json:"runs"`    // runs the pairs come from
	Pairs         int            `json:"pairs"`   // pairs with both rows present
	BothOK        int            `json:"both_ok"` // pairs where both completed
	PrimaryFailed int            `json:"primary_failed"`
	ShadowFailed  int            `json:"shadow_failed"`
	Metrics       []PairedMetric `json:"metrics"`   // per-request differences shadow − primary
	Agreement     Agreement      `json:"agreement"` // do they answer the same?
}

// PairedMetric is the distribution of per-pair differences (shadow −
// primary) of one latency metric over pairs where both completed.
type PairedMetric struct {
	Metric        string    `json:"metric"` // ttft | tpot | e2e
	Pairs         int       `json:"pairs"`
	PrimaryP50    *float64  `json:"primary_p50_ms"`
	ShadowP50     *float64  `json:"shadow_p50_ms"`
	MedianDiff    *float64  `json:"median_diff_ms"`    // median of the per-pair differences
	MedianDiffCI  *Interval `json:"median_diff_ci_ms"` // its 95% interval
	MeanDiff      *float64  `json:"mean_diff_ms"`
	MeanDiffCI    *Interval `json:"mean_diff_ci_ms"`
	MedianDiffPct *float64  `json:"median_diff_pct"` // median difference relative to the primary's median
	// UnpairedCI is the 95% interval of shadow P50 − primary P50 had the two
	// sides been independent runs: the width paired analysis saves.
	UnpairedCI *Interval `json:"unpaired_ci_ms"`
	Verdict    string    `json:"verdict"` // for the shadow: better | worse | indistinguishable | insufficient_data
	Sentence   string    `json:"sentence"`
}

// Agreement measures whether two backends answer the same.
type Agreement struct {
	Compared       int      `json:"compared"`        // pairs where both completed with an output hash
	Identical      int      `json:"identical"`       // equal output_sha256
	IdenticalShare *float64 `json:"identical_share"` // identical / compared
	// With stored bodies (store_bodies = true): the common prefix of the two
	// outputs, in characters and as a share of the longer output.
	BodiesCompared        int      `json:"bodies_compared"`
	MeanCommonPrefixChars *float64 `json:"mean_common_prefix_chars"`
	MeanCommonPrefixShare *float64 `json:"mean_common_prefix_share"`
}

// RunInfo is one run as recorded in the runs table.
type RunInfo struct {
	ID          int64           `json:"id"`
	Name        string          `json:"name"`
	Kind        string          `json:"kind"`
	Backend     string          `json:"backend"`
	Scenario    string          `json:"scenario"`
	Concurrency int             `json:"concurrency"`
	RequestRate float64         `json:"request_rate"`
	Started     *time.Time      `json:"started"` // null if not recorded
	Ended       *time.Time      `json:"ended"`   // null while running
	Meta        json.RawMessage `json:"meta"`    // runs.meta verbatim (JSON), null if none
}
