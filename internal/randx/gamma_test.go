package randx

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The sample mean and variance of Gamma(k, 1) are both k; a wrong branch
// (boost, squeeze or exponential shortcut) moves one of them far outside
// the tolerance.
func TestGammaMoments(t *testing.T) {
	for _, k := range []float64{0.3, 1, 2.5, 10} {
		r := rand.New(rand.NewPCG(1, uint64(k*1000)))
		const n = 200000
		var sum, sq float64
		for i := 0; i < n; i++ {
			x := Gamma(r, k)
			if x < 0 || math.IsNaN(x) {
				t.Fatalf("shape %v: draw %v", k, x)
			}
			sum += x
			sq += x * x
		}
		mean := sum / n
		variance := sq/n - mean*mean
		// Standard error of the mean is sqrt(k/n); allow 5 of them.
		if math.Abs(mean-k) > 5*math.Sqrt(k/n) {
			t.Errorf("shape %v: mean %v", k, mean)
		}
		if math.Abs(variance-k)/k > 0.05 {
			t.Errorf("shape %v: variance %v", k, variance)
		}
	}
}

// A tiny shape underflows toward 0 through the boost; it must not turn
// negative or NaN.
func TestGammaTinyShape(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for range 1000 {
		if g := Gamma(r, 0.01); g < 0 || math.IsNaN(g) {
			t.Fatalf("Gamma(0.01) = %v", g)
		}
	}
}
