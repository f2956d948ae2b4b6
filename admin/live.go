package admin

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/abproxy/abproxy/internal/stats"
	"github.com/abproxy/abproxy/recorder"
)

// LiveWindow is the span the live stats roll over.
const LiveWindow = 60 * time.Second

// liveCap bounds the samples kept per backend: past ~1,000 requests/s the
// window covers less than LiveWindow, and the rates say over how long.
const liveCap = 1 << 16

// Live keeps the last LiveWindow of finished requests per backend for the
// dashboard: a fixed ring of small samples per backend under its own
// mutex, so recording one is a copy of a few words.
type Live struct {
	started  time.Time
	mu       sync.RWMutex // guards backends (the map, not the rings)
	backends map[string]*ring
	order    []string // configured backends first, then others as seen
}

type sample struct {
	endNS    int64
	ttft     float32 // seconds; <0 when none
	e2e      float32 // seconds; <0 when none
	outTok   int32   // completion tokens; <0 when unknown
	failed   bool
	isShadow bool
}

type ring struct {
	mu     sync.Mutex
	buf    []sample
	next   int  // index the next sample goes to
	full   bool // buf has wrapped
	total  int64
	errors int64
}

// NewLive makes a window with rows for the given backends from the start.
func NewLive(backends []string) *Live {
	l := &Live{started: time.Now(), backends: make(map[string]*ring)}
	for _, b := range backends {
		l.ringFor(b)
	}
	return l
}

