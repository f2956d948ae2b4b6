package tokenizer

import (
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// The shared data folder sits beside the repository (../shared/data from the
// repo root); tests skip when it is absent rather than ship 4 MB of vocab.
const (
	qwenDir    = "../../shared/data/qwen2.5-tokenizer"
	sonnetPath = "../../shared/data/sonnet.txt"
)

var (
	qwenOnce sync.Once
	qwenTok  *Tokenizer
	qwenErr  error
)

// qwen loads the shared Qwen2.5 tokenizer once per test binary: loading
// takes a noticeable fraction of a second and the race detector multiplies it.
func qwen(tb testing.TB) *Tokenizer {
	tb.Helper()
	if _, err := os.Stat(qwenDir); err != nil {
		tb.Skipf("../shared/data/qwen2.5-tokenizer not found: %v", err)
	}
	qwenOnce.Do(func() { qwenTok, qwenErr = Load(qwenDir) })
	if qwenErr != nil {
		tb.Fatalf("Load(%s): %v", qwenDir, qwenErr)
	}
	return qwenTok
}

func sonnet(tb testing.TB) string {
	tb.Helper()
	data, err := os.ReadFile(sonnetPath)
	if err != nil {
		tb.Skipf("../shared/data/sonnet.txt not found: %v", err)
	}
	return string(data)
}

func TestKnownIDs(t *testing.T) {
	tok := qwen(t)
	cases := []struct {
		text string
		ids  []int
	}{
		{"Hello, world!", []int{9707, 11, 1879, 0}},
		{"Shall I compare thee to a summer's day?", []int{2016, 541, 358, 9429, 39244, 311, 264, 7324, 594, 1899, 30}},
		{"", []int{}},
		{"<|im_start|>", []int{151644}},
		{"<|im_end|>", []int{151645}},
		{"<|endoftext|>", []int{151643}},
		{"<tool_call>", []int{151657}},
		{"<|file_sep|>", []int{151664}},
	}
	for _, c := range cases {
		got := tok.Encode(c.text)
		if !slices.Equal(got, c.ids) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.ids)
		}
		if n := tok.Count(c.text); n != len(c.ids) {
			t.Errorf("Count(%q) = %d, want %d", c.text, n, len(c.ids))
		}
	}
	if got := tok.VocabSize(); got != 151665 {
		t.Errorf("VocabSize() = %d, want 151665 (151643 + 22 added tokens)", got)
	}
	if id, ok := tok.AddedTokenID("<|im_end|>"); !ok || id != 151645 {
		t.Errorf("AddedTokenID(<|im_end|>) = %d, %v", id, ok)
	}
}

func TestSpecialTokensSplit(t *testing.T) {
	tok := qwen(t)
	text := "<|im_start|>user\nHello, world!<|im_end|>\n<|im_start|>assistant\n"
	ids := tok.Encode(text)
	want := slices.Concat([]int{151644}, tok.Encode("user\nHello, world!"), []int{151645}, tok.Encode("\n"),
		[]int{151644}, tok.Encode("assistant\n"))
	if !slices.Equal(ids, want) {
		t.Fatalf("Encode(%q) = %v, want %v", text, ids, want)
	}
	// An added token glued to words on both sides is still one id, and the
	// words are tokenised as if it were a boundary.
	ids = tok.Encode("abc<|im_end|>def")
	want = slices.Concat(tok.Encode("abc"), []int{151645}, tok.Encode("def"))
	if !slices.Equal(ids, want) {
		t.Fatalf("glued special: got %v, want %v", ids, want)
	}
	// A truncated special token is ordinary text.
	for _, s := range []string{"<|im_start", "<|im_end |>", "<|IM_END|>"} {
		if slices.Contains(tok.Encode(s), 151645) || slices.Contains(tok.Encode(s), 151644) {
			t.Errorf("Encode(%q) contains a special id: %v", s, tok.Encode(s))
		}
	}
	if got := tok.Decode(tok.Encode(text)); got != text {
		t.Errorf("Decode(Encode(%q)) = %q", text, got)
	}
}

