// Package tokenizer is a pure-Go byte-level BPE tokenizer for the Qwen2
// family (Qwen2, Qwen2.5, QwQ, ...), loaded from a model directory. It
// reproduces the token ids of Hugging Face's fast tokenizer — the one vLLM
// uses to count prompt_tokens — so the proxy, the load generator and the sim
// can count and shape prompts without Python.
//
// The pipeline is HF's: added tokens (<|im_start|>, ...) are split out of
// the raw text first, each remaining segment is NFC-normalised, cut into
// pre-tokens by the Qwen2 split pattern, and each pre-token's UTF-8 bytes
// are merged by BPE rank.
package tokenizer

import (
	"slices"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// Tokenizer encodes and decodes text. It is immutable after Load apart from
// an internal lock-free cache, so one Tokenizer may be shared by any number
// of goroutines.
type Tokenizer struct {
	vocab        map[string]int32 // raw bytes -> id, for ignoreMerges
	merges       map[uint64]merge
	byteID       [256]int32
	tokens       []string // id -> decoded bytes ("" for unused ids)
	added        addedTokens
	split        splitter
	nfc          bool
	ignoreMerges bool
	vocabSize    int
	cache        *wordCache
}

// Encode returns the token ids of text as Qwen2.5's Hugging Face tokenizer
// does (add_special_tokens makes no difference: Qwen adds no BOS). Added
// tokens in text such as "<|im_start|>" become their single id. Added-token
// flags lstrip, rstrip, single_word and normalized are not honoured; all
// Qwen2-family models set them false.
func (t *Tokenizer) Encode(text string) []int {
	// Roughly 4 bytes per token for English; a guess, but it avoids most
	// regrowth.
	out := make([]int, 0, len(text)/4+4)
	out, _ = t.run(text, out, false)
	return out
}

// Count returns len(Encode(text)) without building the id slice, for callers
// such as the sim that only need prompt sizes.
func (t *Tokenizer) Count(text string) int {
	_, n := t.run(text, nil, true)
	return n
}

// run tokenises text, appending ids to out unless countOnly, and returns the
// number of tokens; one code path keeps Count and Encode from drifting apart.
func (t *Tokenizer) run(text string, out []int, countOnly bool) ([]int, int) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	count := 0
	for len(text) > 0 {
		start, end, id := t.added.find(text)
		seg := text[:start]
		if t.nfc {
			// norm.String returns seg itself, without allocating, when it is
			// already NFC (always so for ASCII).
			seg = norm.NFC.String(seg)
		}
		for i := 0; i < len(seg); {
			j := t.split.next(seg, i)
			ids := t.word(seg[i:j], sc)
			count += len(ids)
			if !countOnly {
				n := len(out)
				out = slices.Grow(out, len(ids))[:n+len(ids)]
				for k, id := range ids {
					out[n+k] = int(id)
				}
			}
			i = j
		}
		if id < 0 {
			break
		}
		count++
		if !countOnly {
			out = append(out, int(id))
		}
		text = text[end:]
	}
	return out, count
}

// Decode returns the text of ids. Added tokens decode to their content
// (special ones included, as skip_special_tokens=False would); ids outside
// the vocabulary are skipped, as HF does. The bytes are returned as they
// are, so a sequence cut in the middle of a multi-byte character yields
// invalid UTF-8 rather than HF's U+FFFD; strings.ToValidUTF8 fixes that
// when needed, and keeping bytes makes Decode(Encode(x)) lossless.
func (t *Tokenizer) Decode(ids []int) string {
	n := 0
	for _, id := range ids {
		if id >= 0 && id < len(t.tokens) {
			n += len(t.tokens[id])
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, id := range ids {
		if id >= 0 && id < len(t.tokens) {
			b.WriteString(t.tokens[id])
		}
	}
	return b.String()
}

// VocabSize returns one more than the largest token id, counting added
// tokens: 151665 for Qwen2.5, like len(AutoTokenizer) in Python. The model's
// embedding table (vocab_size 152064 in config.json) is padded beyond it.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// AddedTokenID returns the id of an added token such as "<|im_end|>", so
// callers need not hard-code ids that differ between model families.
func (t *Tokenizer) AddedTokenID(content string) (int, bool) {
	for _, a := range t.added.list {
		if a.content == content {
			return int(a.id), true
		}
	}
	return 0, false
}

// addedToken is a token matched verbatim in the raw text before
// normalisation and pre-tokenisation.
type addedToken struct {
	content string
	id      int32
}

// addedTokens finds added tokens leftmost-longest, as HF's Aho-Corasick
// matcher does. Added tokens are few and share first bytes ('<' for all of
// Qwen's), so a first-byte filter plus HasPrefix is as fast as an automaton.
type addedTokens struct {
	list    []addedToken
	byFirst [256][]int // indexes into list, longest content first
	firsts  string     // distinct first bytes; one means strings.IndexByte suffices
}

func (a *addedTokens) add(tok addedToken) {
	if tok.content == "" {
		return
	}
	for i, old := range a.list {
		if old.content == tok.content {
			a.list[i] = tok
			return
		}
	}
	a.list = append(a.list, tok)
}

// index builds byFirst and firsts once all tokens are known.
func (a *addedTokens) index() {
	a.byFirst = [256][]int{}
	var firsts []byte
	for i, tok := range a.list {
		c := tok.content[0]
		if a.byFirst[c] == nil {
			firsts = append(firsts, c)
		}
		a.byFirst[c] = append(a.byFirst[c], i)
	}
	for c := range a.byFirst {
		idx := a.byFirst[c]
		// Insertion sort by length, longest first: lists are tiny.
		for i := 1; i < len(idx); i++ {
			for j := i; j > 0 && len(a.list[idx[j]].content) > len(a.list[idx[j-1]].content); j-- {
				idx[j], idx[j-1] = idx[j-1], idx[j]
			}
		}
	}
	a.firsts = string(firsts)
}

// find returns the span and id of the leftmost-longest added token in s, or
// (len(s), len(s), -1) when there is none.
func (a *addedTokens) find(s string) (start, end int, id int32) {
	if len(a.firsts) == 0 {
		return len(s), len(s), -1
	}
	for off := 0; off < len(s); {
		p := off
		if len(a.firsts) == 1 {
			i := strings.IndexByte(s[off:], a.firsts[0])
			if i < 0 {
				break
			}
			p += i
		} else {
			for p < len(s) && a.byFirst[s[p]] == nil {
				p++
			}
			if p == len(s) {
				break
			}
		}
		for _, k := range a.byFirst[s[p]] {
			if c := a.list[k].content; strings.HasPrefix(s[p:], c) {
				return p, p + len(c), a.list[k].id
			}
		}
		off = p + 1
	}
	return len(s), len(s), -1
}
