package report

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/abproxy/abproxy/recorder"
)

// ServerStats are a backend's own view of one run, from the series of its
// Prometheus /metrics that `abproxy serve` or `abproxy bench` scraped into
// the backend_metrics table. A scrape shows the backend as it was at some
// moment between sending it and its answer (recorder.ScrapeDurationSeries;
// a database without that series counts the answer's time alone). Gauges
// are over the scrapes taken within the run (sent after its first
// request's start, answered before its last request's end); counters and
// vLLM's TTFT histogram are the increase between the last scrape answered
// at or before the run's start and the first sent at or after its end
// (within ServerSlack). A value the samples cannot give is null.
type ServerStats struct {
	Samples       int        `json:"samples"`             // scrapes within the run: the gauges' samples
	RunningMean   *float64   `json:"running_mean"`        // vllm:num_requests_running, mean over the samples
	RunningMax    *float64   `json:"running_max"`         // and its largest sample
	WaitingMean   *float64   `json:"waiting_mean"`        // vllm:num_requests_waiting
	WaitingMax    *float64   `json:"waiting_max"`         //
	KVCacheMetric string     `json:"kv_cache_metric"`     // the KV-cache series found: vllm:kv_cache_usage_perc, else vllm:gpu_cache_usage_perc; "" if neither
	KVCacheMean   *float64   `json:"kv_cache_usage_mean"` // KV-cache usage 0–1, mean over the samples
	KVCacheMax    *float64   `json:"kv_cache_usage_max"`  //
	CountersFrom  *time.Time `json:"counters_from"`       // scrape the increases start at
	CountersTo    *time.Time `json:"counters_to"`         // scrape they end at
	Preemptions   *float64   `json:"preemptions"`         // increase of vllm:num_preemptions_total
	TTFTRequests  *float64   `json:"ttft_requests"`       // increase of vllm:time_to_first_token_seconds_count: requests vLLM timed
	TTFTP50       *float64   `json:"ttft_p50_ms"`         // vLLM's TTFT median from its histogram's increase, interpolated within the bucket
	TTFTMean      *float64   `json:"ttft_mean_ms"`        // increase of _sum / increase of _count
}

// ServerSlack is how far before a run's start (after its end) the scrape
// that opens (closes) the counters' increase may be: a scrape farther away
// would count other traffic, so the increase is left null.
const ServerSlack = time.Minute

// Series the server section reads from backend_metrics.
const (
	seriesRunning     = "vllm:num_requests_running"
	seriesWaiting     = "vllm:num_requests_waiting"
	seriesKVCache     = "vllm:kv_cache_usage_perc"
	seriesGPUCache    = "vllm:gpu_cache_usage_perc" // vLLM before 0.10
	seriesPreemptions = "vllm:num_preemptions_total"
	seriesTTFT        = "vllm:time_to_first_token_seconds"
)

// scrape is one scrape of one backend: the series the section uses, with
// label sets summed (running, waiting, counters, buckets) or averaged
// (KV-cache usage, a share).
type scrape struct {
	ts               int64 // answered, Unix ns
	sent             int64 // sent: ts less the scrape's duration
	running, waiting float64
	hasRun, hasWait  bool
	kv, gpu          float64
	nKV, nGPU        int
	preempt          float64
	hasPreempt       bool
	buckets          map[float64]float64 // le → cumulative count
	ttftSum, ttftCnt float64
	hasSum, hasCount bool
}

