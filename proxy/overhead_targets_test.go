package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // for ABPROXY_OVERHEAD_PPROF
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/abproxy/abproxy/admin"
	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

// The proxies under test run as separate processes so that their CPU time
// and memory can be read from /proc, exactly like nginx's. abproxy runs as
// this test binary re-executed with ovhChildEnv set: init below then runs
// the same wiring as `abproxy serve` (config defaults, the SQLite recorder,
// proxy.New, SIGTERM drain) instead of the tests. This keeps the benchmark
// independent of cmd/abproxy's build; set ABPROXY_OVERHEAD_BIN to a built
// abproxy binary to measure that instead.

const (
	ovhChildEnv   = "ABPROXY_OVERHEAD_CHILD"   // "serve", "sim" or "relay": run that, not the tests
	ovhListenEnv  = "ABPROXY_OVERHEAD_LISTEN"  // child: listen address
	ovhBackendEnv = "ABPROXY_OVERHEAD_BACKEND" // child: backend URL
	ovhDBEnv      = "ABPROXY_OVERHEAD_DB"      // child: SQLite path
	ovhProfileEnv = "ABPROXY_OVERHEAD_CPUPROFILE"
	ovhPprofEnv   = "ABPROXY_OVERHEAD_PPROF"            // child: serve net/http/pprof on this address
	ovhConfigEnv  = "ABPROXY_OVERHEAD_CONFIG"           // child: config file, in place of the three above
	ovhLoopsEnv   = "ABPROXY_OVERHEAD_EVENT_LOOPS"      // child: proxy.event_loops
	ovhLoopMinEnv = "ABPROXY_OVERHEAD_LOOP_MIN_STREAMS" // child: proxy.event_loop_min_streams
)

func init() {
	switch os.Getenv(ovhChildEnv) {
	case "serve":
		os.Exit(ovhChildServe())
	case "sim":
		os.Exit(ovhChildSim())
	case "relay":
		os.Exit(ovhChildRelay())
	}
}

// ovhSpeedup divides the sim's times (see ovhSimProfile).
const ovhSpeedup = 4.0

// ovhSimProfile is the simulated backend: the built-in "optimized"
// profile's decode-step model (13 ms + 0.2 ms per running sequence, sped up
// ovhSpeedup times) with its batch, KV and prefill limits lifted so that
// 1,000 concurrent streams are all admitted at once and no request queues
// inside the sim.
func ovhSimProfile() sim.Profile {
	prof, _ := sim.BuiltinProfile("optimized")
	prof.Name = "overhead"
	prof.MaxNumSeqs = 100_000
	prof.KVCapacityTokens = 1 << 30
	prof.MaxModelLen = 1 << 20
	prof.PrefillTokensPerSec = 1e12
	prof.PrefillChunkTokens = 1 << 30
	prof.Jitter = 0
	return prof
}

func ovhSimOptions(truth io.Writer) sim.Options {
	return sim.Options{Profile: ovhSimProfile(), Speedup: ovhSpeedup, Seed: 1, Model: "bench", Truth: truth}
}