func TestChatTemplate(t *testing.T) {
	sys := "<|im_start|>system\n" + DefaultSystemPrompt + "<|im_end|>\n"
	cases := []struct {
		name string
		msgs []Message
		gen  bool
		want string
	}{
		{"default system", []Message{{"user", "Hi"}}, true,
			sys + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
		{"no generation prompt", []Message{{"user", "Hi"}}, false,
			sys + "<|im_start|>user\nHi<|im_end|>\n"},
		{"own system", []Message{{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}}, true,
			"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n" +
				"<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"},
		{"later system", []Message{{"user", "a"}, {"system", "b"}}, false,
			sys + "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n"},
		{"tool run", []Message{{"user", "q"}, {"assistant", ""}, {"tool", "r1"}, {"tool", "r2"}, {"user", "x"}}, false,
			sys + "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n" +
				"<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n" +
				"<|im_start|>user\nx<|im_end|>\n"},
		{"unknown role dropped", []Message{{"developer", "d"}, {"user", "u"}}, false,
			sys + "<|im_start|>user\nu<|im_end|>\n"},
		{"empty", nil, true, sys + "<|im_start|>assistant\n"},
	}
	for _, c := range cases {
		if got := ChatTemplate(c.msgs, c.gen); got != c.want {
			t.Errorf("%s: ChatTemplate = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestCountChat(t *testing.T) {
	tok := qwen(t)
	if got := tok.CountChat([]Message{{Role: "user", Content: "Hello, world!"}}); got != 33 {
		t.Errorf(`CountChat("Hello, world!") = %d, want 33`, got)
	}
	for _, line := range strings.Split(sonnet(t), "\n") {
		got := tok.CountChat([]Message{{Role: "user", Content: line}})
		if want := 29 + tok.Count(line); got != want {
			t.Errorf("CountChat(%q) = %d, want 29+Count = %d", line, got, want)
		}
	}
}

func TestRoundTripSonnet(t *testing.T) {
	tok := qwen(t)
	text := sonnet(t)
	ids := tok.Encode(text)
	if got := tok.Decode(ids); got != norm.NFC.String(text) {
		t.Fatalf("Decode(Encode(sonnet)) differs from the text")
	}
	if n := tok.Count(text); n != len(ids) {
		t.Fatalf("Count(sonnet) = %d, len(Encode) = %d", n, len(ids))
	}
	// The corpus is plain English: a byte-level BPE of this vocabulary size
	// lands near 4 bytes per token. Far off means the merges are not applied.
	if r := float64(len(text)) / float64(len(ids)); r < 3.5 || r > 5 {
		t.Errorf("sonnet: %.2f bytes per token, want ~4 (%d tokens)", r, len(ids))
	}
	for _, line := range strings.Split(text, "\n") {
		if got := tok.Decode(tok.Encode(line)); got != line {
			t.Errorf("round trip of %q gave %q", line, got)
		}
	}
}

// randomText mixes scripts, combining marks (so NFC has work to do),
// digits, whitespace of all kinds, apostrophes and pieces of added tokens.
func randomText(r *rand.Rand, n int) string {
	pieces := []string{"'s", "'LL", "'ſ", "<|im_end|>", "<|im_", "\r\n", "\n\n", "  ", "\t", "\u00a0", "\u3000",
		"e\u0301", "\u0338", "Å", "한국어", "日本語", "😀", "👍🏽", "123", "٣", "Ⅻ", "don't", " the", "  x"}
	ranges := [][2]rune{{0x20, 0x7e}, {0xa0, 0x24f}, {0x300, 0x36f}, {0x370, 0x3ff}, {0x400, 0x4ff}, {0x590, 0x6ff},
		{0x900, 0x97f}, {0x1100, 0x11ff}, {0x2000, 0x206f}, {0x3040, 0x30ff}, {0x4e00, 0x4fff}, {0xac00, 0xad00},
		{0x1f300, 0x1f64f}, {0x10000, 0x1007f}}
	var b strings.Builder
	for b.Len() < n {
		if r.IntN(4) == 0 {
			b.WriteString(pieces[r.IntN(len(pieces))])
			continue
		}
		rg := ranges[r.IntN(len(ranges))]
		b.WriteRune(rg[0] + r.Int32N(rg[1]-rg[0]+1))
	}
	return b.String()
}

// nfcOutsideAdded is what Decode(Encode(s)) must give: NFC applies to the
// text between added tokens, never across them (so "<|im_end|>" followed by
// U+0338 does not become "<|im_end|≯").
func nfcOutsideAdded(s string, added []string) string {
	var b strings.Builder
	last := 0
	for i := 0; i < len(s); {
		best := ""
		for _, a := range added {
			if strings.HasPrefix(s[i:], a) && len(a) > len(best) {
				best = a
			}
		}
		if best == "" {
			i++
			continue
		}
		b.WriteString(norm.NFC.String(s[last:i]))
		b.WriteString(best)
		i += len(best)
		last = i
	}
	b.WriteString(norm.NFC.String(s[last:]))
	return b.String()
}

func addedContents(t *Tokenizer) []string {
	var out []string
	for _, a := range t.added.list {
		out = append(out, a.content)
	}
	return out
}

// checkRoundTrip asserts the invariants every input must keep.
func checkRoundTrip(tb testing.TB, tok *Tokenizer, s string) {
	tb.Helper()
	ids := tok.Encode(s)
	if want, got := nfcOutsideAdded(s, addedContents(tok)), tok.Decode(ids); got != want {
		tb.Fatalf("Decode(Encode(%q)) = %q, want %q", s, got, want)
	}
	if n := tok.Count(s); n != len(ids) {
		tb.Fatalf("Count(%q) = %d, len(Encode) = %d", s, n, len(ids))
	}
	for _, id := range ids {
		if id < 0 || id >= tok.VocabSize() {
			tb.Fatalf("Encode(%q) produced id %d outside [0,%d)", s, id, tok.VocabSize())
		}
	}
	if again := tok.Encode(tok.Decode(ids)); !slices.Equal(again, ids) {
		tb.Fatalf("Encode is not stable on its own output for %q: %v then %v", s, ids, again)
	}
}

func TestRoundTripRandomUnicode(t *testing.T) {
	tok := qwen(t)
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		checkRoundTrip(t, tok, randomText(r, 1+r.IntN(200)))
	}
	// Invalid UTF-8 passes through byte for byte.
	for _, s := range []string{"\xff", "a\xc3", "\xe2\x82 x", "caf\xc3\xa9\xff's"} {
		checkRoundTrip(t, tok, s)
	}
}

func TestBPEStrategiesAgree(t *testing.T) {
	tok := qwen(t)
	r := rand.New(rand.NewPCG(3, 4))
	sc := new(scratch)
	words := strings.Fields(sonnet(t))
	for range 2000 {
		var w string
		switch r.IntN(3) {
		case 0: // word of real text, glued, short or long
			for n := 2 + r.IntN(2*longWord); len(w) < n; {
				w += words[r.IntN(len(words))]
			}
		case 1: // repeated byte runs stress equal-rank ties
			w = strings.Repeat(string(" ae\n"[r.IntN(4)]), 1+r.IntN(300))
		default:
			w = randomText(r, 1+r.IntN(150))
		}
		quad := tok.bpeQuadratic(w)
		heap := tok.bpeHeap(w, nil, sc)
		prod := tok.bpe(w, nil, sc)
		if !slices.Equal(quad, heap) || !slices.Equal(quad, prod) {
			t.Fatalf("bpe of %q: plain %v, heap %v, bpe %v", w, quad, heap, prod)
		}
	}
}

// bpeQuadratic is bpe's short-word algorithm in its plainest form (rescan
// all pairs after every merge), applied whatever the word's length.
func (t *Tokenizer) bpeQuadratic(w string) []int32 {
	var syms []int32
	for i := 0; i < len(w); i++ {
		syms = append(syms, t.byteID[w[i]])
	}
	for {
		best, bestRank := -1, int32(noRank)
		for i := 0; i+1 < len(syms); i++ {
			if p := t.pair(syms[i], syms[i+1]); p.rank < bestRank {
				best, bestRank = i, p.rank
			}
		}
		if best < 0 {
			return syms
		}
		syms[best] = t.pair(syms[best], syms[best+1]).id
		syms = append(syms[:best+1], syms[best+2:]...)
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := qwen(t)
	lines := strings.Split(sonnet(t), "\n")
	want := make([][]int, len(lines))
	for i, l := range lines {
		want[i] = tok.Encode(l)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for k := range 3 * len(lines) {
				i := (k*7 + g) % len(lines)
				if got := tok.Encode(lines[i]); !slices.Equal(got, want[i]) {
					errs <- lines[i]
					return
				}
				tok.Count(lines[i])
			}
		})
	}
	wg.Wait()
	close(errs)
	for l := range errs {
		t.Errorf("concurrent Encode(%q) differs", l)
	}
}

// writeTokenizerJSON builds an HF tokenizer.json from the shared vocab.json,
// merges.txt and tokenizer_config.json, in the layout Qwen2.5 publishes.
func writeTokenizerJSON(t *testing.T, mergesAsPairs bool, mutate func(map[string]any)) string {
	t.Helper()
	var vocab map[string]int
	readJSONT(t, filepath.Join(qwenDir, "vocab.json"), &vocab)
	var cfg struct {
		Added map[string]struct {
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens_decoder"`
	}
	readJSONT(t, filepath.Join(qwenDir, "tokenizer_config.json"), &cfg)
	data, err := os.ReadFile(filepath.Join(qwenDir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var merges []any
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if strings.HasPrefix(l, "#version") {
			continue
		}
		if mergesAsPairs {
			a, b, _ := strings.Cut(l, " ")
			merges = append(merges, []string{a, b})
		} else {
			merges = append(merges, l)
		}
	}
	var added []map[string]any
	for id, a := range cfg.Added {
		var n int
		if err := json.Unmarshal([]byte(id), &n); err != nil {
			t.Fatal(err)
		}
		added = append(added, map[string]any{"id": n, "content": a.Content, "single_word": false, "lstrip": false,
			"rstrip": false, "normalized": false, "special": a.Special})
	}
	doc := map[string]any{
		"version":      "1.0",
		"added_tokens": added,
		"normalizer":   map[string]any{"type": "NFC"},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": qwen2Pattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		}},
		"decoder": map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": "",
			"end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": vocab, "merges": merges},
	}
	if mutate != nil {
		mutate(doc)
	}
	dir := t.TempDir()
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readJSONT(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatal(err)
	}
}

func TestTokenizerJSON(t *testing.T) {
	ref := qwen(t)
	text := sonnet(t) + "<|im_start|>user\n’Tis naïve café 東京 1234 <tool_call>x</tool_call><|endoftext|>"
	for _, pairs := range []bool{false, true} {
		dir := writeTokenizerJSON(t, pairs, nil)
		tok, err := Load(dir)
		if err != nil {
			t.Fatalf("Load(tokenizer.json, pairs=%v): %v", pairs, err)
		}
		if got, want := tok.Encode(text), ref.Encode(text); !slices.Equal(got, want) {
			t.Errorf("tokenizer.json (pairs=%v) ids differ from vocab.json+merges.txt", pairs)
		}
		if tok.VocabSize() != ref.VocabSize() {
			t.Errorf("VocabSize %d vs %d", tok.VocabSize(), ref.VocabSize())
		}
	}
}

func TestTokenizerJSONLlama3Digits(t *testing.T) {
	qwen(t)
	dir := writeTokenizerJSON(t, false, func(doc map[string]any) {
		doc["normalizer"] = nil
		doc["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)[0].(map[string]any)["pattern"] =
			map[string]any{"Regex": llama3Pattern}
	})
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.nfc || tok.split.maxDigits != 3 {
		t.Fatalf("nfc=%v maxDigits=%d, want false and 3", tok.nfc, tok.split.maxDigits)
	}
	// Qwen's vocabulary has three-digit tokens only for merges it learned
	// from single digits, so just check the grouping reaches BPE.
	if got := tok.split.pieces("12345"); !reflect.DeepEqual(got, []string{"123", "45"}) {
		t.Errorf("pieces(12345) = %q", got)
	}
}

func TestLoadErrors(t *testing.T) {
	write := func(t *testing.T, files map[string]string) string {
		dir := t.TempDir()
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	byteVocab := func(extra map[string]int) string {
		v := map[string]int{}
		for b, r := range byteToRune {
			v[string(r)] = b
		}
		for k, id := range extra {
			v[k] = id
		}
		out, _ := json.Marshal(v)
		return string(out)
	}
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"empty dir", nil, "has neither tokenizer.json nor vocab.json+merges.txt"},
		{"vocab without merges", map[string]string{"vocab.json": "{}"}, "has neither tokenizer.json nor vocab.json+merges.txt"},
		{"bad vocab json", map[string]string{"vocab.json": "{", "merges.txt": ""}, "parse"},
		{"not byte level", map[string]string{"vocab.json": `{"a":0}`, "merges.txt": ""}, "lacks the byte-level token"},
		{"bad merge line", map[string]string{"vocab.json": byteVocab(nil), "merges.txt": "#version: 0.2\nab\n"}, "line 2"},
		{"merge of unknown", map[string]string{"vocab.json": byteVocab(nil), "merges.txt": "a b\n"}, "not in the vocabulary"},
		{"bad added id", map[string]string{"vocab.json": byteVocab(map[string]int{"ab": 256}), "merges.txt": "a b\n",
			"tokenizer_config.json": `{"added_tokens_decoder":{"x":{"content":"<s>"}}}`}, "is not a token id"},
		{"tokenizer.json unigram", map[string]string{"tokenizer.json": `{"model":{"type":"Unigram"}}`}, "model type \"Unigram\""},
		{"tokenizer.json gpt2 pretok", map[string]string{"tokenizer.json": `{"model":{"type":"BPE","vocab":{"a":0}},` +
			`"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}}`}, "GPT-2 style"},
		{"tokenizer.json other split", map[string]string{"tokenizer.json": `{"model":{"type":"BPE","vocab":{"a":0}},` +
			`"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Isolated"}}`}, "split pattern"},
		{"tokenizer.json bad merges", map[string]string{"tokenizer.json": `{"model":{"type":"BPE","vocab":{"a":0},"merges":[1]},` +
			`"normalizer":{"type":"NFC"},"pre_tokenizer":{"type":"Split","pattern":{"Regex":` + mustJSON(qwen2Pattern) + `},"behavior":"Isolated"}}`},
			"neither a list"},
		{"tokenizer.json nfkc", map[string]string{"tokenizer.json": `{"model":{"type":"BPE","vocab":{"a":0}},"normalizer":{"type":"NFKC"}}`},
			"normalizer \"NFKC\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := write(t, c.files)
			tok, err := Load(dir)
			if err == nil {
				t.Fatalf("Load succeeded (%d tokens), want error containing %q", tok.VocabSize(), c.want)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Fatalf("error %q, want it to start with \"tokenizer: \" and contain %q", err, c.want)
			}
		})
	}
	_, err := Load(filepath.Join(t.TempDir(), "missing"))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing dir) = %v, want a not-exist error", err)
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestSyntheticBPE checks merge order on a toy vocabulary, so the BPE core is
// tested even where the shared data is absent.
func TestSyntheticBPE(t *testing.T) {
	vocab := map[string]int32{}
	for b, r := range byteToRune {
		vocab[string(r)] = int32(b)
	}
	next := int32(256)
	addTok := func(s string) {
		vocab[s] = next
		next++
	}
	// Ranks: "b c" first, then "a b" (cannot fire once bc exists), then "a bc".
	for _, s := range []string{"bc", "ab", "abc", "aa", "aaaa"} {
		addTok(s)
	}
	merges := []rawMerge{{"b", "c", 0}, {"a", "b", 1}, {"a", "bc", 2}, {"a", "a", 3}, {"aa", "aa", 4}}
	tok, err := build("synthetic", vocab, merges, []addedToken{{content: "<x>", id: 1000}}, true, splitter{maxDigits: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]int{
		"abc":    {int(vocab["abc"])},
		"ab":     {int(vocab["ab"])},
		"aaa":    {int(vocab["aa"]), 'a'}, // leftmost pair of equal rank wins
		"aaaaa":  {int(vocab["aaaa"]), 'a'},
		"a<x>bc": {'a', 1000, int(vocab["bc"])},
		"<x":     {'<', 'x'},
	}
	for in, want := range cases {
		if got := tok.Encode(in); !slices.Equal(got, want) {
			t.Errorf("Encode(%q) = %v, want %v", in, got, want)
		}
	}
	if tok.VocabSize() != 1001 || tok.Decode([]int{1000, -1, 5000, int(vocab["abc"])}) != "<x>abc" {
		t.Errorf("VocabSize %d, Decode %q", tok.VocabSize(), tok.Decode([]int{1000, -1, 5000, int(vocab["abc"])}))
	}
	// ignore_merges (Llama 3) takes whole-vocabulary words directly.
	tok.ignoreMerges = true
	tok.vocab = map[string]int32{"aaa": 7}
	tok.cache = newWordCache() // "aaa" is cached from above
	if got := tok.Encode("aaa"); !slices.Equal(got, []int{7}) {
		t.Errorf("ignore_merges: Encode(aaa) = %v", got)
	}
}

func TestSplitter(t *testing.T) {
	sp := splitter{maxDigits: 1}
	cases := []struct {
		in   string
		want []string
	}{
		{"Hello, world!", []string{"Hello", ",", " world", "!"}},
		{"summer's day", []string{"summer", "'s", " day"}},
		{"I'LL DON'T we'Re", []string{"I", "'LL", " DON", "'T", " we", "'Re"}},
		{"'sup 'x", []string{"'s", "up", " '", "x"}},
		{"it'ſ", []string{"it", "'ſ"}}, // Oniguruma's (?i) case-folds ſ to s
		{"a  b", []string{"a", " ", " b"}},
		{"a   ", []string{"a", "   "}},
		{"a\n\n  b", []string{"a", "\n\n", " ", " b"}},
		{"x \n \n  y", []string{"x", " \n \n", " ", " y"}},
		{"x\r\n", []string{"x", "\r\n"}},
		{"1234", []string{"1", "2", "3", "4"}},
		{"abc123def", []string{"abc", "1", "2", "3", "def"}},
		{" ...\n\nx", []string{" ...\n\n", "x"}},
		{"$hello", []string{"$hello"}},
		{"\thello", []string{"\thello"}},
		{"\nhello", []string{"\n", "hello"}},
		{"  !!", []string{" ", " !!"}},
		{"日本語のテキスト", []string{"日本語のテキスト"}},
		{"naïve café", []string{"naïve", " café"}},
		{"x\u00a0y", []string{"x", "\u00a0y"}},
		{"\u3000\u3000x", []string{"\u3000", "\u3000x"}},
		{"😀😀 ok", []string{"😀😀", " ok"}},
		{"a\xffb", []string{"a", "\xffb"}},
	}
	for _, c := range cases {
		if got := sp.pieces(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("pieces(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestPiecesTile guards the invariant Encode relies on: pieces cover the
// input exactly, in order, each non-empty.
func TestPiecesTile(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		s := randomText(r, r.IntN(100))
		if r.IntN(5) == 0 {
			s += "\xff\xc3"
		}
		var b strings.Builder
		for _, p := range (splitter{maxDigits: 1}).pieces(s) {
			if p == "" {
				t.Fatalf("empty piece in %q", s)
			}
			b.WriteString(p)
		}
		if b.String() != s {
			t.Fatalf("pieces of %q do not tile it", s)
		}
	}
}
