package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/go-connections/nat"
	"go.uber.org/zap"
)

// LaunchOptions tune Engine.Launch.
type LaunchOptions struct {
	// Keep leaves containers that failed to start (and those started
	// before them in the same call) in place for inspection.
	Keep bool
	// Replace removes an existing abproxy container of the same name
	// first; containers abproxy did not start are never touched.
	Replace bool
	// Pull fetches images that are not on the engine from their registry.
	Pull bool
	// StartupTimeout, when positive, overrides every spec's startup timeout.
	StartupTimeout time.Duration
	// Lookup reads the environment for ${VAR} expansion; nil is os.LookupEnv.
	Lookup func(string) (string, bool)
}

// StartError is a container that did not become healthy: it exited during
// start-up, or its health check never passed in time.
type StartError struct {
	// Backend is the backend name.
	Backend string
	// Container is the container name.
	Container string
	// Exited is true when the container stopped during start-up.
	Exited bool
	// ExitCode is its exit code when Exited.
	ExitCode int
	// OOMKilled is true when the kernel killed it for lack of memory.
	OOMKilled bool
	// TimedOut is true when the health check did not pass within Timeout.
	TimedOut bool
	// Timeout is the startup timeout that passed.
	Timeout time.Duration
	// LastCheck is the outcome of the last health check.
	LastCheck string
	// Logs are the container's last TailLines log lines.
	Logs []string
	// Kept is true when the container was left in place (--keep).
	Kept bool
}

// Error is one sentence; the logs are in Logs.
func (e *StartError) Error() string {
	var what string
	if e.Exited {
		what = fmt.Sprintf("container %s exited with code %d during start-up", e.Container, e.ExitCode)
		if e.OOMKilled {
			what += " (killed for lack of memory)"
		}
	} else {
		what = fmt.Sprintf("container %s was not healthy after %s (last check: %s)", e.Container, e.Timeout, e.LastCheck)
	}
	if e.Kept {
		return what + "; it was kept for inspection, `abproxy down " + e.Backend + "` removes it"
	}
	return what + "; it was removed (--keep keeps it)"
}

// Launch starts the plan's containers one after the other and waits for
// each to be healthy. Before creating anything it checks every spec: the
// environment variables, the images, the nvidia runtime when GPUs are
// requested, name clashes and host ports. While a container starts its
// output goes to the Engine's LogOutput. When one fails, the containers
// this call created are removed unless o.Keep is set, so a failed launch
// leaves nothing behind. It returns one Metadata per healthy container.
func (e *Engine) Launch(ctx context.Context, p *Plan, o LaunchOptions) ([]*Metadata, error) {
	lookup := o.Lookup
	if lookup == nil {
		lookup = os.LookupEnv
	}
	specs := p.Specs
	envs := make([][]string, len(specs))
	images := map[string]image.InspectResponse{}
	var gpuSpec *Spec
	for i := range specs {
		s := &specs[i]
		env, err := s.expandEnv(lookup)
		if err != nil {
			return nil, fmt.Errorf("launch %s: %w", s.Backend, err)
		}
		envs[i] = env
		if _, ok := images[s.Image]; !ok {
			img, err := e.ensureImage(ctx, s.Image, o.Pull)
			if err != nil {
				return nil, fmt.Errorf("launch %s: %w", s.Backend, err)
			}
			images[s.Image] = img
		}
		if s.GPURequest.N() != 0 && gpuSpec == nil {
			gpuSpec = s
		}
	}
	if gpuSpec != nil {
		if err := e.checkNvidia(ctx, gpuSpec); err != nil {
			return nil, fmt.Errorf("launch %s: %w", gpuSpec.Backend, err)
		}
	}
	replace := make([]string, len(specs))
	for i := range specs {
		s := &specs[i]
		id, err := e.existing(ctx, s, o.Replace)
		if err != nil {
			return nil, fmt.Errorf("launch %s: %w", s.Backend, err)
		}
		replace[i] = id
		if id == "" {
			if err := e.checkPort(s); err != nil {
				return nil, fmt.Errorf("launch %s: %w", s.Backend, err)
			}
		}
	}

	var created []string
	var metas []*Metadata
	fail := func(s *Spec, err error) ([]*Metadata, error) {
		var se *StartError
		if errors.As(err, &se) {
			se.Kept = o.Keep
		}
		if !o.Keep && len(created) > 0 {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			for _, id := range created {
				if rerr := e.remove(cctx, id, 10*time.Second); rerr != nil {
					e.log.Warn("could not remove container", zap.String("id", shortID(id)), zap.Error(rerr))
				}
			}
			if len(created) > 1 {
				e.log.Info("removed the containers this launch started", zap.Int("count", len(created)))
			}
		}
		return nil, fmt.Errorf("launch %s: %w", s.Backend, err)
	}
	for i := range specs {
		s := &specs[i]
		if replace[i] != "" {
			e.log.Info("replacing container", zap.String("backend", s.Backend), zap.String("container", s.ContainerName))
			if err := e.remove(ctx, replace[i], 30*time.Second); err != nil {
				return fail(s, fmt.Errorf("remove the old container %s: %w", s.ContainerName, err))
			}
			if err := e.checkPort(s); err != nil {
				return fail(s, err)
			}
		}
		timeout := s.StartupTimeout
		if o.StartupTimeout > 0 {
			timeout = o.StartupTimeout
		}
		md, id, err := e.startOne(ctx, s, envs[i], images[s.Image], timeout)
		if id != "" {
			created = append(created, id)
		}
		if err != nil {
			return fail(s, err)
		}
		md.Findings = findingsFor(p.Findings, s.Backend)
		metas = append(metas, md)
	}
	return metas, nil
}

