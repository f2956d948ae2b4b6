package recorder

import "encoding/json"

// Roles of a request in the requests.role column.
const (
	RolePrimary = "primary" // the response the client received
	RoleShadow  = "shadow"  // a mirrored copy whose response was read and discarded
)

// Run kinds in the runs.kind column.
const (
	KindBench  = "bench"  // synthetic traffic from abproxy bench
	KindLive   = "live"   // real traffic through abproxy serve
	KindMirror = "mirror" // live traffic mirrored to a shadow backend
)

// Sources of token counts in the requests.tokens_source column.
const (
	TokensUsage     = "usage"     // reported by the server in the usage object
	TokensTokenizer = "tokenizer" // counted by abproxy with the model's tokenizer
	TokensEstimate  = "estimate"  // estimated without a tokenizer
	TokensChunks    = "chunks"    // completion tokens = content chunks (stream cut before its usage; vLLM sends one token per chunk)
)

// DefaultRun is the run name used for a [Request] whose Run is empty.
const DefaultRun = "default"

// Request is one proxied request's measurements, one row of the requests
// table. Times are absolute Unix nanoseconds; 0 means the event did not
// happen (stored as NULL).
type Request struct {
	ID       string // request id, also sent upstream as X-Request-Id
	Run      string // run name; the writer resolves it to runs.id, creating a "live" run on first sight ("" files under DefaultRun)
	Backend  string // backend name from the configuration
	Role     string // RolePrimary or RoleShadow
	PairID   string // links the primary and shadow of a mirrored pair; "" when not mirrored
	Endpoint string // request path, e.g. "/v1/chat/completions"
	Model    string // model name sent upstream
	Stream   bool   // the request asked for a streamed response

	Status      int    // HTTP status returned to the client (from the backend for shadows); 0 if none
	Error       string // error class ("timeout", "upstream_reset", ...); "" on success
	ErrorDetail string // one sentence about the error, never containing credentials

	StartNS      int64   // request fully read from the client
	UpstreamNS   int64   // request sent to the backend
	FirstByteNS  int64   // first response byte from the backend
	FirstTokenNS int64   // first event carrying content or reasoning text
	EndNS        int64   // end of the response stream, or the time of the error
	ChunkNS      []int64 // time of every content-bearing chunk, ascending

	PromptTokens     int    // -1 = unknown
	CompletionTokens int    // -1 = unknown
	TokensSource     string // TokensUsage, TokensTokenizer, TokensEstimate, TokensChunks or ""
	FinishReason     string // finish_reason of the last choice, "" if none

	OutputSHA256 string // hex SHA-256 of the concatenated output text
	PromptSHA256 string // hex SHA-256 of the request's prompt/messages

	BytesIn  int64 // request body bytes from the client
	BytesOut int64 // response body bytes to the client (read from the backend for shadows)

	Prompt string // prompt text; stored only with Options.StoreBodies
	Output string // output text; stored only with Options.StoreBodies

	ClientStartNS      int64      // set by a load generator measuring client-side; 0 from the proxy
	ClientFirstTokenNS int64      // client-side first token time; 0 from the proxy
	ClientEndNS        int64      // client-side end time; 0 from the proxy
	ShadowsSkipped     int        // primary of a mirrored request: shadow copies skipped because max_shadow_inflight was reached
	Agreement          *Agreement // shadow: how its output compares with the primary's; nil when unknown
}

// Agreement compares a shadow's output with its primary's, the answer to
// "does the optimized server still answer the same?".
type Agreement struct {
	Identical    bool // the two output texts are equal
	PrefixChars  int  // length of the common prefix in characters (Unicode code points)
	PrefixTokens int  // number of leading chunks (tokens) with equal text; -1 when unknown (non-streamed)
}

// Run is one row of the runs table: a named group of requests such as one
// benchmark step or one serve session.
type Run struct {
	ID          int64           // runs.id, assigned by the database
	Name        string          // unique run name
	Kind        string          // KindBench, KindLive or KindMirror
	Backend     string          // backend the run targets; "" when it spans several
	Scenario    string          // traffic scenario, e.g. "D(100,100)"; "" for live traffic
	Concurrency int             // client concurrency; 0 if not applicable
	RequestRate float64         // target requests/s in request-rate mode; 0 if not applicable
	StartedNS   int64           // Unix ns when the run started
	EndedNS     int64           // Unix ns when the run ended; 0 while running
	Meta        json.RawMessage // free-form JSON (CLI args, launch config, server version); nil if none
}

// Stats are the recorder's counters, cheap to read for metrics.
type Stats struct {
	Submitted     int64 // records accepted by Submit
	Written       int64 // records committed to the database
	Dropped       int64 // records refused by Submit: queue full or recorder closed
	Failed        int64 // accepted records that could not be written (logged)
	QueueDepth    int   // records waiting for the writer now
	QueueCapacity int   // Options.QueueSize
}
