package report

import (
	"math"
	"slices"
	"sort"

	"github.com/abproxy/abproxy/internal/stats"
)

// Percentile is stats.Percentile, kept under report's name for callers
// of the report package.
func Percentile[T float32 | float64](sorted []T, p float64) float64 {
	return stats.Percentile(sorted, p)
}

// percentiles reported for every latency metric.
var summaryPercentiles = [...]float64{50, 90, 95, 99}

// Summary is one latency metric's distribution in milliseconds. Count is
// the number of samples; every other field is null when Count is 0.
type Summary struct {
	Count int      `json:"count"` // samples
	Mean  *float64 `json:"mean"`  // arithmetic mean
	P50   *float64 `json:"p50"`   // median
	P90   *float64 `json:"p90"`
	P95   *float64 `json:"p95"`
	P99   *float64 `json:"p99"`
	Min   *float64 `json:"min"`
	Max   *float64 `json:"max"`
}

// summarize32 sorts v in place and summarises it.
func summarize32(v []float32) Summary {
	if len(v) == 0 {
		return Summary{}
	}
	slices.Sort(v)
	sum := 0.0
	for _, x := range v {
		sum += float64(x)
	}
	at := func(p float64) *float64 { return num(Percentile(v, p)) }
	return Summary{
		Count: len(v), Mean: num(sum / float64(len(v))),
		P50: at(50), P90: at(90), P95: at(95), P99: at(99),
		Min: num(float64(v[0])), Max: num(float64(v[len(v)-1])),
	}
}

func num(v float64) *float64 { return &v }

// usHist counts samples (ITL gaps) at 1 µs resolution, exactly: memory is
// bounded by the range of the values, not by how many there are, so the
// ITL of millions of streamed chunks costs a few hundred kilobytes.
// Percentiles are exact over the µs-rounded samples; the mean is exact over
// the nanosecond values.
type usHist struct {
	dense  []uint32          // counts of values < len(dense) µs
	sparse map[uint32]uint32 // counts of larger values
	n      uint64
	sumNS  float64
}

// denseMax is the largest dense array: 2^16 µs = 65.5 ms in 256 KiB.
const denseMax = 1 << 16

func (h *usHist) add(ns int64) {
	if ns < 0 {
		ns = 0
	}
	h.n++
	h.sumNS += float64(ns)
	us64 := (ns + 500) / 1000
	if us64 > math.MaxUint32 {
		us64 = math.MaxUint32
	}
	us := uint32(us64)
	if us < denseMax {
		if int(us) >= len(h.dense) {
			size := max(64, len(h.dense))
			for size <= int(us) {
				size *= 2
			}
			h.dense = append(h.dense, make([]uint32, min(size, denseMax)-len(h.dense))...)
		}
		h.dense[us]++
		return
	}
	if h.sparse == nil {
		h.sparse = map[uint32]uint32{}
	}
	h.sparse[us]++
}

// merge adds o's counts to h.
func (h *usHist) merge(o *usHist) {
	if len(o.dense) > len(h.dense) {
		h.dense = append(h.dense, make([]uint32, len(o.dense)-len(h.dense))...)
	}
	for i, c := range o.dense {
		h.dense[i] += c
	}
	for k, c := range o.sparse {
		if h.sparse == nil {
			h.sparse = map[uint32]uint32{}
		}
		h.sparse[k] += c
	}
	h.n += o.n
	h.sumNS += o.sumNS
}

// each calls fn for each distinct value (µs) and its count, ascending.
func (h *usHist) each(fn func(us uint32, c uint32)) {
	for i, c := range h.dense {
		if c > 0 {
			fn(uint32(i), c)
		}
	}
	if len(h.sparse) > 0 {
		keys := make([]uint32, 0, len(h.sparse))
		for k := range h.sparse {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fn(k, h.sparse[k])
		}
	}
}

// orderStats returns the values (µs) at the given 0-based ranks, which
// must be ascending.
func (h *usHist) orderStats(ranks []uint64) []float64 {
	out := make([]float64, len(ranks))
	i := 0
	var seen uint64
	h.each(func(us uint32, c uint32) {
		seen += uint64(c)
		for i < len(ranks) && ranks[i] < seen {
			out[i] = float64(us)
			i++
		}
	})
	return out
}

// quantilesMS returns numpy-linear percentiles (ms) for ascending ps.
func (h *usHist) quantilesMS(ps []float64) []float64 {
	if h.n == 0 {
		return nil
	}
	ranks := make([]uint64, 0, 2*len(ps))
	for _, p := range ps {
		x := float64(h.n-1) * p / 100
		lo := uint64(math.Floor(x))
		ranks = append(ranks, lo, min(lo+1, h.n-1))
	}
	sort.Slice(ranks, func(a, b int) bool { return ranks[a] < ranks[b] })
	vals := h.orderStats(ranks)
	at := func(r uint64) float64 {
		k := sort.Search(len(ranks), func(j int) bool { return ranks[j] >= r })
		return vals[k]
	}
	out := make([]float64, len(ps))
	for i, p := range ps {
		x := float64(h.n-1) * p / 100
		lo := uint64(math.Floor(x))
		hi := min(lo+1, h.n-1)
		out[i] = stats.Lerp(at(lo), at(hi), x-float64(lo)) / 1000
	}
	return out
}

func (h *usHist) summary() Summary {
	if h.n == 0 {
		return Summary{}
	}
	q := h.quantilesMS([]float64{0, 50, 90, 95, 99, 100})
	return Summary{
		Count: int(h.n), Mean: num(h.sumNS / float64(h.n) / 1e6),
		P50: num(q[1]), P90: num(q[2]), P95: num(q[3]), P99: num(q[4]),
		Min: num(q[0]), Max: num(q[5]),
	}
}
