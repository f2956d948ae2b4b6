package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"go.uber.org/zap"
)

// Metadata records exactly what ran for one backend: the container, the
// image by id and digest, the full command, the names (never the values)
// of its environment variables, and what the server reported about
// itself once healthy. Runs and reports embed it; Engine.Launch returns
// it and State keeps it in a JSON file next to the config.
type Metadata struct {
	// Backend is the backend name.
	Backend string `json:"backend"`
	// URL is the backend's base URL.
	URL string `json:"url"`
	// Container is the container name.
	Container string `json:"container"`
	// ContainerID is the container's full id.
	ContainerID string `json:"container_id"`
	// Image is the image reference as configured.
	Image string `json:"image"`
	// ImageID is the local image id ("sha256:…").
	ImageID string `json:"image_id"`
	// ImageDigests are the image's registry digests ("repo@sha256:…"),
	// empty for images that were built or loaded locally.
	ImageDigests []string `json:"image_digests,omitempty"`
	// Command is the full command the engine runs: entrypoint then
	// arguments, after merging with the image's defaults (secret flag
	// values redacted).
	Command []string `json:"command"`
	// DockerRun is the equivalent `docker run` command.
	DockerRun string `json:"docker_run"`
	// EnvNames are the names of the variables set from the config.
	EnvNames []string `json:"env_names,omitempty"`
	// GPUs is the GPU request as configured.
	GPUs string `json:"gpus,omitempty"`
	// Labels are the container's labels.
	Labels map[string]string `json:"labels"`
	// Engine is the Docker engine version.
	Engine string `json:"engine"`
	// StartedAt is when the container was started.
	StartedAt time.Time `json:"started_at"`
	// HealthyAt is when its health check first passed.
	HealthyAt time.Time `json:"healthy_at"`
	// StartupSeconds is HealthyAt − StartedAt in seconds.
	StartupSeconds float64 `json:"startup_seconds"`
	// ServedModels are the server's /v1/models entries.
	ServedModels []ServedModel `json:"served_models"`
	// ServerVersion is the "version" field of the server's /version.
	ServerVersion string `json:"server_version,omitempty"`
	// Findings are the vLLM argument check's results for this backend.
	Findings []Finding `json:"findings,omitempty"`
	// Warnings are problems seen after start-up (probe failures, a model
	// the proxy would ask for that the server does not serve).
	Warnings []string `json:"warnings,omitempty"`
}

// ServedModel is one entry of a server's /v1/models.
type ServedModel struct {
	// ID is the model name clients send.
	ID string `json:"id"`
	// Root is the model it was loaded from (vLLM).
	Root string `json:"root,omitempty"`
	// MaxModelLen is the context length (vLLM's max_model_len).
	MaxModelLen int `json:"max_model_len,omitempty"`
}

// metadata builds a healthy container's Metadata, probing the server's
// /v1/models and /version. Probe failures become Warnings, not errors.
func (e *Engine) metadata(ctx context.Context, s *Spec, id string, img image.InspectResponse, startedAt, healthyAt time.Time) *Metadata {
	md := &Metadata{
		Backend: s.Backend, URL: s.URL, Container: s.ContainerName, ContainerID: id,
		Image: s.Image, ImageID: img.ID, ImageDigests: img.RepoDigests,
		DockerRun: s.DockerRun(), EnvNames: s.EnvNames(), GPUs: s.GPUs, Labels: s.Labels,
		Engine: e.version, StartedAt: startedAt.UTC(), HealthyAt: healthyAt.UTC(),
		StartupSeconds: healthyAt.Sub(startedAt).Seconds(),
	}
	if c, err := e.cli.ContainerInspect(ctx, id); err == nil && c.ContainerJSONBase != nil {
		md.Command = RedactArgs(append([]string{c.Path}, c.Args...))
	} else {
		md.Command = RedactArgs(append(strings.Fields(s.Entrypoint), s.Args...))
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	var models struct {
		Data []ServedModel `json:"data"`
	}
	if err := getJSON(ctx, hc, s.URL+"/v1/models", s.APIKey, &models); err != nil {
		md.Warnings = append(md.Warnings, "could not list served models: "+err.Error())
	}
	md.ServedModels = models.Data
	var ver struct {
		Version string `json:"version"`
	}
	if err := getJSON(ctx, hc, s.URL+"/version", s.APIKey, &ver); err != nil {
		md.Warnings = append(md.Warnings, "could not read the server version: "+err.Error())
	}
	md.ServerVersion = ver.Version
	if s.Model != "" && len(md.ServedModels) > 0 {
		found := false
		var ids []string
		for _, m := range md.ServedModels {
			ids = append(ids, m.ID)
			found = found || m.ID == s.Model
		}
		if !found {
			md.Warnings = append(md.Warnings, fmt.Sprintf("the proxy sends model %q but the server serves %s; set backend.model to one of them", s.Model, quoteList(ids)))
		}
	}
	for _, w := range md.Warnings {
		e.log.Warn(w, zap.String("backend", s.Backend))
	}
	return md
}

func getJSON(ctx context.Context, hc *http.Client, url, apiKey string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// State is the launch metadata file: what `abproxy launch` started from
// one config, by backend name. `abproxy launch` merges into it and
// `abproxy down` deletes the entries of what it removed. Runs and reports
// read it with ReadState(MetadataPath(config)).
type State struct {
	// Config is the absolute path of the config file.
	Config string `json:"config"`
	// UpdatedAt is when the file was last written.
	UpdatedAt time.Time `json:"updated_at"`
	// Backends are the launched backends by name.
	Backends map[string]*Metadata `json:"backends"`
}

// MetadataPath is where the launch metadata of a config is kept: next to
// the config, named after it with ".launch.json", e.g. config.toml →
// config.launch.json.
func MetadataPath(configPath string) string {
	dir, base := filepath.Split(configPath)
	if ext := filepath.Ext(base); ext != "" {
		base = strings.TrimSuffix(base, ext)
	}
	return filepath.Join(dir, base+".launch.json")
}

// ReadState reads a launch metadata file; a file that does not exist is
// an empty State.
func ReadState(path string) (*State, error) {
	st := &State{Backends: map[string]*Metadata{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read launch metadata: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("launch metadata %s is not valid JSON: %w", path, err)
	}
	if st.Backends == nil {
		st.Backends = map[string]*Metadata{}
	}
	return st, nil
}

// Write writes the state to path atomically; with no backends left it
// removes the file instead.
func (st *State) Write(path string) error {
	if len(st.Backends) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove launch metadata: %w", err)
		}
		return nil
	}
	st.UpdatedAt = time.Now().UTC()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode launch metadata: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write launch metadata: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write launch metadata: %w", err)
	}
	return nil
}
