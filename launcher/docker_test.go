package launcher_test

// Tests against the real Docker engine. They build a static abproxy binary
// (once per test binary), put it in an image FROM scratch with `abproxy
// sim` as its command, and launch, probe, route through and remove sim
// backends. They skip with a message when no engine is reachable, unless
// ABPROXY_REQUIRE_DOCKER=1, which makes that a failure (for CI).

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/launcher"
)

var (
	setupOnce sync.Once
	skipWhy   string // set when no engine is reachable
	setupErr  error  // set when the engine is there but the image could not be built
	tmpDir    string // holds the static binary
	binPath   string // the static abproxy binary
	testImage string // the sim image's tag
	runID     string // makes container names unique to this test binary
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testImage != "" {
		if cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation()); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cli.ImageRemove(ctx, testImage, image.RemoveOptions{Force: true, PruneChildren: true}) //nolint:errcheck
			cancel()
			cli.Close()
		}
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

// setup checks for an engine, builds the static binary and the sim image.
func setup() {
	b := make([]byte, 4)
	rand.Read(b) //nolint:errcheck
	runID = hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	eng, err := launcher.Connect(ctx, launcher.Options{})
	cancel()
	if err != nil {
		skipWhy = "no Docker engine reachable, skipping the engine tests: " + err.Error()
		return
	}
	defer eng.Close()
	sweepStale(eng.Client())
	if tmpDir, setupErr = os.MkdirTemp("", "abproxy-launcher-test-"); setupErr != nil {
		return
	}
	start := time.Now()
	binPath = filepath.Join(tmpDir, "abproxy")
	goBin, err := exec.LookPath("go")
	if err != nil {
		setupErr = fmt.Errorf("the go command is needed to build the static test binary: %w", err)
		return
	}
	// The flags of `make static`.
	cmd := exec.Command(goBin, "build", "-tags", "netgo,osusergo",
		"-ldflags", `-linkmode external -extldflags "-static"`, "-o", binPath, "./cmd/abproxy")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		setupErr = fmt.Errorf("build the static abproxy binary: %v\n%s", err, out)
		return
	}
	fmt.Fprintf(os.Stderr, "launcher tests: static binary built in %s\n", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	testImage = "abproxy-launcher-test:" + runID
	setupErr = buildImage(eng.Client(), binPath, testImage)
	fmt.Fprintf(os.Stderr, "launcher tests: image %s built in %s\n", testImage, time.Since(start).Round(time.Millisecond))
}

// testRunLabel marks every container and image these tests create, so a
// run that died (a test timeout ends the process without cleanups) is
// swept by the next one.
const testRunLabel = "abproxy-test-run"

// sweepStale removes test containers and images older than 15 minutes:
// left by a crashed run, never by one running now.
func sweepStale(cli *client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old := time.Now().Add(-15 * time.Minute).Unix()
	f := filters.NewArgs(filters.Arg("label", testRunLabel))
	if cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f}); err == nil {
		for _, c := range cs {
			if c.Created < old {
				cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}) //nolint:errcheck
			}
		}
	}
	if imgs, err := cli.ImageList(ctx, image.ListOptions{Filters: f}); err == nil {
		for _, im := range imgs {
			if im.Created < old {
				cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}) //nolint:errcheck
			}
		}
	}
}

// buildImage builds a FROM-scratch image holding only the binary, with
// `abproxy sim` listening on 0.0.0.0:8000 as its default command.
func buildImage(cli *client.Client, bin, tag string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	dockerfile := []byte("FROM scratch\nCOPY abproxy /abproxy\nENTRYPOINT [\"/abproxy\"]\nCMD [\"sim\", \"--listen\", \"0.0.0.0:8000\"]\n")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"abproxy", 0o755, exe}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Now()}); err != nil {
			return err
		}
		tw.Write(f.data) //nolint:errcheck
	}
	if err := tw.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{
		Tags: []string{tag}, Remove: true, ForceRemove: true, Labels: map[string]string{testRunLabel: runID},
	})
	if err != nil {
		return fmt.Errorf("build the test image: %w", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("build the test image: %w", err)
		}
		if m.Error != "" {
			return fmt.Errorf("build the test image: %s", m.Error)
		}
	}
}

