package main

import (
	"bytes"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
)

// binPath is the abproxy binary built once for the end-to-end tests, which
// run it as a user would: separate processes, real signals, a real file.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "abproxy-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "abproxy")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build abproxy: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs the binary with args; its output goes to the test log on failure.
func start(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("abproxy %s output:\n%s", strings.Join(args, " "), out.String())
		}
	})
	return cmd, &out
}

func waitHealthy(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not healthy after 15s", url)
}

// TestSIGTERMDrainLosesNothing sends SIGTERM to `abproxy serve` under load
// and checks that every request that got an answer has exactly one row.
func TestSIGTERMDrainLosesNothing(t *testing.T) {
	simAddr, proxyAddr := freeAddr(t), freeAddr(t)
	db := filepath.Join(t.TempDir(), "drain.db")
	start(t, "sim", "--listen", simAddr, "--profile", "optimized", "--speedup", "20")
	waitHealthy(t, "http://"+simAddr)
	srv, srvOut := start(t, "serve", "--backend", "sim=http://"+simAddr, "--listen", proxyAddr, "--db", db)
	waitHealthy(t, "http://"+proxyAddr)

	var mu sync.Mutex
	ids := map[string]bool{}
	var answered atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"w%d r%d"}],"max_tokens":40,"ignore_eos":true,"stream":true}`, w, i)
				resp, err := client.Post("http://"+proxyAddr+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					return // the proxy stopped accepting: this request never got in
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				ids[resp.Header.Get("X-ABProxy-Request-Id")] = true
				mu.Unlock()
				answered.Add(1)
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := srv.Wait()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("serve exited with %v after SIGTERM, want status 0", err)
	}
	if answered.Load() < 50 {
		t.Fatalf("only %d requests answered before SIGTERM; the load did not run", answered.Load())
	}

	conn, err := sql.Open("sqlite3", "file:"+db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.Query(`SELECT id, coalesce(error,'') FROM requests`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var id, errClass string
		if err := rows.Scan(&id, &errClass); err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Fatalf("request %s recorded twice", id)
		}
		seen[id] = true
		if ids[id] && errClass != "" {
			t.Errorf("request %s finished during the drain but is recorded with error %q", id, errClass)
		}
	}
	for id := range ids {
		if !seen[id] {
			t.Errorf("answered request %s has no row", id)
		}
	}
	if len(seen) != len(ids) {
		t.Errorf("%d rows for %d answered requests", len(seen), len(ids))
	}
	// the last log line counts what the recorder wrote, the drain included
	if want := fmt.Sprintf(`"recorded": %d,`, len(seen)); !strings.Contains(srvOut.String(), want) {
		t.Errorf("serve's log does not say %s for %d rows:\n%s", want, len(seen), lastLines(srvOut.String(), 3))
	}
	t.Logf("%d requests answered, %d rows", len(ids), len(seen))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[proxy]\nlisen = 'x'\n"), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config", bad}, `unknown key "proxy.lisen"`},
		{[]string{"serve", "--config", filepath.Join(dir, "none.toml")}, "no such file"},
		{[]string{"serve", "--backend", "nourl"}, `--backend "nourl" is not NAME=URL`},
		{[]string{"serve", "--backend", "a=ftp://x"}, `is not an http(s)://host:port URL`},
		{[]string{"serve", "--backend", "a=http://127.0.0.1:1", "--log-level", "loud"}, `log.level "loud"`},
		{[]string{"sim", "--profile", "turbo"}, "turbo"},
		{[]string{"sim", "--speedup", "0"}, "--speedup must be greater than 0"},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
	}
	for _, c := range cases {
		out, err := exec.Command(binPath, c.args...).CombinedOutput()
		if err == nil {
			t.Errorf("abproxy %v succeeded, want an error", c.args)
			continue
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("abproxy %v said %q, want it to contain %q", c.args, out, c.want)
		}
		if n := strings.Count(strings.TrimSpace(string(out)), "\n"); n > 2 {
			t.Errorf("abproxy %v printed %d lines for one error:\n%s", c.args, n+1, out)
		}
	}
}