func findingsFor(fs []Finding, backend string) []Finding {
	var out []Finding
	for _, f := range fs {
		for _, b := range strings.Split(f.Backend, ", ") {
			if b == backend {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// ensureImage returns the image's inspect data, pulling it when allowed.
func (e *Engine) ensureImage(ctx context.Context, ref string, pull bool) (image.InspectResponse, error) {
	img, err := e.cli.ImageInspect(ctx, ref)
	if err == nil {
		return img, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return img, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	hint := fmt.Sprintf("load it with `docker load -i FILE.tar` (a `docker save %s` from a machine that has it) or build it with `docker build -t %s .`", ref, ref)
	if !pull {
		return img, kindErrorf(ErrImageMissing, "image %s is not on the Docker engine; %s, or pass --pull to fetch it from its registry", ref, hint)
	}
	e.log.Info("pulling image", zap.String("image", ref))
	if err := e.pull(ctx, ref); err != nil {
		return img, kindErrorf(ErrImageMissing, "image %s is not on the Docker engine and pulling it failed (%v); %s", ref, err, hint)
	}
	img, err = e.cli.ImageInspect(ctx, ref)
	if err != nil {
		return img, fmt.Errorf("inspect image %s after pulling it: %w", ref, err)
	}
	return img, nil
}

// pull fetches an image and reports the error the progress stream carries.
func (e *Engine) pull(ctx context.Context, ref string) error {
	rc, err := e.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// checkNvidia fails when GPUs are requested and the engine has no nvidia
// runtime, before anything is created.
func (e *Engine) checkNvidia(ctx context.Context, s *Spec) error {
	info, err := e.cli.Info(ctx)
	if err != nil {
		return fmt.Errorf("read the Docker engine's info: %w", err)
	}
	if _, ok := info.Runtimes["nvidia"]; ok {
		return nil
	}
	return kindErrorf(ErrNoNvidiaRuntime, "gpus = %q asks for GPUs but the Docker engine at %s has no nvidia runtime; install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure --runtime=docker` and restart dockerd", s.GPUs, e.host)
}

// existing looks for a container with the spec's name. It returns the id
// of an abproxy container to replace, or an error when one is in the way.
func (e *Engine) existing(ctx context.Context, s *Spec, replace bool) (string, error) {
	c, err := e.cli.ContainerInspect(ctx, s.ContainerName)
	if cerrdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inspect container %s: %w", s.ContainerName, err)
	}
	if c.ContainerJSONBase == nil || c.Name != "/"+s.ContainerName {
		return "", nil // the engine matched an id prefix, not the name
	}
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	if labels[LabelManaged] != "true" {
		return "", kindErrorf(ErrContainerExists, "a container named %s already exists and abproxy did not start it; remove or rename it, or set launch.container_name", s.ContainerName)
	}
	if !replace {
		return "", kindErrorf(ErrContainerExists, "container %s already exists (abproxy started it for backend %s); run `abproxy down %s` first or pass --replace", s.ContainerName, labels[LabelBackend], s.Backend)
	}
	return c.ID, nil
}

// checkPort fails when the host port is taken. It can only look when the
// engine runs on this machine; otherwise the engine's own error is
// translated when the container starts.
func (e *Engine) checkPort(s *Spec) error {
	if !e.local() {
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.HostIP, strconv.Itoa(s.HostPort)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return portInUse(s)
		}
		return nil // e.g. a privileged port: the engine can bind it, we cannot.
	}
	ln.Close()
	return nil
}

func portInUse(s *Spec) error {
	return kindErrorf(ErrPortInUse, "host port %d is already in use; stop what holds it or change the backend's url and launch.host_port", s.HostPort)
}

// translate turns the engine's create/start errors into one sentence.
func (e *Engine) translate(s *Spec, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use"):
		return portInUse(s)
	case strings.Contains(msg, "could not select device driver"):
		return kindErrorf(ErrNoNvidiaRuntime, "gpus = %q asks for GPUs but the Docker engine at %s cannot provide them (%s); install the NVIDIA Container Toolkit and configure it for docker", s.GPUs, e.host, msg)
	case strings.Contains(msg, "bind source path does not exist"):
		path := strings.TrimSpace(msg[strings.LastIndex(msg, ": ")+2:])
		return fmt.Errorf("volume host path %s does not exist on the Docker host; check launch.volumes", path)
	}
	return err
}

// startOne creates and starts one container and waits for it to be healthy.
// It returns the container id as soon as one exists, even with an error.
func (e *Engine) startOne(ctx context.Context, s *Spec, env []string, img image.InspectResponse, timeout time.Duration) (*Metadata, string, error) {
	port := nat.Port(strconv.Itoa(s.ContainerPort) + "/tcp")
	cfg := &container.Config{
		Image:        s.Image,
		Env:          env,
		Labels:       s.Labels,
		ExposedPorts: nat.PortSet{port: struct{}{}},
	}
	if len(s.Args) > 0 {
		cfg.Cmd = s.Args
	}
	if s.Entrypoint != "" {
		cfg.Entrypoint = []string{s.Entrypoint}
	}
	hc := &container.HostConfig{
		PortBindings: nat.PortMap{port: []nat.PortBinding{{HostIP: s.HostIP, HostPort: strconv.Itoa(s.HostPort)}}},
		IpcMode:      container.IpcMode(s.IPC),
		ShmSize:      s.ShmBytes,
	}
	for _, v := range s.Volumes {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	if g := s.GPURequest; g.N() != 0 {
		dr := container.DeviceRequest{Driver: "nvidia", Capabilities: [][]string{{"gpu"}}}
		switch {
		case g.All:
			dr.Count = -1
		case len(g.DeviceIDs) > 0:
			dr.DeviceIDs = g.DeviceIDs
		default:
			dr.Count = g.Count
		}
		hc.DeviceRequests = []container.DeviceRequest{dr}
	}
	e.log.Info("creating container", zap.String("backend", s.Backend), zap.String("container", s.ContainerName),
		zap.String("image", s.Image), zap.Strings("env", s.EnvNames()))
	resp, err := e.cli.ContainerCreate(ctx, cfg, hc, nil, nil, s.ContainerName)
	if err != nil {
		return nil, "", fmt.Errorf("create container %s: %w", s.ContainerName, e.translate(s, err))
	}
	id := resp.ID
	for _, w := range resp.Warnings {
		e.log.Warn("engine warning", zap.String("backend", s.Backend), zap.String("warning", w))
	}
	if err := e.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return nil, id, fmt.Errorf("start container %s: %w", s.ContainerName, e.translate(s, err))
	}
	startedAt := time.Now()
	logCtx, stopLogs := context.WithCancel(ctx)
	logsDone := e.streamLogs(logCtx, id, s.Backend)
	defer func() { stopLogs(); <-logsDone }()

	e.log.Info("waiting for health", zap.String("backend", s.Backend), zap.String("url", s.HealthURL), zap.Duration("timeout", timeout))
	if err := e.waitHealthy(ctx, s, id, timeout); err != nil {
		return nil, id, err
	}
	healthyAt := time.Now()
	stopLogs()
	<-logsDone
	md := e.metadata(ctx, s, id, img, startedAt, healthyAt)
	e.log.Info("healthy", zap.String("backend", s.Backend), zap.String("container", shortID(id)),
		zap.Duration("startup", healthyAt.Sub(startedAt).Round(time.Millisecond)), zap.String("url", s.URL))
	return md, id, nil
}

// waitHealthy polls the container's state and its health URL until the
// URL answers 200, the container exits, or the timeout passes.
func (e *Engine) waitHealthy(ctx context.Context, s *Spec, id string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	interval := 100 * time.Millisecond
	last := "none yet"
	for {
		c, err := e.cli.ContainerInspect(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted while waiting for container %s: %w", s.ContainerName, ctx.Err())
			}
			return fmt.Errorf("inspect container %s: %w", s.ContainerName, err)
		}
		if st := c.State; st != nil && !st.Running && (st.Status == container.StateExited || st.Status == container.StateDead) {
			return &StartError{Backend: s.Backend, Container: s.ContainerName, Exited: true, ExitCode: st.ExitCode,
				OOMKilled: st.OOMKilled, Logs: e.tail(context.WithoutCancel(ctx), id, TailLines)}
		}
		ok, why := checkHealth(ctx, hc, s.HealthURL)
		if ok {
			return nil
		}
		last = why
		left := time.Until(deadline)
		if left <= 0 {
			return &StartError{Backend: s.Backend, Container: s.ContainerName, TimedOut: true, Timeout: timeout,
				LastCheck: last, Logs: e.tail(context.WithoutCancel(ctx), id, TailLines)}
		}
		t := time.NewTimer(min(interval, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("interrupted while waiting for container %s: %w", s.ContainerName, ctx.Err())
		case <-t.C:
		}
		interval = min(interval*3/2, 2*time.Second)
	}
}

// checkHealth GETs url; ok when it answers 200, else a short reason.
func checkHealth(ctx context.Context, hc *http.Client, url string) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		switch {
		case errors.As(err, &op) && op.Err != nil:
			return false, "GET " + url + ": " + op.Err.Error()
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return false, "GET " + url + ": connection closed before an answer"
		}
		return false, "GET " + url + ": " + err.Error()
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) //nolint:errcheck
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	return false, "GET " + url + ": " + resp.Status
}

// remove stops (with a grace period) and removes a container and its
// anonymous volumes.
func (e *Engine) remove(ctx context.Context, id string, grace time.Duration) error {
	secs := int(grace / time.Second)
	if err := e.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
		e.log.Debug("stop failed, removing by force", zap.String("id", shortID(id)), zap.Error(err))
	}
	err := e.cli.ContainerRemove(ctx, id, container.RemoveOptions{RemoveVolumes: true, Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
