package recorder

import (
	"errors"
	"math"
	"path/filepath"
	"testing"
)

func TestWriteBackendMetrics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	r, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]BackendMetric, 0, 1203)
	for i := range 1200 { // more than one transaction
		rows = append(rows, BackendMetric{Backend: "a", TsNS: int64(i), Name: "vllm:num_requests_running", Labels: `{"model_name":"m"}`, Value: float64(i)})
	}
	rows = append(rows, BackendMetric{Backend: "b", TsNS: 1, Name: "x", Value: math.NaN()},
		BackendMetric{Backend: "b", TsNS: 1, Name: "y", Value: math.Inf(1)},
		BackendMetric{Backend: "b", TsNS: 1, Name: "z", Value: 2})
	if err := r.WriteBackendMetrics(rows); err != nil {
		t.Fatal(err)
	}
	db := r.DB()
	var n int
	var sum float64
	if err := db.QueryRow(`SELECT count(*), sum(value) FROM backend_metrics WHERE backend = 'a'`).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != 1200 || sum != 1199*1200/2 {
		t.Fatalf("a: %d rows, sum %v", n, sum)
	}
	var labels string
	if err := db.QueryRow(`SELECT count(*), min(labels) FROM backend_metrics WHERE backend = 'b'`).Scan(&n, &labels); err != nil {
		t.Fatal(err)
	}
	if n != 2 || labels != "{}" {
		t.Fatalf("b: %d rows (NaN must be skipped), labels %q", n, labels)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBackendMetrics(rows[:1]); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
