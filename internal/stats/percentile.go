// Package stats holds the one percentile definition that bench, report and
// the admin server's live view all print, so that their figures agree.
package stats

import "math"

// Percentile is the p-th percentile (0–100) of sorted with linear
// interpolation between the two nearest ranks, exactly as numpy's default
// (method "linear"): h = (n−1)·p/100, value = x[⌊h⌋] + (h−⌊h⌋)·(x[⌊h⌋+1]−x[⌊h⌋]).
// sorted must be ascending and non-empty.
func Percentile[T float32 | float64](sorted []T, p float64) float64 {
	n := len(sorted)
	h := float64(n-1) * p / 100
	lo := int(math.Floor(h))
	if lo < 0 {
		lo = 0
	}
	if lo >= n-1 {
		return float64(sorted[n-1])
	}
	return Lerp(float64(sorted[lo]), float64(sorted[lo+1]), h-float64(lo))
}

// Lerp is numpy's _lerp: a + (b−a)·t, computed from the nearer end so that
// the result is exact at both ends and monotone in t.
func Lerp(a, b, t float64) float64 {
	d := b - a
	if t >= 0.5 {
		return b - d*(1-t)
	}
	return a + d*t
}
