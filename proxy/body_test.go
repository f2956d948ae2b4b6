package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/wire"
)

// pieces reads its data in pieces of the given sizes (cycling), so the
// decoder meets every framing element split across socket reads.
type pieces struct {
	data  []byte
	sizes []byte
	i     int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := len(p.data)
	if len(p.sizes) > 0 {
		n = int(p.sizes[p.i%len(p.sizes)])%64 + 1
		p.i++
	}
	n = min(n, len(b), len(p.data))
	copy(b, p.data[:n])
	p.data = p.data[n:]
	return n, nil
}

// decodeAll runs the decoder the way pump does and returns the payload
// and what is left on the connection after the body.
func decodeAll(t testing.TB, in, sizes []byte) (payload, rest []byte, err error) {
	br := bufio.NewReaderSize(&pieces{data: in, sizes: sizes}, 4096)
	d := bodyDecoder{br: br, mode: bodyChunked, state: chunkSize}
	for {
		seg, e := d.next()
		payload = append(payload, seg...)
		if e == errNeedMore {
			if e = d.fill(); e == nil {
				continue
			}
		}
		if e == io.EOF {
			if d.eof {
				// the connection closed: what is left is never read
				return payload, nil, nil
			}
			rest, _ = io.ReadAll(br)
			return payload, rest, nil
		}
		if e != nil {
			return payload, nil, e
		}
	}
}

func TestBodyDecoderChunked(t *testing.T) {
	in := []byte("7\r\ndata: a\r\n2;ext=\"x\"\r\n\n\n\r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT")
	for _, sizes := range [][]byte{nil, {0}, {1, 2}, {4, 7, 0}} {
		got, rest, err := decodeAll(t, in, sizes)
		if err != nil || string(got) != "data: a\n\n0123456789" || string(rest) != "NEXT" {
			t.Fatalf("sizes %v: payload %q rest %q err %v", sizes, got, rest, err)
		}
	}
	for _, bad := range []string{"x\r\n", "3\r\nabcX\r\n", "3\r\nab", "\r\n", "fffffffffffffffff\r\n", "5\n", "5\r\r\n"} {
		if _, _, err := decodeAll(t, []byte(bad), nil); err == nil {
			t.Errorf("%q decoded without error", bad)
		}
	}
	// EOF inside a chunk is a cut stream, not a clean end
	if _, _, err := decodeAll(t, []byte("5\r\nab"), nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated chunk: %v", err)
	}
	// a size line that fills the buffer is refused, not waited on forever
	if _, _, err := decodeAll(t, bytes.Repeat([]byte("1"), 5000), nil); !errors.Is(err, errChunked) {
		t.Errorf("overlong size line: %v", err)
	}
}

// FuzzBodyDecoder checks the in-place decoder against the reader used
// before it (net/http/httputil's, plus trailer handling): same payload,
// same position on the connection, for any split of the input.
func FuzzBodyDecoder(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), []byte{3})
	f.Add([]byte("1;a=b\r\nx\r\n0\r\nT: 1\r\n\r\nrest"), []byte{0, 1})
	f.Add([]byte("A\r\n0123456789\r\n0\r\n\n"), []byte(nil))
	f.Fuzz(func(t *testing.T, in, sizes []byte) {
		got, rest, err := decodeAll(t, in, sizes)
		br := bufio.NewReader(bytes.NewReader(in))
		want, werr := io.ReadAll(wire.NewChunkedBody(br))
		if werr != nil || err != nil {
			if (werr == nil) != (err == nil) && len(in) < 4000 {
				t.Fatalf("httputil err %v, ours %v (payload %q vs %q)", werr, err, want, got)
			}
			return
		}
		wrest, _ := io.ReadAll(br)
		if rest == nil {
			wrest = nil // closed connection: not reused, position irrelevant
		}
		if !bytes.Equal(got, want) || !bytes.Equal(rest, wrest) {
			t.Fatalf("payload %q rest %q; httputil %q rest %q", got, rest, want, wrest)
		}
	})
}

