package bench

import (
	"context"
	"maps"
	"testing"
	"time"
)

// A failure without an error class is counted under the report's name for
// it, http_NNN, so that bench's summary and abproxy report agree.
func TestSummarizeNamesFailures(t *testing.T) {
	ok := Result{Status: 200, StartNS: 1e9, FirstTokenNS: 1.1e9, EndNS: 2e9, ChunkNS: []int64{1.1e9}, Chunks: 1, PromptTokens: 5, CompletionTokens: 1}
	rs := []Result{
		ok,
		{Status: 503, StartNS: 1e9, EndNS: 1.5e9, ErrorDetail: "backend said 503"},
		{Status: 0, Error: "timeout", StartNS: 1e9, EndNS: 1.5e9},
	}
	st := summarize(rs)
	if st.Completed != 1 || st.Failed != 2 {
		t.Fatalf("completed %d failed %d, want 1 and 2", st.Completed, st.Failed)
	}
	want := map[string]int{"http_503": 1, "timeout": 1}
	if !maps.Equal(st.Errors, want) {
		t.Fatalf("errors %v, want %v", st.Errors, want)
	}
}

// A server that stops sending mid-stream is cut after the idle timeout
// (and its slack), not waited for: both requests fail as timeouts long
// before the 1.8 s each stream would take.
func TestIdleTimeoutCutsASilentStream(t *testing.T) {
	f := newFakeServer(t, 3, 600*time.Millisecond)
	cfg := baseConfig(f.url, "")
	cfg.Concurrency, cfg.MaxRequests, cfg.IdleTimeout = []int{1}, 2, 200*time.Millisecond
	start := time.Now()
	sums := runBench(t, context.Background(), cfg)
	took := time.Since(start)
	st := sums[0].Stats
	if st.Failed != 2 || st.Errors[errTimeout] != 2 {
		t.Fatalf("failed %d, errors %v; want 2 timeouts", st.Failed, st.Errors)
	}
	if took > 1500*time.Millisecond {
		t.Fatalf("two silent streams took %v to give up; the idle timeout is 200 ms", took)
	}
}
