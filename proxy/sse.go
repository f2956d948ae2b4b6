package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/abproxy/abproxy/internal/wire"
)

// eventBuffer splits a byte stream into complete Server-Sent Events. Bytes
// are forwarded per event, never per read, so that a stripped event is
// dropped whole and a partial event is never sent early or twice.
type eventBuffer struct {
	buf []byte
	off int // start of the first unconsumed byte
}

// feed appends bytes read from upstream.
func (b *eventBuffer) feed(p []byte) {
	if b.off > 0 && b.off == len(b.buf) {
		b.buf, b.off = b.buf[:0], 0
	}
	b.buf = append(b.buf, p...)
}

// next returns the next complete event, terminator included. The slice is
// valid until the next feed.
func (b *eventBuffer) next() ([]byte, bool) {
	rest := b.buf[b.off:]
	end := wire.EventEnd(rest)
	if end < 0 {
		if b.off > 0 && len(rest) > 0 {
			// keep the partial event at the front so the buffer does not grow
			n := copy(b.buf, rest)
			b.buf, b.off = b.buf[:n], 0
		}
		return nil, false
	}
	b.off += end
	return rest[:end], true
}

// pending returns bytes received that do not yet form a complete event.
func (b *eventBuffer) pending() []byte { return b.buf[b.off:] }

var doneData = []byte("[DONE]")

// parsers serves the taps' full JSON parses (see tap.parse).
var parsers fastjson.ParserPool

// eventKind is what the tap learned from one event.
type eventKind uint8

const (
	eventOther     eventKind = iota // role-only, finish-only, comments, unparseable
	eventContent                    // carries non-empty content or reasoning text
	eventUsageOnly                  // choices empty, usage present: the include_usage chunk
	eventDone                       // data: [DONE]
	eventError                      // an {"error":...} object in the stream
)

// tap reads what a response says: content, usage, finish reason, and a
// hash of the output text. One tap serves one response and is reused.
type tap struct {
	out      hash.Hash
	sum      [sha256.Size]byte // out's digest; here, not on the stack, which Sum's interface call would move to the heap
	outBytes int64
	keepText bool
	text     []byte
	ends     []int32 // len(text) after each content event, when keepText
	esc      []byte  // fastContent's decoded text, when it had escapes

	promptTokens     int
	completionTokens int
	finishReason     string
	errMessage       string
}

func newTap() *tap { return &tap{out: sha256.New()} }

func (t *tap) reset(keepText bool) {
	t.out.Reset()
	t.outBytes = 0
	t.keepText = keepText
	t.text = t.text[:0]
	t.ends = t.ends[:0]
	t.promptTokens, t.completionTokens = -1, -1
	t.finishReason, t.errMessage = "", ""
}

// outputSHA256 returns the hex digest of all content seen.
func (t *tap) outputSHA256() string {
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], t.out.Sum(t.sum[:0]))
	return string(h[:]) // the one allocation
}

func (t *tap) addText(b []byte) {
	t.out.Write(b)
	t.outBytes += int64(len(b))
	if t.keepText {
		t.text = append(t.text, b...)
	}
}

// event classifies one SSE event and records what it carries.
func (t *tap) event(ev []byte) eventKind {
	data := wire.EventData(ev)
	if data == nil {
		return eventOther
	}
	if bytes.Equal(data, doneData) {
		return eventDone
	}
	if text, ok := fastContent(data, &t.esc); ok {
		if len(text) == 0 {
			return eventOther
		}
		t.addText(text)
		if t.keepText {
			t.ends = append(t.ends, int32(len(t.text)))
		}
		return eventContent
	}
	return t.parse(data)
}

// parse classifies an event's data with a full JSON parse.
func (t *tap) parse(data []byte) eventKind {
	// a parser keeps a cache of values sized by the largest document it
	// saw: shared through a pool, not one held by every open stream
	jp := parsers.Get()
	defer parsers.Put(jp)
	v, err := jp.ParseBytes(data)
	if err != nil {
		return eventOther
	}
	if e := v.Get("error"); e != nil {
		t.errMessage = string(e.GetStringBytes("message"))
		if t.errMessage == "" {
			t.errMessage = "backend sent an error event"
		}
		return eventError
	}
	t.readUsage(v)
	choices := v.GetArray("choices")
	if len(choices) == 0 {
		if v.Get("usage") != nil && v.Get("usage").Type() == fastjson.TypeObject {
			return eventUsageOnly
		}
		return eventOther
	}
	kind := eventOther
	for _, c := range choices {
		if fr := c.GetStringBytes("finish_reason"); len(fr) > 0 {
			t.finishReason = string(fr)
		}
		if text := wire.ChoiceText(c); len(text) > 0 {
			t.addText(text)
			kind = eventContent
		}
	}
	if kind == eventContent && t.keepText {
		t.ends = append(t.ends, int32(len(t.text)))
	}
	return kind
}

