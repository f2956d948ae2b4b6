package config

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Launch describes how `abproxy launch` starts a backend as a container
// through the Docker Engine API. Every field maps to one `docker run`
// option, so a hand-typed command can be written down exactly; see
// docs/launcher.md and examples/reference-study.toml.
type Launch struct {
	// Image is the container image, e.g. "vllm/vllm-openai:v0.13.0"
	// (docker run IMAGE). It must already be on the engine unless
	// `abproxy launch --pull` is given.
	Image string `toml:"image"`
	// ContainerName is the container's name (--name); default
	// "abproxy-<backend name>".
	ContainerName string `toml:"container_name"`
	// Entrypoint replaces the image's entrypoint (--entrypoint); empty keeps it.
	Entrypoint string `toml:"entrypoint"`
	// Args are the arguments after the image (the container command); empty
	// keeps the image's default command.
	Args []string `toml:"args"`
	// Env sets container environment variables (-e). Values may use
	// ${VAR}, expanded from abproxy's environment at launch; values are
	// never logged or recorded, only the names.
	Env map[string]string `toml:"env"`
	// GPUs requests GPUs from the nvidia driver (--gpus): "all", a count
	// such as "2", or device ids such as "0,1" (also "device=0,1").
	GPUs string `toml:"gpus"`
	// IPC is the IPC mode (--ipc): "host", "private", "shareable", "none"
	// or "container:NAME"; empty is the engine's default.
	IPC string `toml:"ipc"`
	// ShmSize is the size of /dev/shm (--shm-size), e.g. "16g".
	ShmSize string `toml:"shm_size"`
	// HostIP is the host address the port is published on (-p IP:...);
	// empty publishes on all interfaces, like `-p 8010:8000`.
	HostIP string `toml:"host_ip"`
	// HostPort is the published host port (-p HOST:...); default the port
	// of the backend's url, and it must agree with it.
	HostPort int `toml:"host_port"`
	// ContainerPort is the port the server listens on inside the
	// container (-p ...:CONTAINER); default 8000, vLLM's default.
	ContainerPort int `toml:"container_port"`
	// Volumes are bind mounts written like docker's -v:
	// "/host/path:/container/path[:ro|rw]". Model folders should be ":ro".
	// The host path must exist (unlike `docker run -v`, nothing is created).
	Volumes []string `toml:"volumes"`
	// Labels are extra container labels (--label); keys starting with
	// "abproxy." are reserved.
	Labels map[string]string `toml:"labels"`
	// HealthPath is polled on the backend's url until it answers 200;
	// default "/health".
	HealthPath string `toml:"health_path"`
	// StartupTimeout bounds the wait for a healthy server; default 15m
	// (large models take minutes to load).
	StartupTimeout Duration `toml:"startup_timeout"`
}

// Launch defaults.
const (
	// DefaultContainerPort is vLLM's default listening port.
	DefaultContainerPort = 8000
	// DefaultHealthPath is the health endpoint of vLLM and abproxy sim.
	DefaultHealthPath = "/health"
	// DefaultStartupTimeout is how long launch waits for a healthy server.
	DefaultStartupTimeout = 15 * time.Minute
)

// GPURequest is a parsed Launch.GPUs value.
type GPURequest struct {
	// All is true for "all".
	All bool
	// Count is the number of GPUs for a count request.
	Count int
	// DeviceIDs are the requested device ids (indexes or UUIDs).
	DeviceIDs []string
}

// N is the number of GPUs requested, or -1 for "all", or 0 for none.
func (g GPURequest) N() int {
	switch {
	case g.All:
		return -1
	case len(g.DeviceIDs) > 0:
		return len(g.DeviceIDs)
	}
	return g.Count
}