// ovhStartSim starts the sim, with its truth lines going to truth: in this
// process (the default), or with ABPROXY_OVERHEAD_SIM=process as a child
// process, as a real backend is a process of its own. At one stream
// (2026-11-27, 21:00 UTC, three six-round runs each way) the direct hop
// TTFT p50 was 0.041–0.051 ms with the sim in its own process against
// 0.030–0.039 in the client's, but the added TTFT p50 of both proxies
// (nginx +0.052 to +0.087 ms and abproxy +0.061 to +0.095 in its own;
// +0.062 to +0.114 and +0.076 to +0.153 in the client's) stayed within the
// run-to-run spread. So the default keeps earlier runs comparable, with
// one process fewer competing for two CPUs at 1,000 streams.
func ovhStartSim(b *testing.B, dir string, truth io.Writer) (base string, p *ovhProc, err error) {
	switch mode := os.Getenv("ABPROXY_OVERHEAD_SIM"); mode {
	case "", "inprocess":
		srv, base, err := sim.Start(ovhSimOptions(truth), "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		b.Cleanup(func() { srv.Close() })
		return base, nil, nil
	case "process":
	default:
		return "", nil, fmt.Errorf("ABPROXY_OVERHEAD_SIM=%q: want process or inprocess", mode)
	}
	addr, err := ovhFreeAddr()
	if err != nil {
		return "", nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ovhChildEnv+"=sim", ovhListenEnv+"="+addr)
	cmd.Stdout = truth
	p, err = ovhStartChild(cmd, dir, "sim", addr)
	if err != nil {
		return "", nil, err
	}
	return "http://" + addr, p, nil
}

// ovhStartChild starts cmd in dir with its stderr in dir/name.log, and
// waits until it answers GET /health on addr. The caller sets cmd's
// environment and, if it wants it elsewhere than p.stdout, its stdout.
func ovhStartChild(cmd *exec.Cmd, dir, name, addr string) (*ovhProc, error) {
	cmd.Dir = dir // no stray ./config.toml is picked up
	p := &ovhProc{name: name, addr: addr, cmd: cmd, dir: dir}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.stdout
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.pids = []int{cmd.Process.Pid}
	if err := ovhWaitHTTP(addr, "/health", 10*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not come up: %w (log: %s)", name, err, ovhTail(logPath))
	}
	return p, nil
}

// place says where the sim runs, for the machine line.
func (p *ovhProc) place() string {
	if p == nil {
		return "in the client's process"
	}
	return "in its own process"
}

// ovhChildSim serves the sim until SIGTERM, its truth lines on stdout.
func ovhChildSim() int {
	srv, _, err := sim.Start(ovhSimOptions(os.Stdout), os.Getenv(ovhListenEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "overhead sim:", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	if err := srv.Close(); err != nil { // flushes the truth lines
		fmt.Fprintln(os.Stderr, "overhead sim:", err)
		return 1
	}
	return 0
}

// ovhRelayName is the optional floor target (ABPROXY_OVERHEAD_RELAY=1).
const ovhRelayName = "go-relay"

// ovhChildRelay is the least a proxy written in Go can do: a TCP relay
// that dials the backend once per client connection and copies bytes both
// ways, a goroutine and a 16 KiB buffer per direction, through the
// runtime's poller like abproxy. It parses nothing and records nothing (and
// copies through user space, as nginx and abproxy do, not with splice), so
// the difference between it and abproxy is abproxy's own work, and between
// it and nginx what Go's runtime costs or saves.
func ovhChildRelay() int {
	backend := os.Getenv(ovhBackendEnv)
	ln, err := net.Listen("tcp", os.Getenv(ovhListenEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "overhead relay:", err)
		return 1
	}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		ln.Close()
	}()
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 16<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0 // closed on SIGTERM
		}
		go func() {
			up, err := net.Dial("tcp", backend)
			if err != nil {
				fmt.Fprintln(os.Stderr, "overhead relay:", err)
				c.Close()
				return
			}
			go relay(up, c)
			relay(c, up)
		}()
	}
}

// ovhStartRelay starts the relay as a child of this test binary.
func ovhStartRelay(dir, backendAddr string) (*ovhProc, error) {
	addr, err := ovhFreeAddr()
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ovhChildEnv+"=relay", ovhListenEnv+"="+addr, ovhBackendEnv+"="+backendAddr)
	return ovhStartChild(cmd, dir, ovhRelayName, addr)
}

// ovhChildServe is `abproxy serve --backend sim=URL --listen ADDR --db PATH`
// in miniature. On SIGTERM it drains, closes the recorder and prints the
// recorder's counts as one line on stdout for the parent to check.
func ovhChildServe() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "overhead child:", err); return 1 }
	if path := os.Getenv(ovhProfileEnv); path != "" {
		// "%d" becomes the pid, when several children profile at once
		path = strings.ReplaceAll(path, "%d", strconv.Itoa(os.Getpid()))
		f, err := os.Create(path)
		if err != nil {
			return fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if addr := os.Getenv(ovhPprofEnv); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }() // net/http/pprof's handlers
	}
	cfg := config.Default()
	if path := os.Getenv(ovhConfigEnv); path != "" {
		c, err := config.Load(path)
		if err != nil {
			return fail(err)
		}
		cfg = c
	} else {
		cfg.Proxy.Listen = os.Getenv(ovhListenEnv)
		cfg.Recorder.Path = os.Getenv(ovhDBEnv)
		cfg.Backends = []config.Backend{{Name: "sim", URL: os.Getenv(ovhBackendEnv)}}
	}
	for env, dst := range map[string]*int{ovhLoopsEnv: &cfg.Proxy.EventLoops, ovhLoopMinEnv: &cfg.Proxy.EventLoopMinStreams} {
		if v := os.Getenv(env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fail(fmt.Errorf("%s=%q is not an integer", env, v))
			}
			*dst = n
		}
	}
	if err := cfg.Validate(); err != nil {
		return fail(err)
	}
	zc := zap.NewProductionConfig() // what `abproxy serve` logs at: info, JSON
	log, err := zc.Build()
	if err != nil {
		return fail(err)
	}
	rec, err := recorder.Open(recorder.Options{Path: cfg.Recorder.Path, QueueSize: cfg.Recorder.QueueSize, Logger: log.Named("recorder")})
	if err != nil {
		return fail(err)
	}
	if _, err := rec.EnsureRun(recorder.Run{Name: "overhead", Kind: recorder.KindBench, StartedNS: time.Now().UnixNano()}); err != nil {
		return fail(err)
	}
	// the metrics `abproxy serve` keeps, observed in the proxy's batches
	metrics := admin.NewMetrics(cfg.BackendNames())
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Logger: log.Named("proxy"), Run: "overhead", GovernProcs: true, Observer: metrics})
	if err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", cfg.Proxy.Listen)
	if err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { _ = p.Serve(ln) }()
	<-sigs
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Proxy.DrainTimeout.Duration)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	_ = rec.EndRun("overhead", time.Now().UnixNano())
	if err := rec.Close(); err != nil {
		return fail(err)
	}
	st := rec.Stats()
	fmt.Printf("recorder submitted=%d written=%d dropped=%d failed=%d\n", st.Submitted, st.Written, st.Dropped, st.Failed)
	return 0
}

