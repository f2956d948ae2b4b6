package recorder

import (
	"context"
	"fmt"
)

// BackendMetric is one sample of one series scraped from a backend's
// Prometheus /metrics, one row of the backend_metrics table. Histograms are
// stored flattened the way the text format shows them: NAME_bucket (with
// an "le" label), NAME_sum and NAME_count.
type BackendMetric struct {
	Backend string  // backend name from the configuration
	TsNS    int64   // scrape time, Unix ns: when the answer's headers arrived
	Name    string  // series name, e.g. "vllm:num_requests_running"
	Labels  string  // JSON object of the labels, keys sorted; "{}" when none
	Value   float64 // sample value
}

// ScrapeDurationSeries is the row every scrape adds to its backend's
// samples, as Prometheus adds its own series of that name: the seconds
// from sending the scrape to its answer's headers (the samples' TsNS). The
// backend's state in the samples is from some moment within that span, so
// a scrape shows the backend as it was before a time T only if TsNS ≤ T,
// and after T only if TsNS − duration ≥ T.
const ScrapeDurationSeries = "scrape_duration_seconds"

// maxMetricsPerTx bounds one backend_metrics transaction, so the request
// writer, which shares the connection, never waits long behind a scrape.
const maxMetricsPerTx = 500

// WriteBackendMetrics stores scraped samples in backend_metrics (NaN
// samples are skipped). It is
// synchronous and shares the write connection with the request writer in
// small transactions; call it from a scraper goroutine, never from the data
// plane (Submit is unaffected: records keep queueing meanwhile).
func (r *Recorder) WriteBackendMetrics(rows []BackendMetric) error {
	for len(rows) > 0 {
		n := min(len(rows), maxMetricsPerTx)
		if err := r.writeMetricsTx(rows[:n]); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

func (r *Recorder) writeMetricsTx(rows []BackendMetric) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.isClosed() {
		return ErrClosed
	}
	ctx := context.Background()
	tx, err := r.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write backend metrics: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO backend_metrics(backend, ts_ns, name, labels, value) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("write backend metrics: %w", err)
	}
	defer stmt.Close()
	for _, m := range rows {
		if m.Value != m.Value {
			continue // NaN: SQLite would store NULL; a missing sample says the same
		}
		labels := m.Labels
		if labels == "" {
			labels = "{}"
		}
		if _, err := stmt.ExecContext(ctx, m.Backend, m.TsNS, m.Name, labels, m.Value); err != nil {
			return fmt.Errorf("write backend metrics: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write backend metrics: %w", err)
	}
	return nil
}
