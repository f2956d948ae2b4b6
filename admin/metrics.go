package admin

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
)

// Metric names. The gen_ai_* ones follow the OpenTelemetry GenAI semantic
// conventions as Envoy AI Gateway exposes them in Prometheus; the rest are
// abproxy's own.
const (
	MetricTTFT          = "gen_ai_server_time_to_first_token_seconds"
	MetricTPOT          = "gen_ai_server_time_per_output_token_seconds"
	MetricDuration      = "gen_ai_server_request_duration_seconds"
	MetricTokenUsage    = "gen_ai_client_token_usage"
	MetricITL           = "abproxy_inter_token_latency_seconds"
	MetricAddedLatency  = "abproxy_added_latency_seconds"
	MetricRequests      = "abproxy_requests_total"
	MetricInFlight      = "abproxy_in_flight_requests"
	MetricBackendFlight = "abproxy_backend_in_flight_requests"
	MetricShadowFlight  = "abproxy_shadow_in_flight_requests"
	MetricShadowSkipped = "abproxy_shadow_skipped_total"
	MetricQueueDepth    = "abproxy_recorder_queue_depth"
	MetricQueueCap      = "abproxy_recorder_queue_capacity"
	MetricRecWritten    = "abproxy_recorder_written_total"
	MetricRecDropped    = "abproxy_recorder_dropped_total"
	MetricRecFailed     = "abproxy_recorder_failed_total"
	MetricScrapes       = "abproxy_backend_scrapes_total"
	MetricBackendUp     = "abproxy_backend_up"
)

// Bucket boundaries: the OpenTelemetry GenAI advisory buckets (the ones
// Envoy AI Gateway uses), plus finer ones for ITL and the proxy's own cost.
var (
	ttftBuckets     = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	tpotBuckets     = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5}
	durationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	tokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
	itlBuckets      = []float64{0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5}
	addedBuckets    = []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1}
)

// Metrics is the proxy's Observer: it turns every finished request into
// Prometheus series on a private registry and feeds the live window behind
// /api/live. Observe does no I/O and takes no lock on the common path:
// label children are resolved once per (backend, role) and cached.
type Metrics struct {
	reg  *prometheus.Registry
	live *Live

	ttft, tpot, duration, added *prometheus.HistogramVec
	tokens                      *prometheus.HistogramVec
	itl                         *gapVec
	requests                    *prometheus.CounterVec
	scrapes                     *prometheus.CounterVec
	up                          *prometheus.GaugeVec

	series   sync.Map // seriesKey -> *series
	counters sync.Map // requestKey -> prometheus.Counter

	proxyStats atomic.Pointer[func() proxy.Stats]
	recStats   atomic.Pointer[func() recorder.Stats]

	snapMu sync.Mutex // guards snap and snapAt, the shared /api/live snapshot
	snap   LiveSnapshot
	snapAt time.Time
}

type seriesKey struct{ backend, role string }

// series holds the label children of one (backend, role).
type series struct {
	ttft, tpot, duration, added prometheus.Observer
	tokIn, tokOut               prometheus.Observer
	itl                         *gapHistogram
}

type requestKey struct {
	backend, role string
	status        int
	err           string
}

// NewMetrics builds the registry. backends are the configured backend names,
// whose series exist (at zero) from the start; other names seen later (a
// request for an unknown backend has backend "") get series on first sight.
func NewMetrics(backends []string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), live: NewLive(backends)}
	hist := func(name, help string, buckets []float64, extra ...string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets},
			append([]string{"backend", "role"}, extra...))
		m.reg.MustRegister(h)
		return h
	}
	m.ttft = hist(MetricTTFT, "Time to first token: first content or reasoning chunk minus request start, per request that got one.", ttftBuckets)
	m.tpot = hist(MetricTPOT, "Time per output token: (end - first token) / (completion tokens - 1), per request with more than one completion token.", tpotBuckets)
	m.duration = hist(MetricDuration, "Request duration: end of the response (or error) minus request start, every request.", durationBuckets)
	m.tokens = hist(MetricTokenUsage, "Tokens per request by gen_ai_token_type (input = prompt, output = completion), where known.", tokenBuckets, "gen_ai_token_type")
	m.itl = newGapVec(MetricITL, "Inter-token latency: every gap between consecutive content chunks of a stream.", itlBuckets)
	m.reg.MustRegister(m.itl)
	m.added = hist(MetricAddedLatency, "Latency the proxy added to TTFT: first content chunk written to the client minus its arrival from the backend.", addedBuckets)
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRequests,
		Help: "Finished requests by backend, role, HTTP status (\"\" when none) and error class (\"\" on success)."},
		[]string{"backend", "role", "status", "error"})
	m.scrapes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricScrapes,
		Help: "Scrapes of a backend's /metrics by result (ok or error)."}, []string{"backend", "result"})
	m.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricBackendUp,
		Help: "1 when the last scrape of the backend's /metrics succeeded, else 0."}, []string{"backend"})
	m.reg.MustRegister(m.requests, m.scrapes, m.up, statsCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, b := range backends {
		for _, r := range []string{recorder.RolePrimary, recorder.RoleShadow} {
			m.seriesFor(b, r)
		}
	}
	return m
}