// ovhProc is a proxy running as child processes.
type ovhProc struct {
	name   string
	addr   string
	cmd    *exec.Cmd
	pids   []int // processes whose CPU and RSS count (nginx: master and workers)
	stdout bytes.Buffer
	dir    string
	db     string // abproxy's SQLite file
}

// ovhFreeAddr returns a free loopback address.
func ovhFreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ovhStartAbproxy starts abproxy in front of backendURL.
func ovhStartAbproxy(b *testing.B, dir, backendURL, cpuProfile string) (*ovhProc, error) {
	addr, err := ovhFreeAddr()
	if err != nil {
		return nil, err
	}
	db := filepath.Join(dir, "abproxy.db")
	if keep := os.Getenv("ABPROXY_OVERHEAD_KEEPDB"); keep != "" {
		db = keep // keep abproxy's records after the run, to query them
	}
	args := ovhServeArgs(backendURL, addr, db)
	env := []string{ovhListenEnv + "=" + addr, ovhBackendEnv + "=" + backendURL, ovhDBEnv + "=" + db}
	if cpuProfile != "" {
		env = append(env, ovhProfileEnv+"="+cpuProfile)
	}
	return ovhLaunchAbproxy(dir, "abproxy", addr, db, args, env)
}

// ovhStartAbproxyConfig starts an abproxy named name from a config file
// written from cfg, with its listen address and database filled in.
func ovhStartAbproxyConfig(dir, name string, cfg func(listen, db string) string) (*ovhProc, error) {
	addr, err := ovhFreeAddr()
	if err != nil {
		return nil, err
	}
	db := filepath.Join(dir, name+".db")
	path := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(path, []byte(cfg(addr, db)), 0o644); err != nil {
		return nil, err
	}
	return ovhLaunchAbproxy(dir, name, addr, db, []string{"serve", "--config", path, "--run", "overhead"}, []string{ovhConfigEnv + "=" + path})
}

// ovhServeArgs are `abproxy serve`'s arguments for one backend.
func ovhServeArgs(backendURL, addr, db string) []string {
	return []string{"serve", "--backend", "sim=" + backendURL, "--listen", addr, "--db", db, "--run", "overhead"}
}

// ovhStartAbproxyB starts the built binary bin as the second abproxy, with
// the same arguments as the first and a database of its own.
func ovhStartAbproxyB(dir, backendURL, bin string) (*ovhProc, error) {
	addr, err := ovhFreeAddr()
	if err != nil {
		return nil, err
	}
	db := filepath.Join(dir, ovhNameB+".db")
	return ovhLaunch(bin, dir, ovhNameB, addr, db, ovhServeArgs(backendURL, addr, db), nil)
}

// ovhLaunchAbproxy runs the proxy as a child: ABPROXY_OVERHEAD_BIN with
// args when set, else this test binary in serve mode with env.
func ovhLaunchAbproxy(dir, name, addr, db string, args, env []string) (*ovhProc, error) {
	return ovhLaunch(os.Getenv("ABPROXY_OVERHEAD_BIN"), dir, name, addr, db, args, env)
}

