package launcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"go.uber.org/zap"
)

// Selector picks containers abproxy started. Only containers labelled
// LabelManaged=true are ever selected.
type Selector struct {
	// ConfigID limits the selection to one config's containers ("" = any).
	ConfigID string
	// Backends limits it to these backend names (empty = all).
	Backends []string
}

// List returns the containers abproxy started that the selector picks,
// running or not, sorted by backend name.
func (e *Engine) List(ctx context.Context, sel Selector) ([]container.Summary, error) {
	args := filters.NewArgs(filters.Arg("label", LabelManaged+"=true"))
	if sel.ConfigID != "" {
		args.Add("label", LabelConfig+"="+sel.ConfigID)
	}
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: args})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	want := map[string]bool{}
	for _, b := range sel.Backends {
		want[b] = true
	}
	var out []container.Summary
	for _, c := range cs {
		if len(want) == 0 || want[c.Labels[LabelBackend]] {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Labels[LabelBackend] < out[j].Labels[LabelBackend] })
	return out, nil
}

// Removed is a container Down removed.
type Removed struct {
	// Backend is the backend name from the container's label.
	Backend string
	// Container is the container name.
	Container string
	// ID is the container id.
	ID string
}

// Down stops (giving each stopTimeout to exit) and removes the containers
// abproxy started that the selector picks, and nothing else. It removes
// what it can and reports every failure.
func (e *Engine) Down(ctx context.Context, sel Selector, stopTimeout time.Duration) ([]Removed, error) {
	cs, err := e.List(ctx, sel)
	if err != nil {
		return nil, err
	}
	var out []Removed
	var errs []error
	for _, c := range cs {
		r := Removed{Backend: c.Labels[LabelBackend], Container: containerName(c), ID: c.ID}
		e.log.Info("removing container", zap.String("backend", r.Backend), zap.String("container", r.Container), zap.String("state", string(c.State)))
		if err := e.remove(ctx, c.ID, stopTimeout); err != nil {
			errs = append(errs, fmt.Errorf("remove container %s (backend %s): %w", r.Container, r.Backend, err))
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

// Status is one backend container as `abproxy status` shows it.
type Status struct {
	// Backend is the backend name.
	Backend string `json:"backend"`
	// Container is the container name ("" when there is none).
	Container string `json:"container,omitempty"`
	// ContainerID is the container id.
	ContainerID string `json:"container_id,omitempty"`
	// Image is the image reference.
	Image string `json:"image,omitempty"`
	// State is the engine's state ("running", "exited", …) or "absent".
	State string `json:"state"`
	// Detail is the engine's status text, e.g. "Up 3 minutes".
	Detail string `json:"detail,omitempty"`
	// Health is "healthy", "unhealthy: <reason>", or "-" when not running.
	Health string `json:"health"`
	// HealthURL is the URL polled for Health.
	HealthURL string `json:"health_url,omitempty"`
	// ConfigPath is the config the container was launched from.
	ConfigPath string `json:"config,omitempty"`
}

// Status lists the containers the selector picks with their health (a GET
// of each running container's health URL). Backends named in the selector
// that have no container are listed as "absent".
func (e *Engine) Status(ctx context.Context, sel Selector) ([]Status, error) {
	cs, err := e.List(ctx, sel)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 3 * time.Second}
	seen := map[string]bool{}
	var out []Status
	for _, c := range cs {
		st := Status{
			Backend: c.Labels[LabelBackend], Container: containerName(c), ContainerID: shortID(c.ID),
			Image: c.Image, State: string(c.State), Detail: c.Status, Health: "-",
			HealthURL: c.Labels[LabelHealthURL], ConfigPath: c.Labels[LabelConfigPath],
		}
		seen[st.Backend] = true
		if c.State == container.StateRunning && st.HealthURL != "" {
			if ok, why := checkHealth(ctx, hc, st.HealthURL); ok {
				st.Health = "healthy"
			} else {
				st.Health = "unhealthy: " + why
			}
		}
		out = append(out, st)
	}
	for _, b := range sel.Backends {
		if !seen[b] {
			out = append(out, Status{Backend: b, State: "absent", Health: "-"})
		}
	}
	return out, nil
}

func containerName(c container.Summary) string {
	if len(c.Names) > 0 {
		return strings.TrimPrefix(c.Names[0], "/")
	}
	return shortID(c.ID)
}
