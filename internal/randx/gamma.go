// Package randx holds the random draws that bench (arrival gaps) and report
// (bootstrap weights) both need.
package randx

import (
	"math"
	"math/rand/v2"
)

// Gamma draws from Gamma(shape, 1) by Marsaglia and Tsang's method, with the
// usual boost for shape < 1. Shape 1 is the exponential distribution, drawn
// directly because it is the common case (Poisson arrivals).
func Gamma(r *rand.Rand, shape float64) float64 {
	if shape == 1 {
		return r.ExpFloat64()
	}
	if shape < 1 {
		u := r.Float64()
		for u == 0 {
			u = r.Float64()
		}
		return Gamma(r, shape+1) * math.Pow(u, 1/shape)
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := r.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := r.Float64()
		if u < 1-0.0331*x*x*x*x || math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}
