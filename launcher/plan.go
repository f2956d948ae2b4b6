package launcher

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/abproxy/abproxy/config"
)

// Labels abproxy puts on every container it creates. Down and Status select
// containers by LabelManaged and never touch a container without it.
const (
	// LabelManaged is "true" on every container abproxy started.
	LabelManaged = "abproxy.managed"
	// LabelBackend is the backend name from the config.
	LabelBackend = "abproxy.backend"
	// LabelConfig is ConfigID of the config file the container came from.
	LabelConfig = "abproxy.config"
	// LabelConfigPath is the absolute path of that config file.
	LabelConfigPath = "abproxy.config_path"
	// LabelHealthURL is the URL Status polls for the container's health.
	LabelHealthURL = "abproxy.health_url"
)

// ErrUnknownBackend is returned when a name on the command line is not a
// backend of the config, or has no launch section.
var ErrUnknownBackend = errors.New("unknown backend")

// EnvVar is one container environment variable as configured. Value is the
// unexpanded template (it may hold ${VAR} references); it is expanded only
// when the container is created and is never printed.
type EnvVar struct {
	// Name is the variable name.
	Name string
	// Value is the template from the config.
	Value string
}

// Spec is one backend container, resolved from the config: everything
// Engine.Launch needs and everything Spec.DockerRun prints.
type Spec struct {
	// Backend is the backend name.
	Backend string
	// URL is the backend's base URL, as the proxy reaches it.
	URL string
	// Model is the backend's configured model name (backend.model).
	Model string
	// APIKey is the backend's api_key, sent when probing /v1/models; never recorded.
	APIKey string
	// ContainerName is the container's name.
	ContainerName string
	// Image is the image reference as configured.
	Image string
	// Entrypoint replaces the image's entrypoint when not empty.
	Entrypoint string
	// Args is the container command (after the image).
	Args []string
	// Env are the environment variables, sorted by name.
	Env []EnvVar
	// GPUs is the GPU request as configured ("all", "2", "0,1" or "").
	GPUs string
	// GPURequest is GPUs parsed.
	GPURequest config.GPURequest
	// IPC is the IPC mode ("" for the engine default).
	IPC string
	// ShmSize is the /dev/shm size as configured.
	ShmSize string
	// ShmBytes is ShmSize in bytes (0 for the engine default).
	ShmBytes int64
	// HostIP is the host address the port is published on ("" = all).
	HostIP string
	// HostPort is the published host port.
	HostPort int
	// ContainerPort is the server's port inside the container.
	ContainerPort int
	// Volumes are the bind mounts.
	Volumes []config.Volume
	// Labels are the container labels: the configured ones plus abproxy's.
	Labels map[string]string
	// HealthURL is polled until it answers 200.
	HealthURL string
	// StartupTimeout bounds the wait for HealthURL.
	StartupTimeout time.Duration
}

// EnvNames lists the names of the configured environment variables.
func (s *Spec) EnvNames() []string {
	out := make([]string, len(s.Env))
	for i, e := range s.Env {
		out[i] = e.Name
	}
	return out
}

// Plan is the set of containers one command acts on.
type Plan struct {
	// ConfigPath is the absolute path of the config file.
	ConfigPath string
	// ConfigID is ConfigID(ConfigPath), the value of LabelConfig.
	ConfigID string
	// Specs are the selected backends, in config order.
	Specs []Spec
	// Findings are the vLLM argument check's results for Specs.
	Findings []Finding
}

// ConfigID is a short stable id of a config file path: the first 12 hex
// digits of the SHA-256 of its absolute path. It scopes launch, status and
// down to the containers started from one config.
func ConfigID(configPath string) string {
	abs, err := filepath.Abs(configPath)
	if err != nil {
		abs = configPath
	}
	sum := sha256.Sum256([]byte(abs))
	return hex.EncodeToString(sum[:])[:12]
}

