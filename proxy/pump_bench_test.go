package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/wire"
	"github.com/abproxy/abproxy/recorder"
)

// chunkedStream is n vLLM content events, one HTTP chunk each, then the
// finish, usage and [DONE] events and the last chunk, as vLLM sends them.
func chunkedStream(n int) []byte {
	var b bytes.Buffer
	ev := func(data string) {
		e := "data: " + data + "\n\n"
		fmt.Fprintf(&b, "%x\r\n%s\r\n", len(e), e)
	}
	for range n {
		ev(vllmChat)
	}
	ev(vllmFinish)
	ev(vllmUsage)
	ev("[DONE]")
	b.WriteString("0\r\n\r\n")
	return b.Bytes()
}

// loopReader serves the same stream over and over, in reads of at most
// one event, like a socket delivering one engine step at a time.
type loopReader struct {
	data []byte
	off  int
}

func (r *loopReader) Read(p []byte) (int, error) {
	if r.off == len(r.data) {
		r.off = 0
	}
	rest := r.data[r.off:]
	// one chunk per read: up to the end of the next chunk's CRLF
	end := bytes.Index(rest, []byte("\n\n\r\n"))
	n := len(rest)
	if end >= 0 {
		n = end + 4
	}
	n = copy(p, rest[:n])
	r.off += n
	return n, nil
}

// BenchmarkPumpEvents measures the proxy's per-event work on a stream,
// without sockets: framing, splitting, the tap, the chunk times, and the
// copy to the client writer. One op is one event.
func BenchmarkPumpEvents(b *testing.B) {
	const perStream = 256
	data := chunkedStream(perStream)
	cfg := config.Default()
	cfg.Backends = []config.Backend{{Name: "a", URL: "http://127.0.0.1:1"}}
	p, err := New(Options{Config: cfg})
	if err != nil {
		b.Fatal(err)
	}
	src := &loopReader{data: data}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	conn := &upConn{c: c1, br: bufio.NewReaderSize(src, 4<<10)}
	b.ReportAllocs()
	b.SetBytes(int64(len(data) / (perStream + 3)))
	b.ResetTimer()
	for done := 0; done < b.N; done += perStream + 3 {
		p.inflight.Add(1) // as handle does; done gives it back
		p.inflightN.Add(1)
		rec := &recorder.Request{}
		x := &exchange{p: p, up: p.upstreams[0], rec: rec, conn: conn, tap: p.taps.Get().(*tap), keepUse: true}
		x.tap.reset(false)
		x.dec = bodyDecoder{br: conn.br, mode: bodyChunked, state: chunkSize}
		if _, err := x.pump(io.Discard, false); err != nil || rec.Error != "" {
			b.Fatal(err, rec.Error, rec.ErrorDetail)
		}
		if len(rec.ChunkNS) != perStream+1 {
			b.Fatalf("%d content chunks, want %d", len(rec.ChunkNS), perStream+1)
		}
	}
}

// BenchmarkTapEvent compares the tap's byte-scan fast path with the full
// JSON parse on one ordinary content event, both from the raw event, and
// times the fast path on the role chunk and on a token with an escape.
func BenchmarkTapEvent(b *testing.B) {
	ev := []byte("data: " + vllmChat + "\n\n")
	t := newTap()
	t.reset(false)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if t.event(ev) != eventContent {
				b.Fatal("not content")
			}
		}
	})
	// the role chunk and an escaped token, which took the full parse
	// before 2026-11-27, 22:00 UTC
	for _, c := range []struct {
		name, data string
		want       eventKind
	}{{"role", vllmRole, eventOther}, {"escape", vllmEscape, eventContent}} {
		ev := []byte("data: " + c.data + "\n\n")
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if t.event(ev) != c.want {
					b.Fatalf("not kind %d", c.want)
				}
			}
		})
	}
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if t.parse(wire.EventData(ev)) != eventContent {
				b.Fatal("not content")
			}
		}
	})
}

// BenchmarkRequestPrep is the proxy's own work on a streamed chat request
// before it goes upstream ("before"): parse the body and render it with the
// backend's model and include_usage; and the prompt's digest for the record,
// taken after the request has been written ("digest"). Bodies of about 300
// bytes and 32 KiB (genai-bench's longest default prompts are 7,800
// tokens). One op is one request.
func BenchmarkRequestPrep(b *testing.B) {
	for _, size := range []int{0, 32 << 10} {
		const line = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "
		content := strings.Repeat(line, size/len(line)) + "Summarise the following paragraph in two sentences."
		body := []byte(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` + content + `"}],"max_tokens":128,"temperature":0.7,"stream":true}`)
		name := fmt.Sprintf("body=%dB", len(body))
		b.Run(name+"/before", func(b *testing.B) {
			rw := &rewriter{}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				cr, err := rw.parse(body)
				if err != nil {
					b.Fatal(err)
				}
				if out := rw.render(body, cr, "qwen-14b-fp8"); len(out) == 0 {
					b.Fatal("empty render")
				}
			}
		})
		b.Run(name+"/digest", func(b *testing.B) {
			rw := &rewriter{}
			if _, err := rw.parse(body); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if sum, _ := rw.digest(false); len(sum) != 64 {
					b.Fatal("no digest")
				}
			}
		})
	}
}

// BenchmarkOutputSHA256 is the output digest a record gets once its stream
// has ended, on the request's goroutine before the next request is read.
func BenchmarkOutputSHA256(b *testing.B) {
	t := newTap()
	t.reset(false)
	t.addText([]byte("Shall I compare thee to a summer's day? Thou art more lovely"))
	b.ReportAllocs()
	for range b.N {
		if len(t.outputSHA256()) != 64 {
			b.Fatal("digest length")
		}
	}
}
