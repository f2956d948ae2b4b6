package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// refPattern is qwen2Pattern for a second, independent engine. The only edit
// spells out what Oniguruma (HF tokenizers' engine) does under (?i) and
// regexp2 does not: U+017F "ſ" case-folds to "s".
var refPattern = strings.Replace(qwen2Pattern, "'s|", "'[sſ]|", 1)

// refPieces splits s with regexp2, which supports the lookahead Go's regexp
// lacks; between matches it keeps unmatched text (there should be none).
func refPieces(tb testing.TB, re *regexp2.Regexp, s string) []string {
	var out []string
	runes := []rune(s)
	pos := 0
	m, err := re.FindStringMatch(s)
	for ; m != nil && err == nil; m, err = re.FindNextMatch(m) {
		if m.Index > pos {
			out = append(out, string(runes[pos:m.Index]))
		}
		out = append(out, m.String())
		pos = m.Index + m.Length
	}
	if err != nil {
		tb.Fatal(err)
	}
	if pos < len(runes) {
		out = append(out, string(runes[pos:]))
	}
	return out
}

func splitSeeds(f *testing.F) {
	for _, s := range []string{
		"Hello, world!", "Shall I compare thee to a summer's day?", "I'LL don'T 'sup", "it'ſ",
		"a  b\n\n  c \r\n\t d   ", "x \u00a0\u3000y", "1234 ١٢٣ Ⅻ", " ...\n\n!!\r", "naïve café 東京 😀 👍🏽",
		"\u2028\u2029\u0085x", "'", " '", "\n", "  ",
	} {
		f.Add(s)
	}
}

// FuzzSplit compares the hand-written splitter with regexp2 running the
// pattern itself, for Qwen2's pattern and Llama 3's digit-group variant.
func FuzzSplit(f *testing.F) {
	splitSeeds(f)
	qwenRE := regexp2.MustCompile(refPattern, regexp2.None)
	llamaRE := regexp2.MustCompile(strings.Replace(llama3Pattern, "'s|", "'[sſ]|", 1), regexp2.None)
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			// regexp2 matches on []rune, where invalid bytes are already
			// U+FFFD; the splitter's handling of them is tested elsewhere.
			t.Skip()
		}
		for _, c := range []struct {
			sp splitter
			re *regexp2.Regexp
		}{{splitter{maxDigits: 1}, qwenRE}, {splitter{maxDigits: 3}, llamaRE}} {
			got, want := c.sp.pieces(s), refPieces(t, c.re, s)
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("maxDigits=%d pieces(%q)\n got %q\nwant %q", c.sp.maxDigits, s, got, want)
			}
		}
	})
}

// FuzzEncodeRoundTrip checks Decode(Encode(x)) == NFC(x) outside added
// tokens, Count == len(Encode), ids in range, and stability on re-encoding.
func FuzzEncodeRoundTrip(f *testing.F) {
	splitSeeds(f)
	for _, s := range []string{"<|im_start|>user\nhi<|im_end|>", "<|im_end|>\u0338", "e\u0301\u0301", "\xff\xfe's", "<|im_<|im_end|>"} {
		f.Add(s)
	}
	tok := qwen(f)
	f.Fuzz(func(t *testing.T, s string) {
		checkRoundTrip(t, tok, s)
	})
}
