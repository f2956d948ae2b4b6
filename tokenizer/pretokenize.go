package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// qwen2Pattern is the pre-tokenizer regex of Qwen2/Qwen2.5 (tokenizer.json's
// Split pre-tokenizer). Go's regexp has no lookahead, so splitter implements
// it by hand; the pattern is kept to recognise it in tokenizer.json files.
const qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// llama3Pattern differs from qwen2Pattern only in grouping up to three
// digits; supporting it costs one parameter of splitter.
const llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Character classes as the pattern sees them. Every rune is in exactly one,
// which is why the pattern's alternatives together match at every position.
const (
	clsOther   uint8 = iota // [^\s\p{L}\p{N}]
	clsLetter               // \p{L}
	clsNumber               // \p{N}
	clsSpace                // \s except \r and \n
	clsNewline              // \r or \n
)

var asciiClass = func() (t [utf8.RuneSelf]uint8) {
	for r := rune(0); r < utf8.RuneSelf; r++ {
		switch {
		case r == '\r' || r == '\n':
			t[r] = clsNewline
		case unicode.IsLetter(r):
			t[r] = clsLetter
		case unicode.IsNumber(r):
			t[r] = clsNumber
		case unicode.IsSpace(r):
			t[r] = clsSpace
		default:
			t[r] = clsOther
		}
	}
	return t
}()

// classOf classifies r. unicode.IsSpace is exactly Unicode's White_Space
// property, which is what Oniguruma's (HF tokenizers') \s matches. An invalid
// UTF-8 byte decodes as utf8.RuneError (category So), so it counts as "other"
// and stays in the piece as its raw byte.
func classOf(r rune) uint8 {
	if r < utf8.RuneSelf {
		return asciiClass[r]
	}
	switch {
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case unicode.IsSpace(r):
		return clsSpace
	}
	return clsOther
}

// decodeAt is utf8.DecodeRuneInString(s[i:]) with an ASCII fast path.
func decodeAt(s string, i int) (rune, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// splitter is a hand-written matcher for qwen2Pattern (maxDigits 1) or
// llama3Pattern (maxDigits 3) with the leftmost-first semantics of a
// backtracking regex engine, scanning runes once.
type splitter struct {
	maxDigits int
}

// next returns the end of the piece that starts at i (i < len(s)). Pieces
// tile s: the next one starts where this one ends.
func (sp splitter) next(s string, i int) int {
	r, n := decodeAt(s, i)
	c := classOf(r)

	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if m := contraction(s[i+1:]); m > 0 {
			return i + 1 + m
		}
	}

	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c == clsLetter {
		return scanClass(s, i+n, clsLetter)
	}
	if (c == clsOther || c == clsSpace) && i+n < len(s) {
		if r2, n2 := decodeAt(s, i+n); classOf(r2) == clsLetter {
			return scanClass(s, i+n+n2, clsLetter)
		}
	}

	// \p{N} or \p{N}{1,3}
	if c == clsNumber {
		j := i + n
		for k := 1; k < sp.maxDigits && j < len(s); k++ {
			r2, n2 := decodeAt(s, j)
			if classOf(r2) != clsNumber {
				break
			}
			j += n2
		}
		return j
	}

	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	j := i
	if r == ' ' {
		j = i + n
	}
	if j < len(s) {
		if r2, n2 := decodeAt(s, j); classOf(r2) == clsOther {
			j = scanClass(s, j+n2, clsOther)
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
	}

	// Only whitespace can start here now (letters, numbers and "other" runes
	// matched above). Scan the whole whitespace run once and resolve the
	// remaining alternatives from it:
	//   \s*[\r\n]+   backtracks to just after the run's last \r or \n;
	//   \s+(?!\S)    takes the run to the end of text, or all but its last
	//                rune when a non-space follows (so " word" stays whole);
	//   \s+          a lone whitespace rune before a non-space.
	j = i
	lastNL := -1
	lastStart := i
	for j < len(s) {
		r2, n2 := decodeAt(s, j)
		c2 := classOf(r2)
		if c2 == clsNewline {
			lastNL = j + n2
		} else if c2 != clsSpace {
			break
		}
		lastStart = j
		j += n2
	}
	switch {
	case lastNL >= 0:
		return lastNL
	case j == len(s):
		return j
	case lastStart > i:
		return lastStart
	}
	return j
}

// contraction reports the length of the contraction suffix at the start of s
// (the text after an apostrophe), or 0. The (?i:...) group is matched as
// Oniguruma does with Unicode case folding, under which "s" also matches
// U+017F LATIN SMALL LETTER LONG S.
func contraction(s string) int {
	if len(s) == 0 {
		return 0
	}
	switch s[0] | 0x20 { // ASCII lower-casing; only letters are compared
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if len(s) >= 2 && s[1]|0x20 == 'e' {
			return 2
		}
	case 'l':
		if len(s) >= 2 && s[1]|0x20 == 'l' {
			return 2
		}
	}
	if len(s) >= 2 && s[0] == 0xC5 && s[1] == 0xBF { // "ſ"
		return 2
	}
	return 0
}

// scanClass returns the end of the run of runes of class cls starting at j.
func scanClass(s string, j int, cls uint8) int {
	for j < len(s) {
		if c := s[j]; c < utf8.RuneSelf { // hot ASCII path, no decoding
			if asciiClass[c] != cls {
				break
			}
			j++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[j:])
		if classOf(r) != cls {
			break
		}
		j += n
	}
	return j
}

// pieces splits s into pre-tokens; used by tests and for debugging.
func (sp splitter) pieces(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		j := sp.next(s, i)
		out = append(out, s[i:j])
		i = j
	}
	return out
}
