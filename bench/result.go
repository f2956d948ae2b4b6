package bench

import (
	"slices"
	"strconv"

	"github.com/abproxy/abproxy/internal/stats"
	"github.com/abproxy/abproxy/recorder"
)

// Result is one request as bench saw it from the client side. Times are
// absolute Unix nanoseconds; 0 means the event did not happen.
type Result struct {
	Index   int    // position in the run's request sequence, warmup included
	Warmup  bool   // a warmup request, excluded from the run's results
	ID      string // bench's request id, sent as X-Request-Id
	ProxyID string // the proxy's record id (X-ABProxy-Request-Id); "" without a proxy
	Backend string // arm (backend name) the request was sent to

	ScheduledNS  int64   // open loop: when the arrival process released it; 0 in closed loop
	StartNS      int64   // just before the connection was taken and the request written
	FirstByteNS  int64   // response header read
	FirstTokenNS int64   // first SSE event with content or reasoning text
	EndNS        int64   // data: [DONE], the end of the body, or the error
	ChunkNS      []int64 // every content-bearing event's read time
	Chunks       int     // len(ChunkNS), kept when the slice is handed on

	Status      int    // HTTP status; 0 when none arrived
	Error       string // error class (the proxy's names); "" on success
	ErrorDetail string // one sentence about the error

	PlannedPrompt    int    // prompt tokens bench planned (chat template included)
	PlannedOutput    int    // max_tokens sent; 0 when none (dataset scenario)
	Raised           bool   // the sampled input was below the template's minimum and was raised to it
	Exact            bool   // PlannedPrompt is exact (a tokenizer was loaded and the cut verified)
	PromptTokens     int    // usage.prompt_tokens; -1 unknown
	CompletionTokens int    // usage.completion_tokens; -1 unknown
	FinishReason     string // finish_reason of the last choice
	OutputSHA256     string // hex SHA-256 of the output text
	PromptSHA256     string // the proxy's prompt hash; set only without a proxy
	BytesIn          int64  // request body bytes
	BytesOut         int64  // response body bytes
}

func (r *Result) fail(class, detail string) {
	if r.Error == "" {
		r.Error, r.ErrorDetail = class, detail
	}
}

// OK reports whether the request completed without error.
func (r *Result) OK() bool { return r.Error == "" && r.Status == 200 }

// record converts the result into a requests row for a run measured
// without a proxy: the client-side times are both the row's times and its
// client_* times.
func (r *Result) record(run, endpoint, model string) *recorder.Request {
	rec := &recorder.Request{
		ID:                 r.ID,
		Run:                run,
		Backend:            r.Backend,
		Role:               recorder.RolePrimary,
		Endpoint:           endpoint,
		Model:              model,
		Stream:             true,
		Status:             r.Status,
		Error:              r.Error,
		ErrorDetail:        r.ErrorDetail,
		StartNS:            r.StartNS,
		UpstreamNS:         r.StartNS,
		FirstByteNS:        r.FirstByteNS,
		FirstTokenNS:       r.FirstTokenNS,
		EndNS:              r.EndNS,
		ChunkNS:            r.ChunkNS,
		PromptTokens:       r.PromptTokens,
		CompletionTokens:   r.CompletionTokens,
		FinishReason:       r.FinishReason,
		OutputSHA256:       r.OutputSHA256,
		PromptSHA256:       r.PromptSHA256,
		BytesIn:            r.BytesIn,
		BytesOut:           r.BytesOut,
		ClientStartNS:      r.StartNS,
		ClientFirstTokenNS: r.FirstTokenNS,
		ClientEndNS:        r.EndNS,
	}
	if r.PromptTokens >= 0 || r.CompletionTokens >= 0 {
		rec.TokensSource = recorder.TokensUsage
	} else if len(r.ChunkNS) > 0 {
		// no usage: one token per content chunk, as vLLM streams
		rec.CompletionTokens = len(r.ChunkNS)
		rec.TokensSource = "chunks"
	}
	return rec
}

