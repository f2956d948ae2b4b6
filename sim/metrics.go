package sim

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// metrics holds the vLLM-named Prometheus series the sim exports. Each
// Server has its own registry so several sims (baseline and optimized in
// the demo, many in tests) live in one process without colliding.
//
// Times are wall-clock seconds as a client sees them, i.e. already divided
// by the speedup. Engine-side times (TTFT, ITL, E2E) use the scheduler's
// virtual step times, so they show the model, not timer noise.
type metrics struct {
	reg          *prometheus.Registry
	promptTokens prometheus.Counter
	genTokens    prometheus.Counter
	preemptions  prometheus.Counter
	success      *prometheus.CounterVec
	successStop  prometheus.Counter
	successLen   prometheus.Counter
	successAbort prometheus.Counter
	ttft         prometheus.Histogram
	e2e          prometheus.Histogram
	itl          prometheus.Histogram
	queueTime    prometheus.Histogram
	prefillTime  prometheus.Histogram
	decodeTime   prometheus.Histogram
}

// Bucket boundaries follow vLLM's so dashboards built for vLLM read the sim.
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	latencyBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
		30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
)

func newMetrics(model string, e *engine, kvCapacity int) *metrics {
	labels := prometheus.Labels{"model_name": model}
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
		m.reg.MustRegister(c)
		return c
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: labels, Buckets: buckets})
		m.reg.MustRegister(h)
		return h
	}
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}

	m.promptTokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
	m.genTokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.")
	m.preemptions = counter("vllm:num_preemptions_total",
		"Cumulative number of preemptions from the engine (always 0: the sim reserves KV for max_tokens at admission, so it never preempts).")
	m.success = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.", ConstLabels: labels,
	}, []string{"finished_reason"})
	m.reg.MustRegister(m.success)
	m.successStop = m.success.WithLabelValues("stop")
	m.successLen = m.success.WithLabelValues("length")
	m.successAbort = m.success.WithLabelValues("abort")

	m.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets)
	m.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", latencyBuckets)
	m.itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets)
	m.queueTime = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", latencyBuckets)
	m.prefillTime = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", latencyBuckets)
	m.decodeTime = hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", latencyBuckets)

	gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
		func() float64 { return float64(e.nRunning.Load()) })
	gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
		func() float64 { return float64(e.nWaiting.Load()) })
	// vLLM reports allocated KV blocks; the sim reports the reservation that
	// drives admission, so a full cache and a growing queue line up.
	gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
		func() float64 { return float64(e.nReserved.Load()) / float64(kvCapacity) })
	return m
}

func (m *metrics) aborted() { m.successAbort.Inc() }

func (m *metrics) finished(q *seq, t time.Time) {
	m.e2e.Observe(t.Sub(q.received).Seconds())
	m.decodeTime.Observe(t.Sub(q.firstTok).Seconds())
	if q.finish == "stop" {
		m.successStop.Inc()
	} else {
		m.successLen.Inc()
	}
}

func (m *metrics) handler() fasthttp.RequestHandler {
	return fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
}