// Registry is the private registry /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Live is the rolling window behind /api/live and the dashboard.
func (m *Metrics) Live() *Live { return m.live }

// WatchProxy makes the in-flight (whole proxy and per backend) and shadow
// gauges read f (proxy.Stats).
func (m *Metrics) WatchProxy(f func() proxy.Stats) { m.proxyStats.Store(&f) }

// WatchRecorder makes the recorder gauges read f (recorder.Stats).
func (m *Metrics) WatchRecorder(f func() recorder.Stats) { m.recStats.Store(&f) }

func (m *Metrics) seriesFor(backend, role string) *series {
	k := seriesKey{backend, role}
	if s, ok := m.series.Load(k); ok {
		return s.(*series)
	}
	s := &series{
		ttft:     m.ttft.WithLabelValues(backend, role),
		tpot:     m.tpot.WithLabelValues(backend, role),
		duration: m.duration.WithLabelValues(backend, role),
		itl:      m.itl.child(backend, role),
		added:    m.added.WithLabelValues(backend, role),
		tokIn:    m.tokens.WithLabelValues(backend, role, "input"),
		tokOut:   m.tokens.WithLabelValues(backend, role, "output"),
	}
	v, _ := m.series.LoadOrStore(k, s)
	return v.(*series)
}

func (m *Metrics) counterFor(k requestKey) prometheus.Counter {
	if c, ok := m.counters.Load(k); ok {
		return c.(prometheus.Counter)
	}
	status := ""
	if k.status != 0 {
		status = strconv.Itoa(k.status)
	}
	c := m.requests.WithLabelValues(k.backend, k.role, status, k.err)
	v, _ := m.counters.LoadOrStore(k, c)
	return v.(prometheus.Counter)
}

// Observe implements proxy.Observer. The proxy calls it shortly after a
// request finished, off the request's goroutine; it only does arithmetic
// and atomic adds (plus a short critical section in the live window).
func (m *Metrics) Observe(o *proxy.Observation) {
	r := o.Record
	if r == nil {
		return
	}
	s := m.seriesFor(r.Backend, r.Role)
	m.counterFor(requestKey{r.Backend, r.Role, r.Status, r.Error}).Inc()
	t := Timings(r)
	if t.HasTTFT {
		s.ttft.Observe(t.TTFT)
	}
	if t.HasDuration {
		s.duration.Observe(t.Duration)
	}
	if t.HasTPOT {
		s.tpot.Observe(t.TPOT)
	}
	s.itl.addGaps(r.ChunkNS)
	if r.PromptTokens >= 0 {
		s.tokIn.Observe(float64(r.PromptTokens))
	}
	if r.CompletionTokens >= 0 {
		s.tokOut.Observe(float64(r.CompletionTokens))
	}
	if o.FirstTokenSentNS > 0 && r.FirstTokenNS > 0 {
		s.added.Observe(float64(max(o.FirstTokenSentNS-r.FirstTokenNS, 0)) / 1e9)
	}
	m.live.add(r, t)
}

// RequestTimings are one record's derived latencies in seconds, with
// DESIGN.md's definitions; each Has* says whether the value is defined.
type RequestTimings struct {
	TTFT, Duration, TPOT          float64
	HasTTFT, HasDuration, HasTPOT bool
}