// TestSIGHUPReloadsRoute flips the split weights with SIGHUP while a stream
// is in flight, then sends a broken config: the route changes, the stream
// completes, and the broken config changes nothing.
func TestSIGHUPReloadsRoute(t *testing.T) {
	simAddr, proxyAddr := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.toml")
	writeCfg := func(route string) {
		t.Helper()
		cfg := fmt.Sprintf(`[proxy]
listen = %q
[recorder]
path = %q
[[backend]]
name = "a"
url = "http://%s"
[[backend]]
name = "b"
url = "http://%s"
[route]
%s
`, proxyAddr, filepath.Join(dir, "db"), simAddr, simAddr, route)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(`weights = { a = 100, b = 0 }`)
	start(t, "sim", "--listen", simAddr, "--speedup", "10")
	waitHealthy(t, "http://"+simAddr)
	srv, out := start(t, "serve", "--config", cfgPath)
	waitHealthy(t, "http://"+proxyAddr)
	backendOf := func() string {
		resp, err := http.Post("http://"+proxyAddr+"/v1/completions", "application/json",
			strings.NewReader(`{"model":"Qwen/Qwen2.5-14B-Instruct","prompt":"x","max_tokens":2}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Header.Get("X-ABProxy-Backend")
	}
	if b := backendOf(); b != "a" {
		t.Fatalf("before reload: backend %q", b)
	}
	// a long stream, in flight across the reload
	streamDone := make(chan string, 1)
	go func() {
		resp, err := http.Post("http://"+proxyAddr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":200,"ignore_eos":true,"stream":true}`))
		if err != nil {
			streamDone <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		streamDone <- string(b)
	}()
	time.Sleep(100 * time.Millisecond)
	writeCfg(`weights = { a = 0, b = 100 }`)
	srv.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for backendOf() != "b" {
		if time.Now().After(deadline) {
			t.Fatal("route not reloaded 5s after SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}
	writeCfg(`weights = { nosuch = 1 }`)
	srv.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 5; i++ {
		if b := backendOf(); b != "b" {
			t.Fatalf("a broken config changed the route: backend %q", b)
		}
	}
	if s := <-streamDone; !strings.Contains(s, "[DONE]") || strings.Count(s, `"content":`) < 200 {
		t.Fatalf("the stream in flight during the reload did not complete: %.200q", s)
	}
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	if !strings.Contains(out.String(), "reload failed, keeping the current route") || !strings.Contains(out.String(), "nosuch") {
		t.Fatalf("the failed reload was not logged with its reason:\n%s", out.String())
	}
}

// TestFlushIntervalFromConfig: recorder.flush_interval reaches the
// recorder. With a minute's interval a request's row is not in the
// database a second later (the 250 ms default would have written it), and
// the shutdown still writes it.
func TestFlushIntervalFromConfig(t *testing.T) {
	simAddr, proxyAddr := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	db, cfgPath := filepath.Join(dir, "db"), filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf("[proxy]\nlisten = %q\n[recorder]\npath = %q\nflush_interval = \"1m\"\n[[backend]]\nname = \"a\"\nurl = \"http://%s\"\n", proxyAddr, db, simAddr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "sim", "--listen", simAddr, "--speedup", "10")
	waitHealthy(t, "http://"+simAddr)
	srv, _ := start(t, "serve", "--config", cfgPath)
	waitHealthy(t, "http://"+proxyAddr)
	resp, err := http.Post("http://"+proxyAddr+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"Qwen/Qwen2.5-14B-Instruct","prompt":"x","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rows := func() int {
		t.Helper()
		conn, err := sql.Open("sqlite3", "file:"+db+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var n int
		if err := conn.QueryRow(`SELECT count(*) FROM requests`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	time.Sleep(time.Second)
	if n := rows(); n != 0 {
		t.Fatalf("%d rows a second after the request with flush_interval = 1m; the setting did not reach the recorder", n)
	}
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM", err)
	}
	if n := rows(); n != 1 {
		t.Fatalf("%d rows after shutdown, want 1", n)
	}
}
