package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
)

// flightKey is one abproxy_backend_in_flight_requests series.
type flightKey struct{ backend, role string }

// backendFlights reads abproxy_backend_in_flight_requests (and the global
// gauge) from /metrics with the Prometheus text parser.
func backendFlights(t *testing.T, adminURL string) (map[flightKey]float64, float64) {
	t.Helper()
	code, body := get(t, adminURL+"/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	f := fams[MetricBackendFlight]
	if f == nil {
		t.Fatalf("%s missing from /metrics", MetricBackendFlight)
	}
	out := map[flightKey]float64{}
	for _, m := range f.GetMetric() {
		l := labels(m)
		out[flightKey{l["backend"], l["role"]}] = m.GetGauge().GetValue()
	}
	return out, gauge(fams[MetricInFlight])
}

// firstLiveEvent reads one /api/live snapshot.
func firstLiveEvent(t *testing.T, adminURL string) LiveSnapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/api/live", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var s LiveSnapshot
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				t.Fatalf("event %q: %v", line, err)
			}
			return s
		}
	}
	t.Fatalf("no /api/live event: %v", sc.Err())
	return LiveSnapshot{}
}

// TestBackendInFlight holds streams open through a real proxy (mirror
// mode: baseline primary, optimized shadow) in front of two slow sims and
// reads the per-backend in-flight gauge from /metrics and /api/live: 3
// streams to baseline (each mirrored to optimized) and 2 forced to
// optimized (not mirrored). Then the optimized clients hang up, the
// baseline streams run to their end, and every gauge is back to 0.
func TestBackendInFlight(t *testing.T) {
	st := startStackSpeed(t, "", 10) // a 2,000-token stream lasts a few seconds
	const nBase, nOpt = 3, 2
	open := func(backend string) *http.Response {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hold"}],"max_tokens":2000,"ignore_eos":true,"stream":true}`, testModel)
		req, _ := http.NewRequest(http.MethodPost, st.proxyURL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(proxy.HeaderBackend, backend)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", backend, resp.StatusCode)
		}
		// the first event: the stream is running at the backend
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var base, opt []*http.Response
	for range nBase {
		base = append(base, open("baseline"))
	}
	for range nOpt {
		opt = append(opt, open("optimized"))
	}
	want := map[flightKey]float64{
		{"baseline", recorder.RolePrimary}:  nBase,
		{"baseline", recorder.RoleShadow}:   0,
		{"optimized", recorder.RolePrimary}: nOpt,
		{"optimized", recorder.RoleShadow}:  nBase,
	}
	var got map[flightKey]float64
	var global float64
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got, global = backendFlights(t, st.adminURL)
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s = %v while streams are open, want %v", MetricBackendFlight, got, want)
	}
	if global != 2*nBase+nOpt {
		t.Errorf("%s = %v, want %d", MetricInFlight, global, 2*nBase+nOpt)
	}
	live := firstLiveEvent(t, st.adminURL)
	flights := map[string][2]int64{}
	for _, b := range live.Backends {
		flights[b.Backend] = [2]int64{b.InFlight, b.ShadowInFlight}
	}
	if flights["baseline"] != [2]int64{nBase, 0} || flights["optimized"] != [2]int64{nOpt, nBase} {
		t.Errorf("/api/live per-backend in flight (primary, shadow) = %v", flights)
	}

	for _, r := range opt {
		r.Body.Close() // the client hangs up mid-stream
	}
	for _, r := range base {
		go func() { defer r.Body.Close(); _, _ = io.Copy(io.Discard, r.Body) }()
	}
	zero := map[flightKey]float64{}
	for k := range want {
		zero[k] = 0
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got, global = backendFlights(t, st.adminURL)
		if fmt.Sprint(got) == fmt.Sprint(zero) && global == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the streams ended: %s = %v, %s = %v; want all 0", MetricBackendFlight, got, MetricInFlight, global)
		}
	}
}