// addServerStats fills Stats.Server of every run whose backend has scraped
// samples around it. A database without the table (schema before 3) or
// with no rows in it leaves the report as it is.
func addServerStats(ctx context.Context, db *sql.DB, r *Report) error {
	var has int
	if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM backend_metrics)`).Scan(&has); err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil
		}
		return fmt.Errorf("read backend_metrics: %w", err)
	}
	if has == 0 {
		return nil
	}
	for i := range r.Runs {
		s := &r.Runs[i]
		if s.Backend == "" || s.FirstStart.IsZero() || s.LastEnd.IsZero() {
			continue
		}
		scrapes, err := readScrapes(ctx, db, s.Backend, s.FirstStart.UnixNano()-int64(ServerSlack), s.LastEnd.UnixNano()+int64(ServerSlack))
		if err != nil {
			return err
		}
		s.Server = serverStats(scrapes, s.FirstStart.UnixNano(), s.LastEnd.UnixNano())
	}
	return nil
}

// readScrapes reads the section's series of one backend between from and
// to, one scrape per timestamp, in time order.
func readScrapes(ctx context.Context, db *sql.DB, backend string, from, to int64) ([]*scrape, error) {
	rows, err := db.QueryContext(ctx, `SELECT ts_ns, name, labels, value FROM backend_metrics
		WHERE backend = ? AND ts_ns BETWEEN ? AND ? AND name IN (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ORDER BY ts_ns`, backend, from, to, recorder.ScrapeDurationSeries,
		seriesRunning, seriesWaiting, seriesKVCache, seriesGPUCache, seriesPreemptions,
		seriesTTFT+"_bucket", seriesTTFT+"_sum", seriesTTFT+"_count")
	if err != nil {
		return nil, fmt.Errorf("read backend_metrics: %w", err)
	}
	defer rows.Close()
	var out []*scrape
	for rows.Next() {
		var ts int64
		var name, labels string
		var v float64
		if err := rows.Scan(&ts, &name, &labels, &v); err != nil {
			return nil, fmt.Errorf("read backend_metrics: %w", err)
		}
		if len(out) == 0 || out[len(out)-1].ts != ts {
			out = append(out, &scrape{ts: ts, sent: ts})
		}
		sc := out[len(out)-1]
		switch name {
		case recorder.ScrapeDurationSeries:
			if v > 0 && !math.IsInf(v, 0) {
				sc.sent = ts - int64(math.Round(v*1e9))
			}
		case seriesRunning:
			sc.running, sc.hasRun = sc.running+v, true
		case seriesWaiting:
			sc.waiting, sc.hasWait = sc.waiting+v, true
		case seriesKVCache:
			sc.kv, sc.nKV = sc.kv+v, sc.nKV+1
		case seriesGPUCache:
			sc.gpu, sc.nGPU = sc.gpu+v, sc.nGPU+1
		case seriesPreemptions:
			sc.preempt, sc.hasPreempt = sc.preempt+v, true
		case seriesTTFT + "_sum":
			sc.ttftSum, sc.hasSum = sc.ttftSum+v, true
		case seriesTTFT + "_count":
			sc.ttftCnt, sc.hasCount = sc.ttftCnt+v, true
		case seriesTTFT + "_bucket":
			var l struct {
				LE string `json:"le"`
			}
			if json.Unmarshal([]byte(labels), &l) != nil {
				continue
			}
			le, err := strconv.ParseFloat(l.LE, 64) // "+Inf" parses to +Inf
			if err != nil {
				continue
			}
			if sc.buckets == nil {
				sc.buckets = map[float64]float64{}
			}
			sc.buckets[le] += v
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read backend_metrics: %w", err)
	}
	return out, nil
}

// serverStats computes one run's ServerStats from the scrapes around it
// (start and end in Unix ns); nil when there is no scrape to use.
func serverStats(scrapes []*scrape, start, end int64) *ServerStats {
	if len(scrapes) == 0 {
		return nil
	}
	st := &ServerStats{}
	var run, wait, kv, gpu []float64
	var before, after, firstIn, lastIn *scrape
	for _, sc := range scrapes {
		// scrapes are in answer order; one that overlaps an edge of the
		// run is neither outside it nor within it
		if sc.ts <= start {
			before = sc
		}
		if sc.sent >= end && after == nil {
			after = sc
		}
		if sc.sent < start || sc.ts > end {
			continue
		}
		if firstIn == nil {
			firstIn = sc
		}
		lastIn = sc
		st.Samples++
		if sc.hasRun {
			run = append(run, sc.running)
		}
		if sc.hasWait {
			wait = append(wait, sc.waiting)
		}
		if sc.nKV > 0 {
			kv = append(kv, sc.kv/float64(sc.nKV))
		}
		if sc.nGPU > 0 {
			gpu = append(gpu, sc.gpu/float64(sc.nGPU))
		}
	}
	st.RunningMean, st.RunningMax = meanMax(run)
	st.WaitingMean, st.WaitingMax = meanMax(wait)
	switch {
	case len(kv) > 0:
		st.KVCacheMetric = seriesKVCache
		st.KVCacheMean, st.KVCacheMax = meanMax(kv)
	case len(gpu) > 0:
		st.KVCacheMetric = seriesGPUCache
		st.KVCacheMean, st.KVCacheMax = meanMax(gpu)
	}
	// without a scrape outside the run, its first and last inside bound
	// the increase (it then misses the run's edges)
	if before == nil {
		before = firstIn
	}
	if after == nil {
		after = lastIn
	}
	if before != nil && after != nil && before.ts < after.ts {
		from, to := time.Unix(0, before.ts).UTC(), time.Unix(0, after.ts).UTC()
		st.CountersFrom, st.CountersTo = &from, &to
		if after.hasPreempt {
			st.Preemptions = increase(before.preempt, after.preempt)
		}
		if after.hasCount {
			st.TTFTRequests = increase(before.ttftCnt, after.ttftCnt)
			if after.hasSum && st.TTFTRequests != nil && *st.TTFTRequests > 0 {
				if ds := increase(before.ttftSum, after.ttftSum); ds != nil {
					st.TTFTMean = num(*ds / *st.TTFTRequests * 1000)
				}
			}
		}
		st.TTFTP50 = histogramQuantile(0.5, before.buckets, after.buckets)
		if st.TTFTP50 != nil {
			*st.TTFTP50 *= 1000
		}
	}
	if st.Samples == 0 && st.CountersFrom == nil {
		return nil
	}
	return st
}

// increase is a counter's increase, or nil when it went down (the
// backend restarted in between).
func increase(a, b float64) *float64 {
	if b < a {
		return nil
	}
	return num(b - a)
}

func meanMax(v []float64) (mean, mx *float64) {
	if len(v) == 0 {
		return nil, nil
	}
	s, m := 0.0, math.Inf(-1)
	for _, x := range v {
		s += x
		m = max(m, x)
	}
	return num(s / float64(len(v))), num(m)
}

// histogramQuantile is Prometheus's histogram_quantile over the increase
// of cumulative buckets (le → count) from a to b: linear within the bucket
// the rank falls in, the lower edge of the first bucket taken as 0, and
// the last finite bound when the rank falls in +Inf. A bucket missing from
// a counts from 0 (a series created since). Nil without observations or
// when a bucket went down.
func histogramQuantile(q float64, a, b map[float64]float64) *float64 {
	if len(b) == 0 {
		return nil
	}
	les := make([]float64, 0, len(b))
	for le := range b {
		les = append(les, le)
	}
	sort.Float64s(les)
	counts := make([]float64, len(les))
	for i, le := range les {
		d := b[le] - a[le]
		if d < 0 {
			return nil
		}
		counts[i] = d
		if i > 0 && counts[i] < counts[i-1] {
			counts[i] = counts[i-1] // keep cumulative counts monotonic, as Prometheus does
		}
	}
	total := counts[len(counts)-1]
	if total <= 0 || !math.IsInf(les[len(les)-1], 1) {
		return nil
	}
	rank := q * total
	for i, c := range counts {
		if c < rank {
			continue
		}
		if math.IsInf(les[i], 1) {
			if i == 0 {
				return nil
			}
			return num(les[i-1])
		}
		lo, prev := 0.0, 0.0
		if i > 0 {
			lo, prev = les[i-1], counts[i-1]
		}
		if c == prev {
			return num(les[i])
		}
		return num(lo + (les[i]-lo)*(rank-prev)/(c-prev))
	}
	return nil
}
