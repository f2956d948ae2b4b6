// Package reqid makes request ids for the proxy and the load generator.
package reqid

import (
	crand "crypto/rand"
	"encoding/hex"
	"sync/atomic"
)

// Gen makes 32-hex-digit ids: a random per-process prefix and a counter, so
// ids are unique across restarts and each costs one atomic add. The zero
// value must be initialised with Init before use.
type Gen struct {
	prefix [16]byte
	n      atomic.Uint64
}

// Init draws the per-process prefix.
func (g *Gen) Init() {
	var b [8]byte
	_, _ = crand.Read(b[:])
	hex.Encode(g.prefix[:], b[:])
}

// Next returns a new id.
func (g *Gen) Next() string {
	var b [32]byte
	copy(b[:16], g.prefix[:])
	n := g.n.Add(1)
	const digits = "0123456789abcdef"
	for i := 31; i >= 16; i-- {
		b[i] = digits[n&15]
		n >>= 4
	}
	return string(b[:])
}