// ParseGPUs parses a Launch.GPUs value: "", "all", a positive count, or a
// comma-separated list of device ids, optionally written "device=0,1".
func ParseGPUs(s string) (GPURequest, error) {
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), `"`))
	switch {
	case s == "":
		return GPURequest{}, nil
	case s == "all":
		return GPURequest{All: true}, nil
	case strings.HasPrefix(s, "device="):
		return parseDeviceIDs(strings.TrimPrefix(s, "device="), s)
	case strings.Contains(s, ","):
		return parseDeviceIDs(s, s)
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 {
			return GPURequest{}, fmt.Errorf("gpus %q must be a positive count", s)
		}
		return GPURequest{Count: n}, nil
	}
	if strings.HasPrefix(s, "GPU-") || strings.HasPrefix(s, "MIG-") {
		return GPURequest{DeviceIDs: []string{s}}, nil
	}
	return GPURequest{}, fmt.Errorf("gpus %q is not \"all\", a count or device ids such as \"0,1\"", s)
}

func parseDeviceIDs(list, orig string) (GPURequest, error) {
	var ids []string
	for _, id := range strings.Split(list, ",") {
		id = strings.TrimSpace(id)
		if id == "" {
			return GPURequest{}, fmt.Errorf("gpus %q has an empty device id", orig)
		}
		ids = append(ids, id)
	}
	return GPURequest{DeviceIDs: ids}, nil
}

// Volume is a parsed Launch.Volumes entry.
type Volume struct {
	// Source is the absolute host path.
	Source string
	// Target is the absolute path inside the container.
	Target string
	// ReadOnly is true for ":ro".
	ReadOnly bool
	// Mode is the mode as written ("ro", "rw" or "").
	Mode string
}

// ParseVolume parses "/host:/container[:ro|rw]".
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Volume{}, fmt.Errorf("volume %q is not /host/path:/container/path[:ro|rw]", s)
	}
	v := Volume{Source: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		v.Mode = parts[2]
		switch v.Mode {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("volume %q: mode %q is not ro or rw", s, v.Mode)
		}
	}
	if !path.IsAbs(v.Source) {
		return Volume{}, fmt.Errorf("volume %q: host path %q is not absolute (named volumes are not supported)", s, v.Source)
	}
	if !path.IsAbs(v.Target) {
		return Volume{}, fmt.Errorf("volume %q: container path %q is not absolute", s, v.Target)
	}
	return v, nil
}

// ParseSize parses a docker-style size such as "16g", "512m", "1.5GB" or a
// plain byte count; units are binary (k = 1024).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "ib")
	if len(t) > 1 {
		t = strings.TrimSuffix(t, "b")
	}
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("size %q is not a positive size such as \"16g\" or \"512m\"", s)
	}
	return int64(f * float64(mult)), nil
}

var (
	containerNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	envNameRe       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	envRefRe        = regexp.MustCompile(`\$\{([^}]*)\}`)
)

// EnvRefs returns the variable names a value refers to with ${VAR}, or
// an error for a malformed reference.
func EnvRefs(value string) ([]string, error) {
	var names []string
	for _, m := range envRefRe.FindAllStringSubmatch(value, -1) {
		if !envNameRe.MatchString(m[1]) {
			return nil, fmt.Errorf("${%s} is not a valid variable reference", m[1])
		}
		names = append(names, m[1])
	}
	rest := envRefRe.ReplaceAllString(value, "")
	if strings.Contains(rest, "${") {
		return nil, fmt.Errorf("unterminated ${ in value")
	}
	return names, nil
}

// ExpandEnv replaces each ${VAR} in value using lookup; a variable that is
// not set is an error that names it (the value itself is never shown).
func ExpandEnv(value string, lookup func(string) (string, bool)) (string, error) {
	if _, err := EnvRefs(value); err != nil {
		return "", err
	}
	var missing string
	out := envRefRe.ReplaceAllStringFunc(value, func(m string) string {
		name := m[2 : len(m)-1]
		v, ok := lookup(name)
		if !ok && missing == "" {
			missing = name
		}
		return v
	})
	if missing != "" {
		return "", fmt.Errorf("${%s} is not set in the environment", missing)
	}
	return out, nil
}

// ContainerNameFor is the container name for a backend: the configured
// one or "abproxy-<name>".
func (l *Launch) ContainerNameFor(backend string) string {
	if l.ContainerName != "" {
		return l.ContainerName
	}
	return "abproxy-" + backend
}

