//go:build !race

package testutil

// Race is true when the race detector is on: timing tests skip then, since
// it slows every goroutine several times over.
const Race = false