func (l *Live) ringFor(backend string) *ring {
	l.mu.RLock()
	r := l.backends[backend]
	l.mu.RUnlock()
	if r != nil {
		return r
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r = l.backends[backend]; r == nil {
		r = &ring{buf: make([]sample, 0, 1024)}
		l.backends[backend] = r
		l.order = append(l.order, backend)
	}
	return r
}

func (l *Live) add(rec *recorder.Request, t RequestTimings) {
	s := sample{endNS: rec.EndNS, ttft: -1, e2e: -1, outTok: -1, failed: rec.Error != "", isShadow: rec.Role == recorder.RoleShadow}
	if s.endNS == 0 {
		s.endNS = time.Now().UnixNano()
	}
	if t.HasTTFT {
		s.ttft = float32(t.TTFT)
	}
	if t.HasDuration {
		s.e2e = float32(t.Duration)
	}
	if rec.CompletionTokens >= 0 {
		s.outTok = int32(min(rec.CompletionTokens, 1<<30))
	}
	r := l.ringFor(rec.Backend)
	r.mu.Lock()
	if len(r.buf) < liveCap {
		r.buf = append(r.buf, s)
	} else {
		r.buf[r.next] = s
		r.full = true
	}
	r.next = (r.next + 1) % liveCap
	r.total++
	if s.failed {
		r.errors++
	}
	r.mu.Unlock()
}

// BackendLive is one backend's rolling stats in a LiveSnapshot. Latencies
// are in milliseconds over requests that finished in the window; 0 when
// there were none.
type BackendLive struct {
	Backend        string  `json:"backend"`
	Requests       int     `json:"requests"`         // finished in the window (primary and shadow)
	Shadow         int     `json:"shadow"`           // of which shadow copies
	Errors         int     `json:"errors"`           // failed in the window
	RequestRate    float64 `json:"request_rate"`     // finished requests per second
	OutputTokRate  float64 `json:"output_tok_rate"`  // completion tokens per second
	TTFTP50        float64 `json:"ttft_p50_ms"`      // median TTFT
	TTFTP95        float64 `json:"ttft_p95_ms"`      // 95th percentile TTFT
	E2EP50         float64 `json:"e2e_p50_ms"`       // median end-to-end latency
	E2EP95         float64 `json:"e2e_p95_ms"`       // 95th percentile end-to-end latency
	TotalRequests  int64   `json:"total_requests"`   // since the server started
	TotalErrors    int64   `json:"total_errors"`     // since the server started
	WindowSeconds  float64 `json:"window_seconds"`   // span the rates are over
	LastFinishedNS int64   `json:"last_finished_ns"` // end of the latest request; 0 if none yet
	InFlight       int64   `json:"in_flight"`        // primary requests at this backend now
	ShadowInFlight int64   `json:"shadow_in_flight"` // shadow copies at this backend now
}

// LiveSnapshot is one /api/live event.
type LiveSnapshot struct {
	TimeNS         int64         `json:"ts_ns"`            // when it was computed, Unix ns
	WindowSeconds  float64       `json:"window_seconds"`   // LiveWindow, shorter right after start
	InFlight       int64         `json:"in_flight"`        // requests being served, shadows included
	ShadowInFlight int64         `json:"shadow_in_flight"` // shadow requests running
	ShadowSkipped  uint64        `json:"shadow_skipped"`   // shadow copies skipped since start
	QueueDepth     int           `json:"recorder_queue_depth"`
	Dropped        int64         `json:"recorder_dropped"`
	Written        int64         `json:"recorder_written"`
	Backends       []BackendLive `json:"backends"`
}

// Snapshot computes the per-backend stats over the window ending at now.
func (l *Live) Snapshot(now time.Time) []BackendLive {
	window := min(LiveWindow, now.Sub(l.started))
	window = max(window, time.Second)
	from := now.Add(-LiveWindow).UnixNano()
	l.mu.RLock()
	names := slices.Clone(l.order)
	rings := make([]*ring, len(names))
	for i, n := range names {
		rings[i] = l.backends[n]
	}
	l.mu.RUnlock()

	out := make([]BackendLive, 0, len(names))
	var ttft, e2e []float64
	for i, r := range rings {
		b := BackendLive{Backend: names[i]}
		ttft, e2e = ttft[:0], e2e[:0]
		var tok int64
		oldest := now.UnixNano()
		r.mu.Lock()
		b.TotalRequests, b.TotalErrors = r.total, r.errors
		for _, s := range r.buf {
			b.LastFinishedNS = max(b.LastFinishedNS, s.endNS)
			if s.endNS < from {
				continue
			}
			oldest = min(oldest, s.endNS)
			b.Requests++
			if s.isShadow {
				b.Shadow++
			}
			if s.failed {
				b.Errors++
			}
			if s.ttft >= 0 {
				ttft = append(ttft, float64(s.ttft))
			}
			if s.e2e >= 0 {
				e2e = append(e2e, float64(s.e2e))
			}
			if s.outTok > 0 {
				tok += int64(s.outTok)
			}
		}
		full := r.full
		r.mu.Unlock()
		span := window
		if full { // the ring overwrote part of the window: rate over what it holds
			span = max(now.Sub(time.Unix(0, oldest)), time.Second)
		}
		b.WindowSeconds = span.Seconds()
		b.RequestRate = float64(b.Requests) / span.Seconds()
		b.OutputTokRate = float64(tok) / span.Seconds()
		b.TTFTP50, b.TTFTP95 = pcts(ttft)
		b.E2EP50, b.E2EP95 = pcts(e2e)
		out = append(out, b)
	}
	return out
}

// pcts returns the exact p50 and p95 in milliseconds (numpy "linear").
func pcts(v []float64) (p50, p95 float64) {
	if len(v) == 0 {
		return 0, 0
	}
	sort.Float64s(v)
	return stats.Percentile(v, 50) * 1000, stats.Percentile(v, 95) * 1000
}

// snapshotTTL lets every /api/live client within it share one snapshot,
// so many open dashboards cost the data plane no more than one.
const snapshotTTL = 500 * time.Millisecond

// LiveSnapshot is the whole /api/live event: the window plus the proxy's
// and recorder's counters. Snapshots less than snapshotTTL old are reused.
func (m *Metrics) LiveSnapshot(now time.Time) LiveSnapshot {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.snapAt != (time.Time{}) && now.Sub(m.snapAt) >= 0 && now.Sub(m.snapAt) < snapshotTTL {
		return m.snap
	}
	m.snap, m.snapAt = m.computeSnapshot(now), now
	return m.snap
}

func (m *Metrics) computeSnapshot(now time.Time) LiveSnapshot {
	s := LiveSnapshot{TimeNS: now.UnixNano(), Backends: m.live.Snapshot(now)}
	s.WindowSeconds = max(min(LiveWindow, now.Sub(m.live.started)), time.Second).Seconds()
	if f := m.proxyStats.Load(); f != nil {
		ps := (*f)()
		s.InFlight, s.ShadowInFlight, s.ShadowSkipped = ps.InFlight, ps.ShadowInflight, ps.ShadowSkipped
		for _, pb := range ps.Backends {
			for i := range s.Backends {
				if b := &s.Backends[i]; b.Backend == pb.Name {
					b.InFlight, b.ShadowInFlight = pb.InFlight, pb.ShadowInFlight
				}
			}
		}
	}
	if f := m.recStats.Load(); f != nil {
		rs := (*f)()
		s.QueueDepth, s.Dropped, s.Written = rs.QueueDepth, rs.Dropped, rs.Written
	}
	return s
}
