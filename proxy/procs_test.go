package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/procs"
)

// TestGovernedProcs: a proxy that governs the scheduler runs one P with
// QuietStreams requests in flight, every CPU as soon as there are more,
// sizes its event loops by every CPU, and gives GOMAXPROCS back on
// Shutdown.
func TestGovernedProcs(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs")
	}
	t.Setenv("GOMAXPROCS", "")
	before := runtime.GOMAXPROCS(0)
	release := make(chan struct{})
	held := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent))
		<-release
		io.WriteString(c, chunk("data: [DONE]\n\n")+"0\r\n\r\n")
		c.Close()
	})
	// a proxy that fails to start leaves GOMAXPROCS alone
	bad := config.Default()
	bad.Backends = []config.Backend{{Name: "held", URL: held}}
	bad.Route.Mode = "sideways"
	if _, err := New(Options{Config: bad, GovernProcs: true}); err == nil {
		t.Fatal("New accepted route mode \"sideways\"")
	}
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after a failed New, want %d", got, before)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := startProxyWith(t, ln, nil, func(o *Options) { o.GovernProcs = true }, config.Backend{Name: "held", URL: held})
	shutdown := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx) // again in startProxyWith's clean-up, which does nothing then
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS %d on a quiet proxy, want 1", got)
	}
	if got := p.procs.Max(); got != before {
		t.Fatalf("the event loops would be sized for %d CPUs, want %d", got, before)
	}
	var wg sync.WaitGroup
	var once sync.Once
	end := func() { once.Do(func() { close(release); wg.Wait() }) }
	defer end()
	stream := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post("http://"+ln.Addr().String()+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for range QuietStreams {
		stream()
	}
	waitInFlight(t, p, QuietStreams)
	time.Sleep(3 * procs.Interval)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS %d with %d streams in flight, want 1", got, QuietStreams)
	}
	stream()
	for end := time.Now().Add(2 * time.Second); runtime.GOMAXPROCS(0) != before; {
		if time.Now().After(end) {
			t.Fatalf("GOMAXPROCS stayed %d with %d streams in flight, want %d", runtime.GOMAXPROCS(0), QuietStreams+1, before)
		}
		time.Sleep(5 * time.Millisecond)
	}
	end()
	shutdown()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after Shutdown, want %d", got, before)
	}
}

func waitInFlight(t *testing.T, p *Proxy, n int64) {
	t.Helper()
	for end := time.Now().Add(2 * time.Second); p.InFlight() != n; {
		if time.Now().After(end) {
			t.Fatalf("%d requests in flight, want %d", p.InFlight(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