// Stats summarises a run from the client side, with DESIGN.md's
// definitions. Durations are in milliseconds, throughputs per second.
type Stats struct {
	Requests  int     `json:"requests"`  // measured requests sent
	Completed int     `json:"completed"` // finished without error
	Failed    int     `json:"failed"`
	ErrorRate float64 `json:"error_rate"` // failed / requests

	TTFT Dist `json:"ttft_ms"` // first token − start, completed requests
	E2E  Dist `json:"e2e_ms"`  // end − start, completed requests
	TPOT Dist `json:"tpot_ms"` // (E2E − TTFT)/(completion tokens − 1), requests with more than one token

	DurationS        float64 `json:"duration_s"`          // last end − first start
	OutputTokensPerS float64 `json:"output_tokens_per_s"` // Σ completion tokens / duration
	TotalTokensPerS  float64 `json:"total_tokens_per_s"`  // Σ (prompt + completion) tokens / duration
	RequestsPerS     float64 `json:"requests_per_s"`      // completed / duration
	PromptTokens     int64   `json:"prompt_tokens"`       // Σ usage.prompt_tokens of completed requests
	CompletionTokens int64   `json:"completion_tokens"`   // Σ usage.completion_tokens (chunks when no usage)

	// Errors counts failed requests by error class; FirstError is the
	// first failure's detail, to show what went wrong.
	Errors     map[string]int `json:"errors,omitempty"`
	FirstError string         `json:"first_error,omitempty"`

	// PromptMismatch counts completed requests whose usage.prompt_tokens
	// differs from the planned count (0 when counts are exact).
	PromptMismatch int `json:"prompt_tokens_mismatch"`
	// InputRaised counts requests whose sampled input was below the chat
	// template's minimum and was planned at the minimum instead.
	InputRaised int `json:"input_raised_to_minimum,omitempty"`
}

// Dist is a distribution summary with numpy-style linear percentiles.
type Dist struct {
	N    int     `json:"n"`    // samples
	Mean float64 `json:"mean"` // arithmetic mean
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

// newDist summarises xs, which it sorts.
func newDist(xs []float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	slices.Sort(xs)
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return Dist{N: len(xs), Mean: sum / float64(len(xs)), Min: xs[0], Max: xs[len(xs)-1],
		P50: stats.Percentile(xs, 50), P90: stats.Percentile(xs, 90), P99: stats.Percentile(xs, 99)}
}

// summarize computes Stats over the measured results.
func summarize(rs []Result) Stats {
	var st Stats
	var ttft, e2e, tpot []float64
	var first, last int64
	for i := range rs {
		r := &rs[i]
		if r.Warmup {
			continue
		}
		st.Requests++
		if r.Raised {
			st.InputRaised++
		}
		if first == 0 || (r.StartNS != 0 && r.StartNS < first) {
			first = r.StartNS
		}
		if r.EndNS > last {
			last = r.EndNS
		}
		if !r.OK() {
			st.Failed++
			if st.Errors == nil {
				st.Errors = map[string]int{}
				st.FirstError = r.ErrorDetail
			}
			class := r.Error
			if class == "" {
				class = "http_" + strconv.Itoa(r.Status) // the report's name for a classless failure
			}
			st.Errors[class]++
			continue
		}
		st.Completed++
		if r.PromptTokens >= 0 {
			st.PromptTokens += int64(r.PromptTokens)
			if r.Exact && r.PromptTokens != r.PlannedPrompt {
				st.PromptMismatch++
			}
		}
		ct := r.CompletionTokens
		if ct < 0 {
			ct = max(r.Chunks, len(r.ChunkNS))
		}
		st.CompletionTokens += int64(ct)
		if r.FirstTokenNS != 0 {
			ttft = append(ttft, ms(r.FirstTokenNS-r.StartNS))
			if ct > 1 {
				tpot = append(tpot, ms(r.EndNS-r.FirstTokenNS)/float64(ct-1))
			}
		}
		e2e = append(e2e, ms(r.EndNS-r.StartNS))
	}
	if st.Requests > 0 {
		st.ErrorRate = float64(st.Failed) / float64(st.Requests)
	}
	st.TTFT, st.E2E, st.TPOT = newDist(ttft), newDist(e2e), newDist(tpot)
	if last > first && first > 0 {
		st.DurationS = float64(last-first) / 1e9
		st.OutputTokensPerS = float64(st.CompletionTokens) / st.DurationS
		st.TotalTokensPerS = float64(st.CompletionTokens+st.PromptTokens) / st.DurationS
		st.RequestsPerS = float64(st.Completed) / st.DurationS
	}
	return st
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }
