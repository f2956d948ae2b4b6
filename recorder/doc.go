// Package recorder stores abproxy's measurements in one SQLite file.
//
// It has two sides. The write side is a [Recorder]: the proxy hands it one
// [Request] per proxied request with [Recorder.Submit], which never blocks
// and never touches the disk; a single writer goroutine batches records into
// transactions. The read side ([OpenReadOnly], [ListRuns], [ScanRequests])
// is what `abproxy report` and tests use.
//
// # File format
//
// The file is an ordinary SQLite database in WAL mode. Users open it with
// sqlite3, DuckDB or pandas, so every table, column and view name below is a
// public contract: change it only through a new migration, never by editing
// an old one.
//
// Schema version: the table schema_version holds one row per applied
// migration (version, applied_ns); the file's version is MAX(version).
// PRAGMA user_version is not used. Migrations are forward-only: a file
// written by a newer abproxy is refused with a clear error instead of being
// guessed at, and an older file is upgraded in one transaction when a
// Recorder opens it.
//
// Tables (see the migrations in schema.go for the exact SQL):
//
//   - runs: one row per run. kind is "bench", "live" or "mirror"; meta is JSON
//     text (CLI args, backend launch config, server version).
//   - requests: one row per proxied request (primary or shadow). Every time
//     column ends in _ns and holds absolute Unix nanoseconds; convert with
//     datetime(start_ns / 1e9, 'unixepoch').
//   - bodies: prompt and output text, written only when store_bodies is on;
//     join with requests on bodies.request_id = requests.id.
//   - backend_metrics: samples scraped from each backend's Prometheus
//     /metrics (vLLM server state), written with WriteBackendMetrics; labels
//     is a JSON object, histograms are flattened to _bucket/_sum/_count.
//   - request_timings (a view): TTFT, E2E and TPOT in milliseconds per
//     request, with the definitions of DESIGN.md, for quick SQL exploration.
//     The report computes the same numbers in Go.
//
// NULL means "did not happen" or "unknown", so that SQL reads naturally:
// first_token_ns is NULL when no token arrived, error is NULL for a
// successful request (COUNT(error) counts failures), prompt_tokens is NULL
// when the count is unknown, status is NULL when no HTTP status was
// returned, pair_id is NULL for requests that were not mirrored. In Go the
// same values are 0, "" and -1 (token counts); the mapping is lossless.
//
// # Chunk times
//
// requests.chunks is the number of content-bearing chunks and
// requests.chunk_ns holds the time of each of them, so inter-token latency
// can be recovered exactly. The blob is a sequence of unsigned LEB128
// varints (Go's encoding/binary Uvarint): the first value is the first
// chunk's time minus start_ns, each next value is the gap to the previous
// chunk, all in nanoseconds. An empty or NULL blob means no chunks. In
// Python:
//
//	def decode_chunks(start_ns, blob):
//	    out, t, v, shift = [], start_ns, 0, 0
//	    for b in blob or b"":
//	        v |= (b & 0x7F) << shift
//	        shift += 7
//	        if not b & 0x80:
//	            t += v
//	            out.append(t)
//	            v, shift = 0, 0
//	    return out
//
// The gaps themselves (the ITL samples) are the decoded values after the
// first one.
package recorder