// body reads a complete non-streamed JSON response.
func (t *tap) body(b []byte) {
	jp := parsers.Get()
	defer parsers.Put(jp)
	v, err := jp.ParseBytes(b)
	if err != nil {
		return
	}
	if e := v.Get("error"); e != nil {
		t.errMessage = string(e.GetStringBytes("message"))
	}
	t.readUsage(v)
	for _, c := range v.GetArray("choices") {
		if fr := c.GetStringBytes("finish_reason"); len(fr) > 0 {
			t.finishReason = string(fr)
		}
		if m := c.Get("message"); m != nil {
			t.addText(m.GetStringBytes("reasoning_content"))
			t.addText(m.GetStringBytes("content"))
		} else {
			t.addText(c.GetStringBytes("text"))
		}
	}
}

func (t *tap) readUsage(v *fastjson.Value) {
	wire.ReadUsage(v, &t.promptTokens, &t.completionTokens)
}

// fastContent reads the event data of an ordinary vLLM chunk by scanning
// bytes, without a JSON parse: one choice with its text (JSON escapes
// decoded into *scratch), finish_reason null, and no usage, error or other
// non-null field. An empty text, as in the role chunk, is an event without
// content. Anything else, about one event per stream (the finish reason,
// usage), returns ok=false and takes the full parse. The accepted shapes
// are exactly what vLLM writes:
//
//	{"id":"…","object":"…","created":N,"model":"…","choices":[{"index":0,"delta":{"content":"TEXT"},"logprobs":null,"finish_reason":null,"token_ids":null}]}
//	{"id":"…","object":"…","created":N,"model":"…","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}
//	{"id":"…","object":"…","created":N,"model":"…","choices":[{"index":0,"text":"TEXT","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}
//
// The role chunk and a first token with an escape ("\n") are on every
// stream's way to its first token, where a full parse of cold code cost
// about as much as the rest of the relay.
func fastContent(d []byte, scratch *[]byte) (text []byte, ok bool) {
	// the fields before "choices": known keys, plain values
	if len(d) == 0 || d[0] != '{' {
		return nil, false
	}
	d = d[1:]
	for {
		key, rest, ok := plainString(d)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return nil, false
		}
		if string(key) == "choices" {
			d = rest[1:]
			break
		}
		switch string(key) {
		case "id", "object", "created", "model", "system_fingerprint", "service_tier":
		default:
			return nil, false
		}
		rest, ok = plainValue(rest[1:])
		if !ok || len(rest) == 0 || rest[0] != ',' {
			return nil, false
		}
		d = rest[1:]
	}
	var chat bool
	switch {
	case bytes.HasPrefix(d, fastChat):
		d, chat = d[len(fastChat):], true
	case bytes.HasPrefix(d, fastRole):
		d, chat = d[len(fastRole):], true
	case bytes.HasPrefix(d, fastText):
		d = d[len(fastText):]
	default:
		return nil, false
	}
	// the text itself, up to its closing quote (fastjson, like this scan,
	// lets control characters through)
	i := bytes.IndexByte(d, '"')
	if i < 0 {
		return nil, false
	}
	if bytes.IndexByte(d[:i], '\\') < 0 {
		text, d = d[:i], d[i+1:]
	} else if text, d, ok = unescape(d, scratch); !ok {
		return nil, false
	}
	if chat {
		if len(d) == 0 || d[0] != '}' {
			return nil, false
		}
		d = d[1:]
	}
	if !bytes.HasPrefix(d, fastNoFinish) {
		return nil, false
	}
	d, ok = nullFields(d[len(fastNoFinish):], false)
	if !ok {
		return nil, false
	}
	if string(d) != "}]}" && string(d) != `}],"usage":null}` {
		// the chunk's other null fields: "prompt_token_ids":null, ...;
		// "error" of any value makes the parser call the event an error
		if !bytes.HasPrefix(d, fastChoiceEnd) {
			return nil, false
		}
		d, ok = nullFields(d[len(fastChoiceEnd):], true)
		if !ok || string(d) != "}" {
			return nil, false
		}
	}
	return text, true
}