// ovhLaunch runs bin with args, or with bin empty this test binary in
// serve mode with env, plus ABPROXY_OVERHEAD_CHILD_ENV either way.
func ovhLaunch(bin, dir, name, addr, db string, args, env []string) (*ovhProc, error) {
	var cmd *exec.Cmd
	if bin != "" {
		cmd = exec.Command(bin, args...)
		cmd.Env = os.Environ()
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cmd = exec.Command(exe)
		cmd.Env = append(append(os.Environ(), ovhChildEnv+"=serve"), env...)
	}
	if extra := os.Getenv("ABPROXY_OVERHEAD_CHILD_ENV"); extra != "" {
		cmd.Env = append(cmd.Env, strings.Split(extra, ",")...) // e.g. GOMAXPROCS=1,GOGC=200
	}
	p, err := ovhStartChild(cmd, dir, name, addr)
	if err != nil {
		return nil, err
	}
	p.db = db
	return p, nil
}

// ovhNginxConf is the generated nginx configuration. worker_processes auto
// (= nproc, 2 here): abproxy's Go runtime may use every core too
// (GOMAXPROCS = nproc), so both proxies get the same CPU entitlement, and
// it is the setting Debian ships in /etc/nginx/nginx.conf.
const ovhNginxConf = `# generated by BenchmarkOverhead
%[1]s
worker_processes auto;
worker_rlimit_nofile 65536;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
lock_file %[2]s/nginx.lock;
daemon off;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream sim {
        server %[3]s;
        keepalive 2048;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen %[4]s backlog=4096;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            chunked_transfer_encoding on;
        }
    }
}
`

// ovhStartNginx starts nginx as a child process with a config in dir.
func ovhStartNginx(dir, backendAddr string) (*ovhProc, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
		if err != nil {
			return nil, errNoNginx
		}
	}
	addr, err := ovhFreeAddr()
	if err != nil {
		return nil, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // otherwise workers drop to nobody, who cannot write dir
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, ovhNginxConf, user, dir, backendAddr, addr), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.Dir = dir
	p := &ovhProc{name: "nginx", addr: addr, cmd: cmd, dir: dir}
	cmd.Stdout = &p.stdout
	cmd.Stderr = &p.stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := ovhWaitHTTP(addr, "/health", 10*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("nginx did not come up: %w: %s %s", err, p.stdout.String(), ovhTail(filepath.Join(dir, "error.log")))
	}
	// master and workers: the workers are the master's children
	p.pids = []int{cmd.Process.Pid}
	deadline := time.Now().Add(5 * time.Second)
	for len(p.pids) == 1 && time.Now().Before(deadline) {
		p.pids = append(p.pids[:1], ovhChildren(cmd.Process.Pid)...)
		time.Sleep(20 * time.Millisecond)
	}
	if len(p.pids) == 1 {
		p.stop()
		return nil, errors.New("nginx started no worker process")
	}
	return p, nil
}

var errNoNginx = errors.New("nginx is not installed (apt-get install -y nginx-light)")

// ovhChildren lists the pids whose parent is ppid.
func ovhChildren(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := ovhStatFields(b)
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// ovhStatFields returns the fields of /proc/PID/stat after the command
// name: f[0] is the state (field 3), f[1] the ppid, f[11] utime, f[12] stime.
func ovhStatFields(b []byte) []string {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// ovhCPUTicks is utime+stime of pid in clock ticks (1/100 s on Linux).
func ovhCPUTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := ovhStatFields(b)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// ovhRSS is VmRSS of pid in bytes.
func ovhRSS(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (p *ovhProc) cpuTicks() int64 {
	if p == nil {
		return 0
	}
	var t int64
	for _, pid := range p.pids {
		t += ovhCPUTicks(pid)
	}
	return t
}

func (p *ovhProc) rss() int64 {
	if p == nil {
		return 0
	}
	var t int64
	for _, pid := range p.pids {
		t += ovhRSS(pid)
	}
	return t
}

// stop sends SIGTERM (nginx: fast shutdown; abproxy: drain) and waits.
func (p *ovhProc) stop() error {
	if p == nil || p.cmd.Process == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		return <-done
	}
}

// ovhWaitHTTP polls GET path on addr until it answers.
func ovhWaitHTTP(addr, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, err = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
			if err == nil {
				var buf [64]byte
				var n int
				n, err = c.Read(buf[:])
				if err == nil && bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200")) {
					c.Close()
					return nil
				}
				if err == nil {
					err = fmt.Errorf("answer %q", buf[:n])
				}
			}
			c.Close()
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return last
}

func ovhTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// ovhSystemTicks returns busy and total jiffies over all CPUs from
// /proc/stat, to tell how much CPU other processes on the box used.
func ovhSystemTicks() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		if i >= 8 { // guest time is already counted in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}
