// Package admin is abproxy's control plane: an echo HTTP server on its own
// listener, apart from the data plane, serving
//
//   - /metrics: Prometheus series on a private registry, named after the
//     OpenTelemetry GenAI conventions as Envoy AI Gateway exposes them
//     (gen_ai_server_time_to_first_token_seconds, ...), plus abproxy's own;
//   - /api/runs, /api/runs/:id, /api/report: JSON over the SQLite file;
//   - /api/live: Server-Sent Events, one rolling per-backend snapshot a second;
//   - / : a self-contained live dashboard fed by /api/live, and /report, the
//     HTML report.
//
// Metrics is the proxy.Observer that feeds /metrics and /api/live; Scraper
// stores each backend's own vLLM /metrics in the backend_metrics table.
// See docs/admin.md.
package admin
