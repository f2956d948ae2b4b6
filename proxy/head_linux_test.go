package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/abproxy/abproxy/config"
)

// TestHeadersGoWithTheFirstEvents: when the backend's headers and first
// events arrive together, the client gets them in one segment, as nginx
// sends them, rather than the headers alone and the events a moment
// later, which costs the client a wake-up before its first token. When
// the headers come ahead of any event, they are sent at once.
func TestHeadersGoWithTheFirstEvents(t *testing.T) { forRelays(t, testHeadersGoWithTheFirstEvents) }

func testHeadersGoWithTheFirstEvents(t *testing.T, r relay) {
	const pause = 300 * time.Millisecond
	together := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent)+chunk(contentEvent))
		time.Sleep(pause)
		io.WriteString(c, chunk("data: [DONE]\n\n")+"0\r\n\r\n")
	})
	ahead := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead)
		time.Sleep(pause)
		io.WriteString(c, chunk(contentEvent)+chunk("data: [DONE]\n\n")+"0\r\n\r\n")
	})
	px, p, sink := startProxy(t, r.mod, config.Backend{Name: "together", URL: together}, config.Backend{Name: "ahead", URL: ahead})
	defer r.check(t, p)
	for _, c := range []struct {
		backend   string
		segments  uint32 // data segments the client has before the pause ends
		wantFirst string // what they hold
	}{{"together", 1, contentEvent + contentEvent}, {"ahead", 1, ""}} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(px, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		body := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			HeaderBackend, c.backend, len(body), body)
		time.Sleep(pause / 2)
		info, err := unix.GetsockoptTCPInfo(fd(t, conn), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		if info.Data_segs_in != c.segments {
			t.Errorf("%s: the client received %d data segments before the backend's pause ended, want %d", c.backend, info.Data_segs_in, c.segments)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, br.Buffered())
		_, _ = io.ReadFull(br, first) // the rest of the first segment: the start of the body
		if c.wantFirst != "" && !strings.Contains(string(first), strings.TrimSuffix(contentEvent, "\n\n")) {
			t.Errorf("%s: the first segment's body part is %q, want the first events", c.backend, first)
		}
		rest, err := io.ReadAll(resp.Body)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := string(rest); !strings.HasSuffix(got, "data: [DONE]\n\n") {
			t.Errorf("%s: the body ends %q", c.backend, got)
		}
		if rec := sink.wait(t); rec.Error != "" || rec.Status != 200 {
			t.Fatalf("%s: record %+v", c.backend, rec)
		}
	}
}

// fd is the descriptor of a TCP connection, for getsockopt.
func fd(t *testing.T, c net.Conn) int {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	_ = raw.Control(func(f uintptr) { n = int(f) })
	return n
}
