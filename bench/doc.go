// Package bench is abproxy's synthetic load generator: genai-bench-style
// traffic scenarios, closed-loop concurrency sweeps and open-loop
// request-rate load, against the proxy or a backend directly.
//
// It reads as a pipeline of small types:
//
//   - Config (the flags) is checked by New, which also loads the Corpus and
//     the tokenizer and checks the target before any load is sent.
//   - A Scenario samples each request's input and output token counts; a
//     Shaper cuts a prompt of exactly that many tokens (chat template
//     included) from the Corpus; a planner renders request i of a run
//     deterministically from the seed, so every arm gets the same sequence.
//   - Run walks the steps (scenario × load level); in each step every arm
//     (backend) runs at once, closed loop or open loop, and each request is
//     one streamed exchange over bench's own HTTP/1.1 client, which stamps
//     every read (with the kernel's receive time on Linux).
//   - Every exchange yields a Result; a run's Results become its Stats and
//     its rows in the SQLite file: written by bench without a proxy, or
//     matched to the proxy's own rows (client_* columns) behind one.
//
// See docs/bench.md for the user's view.
package bench
