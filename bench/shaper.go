package bench

import (
	"math/rand/v2"
	"strings"
	"unicode/utf8"

	"github.com/abproxy/abproxy/tokenizer"
)

// Shaper cuts prompts from a corpus to an exact prompt size. The size is
// what the server reports as usage.prompt_tokens for the chat request, chat
// template included: with Qwen2.5's template and one user message X that is
// 29 + tokens(X), the 29 being the injected default system prompt and the
// turn markers. genai-bench counts tokens(X) only and so undercounts.
//
// With a tokenizer the count is exact: every prompt is verified by counting
// the rendered chat template before it is used. Without one the count is
// the estimate the sim makes without a tokenizer (4 bytes per token plus 28
// for the template), flagged as approximate in the run metadata.
//
// A Shaper is immutable and safe for concurrent use.
type Shaper struct {
	tok     *tokenizer.Tokenizer // nil: approximate counts
	corpus  *Corpus
	system  string // system message, "" for none (the template injects Qwen's)
	lineTok []int  // tokens of " "+line (approximate without a tokenizer)
	minimum int    // smallest prompt a chat request can have: template + 1 token
}

// nonceDigits is the length of the random number each shaped prompt starts
// with, so no two prompts share a prefix beyond the chat template (and no
// prefix cache is hit by accident). Qwen tokenizes digits one by one.
const nonceDigits = 6

// NewShaper returns a shaper over corpus. tok may be nil (approximate
// counts). system, when not empty, is sent as a system message before the
// user message, as genai-bench's system_message request parameter does.
func NewShaper(tok *tokenizer.Tokenizer, corpus *Corpus, system string) *Shaper {
	s := &Shaper{tok: tok, corpus: corpus, system: system, lineTok: make([]int, len(corpus.Lines))}
	for i, l := range corpus.Lines {
		if tok != nil {
			s.lineTok[i] = tok.Count(" " + l)
		} else {
			s.lineTok[i] = tokenizer.ApproxTextTokens(" " + l)
		}
	}
	s.minimum = s.Count("") + 1
	return s
}

// Exact reports whether counts come from the model's tokenizer.
func (s *Shaper) Exact() bool { return s.tok != nil }

// MinPrompt is the smallest prompt size Shape can produce: the chat
// template around a one-token user message.
func (s *Shaper) MinPrompt() int { return s.minimum }

// Messages returns the chat messages for user content x.
func (s *Shaper) Messages(x string) []tokenizer.Message {
	if s.system != "" {
		return []tokenizer.Message{{Role: "system", Content: s.system}, {Role: "user", Content: x}}
	}
	return []tokenizer.Message{{Role: "user", Content: x}}
}

// Count returns the prompt tokens of a chat request with user content x,
// exact with a tokenizer and estimated without.
func (s *Shaper) Count(x string) int {
	if s.tok != nil {
		return s.tok.CountChat(s.Messages(x))
	}
	return tokenizer.ApproxChatTokens(s.Messages(x))
}

// Line returns a random corpus line as user content, unshaped (the
// dataset scenario), and its prompt size.
func (s *Shaper) Line(r *rand.Rand) (string, int) {
	x := s.corpus.Lines[r.IntN(len(s.corpus.Lines))]
	return x, s.Count(x)
}

// Shape returns user content whose chat request has exactly planned prompt
// tokens, where planned is n raised to MinPrompt when n is smaller. The
// content starts with a random number and continues with corpus lines
// picked at random, all drawn from r, so the same r state gives the same
// prompt. ok is false in the (never observed) case that no exact cut was
// found; content then has Count(content) tokens, which planned reports.
func (s *Shaper) Shape(r *rand.Rand, n int) (content string, planned int, ok bool) {
	n = max(n, s.minimum)
	target := n - (s.minimum - 1) // tokens of content, by the template arithmetic
	if s.tok == nil {
		return s.shapeApprox(r, target), n, true
	}
	// Draw more text than needed, encode once, cut at the token count the
	// template arithmetic predicts, then verify by counting the rendered
	// template; boundary effects (a cut word tokenizing differently) are
	// corrected by moving the cut.
	var b strings.Builder
	s.draw(r, &b, target+8+target/32)
	ids := s.tok.Encode(b.String())
	for len(ids) < target+1 {
		s.draw(r, &b, target+16-len(ids))
		ids = s.tok.Encode(b.String())
	}
	k := target
	var x string
	var c int
	for range 12 {
		x = validPrefix(s.tok.Decode(ids[:k]))
		c = s.Count(x)
		if c == n {
			return x, n, true
		}
		k += n - c
		if k < 1 {
			k = 1
		}
		for k > len(ids) {
			s.draw(r, &b, k+16-len(ids))
			ids = s.tok.Encode(b.String())
		}
	}
	return x, c, false
}

// draw appends the nonce (when b is empty) and random corpus lines to b,
// at least more tokens' worth by the per-line counts.
func (s *Shaper) draw(r *rand.Rand, b *strings.Builder, more int) {
	have := 0
	if b.Len() == 0 {
		b.Grow(int(float64(more) * 5))
		b.WriteByte(byte('1' + r.IntN(9)))
		for range nonceDigits - 1 {
			b.WriteByte(byte('0' + r.IntN(10)))
		}
		have = nonceDigits
	}
	for have < more {
		i := r.IntN(len(s.corpus.Lines))
		b.WriteByte(' ')
		b.WriteString(s.corpus.Lines[i])
		have += max(1, s.lineTok[i])
	}
}

// shapeApprox builds content of the byte length that the approximate count
// maps to target tokens: (len+3)/4 == target.
func (s *Shaper) shapeApprox(r *rand.Rand, target int) string {
	var b strings.Builder
	want := 4 * target
	for b.Len() <= want {
		s.draw(r, &b, (want-b.Len())/4+2)
	}
	x := b.String()
	cut := want
	for cut > 0 && !utf8.RuneStart(x[cut]) {
		cut--
	}
	return x[:cut]
}

// validPrefix drops a trailing partial UTF-8 sequence left by cutting
// between the tokens of one character.
func validPrefix(x string) string {
	for len(x) > 0 && !utf8.ValidString(x) {
		x = x[:len(x)-1]
	}
	return x
}
