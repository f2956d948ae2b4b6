package report

import (
	"encoding/csv"
	"io"
	"strconv"
	"strings"
	"time"
)

// CSVHeader is the header of WriteCSV: one row per run × backend × role
// (section "run") and per live-traffic window (section "live"). Latencies
// in ms, throughputs per second, error_rate and goodput_share 0–1; an
// empty cell is a number that cannot be computed.
var CSVHeader = func() []string {
	h := []string{"section", "run", "kind", "backend", "role", "scenario", "concurrency", "request_rate",
		"window_start", "window_end", "requests", "completed", "failed", "error_rate", "statuses", "errors",
		"first_start", "last_end", "duration_s", "prompt_tokens", "completion_tokens",
		"request_throughput", "output_throughput", "total_throughput"}
	for _, m := range []string{"ttft", "tpot", "itl", "e2e"} {
		for _, s := range []string{"count", "mean", "p50", "p90", "p95", "p99", "min", "max"} {
			h = append(h, m+"_"+s+suffixMS(s))
		}
	}
	return append(h, "goodput_met", "goodput_share", "goodput_rate")
}()

// CSVServerHeader are the columns WriteCSV appends when some run has
// server metrics (Stats.Server): its ServerStats, empty for a run without.
var CSVServerHeader = []string{"server_samples", "server_running_mean", "server_running_max",
	"server_waiting_mean", "server_waiting_max", "server_kv_cache_metric", "server_kv_cache_usage_mean",
	"server_kv_cache_usage_max", "server_preemptions", "server_ttft_requests", "server_ttft_p50_ms", "server_ttft_mean_ms"}

func suffixMS(stat string) string {
	if stat == "count" {
		return ""
	}
	return "_ms"
}

// WriteCSV writes the per-run and per-window statistics as CSV with
// CSVHeader (plus CSVServerHeader when some run has server metrics); the
// other sections are in the JSON output.
func WriteCSV(w io.Writer, r *Report) error {
	cw := csv.NewWriter(w)
	withServer := false
	for _, s := range r.Runs {
		withServer = withServer || s.Server != nil
	}
	header := CSVHeader
	if withServer {
		header = append(append([]string(nil), CSVHeader...), CSVServerHeader...)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	write := func(section string, s Stats) error {
		row := []string{section, s.Run, s.Kind, s.Backend, s.Role, s.Scenario, itoa0(s.Concurrency), ftoa0(s.RequestRate),
			tcell(s.WindowStart), tcell(s.WindowEnd), strconv.Itoa(s.Requests), strconv.Itoa(s.Completed), strconv.Itoa(s.Failed),
			ftoa(s.ErrorRate), mapCell(s.Statuses), mapCell(s.Errors), tcell(&s.FirstStart), tcell(&s.LastEnd), ftoa(s.DurationS),
			strconv.FormatInt(s.PromptTokens, 10), strconv.FormatInt(s.CompletionTokens, 10),
			pcell(s.RequestThroughput), pcell(s.OutputThroughput), pcell(s.TotalThroughput)}
		for _, m := range []Summary{s.TTFT, s.TPOT, s.ITL, s.E2E} {
			row = append(row, strconv.Itoa(m.Count), pcell(m.Mean), pcell(m.P50), pcell(m.P90), pcell(m.P95), pcell(m.P99), pcell(m.Min), pcell(m.Max))
		}
		if g := s.Goodput; g != nil {
			row = append(row, strconv.Itoa(g.Met), ftoa(g.Share), pcell(g.Rate))
		} else {
			row = append(row, "", "", "")
		}
		if withServer {
			if v := s.Server; v != nil {
				row = append(row, strconv.Itoa(v.Samples), pcell(v.RunningMean), pcell(v.RunningMax), pcell(v.WaitingMean),
					pcell(v.WaitingMax), v.KVCacheMetric, pcell(v.KVCacheMean), pcell(v.KVCacheMax), pcell(v.Preemptions),
					pcell(v.TTFTRequests), pcell(v.TTFTP50), pcell(v.TTFTMean))
			} else {
				row = append(row, make([]string, len(CSVServerHeader))...)
			}
		}
		return cw.Write(row)
	}
	for _, s := range r.Runs {
		if err := write("run", s); err != nil {
			return err
		}
	}
	for _, s := range r.Live {
		if err := write("live", s); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func ftoa0(v float64) string {
	if v == 0 {
		return ""
	}
	return ftoa(v)
}

func itoa0(v int) string {
	if v == 0 {
		return ""
	}
	return strconv.Itoa(v)
}

func pcell(v *float64) string {
	if v == nil {
		return ""
	}
	return ftoa(*v)
}

func tcell(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// mapCell is "200=95;503=5".
func mapCell(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+strconv.Itoa(m[k]))
	}
	return strings.Join(parts, ";")
}