// TestStreamPiecesAfterPauses sends a stream in pieces with pauses between
// them — a chunk split mid-event, a chunk split mid-header, and the final
// zero chunk on its own — so that the pump's read session waits on an
// empty socket at every awkward point. Each piece must reach the client
// long before the idle timeout: a wake-up missed after a read that emptied
// the socket would stall until the timeout and fail the stream.
func TestStreamPiecesAfterPauses(t *testing.T) {
	ev := chunk(contentEvent)
	pieces := []string{
		sseHead + ev[:20], // inside the first event's data
		ev[20:] + ev[:1],  // the next chunk-size line cut after one digit
		ev[1:],
		"0\r\n", // the last chunk, its final CRLF still to come
		"\r\n",
	}
	const pause = 30 * time.Millisecond
	sent := make(chan time.Time, len(pieces))
	backend := startFault(t, func(c net.Conn, _ *faultBackend) {
		defer c.Close()
		for _, p := range pieces {
			time.Sleep(pause)
			sent <- time.Now()
			io.WriteString(c, p)
		}
		time.Sleep(time.Second) // keep the connection open: the end is the framing's
	})
	px, _, sink := startProxy(t, func(c *config.Config) { c.Proxy.IdleTimeout.Duration = 5 * time.Second },
		config.Backend{Name: "b", URL: backend})
	start := time.Now()
	resp, err := http.Post(px+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || string(body) != contentEvent+contentEvent {
		t.Fatalf("body %q, err %v", body, err)
	}
	var last time.Time
	for range pieces {
		last = <-sent
	}
	// the response ends when the final CRLF is read, not when the backend
	// closes a second later or the idle timeout fires
	if lag := time.Since(last); lag > 500*time.Millisecond || took > 2*time.Second {
		t.Fatalf("stream ended %v after the last piece (total %v)", lag, took)
	}
	rec := <-sink.ch
	if rec.Error != "" || len(rec.ChunkNS) != 2 {
		t.Fatalf("record: error %q, %d chunks", rec.Error, len(rec.ChunkNS))
	}
	// each event is stamped when its last bytes arrived, one pause apart
	if gap := time.Duration(rec.ChunkNS[1] - rec.ChunkNS[0]); gap < pause {
		t.Fatalf("chunk times %v apart, want at least %v", gap, pause)
	}
}

// TestShutdownCutsAStalledStream: a stream whose backend goes silent is
// cut when Shutdown's context ends, even while its pump waits on an empty
// socket inside its read session; the client gets an error event and the
// record says proxy_shutdown with the chunks that came before.
func TestShutdownCutsAStalledStream(t *testing.T) { forRelays(t, testShutdownCutsAStalledStream) }

func testShutdownCutsAStalledStream(t *testing.T, r relay) {
	backend := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent)+chunk(contentEvent))
		time.Sleep(10 * time.Second)
		c.Close()
	})
	px, p, sink := startProxy(t, r.with(func(c *config.Config) { c.Proxy.IdleTimeout.Duration = time.Minute }),
		config.Backend{Name: "b", URL: backend})
	defer r.check(t, p)
	resp, err := http.Post(px+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len(contentEvent))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = p.Shutdown(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Shutdown took %v with a 300ms drain timeout", took)
	}
	rest, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(rest), ErrShutdown) {
		t.Errorf("client got %q after the cut, want an error event", rest)
	}
	select {
	case rec := <-sink.ch:
		if rec.Error != ErrShutdown || len(rec.ChunkNS) != 2 {
			t.Fatalf("record: error %q (%s), %d chunks", rec.Error, rec.ErrorDetail, len(rec.ChunkNS))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no record after Shutdown")
	}
}

// openUpstreams is how many upstream connections the proxy keeps for a
// shutdown's cut.
func openUpstreams(p *Proxy) int {
	p.activeMu.Lock()
	defer p.activeMu.Unlock()
	return len(p.active)
}

// TestShutdownSetHoldsOpenConnections: the connections a shutdown would cut
// are the open ones, in use or idle in the pool, each from its dial to its
// close, whoever closes it: a connection that is reused is not added twice,
// and one the pool closes, or the proxy closes after a failure, is gone.
func TestShutdownSetHoldsOpenConnections(t *testing.T) {
	simURL := startSim(t, 1000, nil)
	px, p, sink := startProxy(t, nil, config.Backend{Name: "sim", URL: simURL})
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":4}`
	for range 3 { // one after the other: one connection, reused
		post(t, px+"/v1/chat/completions", body, nil)
		sink.wait(t)
	}
	if n := openUpstreams(p); n != 1 {
		t.Fatalf("%d connections kept after 3 requests on one, want 1", n)
	}
	var wg sync.WaitGroup
	for range 4 { // together: more connections, all back in the pool after
		wg.Go(func() { post(t, px+"/v1/chat/completions", body, nil) })
	}
	wg.Wait()
	for range 4 {
		sink.wait(t)
	}
	up := p.byName["sim"]
	up.pool.CloseIdle()
	if n := openUpstreams(p); n != 0 {
		t.Fatalf("%d connections kept after the pool closed its idle ones, want 0", n)
	}

	// a backend that answers with garbage: the proxy closes the connection
	bad := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, "not HTTP\r\n\r\n")
		c.Close()
	})
	px2, p2, sink2 := startProxy(t, nil, config.Backend{Name: "bad", URL: bad})
	post(t, px2+"/v1/chat/completions", body, nil)
	if rec := sink2.wait(t); rec.Status != http.StatusBadGateway {
		t.Fatalf("status %d from a garbage backend, want 502", rec.Status)
	}
	if n := openUpstreams(p2); n != 0 {
		t.Fatalf("%d connections kept after a failed exchange, want 0", n)
	}
}