// validateLaunches fills launch defaults and checks every backend's launch
// section; config.Validate calls it.
func (c *Config) validateLaunches() error {
	names := map[string]string{}
	ports := map[int]string{}
	for i := range c.Backends {
		b := &c.Backends[i]
		if b.Launch == nil {
			continue
		}
		if err := b.Launch.validate(b); err != nil {
			return fmt.Errorf("backend %q: launch.%w", b.Name, err)
		}
		cn := b.Launch.ContainerNameFor(b.Name)
		if other, ok := names[cn]; ok {
			return fmt.Errorf("backends %q and %q both use container name %q", other, b.Name, cn)
		}
		names[cn] = b.Name
		if other, ok := ports[b.Launch.HostPort]; ok {
			return fmt.Errorf("backends %q and %q both publish host port %d", other, b.Name, b.Launch.HostPort)
		}
		ports[b.Launch.HostPort] = b.Name
	}
	return nil
}

// validate checks one launch section and fills its defaults; errors start
// with the key name so the caller can prefix "launch.".
func (l *Launch) validate(b *Backend) error {
	if strings.TrimSpace(l.Image) == "" {
		return fmt.Errorf("image is required")
	}
	if cn := l.ContainerNameFor(b.Name); !containerNameRe.MatchString(cn) {
		return fmt.Errorf("container_name %q is not a valid container name (letters, digits, _ . -)", cn)
	}
	if _, err := ParseGPUs(l.GPUs); err != nil {
		return err
	}
	switch {
	case l.IPC == "", l.IPC == "host", l.IPC == "private", l.IPC == "shareable", l.IPC == "none",
		strings.HasPrefix(l.IPC, "container:") && len(l.IPC) > len("container:"):
	default:
		return fmt.Errorf("ipc %q is not host, private, shareable, none or container:NAME", l.IPC)
	}
	if l.ShmSize != "" {
		if _, err := ParseSize(l.ShmSize); err != nil {
			return fmt.Errorf("shm_size: %w", err)
		}
	}
	if l.HostIP != "" && net.ParseIP(l.HostIP) == nil {
		return fmt.Errorf("host_ip %q is not an IP address", l.HostIP)
	}
	u, err := url.Parse(b.URL)
	if err != nil {
		return fmt.Errorf("host_port: backend url %q does not parse", b.URL)
	}
	urlPort := 0
	if p := u.Port(); p != "" {
		urlPort, _ = strconv.Atoi(p)
	} else if u.Scheme == "https" {
		urlPort = 443
	} else {
		urlPort = 80
	}
	if l.HostPort == 0 {
		l.HostPort = urlPort
	}
	if l.HostPort < 1 || l.HostPort > 65535 {
		return fmt.Errorf("host_port %d is not a port number", l.HostPort)
	}
	if l.HostPort != urlPort {
		return fmt.Errorf("host_port %d differs from the port of url %q; they must agree so the proxy reaches the container", l.HostPort, b.URL)
	}
	if l.ContainerPort == 0 {
		l.ContainerPort = DefaultContainerPort
	}
	if l.ContainerPort < 1 || l.ContainerPort > 65535 {
		return fmt.Errorf("container_port %d is not a port number", l.ContainerPort)
	}
	for _, v := range l.Volumes {
		if _, err := ParseVolume(v); err != nil {
			return fmt.Errorf("volumes: %w", err)
		}
	}
	for k, v := range l.Env {
		if !envNameRe.MatchString(k) {
			return fmt.Errorf("env: %q is not a valid variable name", k)
		}
		if _, err := EnvRefs(v); err != nil {
			return fmt.Errorf("env.%s: %w", k, err)
		}
	}
	for k := range l.Labels {
		if k == "" || strings.HasPrefix(k, "abproxy.") {
			return fmt.Errorf("labels: key %q is empty or uses the reserved prefix \"abproxy.\"", k)
		}
	}
	if l.HealthPath == "" {
		l.HealthPath = DefaultHealthPath
	}
	if !strings.HasPrefix(l.HealthPath, "/") {
		return fmt.Errorf("health_path %q must start with /", l.HealthPath)
	}
	if l.StartupTimeout.Duration == 0 {
		l.StartupTimeout.Duration = DefaultStartupTimeout
	}
	if l.StartupTimeout.Duration < 0 {
		return fmt.Errorf("startup_timeout must not be negative")
	}
	return nil
}
