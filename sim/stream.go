package sim

import (
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/abproxy/abproxy/internal/wire"
)

// Chunk byte templates, matching vLLM 0.13's pydantic output
// (model_dump_json(exclude_unset=True) for chat chunks, exclude_unset=False
// for completion chunks, exclude_none for the usage chunk). Everything but
// the token text is fixed per request, so a chunk is three appends.
const (
	chatChoiceOpen = `,"choices":[{"index":0,"delta":{"content":"`
	chatTokenEnd   = `"},"logprobs":null,"finish_reason":null,"token_ids":null}]}` + "\n\n"
	chatLastEnd    = `"},"logprobs":null,"finish_reason":"%s","stop_reason":null,"token_ids":null}]}` + "\n\n"
	chatRoleChunk  = `,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}` + "\n\n"

	textChoiceOpen = `,"choices":[{"index":0,"text":"`
	textTokenEnd   = `","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}` + "\n\n"
	textLastEnd    = `","logprobs":null,"finish_reason":"%s","stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}` + "\n\n"

	sseData = "data: "
	sseDone = "data: [DONE]\n\n"
)

// Finishing-chunk tails, with the finish_reason filled in once.
var (
	chatLastLength = fillFinish(chatLastEnd, "length")
	chatLastStop   = fillFinish(chatLastEnd, "stop")
	textLastLength = fillFinish(textLastEnd, "length")
	textLastStop   = fillFinish(textLastEnd, "stop")
)

func fillFinish(tmpl, reason string) string {
	for i := 0; i+1 < len(tmpl); i++ {
		if tmpl[i] == '%' && tmpl[i+1] == 's' {
			return tmpl[:i] + reason + tmpl[i+2:]
		}
	}
	panic("sim: finish template without %s")
}

// maxTokensPerWrite bounds one socket write when a client lags behind the
// engine, so a slow reader never makes the writer build a huge buffer.
const maxTokensPerWrite = 64

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// buildPrefixes renders the per-request constant parts once.
func (r *request) buildPrefixes() {
	id := "cmpl-"
	object := "text_completion"
	if r.chat {
		id = "chatcmpl-"
		object = "chat.completion.chunk"
		if !r.stream {
			object = "chat.completion"
		}
	}
	h := make([]byte, 0, 128+len(r.id)+len(r.s.modelJSON))
	h = append(h, `{"id":"`...)
	h = append(h, id...)
	h = wire.AppendJSONString(h, r.id)
	h = append(h, `","object":"`...)
	h = append(h, object...)
	h = append(h, `","created":`...)
	h = strconv.AppendInt(h, r.created, 10)
	h = append(h, `,"model":"`...)
	h = append(h, r.s.modelJSON...)
	h = append(h, '"')
	r.head = h
	if !r.stream {
		return
	}
	p := make([]byte, 0, len(sseData)+len(h)+len(chatChoiceOpen))
	p = append(p, sseData...)
	p = append(p, h...)
	if r.chat {
		p = append(p, chatChoiceOpen...)
	} else {
		p = append(p, textChoiceOpen...)
	}
	r.pre = p
}

func (r *request) appendRole(b []byte) []byte {
	b = append(b, sseData...)
	b = append(b, r.head...)
	return append(b, chatRoleChunk...)
}

// appendToken appends the SSE event of output token i; the last token's
// event carries finish_reason, as in vLLM.
func (r *request) appendToken(b []byte, i int) []byte {
	b = append(b, r.pre...)
	b = append(b, tokenJSON(r.base, i, r.target, r.stop)...)
	last := i == r.target-1
	switch {
	case !last && r.chat:
		return append(b, chatTokenEnd...)
	case !last:
		return append(b, textTokenEnd...)
	case r.chat && r.stop:
		return append(b, chatLastStop...)
	case r.chat:
		return append(b, chatLastLength...)
	case r.stop:
		return append(b, textLastStop...)
	default:
		return append(b, textLastLength...)
	}
}

