// Package sim is a simulated vLLM 0.13 OpenAI-compatible server, used by
// tests, benchmarks and the demo in place of a GPU.
//
// It serves /v1/chat/completions, /v1/completions, /v1/models, /health,
// /version and /metrics with vLLM's byte format: SSE events "data: {…}\n\n",
// a role-only opening chunk for chat, one content chunk per generated token
// (the last one carries finish_reason), an optional usage-only chunk, then
// "data: [DONE]". Output text is deterministic for a given seed and prompt,
// so two servers can be compared for "does it still answer the same".
//
// Timing comes from a continuous-batching model (see Profile): one
// scheduler goroutine runs engine steps, admits waiting requests FIFO while
// the batch and the KV budget have room, chunks prefill, and emits one token
// per running sequence per step. Options.Speedup divides every time so tests
// and demos run fast. With the built-in profiles, "baseline" runs out of KV
// (and queues, so TTFT explodes) at a lower concurrency than "optimized".
//
// Options.Truth receives one JSON line per request with the server's own
// timestamps (TruthRecord), the ground truth a measuring proxy is checked
// against.
//
// Differences from vLLM worth knowing: KV is reserved for prompt+max_tokens
// at admission (so there are no preemptions and the default max_tokens is a
// profile setting, not the remaining context); prompt tokens are
// approximated unless Options.CountPrompt is set; n must be 1; disconnects
// of non-streaming clients are not detected (the request runs to the end).
package sim