// SelectBackends returns the backends the command line names, in config
// order; with no names, every backend that has a launch section. A name
// the config lacks, or one without a launch section when requireLaunch is
// set, is an ErrUnknownBackend.
func SelectBackends(cfg *config.Config, configPath string, names []string, requireLaunch bool) ([]config.Backend, error) {
	if len(names) == 0 {
		var out []config.Backend
		for _, b := range cfg.Backends {
			if b.Launch != nil {
				out = append(out, b)
			}
		}
		if len(out) == 0 && requireLaunch {
			return nil, kindErrorf(ErrUnknownBackend, "no backend in %s has a [backend.launch] section", configPath)
		}
		return out, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		b, ok := cfg.Backend(n)
		if !ok {
			return nil, kindErrorf(ErrUnknownBackend, "%s has no backend named %q (it has %s)", configPath, n, strings.Join(cfg.BackendNames(), ", "))
		}
		if requireLaunch && b.Launch == nil {
			return nil, kindErrorf(ErrUnknownBackend, "backend %q in %s has no [backend.launch] section, so abproxy cannot start it", n, configPath)
		}
		want[n] = true
	}
	var out []config.Backend
	for _, b := range cfg.Backends {
		if want[b.Name] {
			out = append(out, b)
		}
	}
	return out, nil
}

// NewPlan resolves the launch sections of the named backends (all that
// have one when names is empty) into Specs and runs the vLLM argument
// check over them. It needs no Docker engine. cfg must be validated
// (config.Load does it), which fills the launch defaults.
func NewPlan(cfg *config.Config, configPath string, names []string) (*Plan, error) {
	abs, err := filepath.Abs(configPath)
	if err != nil {
		return nil, fmt.Errorf("config path %q: %w", configPath, err)
	}
	bs, err := SelectBackends(cfg, configPath, names, true)
	if err != nil {
		return nil, err
	}
	p := &Plan{ConfigPath: abs, ConfigID: ConfigID(abs)}
	for _, b := range bs {
		s, err := newSpec(b, abs, p.ConfigID)
		if err != nil {
			return nil, fmt.Errorf("backend %q: %w", b.Name, err)
		}
		p.Specs = append(p.Specs, s)
	}
	p.Findings = Check(p.Specs)
	return p, nil
}

func newSpec(b config.Backend, configPath, configID string) (Spec, error) {
	l := b.Launch
	s := Spec{
		Backend:        b.Name,
		URL:            strings.TrimRight(b.URL, "/"),
		Model:          b.Model,
		APIKey:         b.APIKey,
		ContainerName:  l.ContainerNameFor(b.Name),
		Image:          l.Image,
		Entrypoint:     l.Entrypoint,
		Args:           append([]string(nil), l.Args...),
		GPUs:           l.GPUs,
		IPC:            l.IPC,
		ShmSize:        l.ShmSize,
		HostIP:         l.HostIP,
		HostPort:       l.HostPort,
		ContainerPort:  l.ContainerPort,
		StartupTimeout: l.StartupTimeout.Duration,
	}
	// Defaults for a Launch that did not go through config.Validate.
	if s.ContainerPort == 0 {
		s.ContainerPort = config.DefaultContainerPort
	}
	if s.StartupTimeout == 0 {
		s.StartupTimeout = config.DefaultStartupTimeout
	}
	health := l.HealthPath
	if health == "" {
		health = config.DefaultHealthPath
	}
	s.HealthURL = s.URL + health
	var err error
	if s.GPURequest, err = config.ParseGPUs(l.GPUs); err != nil {
		return Spec{}, err
	}
	if l.ShmSize != "" {
		if s.ShmBytes, err = config.ParseSize(l.ShmSize); err != nil {
			return Spec{}, err
		}
	}
	for _, v := range l.Volumes {
		vol, err := config.ParseVolume(v)
		if err != nil {
			return Spec{}, err
		}
		s.Volumes = append(s.Volumes, vol)
	}
	for k, v := range l.Env {
		s.Env = append(s.Env, EnvVar{Name: k, Value: v})
	}
	sort.Slice(s.Env, func(i, j int) bool { return s.Env[i].Name < s.Env[j].Name })
	s.Labels = map[string]string{}
	for k, v := range l.Labels {
		s.Labels[k] = v
	}
	s.Labels[LabelManaged] = "true"
	s.Labels[LabelBackend] = b.Name
	s.Labels[LabelConfig] = configID
	s.Labels[LabelConfigPath] = configPath
	s.Labels[LabelHealthURL] = s.HealthURL
	return s, nil
}

// expandEnv returns the container environment as KEY=VALUE with every
// ${VAR} expanded through lookup. Errors name the variable, never a value.
func (s *Spec) expandEnv(lookup func(string) (string, bool)) ([]string, error) {
	out := make([]string, 0, len(s.Env))
	for _, e := range s.Env {
		v, err := config.ExpandEnv(e.Value, lookup)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		out = append(out, e.Name+"="+v)
	}
	return out, nil
}