// engine returns a connected Engine whose container logs go to t.Log, or
// skips the test when there is no engine.
func engine(t *testing.T) *launcher.Engine {
	t.Helper()
	if testing.Short() {
		t.Skip("engine tests are skipped with -short")
	}
	setupOnce.Do(setup)
	if skipWhy != "" {
		if os.Getenv("ABPROXY_REQUIRE_DOCKER") == "1" {
			t.Fatal(skipWhy)
		}
		t.Skip(skipWhy)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	eng, err := launcher.Connect(context.Background(), launcher.Options{LogOutput: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// logWriter sends container output to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// backend is one [[backend]] of a test config running the sim image.
type backend struct {
	name  string
	port  int
	model string
	args  []string // default: sim on 0.0.0.0:8000 with the backend's profile
	extra string   // more [backend.launch] keys
}

// writeConfig writes a config for the backends into a new directory and
// loads it. Container names carry runID so parallel test runs never meet.
func writeConfig(t *testing.T, img string, bs ...backend) (*config.Config, string) {
	t.Helper()
	var b strings.Builder
	for _, be := range bs {
		if be.model == "" {
			be.model = "Qwen/Qwen2.5-14B-Instruct"
		}
		if be.args == nil {
			profile := "baseline"
			if strings.Contains(be.name, "optimized") {
				profile = "optimized"
			}
			be.args = []string{"sim", "--listen", "0.0.0.0:8000", "--profile", profile, "--model", be.model, "--speedup", "200"}
		}
		args, _ := json.Marshal(be.args)
		fmt.Fprintf(&b, "[[backend]]\nname = %q\nurl = \"http://127.0.0.1:%d\"\nmodel = %q\n[backend.launch]\n"+
			"image = %q\nhost_ip = \"127.0.0.1\"\nargs = %s\nstartup_timeout = \"30s\"\nlabels = { %s = %q }\n%s\n",
			be.name, be.port, be.model, img, args, testRunLabel, runID, be.extra)
		if !strings.Contains(be.extra, "container_name") {
			fmt.Fprintf(&b, "container_name = \"abproxy-test-%s-%s\"\n", runID, be.name)
		}
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	return cfg, path
}

func plan(t *testing.T, cfg *config.Config, path string, names ...string) *launcher.Plan {
	t.Helper()
	p, err := launcher.NewPlan(cfg, path, names)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// left lists the containers of a config that still exist, and removes
// them at the end of the test whatever happens.
func left(t *testing.T, eng *launcher.Engine, path string) []container.Summary {
	t.Helper()
	cs, err := eng.List(context.Background(), launcher.Selector{ConfigID: launcher.ConfigID(path)})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func cleanupConfig(t *testing.T, eng *launcher.Engine, path string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		eng.Down(ctx, launcher.Selector{ConfigID: launcher.ConfigID(path)}, time.Second) //nolint:errcheck
	})
}

func assertNothingLeft(t *testing.T, eng *launcher.Engine, path string) {
	t.Helper()
	if cs := left(t, eng, path); len(cs) != 0 {
		t.Fatalf("%d container(s) left behind: %v", len(cs), cs[0].Names)
	}
}

func TestLaunchServeDown(t *testing.T) {
	eng := engine(t)
	ctx := context.Background()
	t.Setenv("ABPROXY_TEST_TOKEN", "tok-very-secret-value")
	env := `env = { ABPROXY_TEST_TOKEN = "${ABPROXY_TEST_TOKEN}" }`
	cfg, path := writeConfig(t, testImage,
		backend{name: "baseline", port: freePort(t), extra: env},
		backend{name: "optimized", port: freePort(t), model: "/model"})
	cleanupConfig(t, eng, path)
	p := plan(t, cfg, path)

	start := time.Now()
	metas, err := eng.Launch(ctx, p, launcher.LaunchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("launched 2 backends in %s", time.Since(start).Round(time.Millisecond))
	if len(metas) != 2 {
		t.Fatalf("metas = %d", len(metas))
	}
	for i, m := range metas {
		want := []string{"Qwen/Qwen2.5-14B-Instruct", "/model"}[i]
		if len(m.ServedModels) != 1 || m.ServedModels[0].ID != want || m.ServedModels[0].MaxModelLen <= 0 {
			t.Errorf("%s: served models = %+v", m.Backend, m.ServedModels)
		}
		if m.ServerVersion == "" || !strings.HasPrefix(m.ImageID, "sha256:") || len(m.ContainerID) != 64 ||
			m.Engine == "" || m.StartupSeconds <= 0 || len(m.Warnings) != 0 {
			t.Errorf("%s: metadata = %+v", m.Backend, m)
		}
		if len(m.Command) < 2 || m.Command[0] != "/abproxy" || m.Command[1] != "sim" {
			t.Errorf("%s: command = %v", m.Backend, m.Command)
		}
	}
	if strings.Join(metas[0].EnvNames, ",") != "ABPROXY_TEST_TOKEN" {
		t.Errorf("env names = %v", metas[0].EnvNames)
	}
	// The value reached the container but is in no metadata.
	c, err := eng.Client().ContainerInspect(ctx, metas[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if !containsString(c.Config.Env, "ABPROXY_TEST_TOKEN=tok-very-secret-value") {
		t.Errorf("container env = %v", c.Config.Env)
	}
	st := &launcher.State{Config: p.ConfigPath, Backends: map[string]*launcher.Metadata{}}
	for _, m := range metas {
		st.Backends[m.Backend] = m
	}
	mp := launcher.MetadataPath(path)
	if err := st.Write(mp); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(mp); bytes.Contains(b, []byte("tok-very-secret-value")) || !bytes.Contains(b, []byte(`"max_model_len"`)) {
		t.Errorf("metadata file holds the secret or lacks served models:\n%s", b)
	}

	rows, err := eng.Status(ctx, launcher.Selector{ConfigID: p.ConfigID, Backends: []string{"baseline", "optimized", "absent-one"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[0].Health != "healthy" || rows[1].Health != "healthy" || rows[2].State != "absent" {
		t.Errorf("status = %+v", rows)
	}

	// Traffic straight to a backend, then through `abproxy serve`.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(cfg.Backends[0].URL + "/v1/models")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/models: %v %v", resp, err)
	}
	resp.Body.Close()
	serveThrough(t, path, []string{"baseline", "optimized"})

	removed, err := eng.Down(ctx, launcher.Selector{ConfigID: p.ConfigID}, 5*time.Second)
	if err != nil || len(removed) != 2 {
		t.Fatalf("down: %v, %+v", err, removed)
	}
	assertNothingLeft(t, eng, path)
}

// serveThrough runs `abproxy serve` on the config and sends one chat
// completion to each backend through it.
func serveThrough(t *testing.T, configPath string, backends []string) {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cmd := exec.Command(binPath, "serve", "--config", configPath, "--listen", listen, "--db", filepath.Join(dir, "serve.db"), "--run", "launcher-test")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill() //nolint:errcheck
			<-done
		}
		if t.Failed() {
			t.Logf("abproxy serve output:\n%s", stderr.String())
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("abproxy serve did not listen on %s", listen)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A bounded client: a broken proxy fails the test, it does not hang it.
	hc := &http.Client{Timeout: 15 * time.Second}
	for _, name := range backends {
		for _, stream := range []bool{false, true} {
			body := fmt.Sprintf(`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"hello"}],"max_tokens":8,"stream":%v}`, stream)
			req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-ABProxy-Backend", name)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s through the proxy: %v", name, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-ABProxy-Backend") != name {
				t.Fatalf("%s (stream %v) through the proxy: %s %v\n%s", name, stream, resp.Status, resp.Header, b)
			}
			if stream && !bytes.Contains(b, []byte("data: [DONE]")) || !stream && !bytes.Contains(b, []byte(`"completion_tokens"`)) {
				t.Fatalf("%s (stream %v): unexpected body %s", name, stream, b)
			}
		}
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestImageMissing(t *testing.T) {
	eng := engine(t)
	cfg, path := writeConfig(t, "abproxy-launcher-test-missing:"+runID, backend{name: "baseline", port: freePort(t)})
	cleanupConfig(t, eng, path)
	_, err := eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{})
	if !errors.Is(err, launcher.ErrImageMissing) || !strings.Contains(err.Error(), "docker load -i") || !strings.Contains(err.Error(), "docker build -t") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	// With --pull, from a registry that is not there.
	cfg, path = writeConfig(t, "127.0.0.1:1/abproxy-missing:"+runID, backend{name: "baseline", port: freePort(t)})
	cleanupConfig(t, eng, path)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = eng.Launch(ctx, plan(t, cfg, path), launcher.LaunchOptions{Pull: true})
	if !errors.Is(err, launcher.ErrImageMissing) || !strings.Contains(err.Error(), "pulling it failed") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)
}

func TestPreflightErrors(t *testing.T) {
	eng := engine(t)
	// An unset ${VAR} stops the launch before anything is created, naming
	// the variable.
	cfg, path := writeConfig(t, testImage, backend{name: "baseline", port: freePort(t), extra: `env = { TOKEN = "${ABPROXY_TEST_UNSET_VAR}" }`})
	cleanupConfig(t, eng, path)
	_, err := eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{
		Lookup: func(string) (string, bool) { return "", false },
	})
	if err == nil || err.Error() != "launch baseline: env TOKEN: ${ABPROXY_TEST_UNSET_VAR} is not set in the environment" {
		t.Fatalf("err = %v", err)
	}
	assertNothingLeft(t, eng, path)

	// A model folder that does not exist is refused by the engine, not
	// silently created empty as `docker run -v` would.
	missing := "/nonexistent-abproxy-" + runID
	cfg, path = writeConfig(t, testImage, backend{name: "baseline", port: freePort(t), extra: fmt.Sprintf("volumes = [%q]\n", missing+":/model:ro")})
	cleanupConfig(t, eng, path)
	_, err = eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{})
	if err == nil || !strings.Contains(err.Error(), "does not exist on the Docker host") || !strings.Contains(err.Error(), missing) {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)
	if _, serr := os.Stat(missing); !os.IsNotExist(serr) {
		t.Errorf("%s was created", missing)
	}
}

func TestExitDuringStartup(t *testing.T) {
	eng := engine(t)
	// The first backend comes up; the second exits at once (sim rejects
	// --speedup 0). Both must be gone afterwards.
	cfg, path := writeConfig(t, testImage,
		backend{name: "baseline", port: freePort(t)},
		backend{name: "optimized", port: freePort(t), args: []string{"sim", "--listen", "0.0.0.0:8000", "--speedup", "0"}})
	cleanupConfig(t, eng, path)
	_, err := eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{})
	var se *launcher.StartError
	if !errors.As(err, &se) || !se.Exited || se.ExitCode != 1 || se.Backend != "optimized" {
		t.Fatalf("err = %v (%+v)", err, se)
	}
	if !strings.Contains(err.Error(), "exited with code 1 during start-up") || !strings.Contains(err.Error(), "it was removed") {
		t.Fatalf("message = %v", err)
	}
	if len(se.Logs) == 0 || len(se.Logs) > launcher.TailLines || !strings.Contains(strings.Join(se.Logs, "\n"), "--speedup must be greater than 0") {
		t.Fatalf("logs = %q", se.Logs)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)
}

func TestHealthNeverComes(t *testing.T) {
	eng := engine(t)
	cfg, path := writeConfig(t, testImage, backend{name: "baseline", port: freePort(t), extra: "health_path = \"/never\"\n"})
	cleanupConfig(t, eng, path)
	p := plan(t, cfg, path)
	start := time.Now()
	_, err := eng.Launch(context.Background(), p, launcher.LaunchOptions{StartupTimeout: 2 * time.Second})
	var se *launcher.StartError
	if !errors.As(err, &se) || !se.TimedOut || !strings.Contains(err.Error(), "was not healthy after 2s") ||
		!strings.Contains(err.Error(), "404 Not Found") || !strings.Contains(err.Error(), "it was removed") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("timeout took %s", time.Since(start))
	}
	if !strings.Contains(strings.Join(se.Logs, "\n"), "sim serving") {
		t.Errorf("logs = %q", se.Logs)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)

	// --keep leaves it for inspection; down removes it.
	_, err = eng.Launch(context.Background(), p, launcher.LaunchOptions{StartupTimeout: time.Second, Keep: true})
	if !errors.As(err, &se) || !se.Kept || !strings.Contains(err.Error(), "abproxy down baseline") {
		t.Fatalf("err = %v", err)
	}
	if cs := left(t, eng, path); len(cs) != 1 || cs[0].State != container.StateRunning {
		t.Fatalf("kept containers = %+v", cs)
	}
	if removed, err := eng.Down(context.Background(), launcher.Selector{ConfigID: p.ConfigID}, time.Second); err != nil || len(removed) != 1 {
		t.Fatalf("down: %v %+v", err, removed)
	}
	assertNothingLeft(t, eng, path)
}

func TestHostPortInUse(t *testing.T) {
	eng := engine(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	cfg, path := writeConfig(t, testImage, backend{name: "baseline", port: port})
	cleanupConfig(t, eng, path)
	_, err = eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{})
	if !errors.Is(err, launcher.ErrPortInUse) || !strings.Contains(err.Error(), fmt.Sprintf("host port %d is already in use", port)) {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)
}

func TestEngineUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dead.sock")
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := launcher.Connect(ctx, launcher.Options{})
	if !errors.Is(err, launcher.ErrNoEngine) || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "is dockerd running") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
}

func TestGPUsWithoutNvidiaRuntime(t *testing.T) {
	eng := engine(t)
	info, err := eng.Client().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.Runtimes["nvidia"]; ok {
		t.Skip("this engine has an nvidia runtime")
	}
	cfg, path := writeConfig(t, testImage, backend{name: "baseline", port: freePort(t), extra: "gpus = \"all\"\n"})
	cleanupConfig(t, eng, path)
	_, err = eng.Launch(context.Background(), plan(t, cfg, path), launcher.LaunchOptions{})
	if !errors.Is(err, launcher.ErrNoNvidiaRuntime) || !strings.Contains(err.Error(), "nvidia-ctk runtime configure") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	assertNothingLeft(t, eng, path)
}

func TestDownTouchesOnlyWhatItStarted(t *testing.T) {
	eng := engine(t)
	ctx := context.Background()
	cli := eng.Client()
	// A container abproxy did not start, with the name a backend wants.
	foreign := fmt.Sprintf("abproxy-test-%s-foreign", runID)
	fc, err := cli.ContainerCreate(ctx, &container.Config{Image: testImage, Labels: map[string]string{testRunLabel: runID}}, nil, nil, nil, foreign)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), fc.ID, container.RemoveOptions{Force: true}) }) //nolint:errcheck

	cfg, path := writeConfig(t, testImage,
		backend{name: "baseline", port: freePort(t)},
		backend{name: "optimized", port: freePort(t)},
		backend{name: "clash", port: freePort(t), extra: fmt.Sprintf("container_name = %q\n", foreign)})
	cleanupConfig(t, eng, path)

	// The clash is refused, even with Replace, before anything starts.
	_, err = eng.Launch(ctx, plan(t, cfg, path), launcher.LaunchOptions{Replace: true})
	if !errors.Is(err, launcher.ErrContainerExists) || !strings.Contains(err.Error(), "abproxy did not start it") {
		t.Fatalf("err = %v", err)
	}
	assertNothingLeft(t, eng, path)

	p := plan(t, cfg, path, "baseline", "optimized")
	metas, err := eng.Launch(ctx, p, launcher.LaunchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Launching again is refused; with Replace the container is new.
	if _, err := eng.Launch(ctx, plan(t, cfg, path, "baseline"), launcher.LaunchOptions{}); !errors.Is(err, launcher.ErrContainerExists) ||
		!strings.Contains(err.Error(), "abproxy down baseline") {
		t.Fatalf("relaunch err = %v", err)
	}
	again, err := eng.Launch(ctx, plan(t, cfg, path, "baseline"), launcher.LaunchOptions{Replace: true})
	if err != nil || again[0].ContainerID == metas[0].ContainerID {
		t.Fatalf("replace: %v", err)
	}

	removed, err := eng.Down(ctx, launcher.Selector{ConfigID: p.ConfigID, Backends: []string{"optimized"}}, time.Second)
	if err != nil || len(removed) != 1 || removed[0].Backend != "optimized" {
		t.Fatalf("down optimized: %v %+v", err, removed)
	}
	if cs := left(t, eng, path); len(cs) != 1 || cs[0].Labels[launcher.LabelBackend] != "baseline" {
		t.Fatalf("left = %+v", cs)
	}
	if _, err := eng.Down(ctx, launcher.Selector{ConfigID: p.ConfigID}, time.Second); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, eng, path)
	if _, err := cli.ContainerInspect(ctx, fc.ID); err != nil {
		t.Fatalf("the foreign container is gone: %v", err)
	}
}

