package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// chromium finds a headless-capable Chromium, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found in PATH: the dashboard test needs a headless Chromium (apt-get install chromium)")
	return ""
}

// browser is a headless Chromium driven over the DevTools protocol: one
// page, whose DOM the test reads as often as it likes while the page's
// EventSource stays open (--dump-dom cannot do that: it dumps at load,
// and --virtual-time-budget never ends while a stream is open).
type browser struct {
	conn *websocket.Conn
	id   int
}

func openBrowser(t *testing.T, bin, url string) *browser {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(bin, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--user-data-dir="+dir, "about:blank")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{}
	t.Cleanup(func() {
		if b.conn != nil {
			b.conn.CloseNow() //nolint:errcheck
		}
		cmd.Process.Kill() //nolint:errcheck
		cmd.Wait()         //nolint:errcheck
	})
	// Chromium writes its DevTools port to this file once it listens.
	var port string
	for deadline := time.Now().Add(20 * time.Second); port == ""; time.Sleep(50 * time.Millisecond) {
		if raw, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort")); err == nil {
			if p, _, ok := strings.Cut(string(raw), "\n"); ok && p != "" {
				port = p
			}
		}
		if port == "" && time.Now().After(deadline) {
			t.Fatal("chromium did not open its DevTools port within 20s")
		}
	}
	req, _ := http.NewRequest(http.MethodPut, "http://127.0.0.1:"+port+"/json/new?"+url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("open page: %v", err)
	}
	defer resp.Body.Close()
	var target struct {
		WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&target); err != nil || target.WebSocketDebuggerURL == "" {
		t.Fatalf("open page: %s: %v", resp.Status, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.conn, _, err = websocket.Dial(ctx, target.WebSocketDebuggerURL, nil)
	if err != nil {
		t.Fatalf("connect to the page: %v", err)
	}
	b.conn.SetReadLimit(16 << 20)
	return b
}

// eval runs a JavaScript expression in the page and returns its string value.
func (b *browser) eval(t *testing.T, expr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.id++
	msg, _ := json.Marshal(map[string]any{"id": b.id, "method": "Runtime.evaluate",
		"params": map[string]any{"expression": expr, "returnByValue": true}})
	if err := b.conn.Write(ctx, websocket.MessageText, msg); err != nil {
		t.Fatalf("devtools: %v", err)
	}
	for {
		_, data, err := b.conn.Read(ctx)
		if err != nil {
			t.Fatalf("devtools: %v", err)
		}
		var r struct {
			ID     int `json:"id"`
			Result struct {
				Result struct {
					Value any `json:"value"`
				} `json:"result"`
			} `json:"result"`
		}
		if json.Unmarshal(data, &r) == nil && r.ID == b.id {
			s, _ := r.Result.Result.Value.(string)
			return s
		}
	}
}

// waitDOM polls the page's DOM until ok accepts it, or fails after 15s.
func (b *browser) waitDOM(t *testing.T, what string, ok func(dom string) bool) string {
	t.Helper()
	var dom string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		dom = b.eval(t, "document.documentElement.outerHTML")
		if ok(dom) {
			return dom
		}
	}
	t.Fatalf("the page never showed %s; last DOM:\n%.3000s", what, dom)
	return ""
}

// TestDashboardUpdatesInChromium opens the live page in headless Chromium
// before any traffic, sees it connected with zero requests, sends traffic
// through the proxy and sees the page's table update with the counts (the
// page has no data of its own: only /api/live events fill it).
func TestDashboardUpdatesInChromium(t *testing.T) {
	bin := chromium(t)
	const token = "dash-token"
	st := startStackSpeed(t, token, 10) // slow enough to hold a stream open
	b := openBrowser(t, bin, st.adminURL+"/?token="+token)

	b.waitDOM(t, "a connected stream with zero requests", func(dom string) bool {
		return strings.Contains(dom, `id="status" class="ok"`) && cell(dom, "baseline", "total_requests") == 0
	})
	const n = 6
	st.sendTraffic(t, n)
	dom := b.waitDOM(t, "the traffic", func(dom string) bool {
		return cell(dom, "baseline", "total_requests") == n && cell(dom, "optimized", "shadow") == n
	})
	if v := cell(dom, "baseline", "ttft_p50_ms"); v <= 0 {
		t.Errorf("baseline TTFT p50 in the page = %v", v)
	}
	if v := cell(dom, "baseline", "output_tok_rate"); v <= 0 {
		t.Errorf("baseline output tok/s in the page = %v", v)
	}
	if v := cell(dom, "", "total_errors"); v != 1 {
		t.Errorf("errors of the unknown-backend row in the page = %v, want 1", v)
	}
	if u := field(dom, `id="updates">(\d+)<`); u < 2 {
		t.Errorf("updates = %v", u)
	}

	// a stream held open shows in the per-backend in-flight cells (the
	// primary on baseline, its mirrored copy on optimized), then leaves
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hold"}],"max_tokens":2000,"ignore_eos":true,"stream":true}`, testModel)
	resp, err := http.Post(st.proxyURL+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b.waitDOM(t, "the held stream in flight", func(dom string) bool {
		return cell(dom, "baseline", "in_flight") == 1 && cell(dom, "optimized", "shadow_in_flight") == 1 &&
			cell(dom, "optimized", "in_flight") == 0 && cell(dom, "baseline", "shadow_in_flight") == 0
	})
	resp.Body.Close()
	b.waitDOM(t, "nothing in flight after the client left", func(dom string) bool {
		return cell(dom, "baseline", "in_flight") == 0 && cell(dom, "optimized", "shadow_in_flight") == 0
	})

	// without the token the page itself is refused
	if code, _ := get(t, st.adminURL+"/", ""); code != 401 {
		t.Errorf("dashboard without token: %d", code)
	}
}

// field returns the number the regexp's first group matches, or -1.
func field(dom, re string) float64 {
	m := regexp.MustCompile(re).FindStringSubmatch(dom)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// cell reads <td data-field=F> of the row <tr data-backend=B>, or -1.
func cell(dom, backend, f string) float64 {
	row := regexp.MustCompile(`<tr data-backend="` + regexp.QuoteMeta(backend) + `">(.*?)</tr>`).FindStringSubmatch(dom)
	if row == nil {
		return -1
	}
	return field(row[1], `<td data-field="`+f+`"[^>]*>([0-9.]+)<`)
}