// Timings derives TTFT = first_token − start, duration (E2E) = end −
// start and TPOT = (end − first_token)/(completion_tokens − 1) from a
// record. The metrics, the live window and the tests share it.
func Timings(r *recorder.Request) RequestTimings {
	var t RequestTimings
	if r.StartNS <= 0 {
		return t
	}
	if r.FirstTokenNS >= r.StartNS {
		t.TTFT, t.HasTTFT = float64(r.FirstTokenNS-r.StartNS)/1e9, true
	}
	if r.EndNS >= r.StartNS {
		t.Duration, t.HasDuration = float64(r.EndNS-r.StartNS)/1e9, true
	}
	if t.HasTTFT && r.CompletionTokens > 1 && r.EndNS >= r.FirstTokenNS {
		t.TPOT, t.HasTPOT = float64(r.EndNS-r.FirstTokenNS)/1e9/float64(r.CompletionTokens-1), true
	}
	return t
}

// scraped counts one scrape of a backend's /metrics.
func (m *Metrics) scraped(backend string, ok bool) {
	if ok {
		m.scrapes.WithLabelValues(backend, "ok").Inc()
		m.up.WithLabelValues(backend).Set(1)
	} else {
		m.scrapes.WithLabelValues(backend, "error").Inc()
		m.up.WithLabelValues(backend).Set(0)
	}
}

// statsCollector reports the proxy's and recorder's counters, reading each
// Stats once per scrape.
type statsCollector struct{ m *Metrics }

var (
	descInFlight      = prometheus.NewDesc(MetricInFlight, "Requests being served now, shadows included (in-flight streams).", nil, nil)
	descBackendFlight = prometheus.NewDesc(MetricBackendFlight, "Requests at a backend now, by role: sent to it and not finished.", []string{"backend", "role"}, nil)
	descShadowFlight  = prometheus.NewDesc(MetricShadowFlight, "Shadow (mirrored) requests running now.", nil, nil)
	descShadowSkipped = prometheus.NewDesc(MetricShadowSkipped, "Shadow copies skipped because route.max_shadow_inflight was reached.", nil, nil)
	descQueueDepth    = prometheus.NewDesc(MetricQueueDepth, "Records waiting for the recorder's writer.", nil, nil)
	descQueueCap      = prometheus.NewDesc(MetricQueueCap, "Capacity of the recorder's queue (recorder.queue_size).", nil, nil)
	descRecWritten    = prometheus.NewDesc(MetricRecWritten, "Records committed to the database.", nil, nil)
	descRecDropped    = prometheus.NewDesc(MetricRecDropped, "Records dropped because the recorder's queue was full (or it was closed).", nil, nil)
	descRecFailed     = prometheus.NewDesc(MetricRecFailed, "Accepted records the database refused.", nil, nil)
)

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descBackendFlight, descShadowFlight, descShadowSkipped,
		descQueueDepth, descQueueCap, descRecWritten, descRecDropped, descRecFailed} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	var ps proxy.Stats
	if f := c.m.proxyStats.Load(); f != nil {
		ps = (*f)()
	}
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(ps.InFlight))
	for _, b := range ps.Backends {
		ch <- prometheus.MustNewConstMetric(descBackendFlight, prometheus.GaugeValue, float64(b.InFlight), b.Name, recorder.RolePrimary)
		ch <- prometheus.MustNewConstMetric(descBackendFlight, prometheus.GaugeValue, float64(b.ShadowInFlight), b.Name, recorder.RoleShadow)
	}
	ch <- prometheus.MustNewConstMetric(descShadowFlight, prometheus.GaugeValue, float64(ps.ShadowInflight))
	ch <- prometheus.MustNewConstMetric(descShadowSkipped, prometheus.CounterValue, float64(ps.ShadowSkipped))
	var rs recorder.Stats
	if f := c.m.recStats.Load(); f != nil {
		rs = (*f)()
	}
	ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(rs.QueueDepth))
	ch <- prometheus.MustNewConstMetric(descQueueCap, prometheus.GaugeValue, float64(rs.QueueCapacity))
	ch <- prometheus.MustNewConstMetric(descRecWritten, prometheus.CounterValue, float64(rs.Written))
	ch <- prometheus.MustNewConstMetric(descRecDropped, prometheus.CounterValue, float64(rs.Dropped))
	ch <- prometheus.MustNewConstMetric(descRecFailed, prometheus.CounterValue, float64(rs.Failed))
}
