package proxy

import (
	"bytes"
	"testing"
)

// Real chunks as vLLM 0.13 (and the sim) write them.
var (
	vllmChat   = `{"id":"chatcmpl-80534a788a86389864c0346c7bc6e019","object":"chat.completion.chunk","created":1795746723,"model":"Qwen/Qwen2.5-14B-Instruct","choices":[{"index":0,"delta":{"content":" and"},"logprobs":null,"finish_reason":null,"token_ids":null}]}`
	vllmText   = `{"id":"cmpl-7f23554607d29428dccde474d5dceea6","object":"text_completion","created":1795746723,"model":"Qwen/Qwen2.5-14B-Instruct","choices":[{"index":0,"text":" had","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}`
	vllmOld    = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"héllo"},"logprobs":null,"finish_reason":null}]}`
	vllmRole   = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}`
	vllmFinish = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" long"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}`
	vllmUsage  = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":29,"total_tokens":33,"completion_tokens":4}}`
	vllmEscape = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"\n"},"logprobs":null,"finish_reason":null}]}`
	vllmStats  = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`
	vllmTwo    = `{"id":"c","object":"o","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null},{"index":1,"delta":{"content":"y"},"logprobs":null,"finish_reason":null}]}`
)

// fastCases are events the fast path reads, with the text it must read.
var fastCases = map[string]string{
	vllmChat: " and", vllmText: " had", vllmOld: "héllo",
	vllmRole:   "", // no content: an event the parser would also call "other"
	vllmEscape: "\n",
	`{"id":"c","choices":[{"index":0,"delta":{"content":"\\"},"logprobs":null,"finish_reason":null,"token_ids":null}]}`:                 `\`,
	`{"id":"c","choices":[{"index":0,"delta":{"content":"a\"b\/c\td\u00e9\u20AC"},"logprobs":null,"finish_reason":null}],"usage":null}`: "a\"b/c\td\u00e9\u20ac",
}

func TestFastContent(t *testing.T) {
	var scratch []byte
	for in, want := range fastCases {
		got, ok := fastContent([]byte(in), &scratch)
		if !ok || string(got) != want {
			t.Errorf("fastContent(%s) = %q, %v; want %q", in, got, ok, want)
		}
	}
	// everything else is left to the parser, which must see it: the finish
	// reason must be recorded, usage read, an error reported, a second
	// choice counted, and escapes it decodes on a path of its own (UTF-16
	// surrogates, malformed escapes) decoded by it
	for _, in := range []string{
		vllmFinish, vllmUsage, vllmStats, vllmTwo, `{}`, `[DONE]`,
		`{"id":"c","choices":[{"index":0,"delta":{"content":"\ud83d\ude00"},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"c","choices":[{"index":0,"delta":{"content":"\x"},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"c","choices":[{"index":0,"delta":{"content":"\u12"},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"c","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"error":null}`,
		`{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"x"},"logprobs":null,"finish_reason":null}],"usage":{}}`,
	} {
		if got, ok := fastContent([]byte(in), &scratch); ok {
			t.Errorf("fastContent(%s) took the fast path (%q)", in, got)
		}
	}
}

// FuzzFastContent checks the byte scanner against the JSON parser: when
// the fast path accepts an event, the parser must read the same text
// (content when there is text, "other" when there is none) and nothing
// else (no usage, finish reason or error).
func FuzzFastContent(f *testing.F) {
	for _, s := range []string{vllmChat, vllmText, vllmOld, vllmRole, vllmFinish, vllmUsage, vllmEscape, vllmStats, vllmTwo} {
		f.Add([]byte(s))
	}
	for s := range fastCases {
		f.Add([]byte(s))
	}
	var scratch []byte
	f.Fuzz(func(t *testing.T, data []byte) {
		text, ok := fastContent(data, &scratch)
		if !ok {
			return
		}
		text = bytes.Clone(text)
		tp := newTap()
		tp.reset(true)
		want := eventContent
		if len(text) == 0 {
			want = eventOther
		}
		if k := tp.parse(data); k != want {
			t.Fatalf("fast path took %q with text %q; the parser says kind %d", data, text, k)
		}
		if string(tp.text) != string(text) {
			t.Fatalf("fast path read %q from %q; the parser %q", text, data, tp.text)
		}
		if tp.finishReason != "" || tp.promptTokens != -1 || tp.completionTokens != -1 || tp.errMessage != "" {
			t.Fatalf("fast path skipped data in %q: finish %q usage %d/%d err %q", data, tp.finishReason, tp.promptTokens, tp.completionTokens, tp.errMessage)
		}
	})
}
