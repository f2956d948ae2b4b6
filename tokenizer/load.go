package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Load reads a tokenizer from a model directory. It prefers tokenizer.json
// (the HF fast-tokenizer file: model.vocab, model.merges as "a b" strings or
// [a, b] pairs, added_tokens), and otherwise uses vocab.json + merges.txt
// with the added tokens listed in tokenizer_config.json's
// added_tokens_decoder. The slow-tokenizer files carry no pre-tokenizer
// description, so that path assumes Qwen2's (NFC, Qwen2 split pattern).
func Load(dir string) (*Tokenizer, error) {
	tj := filepath.Join(dir, "tokenizer.json")
	if exists(tj) {
		return loadTokenizerJSON(tj)
	}
	vj, mt := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	if exists(vj) && exists(mt) {
		return loadVocabMerges(dir, vj, mt)
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("tokenizer: model directory %s: %w", dir, errors.Unwrap(err))
	}
	return nil, fmt.Errorf("tokenizer: %s has neither tokenizer.json nor vocab.json+merges.txt", dir)
}

func exists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

// rawMerge is one merge rule in the byte-level alphabet, with where it came
// from for error messages.
type rawMerge struct {
	a, b string
	line int
}

func loadVocabMerges(dir, vocabPath, mergesPath string) (*Tokenizer, error) {
	var vocab map[string]int32
	if err := readJSON(vocabPath, &vocab); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(mergesPath)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var merges []rawMerge
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimRight(sc.Text(), "\r")
		if text == "" || (line == 1 && strings.HasPrefix(text, "#version")) {
			continue
		}
		a, b, ok := strings.Cut(text, " ")
		if !ok || a == "" || b == "" || strings.Contains(b, " ") {
			return nil, fmt.Errorf("tokenizer: %s line %d: %q is not two tokens separated by one space", mergesPath, line, text)
		}
		merges = append(merges, rawMerge{a, b, line})
	}

	var added []addedToken
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	if exists(cfgPath) {
		var cfg struct {
			AddedTokensDecoder map[string]struct {
				Content string `json:"content"`
			} `json:"added_tokens_decoder"`
		}
		if err := readJSON(cfgPath, &cfg); err != nil {
			return nil, err
		}
		for key, tok := range cfg.AddedTokensDecoder {
			id, err := strconv.ParseInt(key, 10, 32)
			if err != nil || id < 0 {
				return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder key %q is not a token id", cfgPath, key)
			}
			added = append(added, addedToken{content: tok.Content, id: int32(id)})
		}
	}
	return build(mergesPath, vocab, merges, added, true, splitter{maxDigits: 1}, false)
}

// hfTokenizer is the part of tokenizer.json this package understands.
type hfTokenizer struct {
	AddedTokens []struct {
		ID      int32  `json:"id"`
		Content string `json:"content"`
	} `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Model        struct {
		Type         string           `json:"type"`
		Vocab        map[string]int32 `json:"vocab"`
		Merges       json.RawMessage  `json:"merges"`
		IgnoreMerges bool             `json:"ignore_merges"`
		ByteFallback bool             `json:"byte_fallback"`
	} `json:"model"`
}

// hfComponent is a normalizer or pre-tokenizer object of tokenizer.json.
type hfComponent struct {
	Type           string            `json:"type"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
	Pattern        map[string]string `json:"pattern"`
	Behavior       string            `json:"behavior"`
	Invert         bool              `json:"invert"`
	UseRegex       *bool             `json:"use_regex"`
	AddPrefixSpace bool              `json:"add_prefix_space"`
}

func loadTokenizerJSON(path string) (*Tokenizer, error) {
	var hf hfTokenizer
	if err := readJSON(path, &hf); err != nil {
		return nil, err
	}
	if hf.Model.Type != "" && hf.Model.Type != "BPE" {
		return nil, fmt.Errorf("tokenizer: %s: model type %q is not supported (only byte-level BPE)", path, hf.Model.Type)
	}
	if hf.Model.ByteFallback {
		return nil, fmt.Errorf("tokenizer: %s: byte_fallback BPE (SentencePiece-style) is not supported, only byte-level BPE", path)
	}
	if len(hf.Model.Vocab) == 0 {
		return nil, fmt.Errorf("tokenizer: %s: model.vocab is missing or empty", path)
	}
	nfc, err := parseNormalizer(hf.Normalizer)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	sp, err := parsePreTokenizer(hf.PreTokenizer)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	merges, err := parseMerges(hf.Model.Merges)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	added := make([]addedToken, 0, len(hf.AddedTokens))
	for _, a := range hf.AddedTokens {
		added = append(added, addedToken{content: a.Content, id: a.ID})
	}
	return build(path, hf.Model.Vocab, merges, added, nfc, sp, hf.Model.IgnoreMerges)
}

// parseMerges accepts both encodings of model.merges: ["a b", ...] (older
// files) and [["a", "b"], ...] (tokenizers >= 0.20, which allows spaces in
// tokens).
func parseMerges(raw json.RawMessage) ([]rawMerge, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([]rawMerge, 0, len(strs))
		for i, s := range strs {
			a, b, ok := strings.Cut(s, " ")
			if !ok || a == "" || b == "" {
				return nil, fmt.Errorf("model.merges[%d] %q is not two tokens separated by a space", i, s)
			}
			out = append(out, rawMerge{a, b, i})
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("model.merges is neither a list of \"a b\" strings nor of [a, b] pairs")
	}
	out := make([]rawMerge, 0, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 || p[0] == "" || p[1] == "" {
			return nil, fmt.Errorf("model.merges[%d] is not a pair of two tokens", i)
		}
		out = append(out, rawMerge{p[0], p[1], i})
	}
	return out, nil
}

