package sim

import (
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/abproxy/abproxy/internal/wire"
)

// TruthRecord is one line of the truth file: what the server itself knows
// about a request, to check a proxy's measurements against. Timestamps are
// Unix nanoseconds, each taken right after the corresponding bytes were
// flushed to the socket.
type TruthRecord struct {
	// RequestID is the client's X-Request-Id, or the id the sim generated.
	RequestID string `json:"request_id"`
	// Endpoint is the request path, e.g. "/v1/chat/completions".
	Endpoint string `json:"endpoint"`
	// ReceivedNS is when the request body had been fully read.
	ReceivedNS int64 `json:"received_ns"`
	// FirstContentNS is when the first content-bearing chunk was handed to
	// the socket (the moment its write began); 0 for non-streamed responses
	// and for errors.
	FirstContentNS int64 `json:"first_content_ns"`
	// EndNS is when the last data write, the one ending in data: [DONE],
	// began. For non-streamed bodies
	// it is taken as the body is handed to fasthttp, which writes and flushes
	// it immediately after the handler returns (microseconds later).
	EndNS int64 `json:"end_ns"`
	// FirstContentDoneNS and EndDoneNS are when those writes returned (0
	// where there was no such write). The kernel took the bytes between a
	// write's start and its return; the two are microseconds apart unless
	// the sim's thread was held up inside the write (a GC pause, or the OS
	// running something else on a busy machine).
	FirstContentDoneNS int64 `json:"first_content_done_ns"`
	EndDoneNS          int64 `json:"end_done_ns"`
	// PromptTokens and CompletionTokens are the counts reported in usage
	// (for an aborted stream, the tokens actually delivered).
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	// Status is the HTTP status, or 499 when the client went away mid-stream
	// and 503 when the server was closed mid-stream.
	Status int `json:"status"`
}

// appendJSON renders the record without encoding/json: field order is
// fixed, and this runs once per request on the serving path.
func (r *TruthRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"request_id":"`...)
	b = wire.AppendJSONString(b, r.RequestID)
	b = append(b, `","endpoint":"`...)
	b = wire.AppendJSONString(b, r.Endpoint)
	b = append(b, `","received_ns":`...)
	b = strconv.AppendInt(b, r.ReceivedNS, 10)
	b = append(b, `,"first_content_ns":`...)
	b = strconv.AppendInt(b, r.FirstContentNS, 10)
	b = append(b, `,"end_ns":`...)
	b = strconv.AppendInt(b, r.EndNS, 10)
	b = append(b, `,"first_content_done_ns":`...)
	b = strconv.AppendInt(b, r.FirstContentDoneNS, 10)
	b = append(b, `,"end_done_ns":`...)
	b = strconv.AppendInt(b, r.EndDoneNS, 10)
	b = append(b, `,"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(r.PromptTokens), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(r.CompletionTokens), 10)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	return append(b, "}\n"...)
}

// truthWriter keeps truth lines in memory so a slow disk never holds up a
// response: the serving path only appends to a buffer under a mutex; a
// background flusher swaps the buffer out and writes it (so a live reader
// sees lines within a fraction of a second), and close writes the rest.
type truthWriter struct {
	mu  sync.Mutex
	buf []byte // guarded by mu

	outMu sync.Mutex // serialises writes to out (flusher vs close)
	out   io.Writer
	spare []byte // guarded by outMu
	err   error  // guarded by outMu

	stop chan struct{}
	done chan struct{}
}

const truthFlushEvery = 200 * time.Millisecond

func newTruthWriter(w io.Writer) *truthWriter {
	t := &truthWriter{
		out:  w,
		buf:  make([]byte, 0, 64<<10),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go t.flushLoop()
	return t
}

func (t *truthWriter) write(r *TruthRecord) {
	t.mu.Lock()
	t.buf = r.appendJSON(t.buf)
	t.mu.Unlock()
}

func (t *truthWriter) flush() {
	t.outMu.Lock()
	defer t.outMu.Unlock()
	t.mu.Lock()
	b := t.buf
	t.buf = t.spare[:0]
	t.mu.Unlock()
	if len(b) > 0 && t.err == nil {
		_, t.err = t.out.Write(b)
	}
	t.spare = b[:0]
}

func (t *truthWriter) flushLoop() {
	defer close(t.done)
	tick := time.NewTicker(truthFlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			t.flush()
		case <-t.stop:
			return
		}
	}
}

// close writes everything still buffered and reports the first write
// error, if any. If out is a bufio.Writer-like type with Flush, the caller
// flushes it; the sim does not own it.
func (t *truthWriter) close() error {
	close(t.stop)
	<-t.done
	t.flush()
	t.outMu.Lock()
	defer t.outMu.Unlock()
	return t.err
}