// TestCLI drives the commands as a user does, through the static binary.
func TestCLI(t *testing.T) {
	eng := engine(t)
	_, path := writeConfig(t, testImage,
		backend{name: "baseline", port: freePort(t)},
		backend{name: "broken", port: freePort(t), args: []string{"sim", "--speedup", "0"}})
	cleanupConfig(t, eng, path)
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(binPath, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}

	out, errOut, code := run("launch", "--config", path, "baseline")
	if code != 0 || !strings.Contains(out, "baseline healthy at") || !strings.Contains(errOut, "[baseline] ") {
		t.Fatalf("launch: %d\n%s\n%s", code, out, errOut)
	}
	b, err := os.ReadFile(launcher.MetadataPath(path))
	if err != nil || !bytes.Contains(b, []byte(`"container_id"`)) {
		t.Fatalf("metadata file: %v\n%s", err, b)
	}
	out, _, code = run("status", "--config", path)
	if code != 0 || !regexpLine(out, "baseline", "healthy") || !regexpLine(out, "broken", "absent") {
		t.Fatalf("status: %d\n%s", code, out)
	}
	_, errOut, code = run("launch", "--config", path, "nope")
	if code != 1 || !strings.Contains(errOut, `has no backend named "nope"`) {
		t.Fatalf("unknown name: %d\n%s", code, errOut)
	}
	_, errOut, code = run("launch", "--config", path, "broken")
	if code != 1 || !strings.Contains(errOut, "last log line") || !strings.Contains(errOut, "--speedup must be greater than 0") ||
		!strings.Contains(errOut, "exited with code 1 during start-up") {
		t.Fatalf("broken: %d\n%s", code, errOut)
	}
	out, _, code = run("launch", "--config", path, "--dry-run")
	if code != 0 || strings.Count(out, "docker run -d") != 2 {
		t.Fatalf("dry-run: %d\n%s", code, out)
	}
	out, _, code = run("down", "--config", path)
	if code != 0 || !strings.Contains(out, "removed baseline") {
		t.Fatalf("down: %d\n%s", code, out)
	}
	if _, err := os.Stat(launcher.MetadataPath(path)); !os.IsNotExist(err) {
		t.Fatalf("metadata file not removed after down: %v", err)
	}
	assertNothingLeft(t, eng, path)
}

// regexpLine reports whether a line of out contains all the words.
func regexpLine(out string, words ...string) bool {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(sc.Text(), w)
		}
		if ok {
			return true
		}
	}
	return false
}