// parseNormalizer reports whether the normalizer is NFC. Only NFC (Qwen2)
// or none (Llama 3) are accepted: anything else would change ids silently.
func parseNormalizer(raw json.RawMessage) (bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, nil
	}
	var c hfComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, fmt.Errorf("normalizer: %v", err)
	}
	switch c.Type {
	case "NFC":
		return true, nil
	case "Sequence":
		nfc := false
		for _, n := range c.Normalizers {
			one, err := parseNormalizer(n)
			if err != nil {
				return false, err
			}
			nfc = nfc || one
		}
		return nfc, nil
	}
	return false, fmt.Errorf("normalizer %q is not supported (only NFC or none)", c.Type)
}

// parsePreTokenizer accepts the Qwen2 layout — Sequence[Split(pattern,
// Isolated), ByteLevel(use_regex=false)] — with the Qwen2 or Llama-3
// pattern, and rejects anything else rather than tokenising it wrongly.
func parsePreTokenizer(raw json.RawMessage) (splitter, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return splitter{}, errors.New("pre_tokenizer is missing; a byte-level BPE needs the Qwen2 Split + ByteLevel pre-tokenizer")
	}
	var found *splitter
	var walk func(raw json.RawMessage) error
	walk = func(raw json.RawMessage) error {
		var c hfComponent
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("pre_tokenizer: %v", err)
		}
		switch c.Type {
		case "Sequence":
			for _, p := range c.PreTokenizers {
				if err := walk(p); err != nil {
					return err
				}
			}
			return nil
		case "ByteLevel":
			if c.UseRegex == nil || *c.UseRegex || c.AddPrefixSpace {
				return errors.New("pre_tokenizer ByteLevel with use_regex or add_prefix_space (GPT-2 style) is not supported")
			}
			return nil
		case "Split":
			pat := c.Pattern["Regex"]
			if c.Behavior != "Isolated" || c.Invert || found != nil {
				return errors.New("pre_tokenizer Split must be a single Isolated, non-inverted split")
			}
			switch pat {
			case qwen2Pattern:
				found = &splitter{maxDigits: 1}
			case llama3Pattern:
				found = &splitter{maxDigits: 3}
			default:
				return fmt.Errorf("pre_tokenizer split pattern %q is not supported (only Qwen2's and Llama 3's)", pat)
			}
			return nil
		}
		return fmt.Errorf("pre_tokenizer %q is not supported", c.Type)
	}
	if err := walk(raw); err != nil {
		return splitter{}, err
	}
	if found == nil {
		return splitter{}, errors.New("pre_tokenizer has no Split with the Qwen2 pattern")
	}
	return *found, nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("tokenizer: parse %s: %w", path, err)
	}
	return nil
}

// build turns byte-level-alphabet vocab and merges into id-keyed tables, so
// encoding works on raw bytes and never re-maps strings.
func build(src string, vocab map[string]int32, merges []rawMerge, added []addedToken, nfc bool, sp splitter, ignoreMerges bool) (*Tokenizer, error) {
	t := &Tokenizer{
		merges:       make(map[uint64]merge, len(merges)),
		split:        sp,
		nfc:          nfc,
		ignoreMerges: ignoreMerges,
		cache:        newWordCache(),
	}
	maxID := int32(-1)
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer: %s: token %q has negative id %d", src, tok, id)
		}
		maxID = max(maxID, id)
	}
	for _, a := range added {
		if a.id < 0 {
			return nil, fmt.Errorf("tokenizer: %s: added token %q has negative id %d", src, a.content, a.id)
		}
		maxID = max(maxID, a.id)
	}
	t.vocabSize = int(maxID) + 1
	t.tokens = make([]string, t.vocabSize)
	if ignoreMerges {
		t.vocab = make(map[string]int32, len(vocab))
	}
	for tok, id := range vocab {
		raw := unmapBytes(tok)
		t.tokens[id] = raw
		if ignoreMerges {
			t.vocab[raw] = id
		}
	}
	for b, r := range byteToRune {
		id, ok := vocab[string(r)]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: vocabulary lacks the byte-level token %q for byte 0x%02x, so it is not a byte-level BPE", src, string(r), b)
		}
		t.byteID[b] = id
	}
	for rank, m := range merges {
		a, okA := vocab[m.a]
		b, okB := vocab[m.b]
		id, okM := vocab[m.a+m.b]
		if !okA || !okB || !okM {
			return nil, fmt.Errorf("tokenizer: %s: merge %d (%q %q) uses or makes a token not in the vocabulary", src, m.line, m.a, m.b)
		}
		// A repeated pair keeps its last rank, as HF's HashMap build does.
		t.merges[mergeKey(a, b)] = merge{rank: int32(rank), id: id}
	}
	for _, a := range added {
		t.added.add(a)
	}
	t.added.index()
	for _, a := range t.added.list {
		t.tokens[a.id] = a.content
	}
	return t, nil
}