func (r *request) appendUsage(b []byte, prefix string) []byte {
	b = append(b, prefix...)
	b = append(b, `"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(r.promptTokens), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(r.promptTokens+r.target), 10)
	b = append(b, `,"completion_tokens":`...)
	return strconv.AppendInt(b, int64(r.target), 10)
}

// appendTail appends what follows the last token: the usage-only chunk when
// the client asked for it, then [DONE].
func (r *request) appendTail(b []byte) []byte {
	if r.usage {
		b = append(b, sseData...)
		b = append(b, r.head...)
		b = r.appendUsage(b, `,"choices":[],"usage":{`)
		b = append(b, "}}\n\n"...)
	}
	return append(b, sseDone...)
}

// appendFullBody renders a non-streamed response.
func (r *request) appendFullBody(b []byte) []byte {
	b = append(b, r.head...)
	if r.chat {
		b = append(b, `,"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	} else {
		b = append(b, `,"choices":[{"index":0,"text":"`...)
	}
	for i := 0; i < r.target; i++ {
		b = append(b, tokenJSON(r.base, i, r.target, r.stop)...)
	}
	if r.chat {
		b = append(b, `","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning_content":null},"logprobs":null,"finish_reason":"`...)
		b = append(b, r.finish...)
		b = append(b, `","stop_reason":null,"token_ids":null}],"service_tier":null,"system_fingerprint":null,`...)
	} else {
		b = append(b, `","logprobs":null,"finish_reason":"`...)
		b = append(b, r.finish...)
		b = append(b, `","stop_reason":null,"token_ids":null,"prompt_logprobs":null,"prompt_token_ids":null}],"service_tier":null,"system_fingerprint":null,`...)
	}
	b = r.appendUsage(b, `"usage":{`)
	b = append(b, `,"prompt_tokens_details":null}`...)
	if r.chat {
		b = append(b, `,"prompt_logprobs":null,"prompt_token_ids":null`...)
	}
	return append(b, `,"kv_transfer_params":null}`...)
}

// SupportsBodyWriteTo lets fasthttp call WriteTo on the connection's own
// writer: each Write becomes one HTTP chunk flushed to the socket, so the
// timestamps taken after it are the truth, with no pipe or extra goroutine.
func (r *request) SupportsBodyWriteTo() bool { return true }

// WriteTo streams the response as the engine produces tokens. It waits on
// the request's notify channel, renders every token produced since the last
// write, writes them as one flush, and stops at the last token, on a write
// error (client gone: the engine is told to drop the request) or when the
// server closes.
func (r *request) WriteTo(w io.Writer) (int64, error) {
	r.started.Store(true)
	bp := bufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		*bp = buf[:0]
		bufPool.Put(bp)
	}()

	var total int64
	var first, firstDone time.Time
	written := 0
	roleSent := false
	if r.chat && r.s.opts.RoleChunkEarly {
		buf = r.appendRole(buf)
		n, err := w.Write(buf)
		total += int64(n)
		if err != nil {
			r.abort(499, first, 0)
			return total, err
		}
		roleSent = true
	}
	for {
		produced := int(r.produced.Load())
		if produced > written {
			buf = buf[:0]
			if r.chat && !roleSent {
				buf = r.appendRole(buf)
				roleSent = true
			}
			upto := min(produced, written+maxTokensPerWrite)
			for i := written; i < upto; i++ {
				buf = r.appendToken(buf, i)
			}
			if upto == r.target {
				buf = r.appendTail(buf)
			}
			// the truth is when the bytes are handed to the kernel: stamped
			// before the write, because after it the goroutine may wait
			// milliseconds for a P under load (exitsyscall), which made the
			// truth late and the proxy look early
			now := time.Now()
			n, err := w.Write(buf)
			total += int64(n)
			if err != nil {
				r.abort(499, first, written)
				return total, err
			}
			done := time.Now()
			if written == 0 {
				first, firstDone = now, done
			}
			written = upto
			if written == r.target {
				r.recordSpans(200, first, firstDone, now, done, written)
				return total, nil
			}
			continue
		}
		select {
		case <-r.notify:
		case <-r.s.closing:
			r.abort(503, first, written)
			return total, errServerClosing
		}
	}
}

// abort tells the engine to drop the request (freeing its batch slot and KV
// reservation at the next step) and records how far it got.
func (r *request) abort(status int, first time.Time, delivered int) {
	r.cancelled.Store(true)
	r.record(status, first, time.Now(), delivered)
}

// Read is the fallback for a server path that reads the body instead of
// calling WriteTo: WriteTo runs into a pipe. fasthttp does not take this
// path for chunked responses, so it exists only for correctness.
func (r *request) Read(p []byte) (int, error) {
	if r.pr == nil {
		pr, pw := io.Pipe()
		r.pr = pr
		go func() {
			_, err := r.WriteTo(pw)
			pw.CloseWithError(err)
		}()
	}
	return r.pr.Read(p)
}

// Close is called by fasthttp when it is done with the body. If the body
// was never written (the connection failed first), the request is dropped.
func (r *request) Close() error {
	if r.pr != nil {
		r.pr.Close()
	}
	if !r.started.Load() {
		r.abort(499, time.Time{}, 0)
	}
	return nil
}
