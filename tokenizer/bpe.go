package tokenizer

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
)

// byteToRune is GPT-2's byte-level alphabet: printable bytes map to
// themselves and the rest to U+0100 onwards, so every vocabulary entry is a
// printable string. Vocab and merges files are written in this alphabet.
var byteToRune = func() (t [256]rune) {
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			t[b] = rune(b)
		} else {
			t[b] = 256 + n
			n++
		}
	}
	return t
}()

var runeToByte = func() map[rune]byte {
	m := make(map[rune]byte, 256)
	for b, r := range byteToRune {
		m[r] = byte(b)
	}
	return m
}()

// unmapBytes turns a vocabulary string in the byte-level alphabet back into
// the raw bytes it stands for. A rune outside the alphabet (never in a
// byte-level vocabulary) is kept as its own UTF-8, as HF's ByteLevel decoder
// does.
func unmapBytes(tok string) string {
	var b strings.Builder
	b.Grow(len(tok))
	for _, r := range tok {
		if c, ok := runeToByte[r]; ok {
			b.WriteByte(c)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mergeKey packs an adjacent pair of token ids.
func mergeKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// merge is what an adjacent pair becomes: the id of the concatenated token,
// and the rank (line number in merges) that orders it against other pairs.
type merge struct {
	rank int32
	id   int32
}

const noRank = math.MaxInt32

// longWord is the length (in bytes) above which bpe switches from the
// quadratic scan, fastest for ordinary words, to the heap, which keeps
// pathological inputs (megabytes without a space) at O(n log n).
const longWord = 64

// scratch holds per-call buffers so concurrent Encode calls share nothing
// mutable but the cache.
type scratch struct {
	syms  []int32
	pairs []merge
	heap  []heapItem
	nodes []node
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func (t *Tokenizer) pair(a, b int32) merge {
	if m, ok := t.merges[mergeKey(a, b)]; ok {
		return m
	}
	return merge{rank: noRank}
}

// bpe appends to out the ids of one pre-token (raw bytes). It applies merges
// lowest rank first and, among equal ranks, leftmost first — the order HF
// tokenizers' BPE.merge_word produces.
func (t *Tokenizer) bpe(word string, out []int32, sc *scratch) []int32 {
	if t.ignoreMerges {
		if id, ok := t.vocab[word]; ok {
			return append(out, id)
		}
	}
	if len(word) > longWord {
		return t.bpeHeap(word, out, sc)
	}
	syms := sc.syms[:0]
	for i := 0; i < len(word); i++ {
		syms = append(syms, t.byteID[word[i]])
	}
	// pairs[i] is the merge of syms[i] and syms[i+1]; kept in step with syms
	// so each merge costs two map lookups, not a rescan of all pairs.
	pairs := sc.pairs[:0]
	for i := 0; i+1 < len(syms); i++ {
		pairs = append(pairs, t.pair(syms[i], syms[i+1]))
	}
	for {
		best := -1
		bestRank := int32(noRank)
		for i, p := range pairs {
			if p.rank < bestRank {
				best, bestRank = i, p.rank
			}
		}
		if best < 0 {
			break
		}
		syms[best] = pairs[best].id
		syms = append(syms[:best+1], syms[best+2:]...)
		pairs = append(pairs[:best], pairs[best+1:]...)
		if best > 0 {
			pairs[best-1] = t.pair(syms[best-1], syms[best])
		}
		if best < len(pairs) {
			pairs[best] = t.pair(syms[best], syms[best+1])
		}
	}
	sc.syms, sc.pairs = syms, pairs
	return append(out, syms...)
}

// node is a symbol in bpeHeap's linked list; a merged-away symbol has
// id -1.
type node struct {
	id         int32
	prev, next int32
}

// heapItem is a candidate merge of the symbols at pos and right, valid
// only while both still hold the ids they had when it was pushed. Ids at a
// position only ever grow into longer tokens, so they never return to an
// old value and the check cannot be fooled.
type heapItem struct {
	rank, pos, right int32
	left, rightID    int32
	id               int32
}

func (h heapItem) less(o heapItem) bool {
	if h.rank != o.rank {
		return h.rank < o.rank
	}
	return h.pos < o.pos
}

func (t *Tokenizer) bpeHeap(word string, out []int32, sc *scratch) []int32 {
	if word == "" {
		return out
	}
	nodes := sc.nodes[:0]
	for i := 0; i < len(word); i++ {
		nodes = append(nodes, node{id: t.byteID[word[i]], prev: int32(i - 1), next: int32(i + 1)})
	}
	nodes[len(nodes)-1].next = -1
	h := sc.heap[:0]
	push := func(pos int32) {
		r := nodes[pos].next
		if r < 0 {
			return
		}
		m := t.pair(nodes[pos].id, nodes[r].id)
		if m.rank == noRank {
			return
		}
		h = append(h, heapItem{rank: m.rank, pos: pos, right: r, left: nodes[pos].id, rightID: nodes[r].id, id: m.id})
		for c := len(h) - 1; c > 0; {
			p := (c - 1) / 2
			if !h[c].less(h[p]) {
				break
			}
			h[c], h[p] = h[p], h[c]
			c = p
		}
	}
	pop := func() heapItem {
		top := h[0]
		last := len(h) - 1
		h[0] = h[last]
		h = h[:last]
		for p := 0; ; {
			c := 2*p + 1
			if c >= len(h) {
				break
			}
			if c+1 < len(h) && h[c+1].less(h[c]) {
				c++
			}
			if !h[c].less(h[p]) {
				break
			}
			h[c], h[p] = h[p], h[c]
			p = c
		}
		return top
	}
	for i := range nodes {
		push(int32(i))
	}
	for len(h) > 0 {
		it := pop()
		l, r := &nodes[it.pos], &nodes[it.right]
		if l.id != it.left || r.id != it.rightID || l.next != it.right {
			continue // stale: one side merged since this was pushed
		}
		l.id = it.id
		l.next = r.next
		if r.next >= 0 {
			nodes[r.next].prev = it.pos
		}
		r.id = -1
		if l.prev >= 0 {
			push(l.prev)
		}
		push(it.pos)
	}
	for i := int32(0); i >= 0; i = nodes[i].next {
		out = append(out, nodes[i].id)
	}
	sc.nodes, sc.heap = nodes, h
	return out
}

// wordCache remembers the ids of recent pre-tokens. It is 2-way set
// associative: a word may live in either slot of its pair, and each slot
// holds one immutable entry behind an atomic pointer. So readers and writers
// on any goroutine never lock, memory stays bounded, and two hot words that
// hash alike do not evict each other on every call (which direct mapping
// did, measurably, on the sonnet corpus).
type wordCache struct {
	seed  maphash.Seed
	slots []atomic.Pointer[cacheEntry]
}

type cacheEntry struct {
	word string
	ids  []int32
}

const (
	cacheSlots      = 1 << 16
	maxCachedLength = 128 // longer pre-tokens are rare and rarely repeat
)

func newWordCache() *wordCache {
	return &wordCache{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[cacheEntry], cacheSlots)}
}

// word returns the ids of one pre-token, from the cache when possible. The
// result may alias sc's buffers or a cache entry: callers copy it out.
func (t *Tokenizer) word(w string, sc *scratch) []int32 {
	if len(w) == 1 {
		sc.syms = append(sc.syms[:0], t.byteID[w[0]])
		return sc.syms
	}
	if len(w) > maxCachedLength {
		return t.bpe(w, nil, sc)
	}
	c := t.cache
	i := maphash.String(c.seed, w) & (cacheSlots - 1)
	a, b := &c.slots[i], &c.slots[i^1]
	ea := a.Load()
	if ea != nil && ea.word == w {
		return ea.ids
	}
	if eb := b.Load(); eb != nil && eb.word == w {
		return eb.ids
	}
	ids := t.bpe(w, nil, sc)
	// Clone the key: w usually points into the caller's text, which the
	// cache must not keep alive.
	e := &cacheEntry{word: strings.Clone(w), ids: ids}
	if ea != nil {
		// The newest word takes the home slot and its occupant moves to the
		// other one, dropping whatever was there: roughly LRU per pair.
		// Concurrent stores may interleave; entries are immutable, so the
		// worst case is a lost or duplicated entry, never a wrong one.
		b.Store(ea)
	}
	a.Store(e)
	return ids
}