// nullFields skips `,"key":null` fields at the start of d, with keys of
// lower-case letters and '_': the choice's (top false) or the chunk's.
// A repeated key is left to the parser.
func nullFields(d []byte, top bool) ([]byte, bool) {
	for len(d) > 0 && d[0] == ',' {
		key, rest, ok := plainString(d[1:])
		if !ok || len(key) == 0 || !bytes.HasPrefix(rest, fastColonNull) {
			return nil, false
		}
		for _, c := range key {
			if (c < 'a' || c > 'z') && c != '_' {
				return nil, false
			}
		}
		switch string(key) {
		case "index", "delta", "text", "logprobs", "finish_reason":
			if !top {
				return nil, false
			}
		case "choices", "error":
			if top {
				return nil, false
			}
		}
		d = rest[len(fastColonNull):]
	}
	return d, true
}

var (
	fastChat      = []byte(`[{"index":0,"delta":{"content":"`)
	fastRole      = []byte(`[{"index":0,"delta":{"role":"assistant","content":"`)
	fastText      = []byte(`[{"index":0,"text":"`)
	fastNoFinish  = []byte(`,"logprobs":null,"finish_reason":null`)
	fastChoiceEnd = []byte(`}]`)
	fastColonNull = []byte(`:null`)
)

// unescape reads a JSON string with escapes from just after its opening
// quote: its text, decoded into *scratch as the parser decodes it, and
// what follows the closing quote. The escapes the parser reads on a path
// of its own (a \u escape of a UTF-16 surrogate, a malformed escape)
// return ok=false.
func unescape(d []byte, scratch *[]byte) (s, rest []byte, ok bool) {
	out := (*scratch)[:0]
	for len(d) > 0 {
		switch c := d[0]; c {
		case '"':
			*scratch = out
			return out, d[1:], true
		case '\\':
			if len(d) < 2 {
				return nil, nil, false
			}
			switch e := d[1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(d[2:])
				if !ok || utf16.IsSurrogate(r) {
					return nil, nil, false
				}
				out = utf8.AppendRune(out, r)
				d = d[6:]
				continue
			default:
				return nil, nil, false
			}
			d = d[2:]
		default:
			k := bytes.IndexAny(d, "\"\\")
			if k < 0 {
				return nil, nil, false
			}
			out = append(out, d[:k]...)
			d = d[k:]
		}
	}
	return nil, nil, false
}

// hex4 reads the four hex digits of a \u escape.
func hex4(d []byte) (rune, bool) {
	var b [2]byte
	if len(d) < 4 {
		return 0, false
	}
	if _, err := hex.Decode(b[:], d[:4]); err != nil {
		return 0, false
	}
	return rune(b[0])<<8 | rune(b[1]), true
}

// plainString reads a JSON string without escapes at the start of d and
// returns its contents and what follows it.
func plainString(d []byte) (s, rest []byte, ok bool) {
	if len(d) == 0 || d[0] != '"' {
		return nil, nil, false
	}
	i := bytes.IndexByte(d[1:], '"')
	if i < 0 {
		return nil, nil, false
	}
	s = d[1 : 1+i]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, nil, false
	}
	return s, d[2+i:], true
}

// plainValue skips a plain string, an integer or null at the start of d.
func plainValue(d []byte) (rest []byte, ok bool) {
	if len(d) == 0 {
		return nil, false
	}
	switch c := d[0]; {
	case c == '"':
		_, rest, ok = plainString(d)
		return rest, ok
	case bytes.HasPrefix(d, []byte("null")):
		return d[4:], true
	case c == '-' || (c >= '0' && c <= '9'):
		i := 0
		if c == '-' {
			i++
		}
		j := i
		for j < len(d) && d[j] >= '0' && d[j] <= '9' {
			j++
		}
		if j == i || (d[i] == '0' && j > i+1) { // no digits, or a leading zero
			return nil, false
		}
		return d[j:], true
	}
	return nil, false
}
