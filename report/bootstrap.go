package report

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/abproxy/abproxy/internal/randx"
	"github.com/abproxy/abproxy/internal/stats"
)

// Bootstrap settings. The report resamples each side of a comparison
// independently (paired differences for mirrored traffic) and takes the
// 2.5th and 97.5th percentiles of the replicate differences: a 95%
// percentile-bootstrap interval.
const (
	// DefaultResamples is the number of bootstrap replicates.
	DefaultResamples = 2000
	// exactMeanLimit is the largest sample whose mean (or ratio of sums) is
	// bootstrapped by drawing every resample; above it a replicate is drawn
	// from the bootstrap distribution's normal limit (same centre and
	// variance), which at that size is indistinguishable and keeps a report
	// over millions of requests fast.
	exactMeanLimit = 2000
	// minSamples is the fewest samples per side for an interval.
	minSamples = 2
)

// newRNG is a generator for one comparison: the report's seed mixed with a
// hash of what is compared, so a comparison's interval does not depend on
// which other comparisons the filters kept.
func newRNG(seed uint64, key string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(key))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// betaDraw draws from Beta(a, b).
func betaDraw(r *rand.Rand, a, b float64) float64 {
	x := randx.Gamma(r, a)
	y := randx.Gamma(r, b)
	return x / (x + y)
}

// quantileReplicates returns b bootstrap replicates of the p-th percentile
// of sorted (ascending, non-empty) in O(b), not O(b·n).
//
// A resample of n values with replacement is Q(U₁)…Q(Uₙ) for n uniforms
// U and the empirical quantile function Q(u) = x₍⌈n·u⌉₎. Q is monotone, so
// the resample's k-th order statistic is Q(U₍ₖ₎), and the k-th order
// statistic of n uniforms is Beta(k, n+1−k); the next one is U₍ₖ₎ plus
// (1−U₍ₖ₎) times the minimum of n−k further uniforms. Interpolating the two
// exactly as Percentile does gives a draw from the same distribution as
// resampling all n values and taking their percentile.
func quantileReplicates(r *rand.Rand, sorted []float32, p float64, b int) []float64 {
	n := len(sorted)
	h := float64(n-1) * p / 100
	lo := int(math.Floor(h))
	t := h - float64(lo)
	k := lo + 1 // 1-based rank of the lower order statistic
	q := func(u float64) float64 {
		i := int(math.Ceil(float64(n)*u)) - 1
		return float64(sorted[min(max(i, 0), n-1)])
	}
	out := make([]float64, b)
	for i := range out {
		uk := betaDraw(r, float64(k), float64(n+1-k))
		v := q(uk)
		if t > 0 && k < n {
			// minimum of n−k uniforms on (0,1) is 1 − V^(1/(n−k))
			m := 1 - math.Pow(r.Float64(), 1/float64(n-k))
			v = stats.Lerp(v, q(uk+(1-uk)*m), t)
		}
		out[i] = v
	}
	return out
}

// meanReplicates returns b bootstrap replicates of the mean of v.
func meanReplicates(r *rand.Rand, v []float32, b int) []float64 {
	n := len(v)
	out := make([]float64, b)
	if n <= exactMeanLimit {
		for i := range out {
			s := 0.0
			for range n {
				s += float64(v[r.IntN(n)])
			}
			out[i] = s / float64(n)
		}
		return out
	}
	mean, ss := 0.0, 0.0
	for _, x := range v {
		mean += float64(x)
	}
	mean /= float64(n)
	for _, x := range v {
		d := float64(x) - mean
		ss += d * d
	}
	sd := math.Sqrt(ss/float64(n)) / math.Sqrt(float64(n))
	for i := range out {
		out[i] = mean + sd*r.NormFloat64()
	}
	return out
}

// ratioReplicates returns b bootstrap replicates of Σnum/Σden over pairs
// (num[i], den[i]) resampled together; den's sum must be positive.
func ratioReplicates(r *rand.Rand, num, den []float32, b int) []float64 {
	n := len(num)
	out := make([]float64, b)
	if n <= exactMeanLimit {
		for i := range out {
			sn, sd := 0.0, 0.0
			for range n {
				j := r.IntN(n)
				sn += float64(num[j])
				sd += float64(den[j])
			}
			if sd == 0 {
				out[i] = 0
				continue
			}
			out[i] = sn / sd
		}
		return out
	}
	// delta method: Var(R*) ≈ Σ(numᵢ − R·denᵢ)² / (Σden)²
	sn, sd := 0.0, 0.0
	for i := range num {
		sn += float64(num[i])
		sd += float64(den[i])
	}
	ratio := sn / sd
	ss := 0.0
	for i := range num {
		e := float64(num[i]) - ratio*float64(den[i])
		ss += e * e
	}
	se := math.Sqrt(ss) / sd
	for i := range out {
		out[i] = ratio + se*r.NormFloat64()
	}
	return out
}

// Interval is a confidence interval.
type Interval struct {
	Lo float64 `json:"lo"` // lower bound
	Hi float64 `json:"hi"` // upper bound
}

// ci95 is the 95% percentile interval of replicates (sorted in place).
func ci95(rep []float64) *Interval {
	if len(rep) == 0 {
		return nil
	}
	slices.Sort(rep)
	return &Interval{Lo: Percentile(rep, 2.5), Hi: Percentile(rep, 97.5)}
}

// diffIntervals combines the two sides' replicates into the intervals of
// the difference (cand − base) and of the relative change in percent.
func diffIntervals(base, cand []float64) (diff, change *Interval) {
	d := make([]float64, len(base))
	rel := make([]float64, 0, len(base))
	for i := range base {
		d[i] = cand[i] - base[i]
		if base[i] != 0 {
			rel = append(rel, 100*(cand[i]/base[i]-1))
		}
	}
	return ci95(d), ci95(rel)
}
