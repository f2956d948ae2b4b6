// Package config parses abproxy's config.toml once into typed structs and
// checks it, so that every other package works with validated values.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/abproxy/abproxy/router"
)

// Config is the whole configuration file.
type Config struct {
	// Proxy is the data plane listener and its limits.
	Proxy Proxy `toml:"proxy"`
	// Recorder is where and how measurements are stored.
	Recorder Recorder `toml:"recorder"`
	// Backends are the inference servers behind the proxy, in order; the
	// first is the default when a request names none.
	Backends []Backend `toml:"backend"`
	// Log configures structured logging.
	Log Log `toml:"log"`
	// Route decides which backend serves each request, and mirroring.
	Route Route `toml:"route"`
	// Admin is the control plane: metrics, JSON API and dashboard.
	Admin Admin `toml:"admin"`
}

// DefaultAdminListen is where the admin server listens unless [admin]
// listen says otherwise.
const DefaultAdminListen = "127.0.0.1:8081"

// AdminTokenEnv names the environment variable that supplies the admin
// token when [admin] token is not set.
const AdminTokenEnv = "ABPROXY_ADMIN_TOKEN"

// Admin is the [admin] section: the control plane listener (Prometheus
// /metrics, the JSON API and the live dashboard), apart from the data plane.
type Admin struct {
	// Listen is the admin host:port; "" disables the admin server.
	// Default DefaultAdminListen (loopback).
	Listen string `toml:"listen"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" on every
	// admin endpoint. Required when Listen is not a loopback address.
	// Falls back to the ABPROXY_ADMIN_TOKEN environment variable.
	Token string `toml:"token"`
	// ScrapeInterval is how often each backend's /metrics (vLLM) is
	// scraped and stored; default 5s, negative disables scraping.
	ScrapeInterval Duration `toml:"scrape_interval"`
}

// Route is the [route] section; SIGHUP reloads it without dropping streams.
type Route struct {
	// Mode is "split" or "mirror".
	Mode string `toml:"mode"`
	// Weights per backend name (split mode).
	Weights map[string]float64 `toml:"weights"`
	// StickyHeader pins a user to an arm by this header's value (or the
	// OpenAI "user" field); empty means a random choice per request.
	StickyHeader string `toml:"sticky_header"`
	// Primary serves the client in mirror mode.
	Primary string `toml:"primary"`
	// Shadows receive a copy of each sampled request in mirror mode.
	Shadows []string `toml:"shadows"`
	// Sample is the share of requests mirrored (default 1).
	Sample *float64 `toml:"sample"`
	// MaxShadowInflight bounds concurrent shadow requests (default 256).
	MaxShadowInflight int `toml:"max_shadow_inflight"`
	// ShadowTimeout bounds one whole shadow request (default 10m).
	ShadowTimeout Duration `toml:"shadow_timeout"`
}

// RouterConfig is the route section as the router package takes it.
func (r Route) RouterConfig() router.Config {
	return router.Config{Mode: r.Mode, Weights: r.Weights, StickyHeader: r.StickyHeader, Primary: r.Primary,
		Shadows: r.Shadows, Sample: r.Sample, MaxShadowInflight: r.MaxShadowInflight}
}

// Proxy configures the data plane.
type Proxy struct {
	// Listen is the host:port the proxy accepts clients on.
	Listen string `toml:"listen"`
	// MaxBodyBytes is the largest request body accepted (413 above it).
	MaxBodyBytes int `toml:"max_body_bytes"`
	// ConnectTimeout bounds dialing a backend.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// IdleTimeout is the longest a backend may stay silent before the
	// response headers or between two stream chunks.
	IdleTimeout Duration `toml:"idle_timeout"`
	// DrainTimeout is how long in-flight streams may run after SIGINT/SIGTERM.
	DrainTimeout Duration `toml:"drain_timeout"`
	// EventLoops is how many goroutines relay streams once their headers
	// are through: 0 is one per CPU (GOMAXPROCS under load), -1 keeps a
	// goroutine per stream.
	EventLoops int `toml:"event_loops"`
	// EventLoopMinStreams: a stream joins a loop only while at least this
	// many requests are in flight. A loop pays an extra wake-up per burst
	// of readable sockets, which only pays off when bursts are large.
	EventLoopMinStreams int `toml:"event_loop_min_streams"`
	// MaxConnsPerBackend caps open connections to one backend.
	MaxConnsPerBackend int `toml:"max_conns_per_backend"`
	// Procs is how many CPUs the Go scheduler runs goroutines on
	// (GOMAXPROCS): 0 is one while abproxy is quiet and every CPU once it
	// is busy (internal/procs), N is always N. The GOMAXPROCS environment
	// variable, when set, wins over 0.
	Procs int `toml:"procs"`
}

// Recorder configures measurement storage.
type Recorder struct {
	// Path is the SQLite file.
	Path string `toml:"path"`
	// StoreBodies keeps prompts and outputs; off by default (hashes only).
	StoreBodies bool `toml:"store_bodies"`
	// QueueSize bounds records waiting for the writer.
	QueueSize int `toml:"queue_size"`
	// FlushInterval is the longest a record waits for its transaction
	// under light load (a full batch goes sooner).
	FlushInterval Duration `toml:"flush_interval"`
}

// Backend is one inference server.
type Backend struct {
	// Name identifies the backend in headers, records and reports.
	Name string `toml:"name"`
	// URL is the server's base URL (scheme://host:port, no /v1).
	URL string `toml:"url"`
	// Model is the model name this backend serves; it is written into
	// requests whose model differs.
	Model string `toml:"model"`
	// APIKey, when set, replaces the client's Authorization header upstream.
	APIKey string `toml:"api_key"`
	// Launch, when set, tells `abproxy launch` how to start this backend as
	// a container (see launch.go).
	Launch *Launch `toml:"launch"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `toml:"level"`
	// Format is console or json.
	Format string `toml:"format"`
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (use e.g. \"30s\" or \"1m\")", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultEventLoops is proxy.event_loops when unset: one loop per CPU.
// At 1,000 streams the loops cut the CPU the proxy spends above nginx's by
// a third and most of its added TTFT (docs/benchmarks.md, "Event loops").
const DefaultEventLoops = 0

// DefaultEventLoopMinStreams is proxy.event_loop_min_streams when unset:
// at one stream a loop cost 5-25 % more CPU per chunk than a goroutine; at
// 16 streams loops put hop TTFT p50 at +0.02 ms against nginx, goroutines
// at +0.06 to +0.11; at 200 and 1,000 the loops were ahead
// (docs/benchmarks.md, "Yielding between slices").
const DefaultEventLoopMinStreams = 8

// DefaultFlushInterval is recorder.flush_interval when unset. A
// transaction costs the writer about 75 µs of CPU plus about 20 µs per
// record (BenchmarkTransaction), and under light load it holds the records
// of one interval: at one stream of 20 ms requests, 50 ms paid the fixed
// part every 2-3 records, on the CPU the stream runs on. A quarter of a
// second is still too short for a person watching a report to notice
// (docs/benchmarks.md, "Fewer transactions").
const DefaultFlushInterval = 250 * time.Millisecond

// Default returns the configuration used when no file is given: one
// simulated baseline backend on the port the reference study used.
func Default() *Config {
	c := preset()
	c.setDefaults()
	return c
}

// preset is a configuration holding the defaults of the keys whose zero
// value means something, so that a file setting them to zero (or "") stays
// distinguishable from one that leaves them out: admin.listen = "" turns
// the admin server off, proxy.event_loops = 0 is one loop per CPU,
// proxy.event_loop_min_streams = 0 puts every stream in a loop.
func preset() *Config {
	return &Config{
		Admin: Admin{Listen: DefaultAdminListen},
		Proxy: Proxy{EventLoops: DefaultEventLoops, EventLoopMinStreams: DefaultEventLoopMinStreams},
	}
}

func (c *Config) setDefaults() {
	if c.Proxy.Listen == "" {
		c.Proxy.Listen = "127.0.0.1:8080"
	}
	if c.Proxy.MaxBodyBytes == 0 {
		c.Proxy.MaxBodyBytes = 16 << 20
	}
	if c.Proxy.ConnectTimeout.Duration == 0 {
		c.Proxy.ConnectTimeout.Duration = 5 * time.Second
	}
	if c.Proxy.IdleTimeout.Duration == 0 {
		c.Proxy.IdleTimeout.Duration = 5 * time.Minute
	}
	if c.Proxy.DrainTimeout.Duration == 0 {
		c.Proxy.DrainTimeout.Duration = 30 * time.Second
	}
	if c.Proxy.MaxConnsPerBackend == 0 {
		c.Proxy.MaxConnsPerBackend = 4096
	}
	if c.Recorder.Path == "" {
		c.Recorder.Path = "abproxy.db"
	}
	if c.Recorder.FlushInterval.Duration == 0 {
		c.Recorder.FlushInterval.Duration = DefaultFlushInterval
	}
	if c.Recorder.QueueSize == 0 {
		c.Recorder.QueueSize = 65536
	}
	if c.Route.ShadowTimeout.Duration == 0 {
		c.Route.ShadowTimeout.Duration = 10 * time.Minute
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Admin.Token == "" {
		c.Admin.Token = os.Getenv(AdminTokenEnv)
	}
	if c.Admin.ScrapeInterval.Duration == 0 {
		c.Admin.ScrapeInterval.Duration = 5 * time.Second
	}
	if c.Log.Format == "" {
		c.Log.Format = "console"
	}
}

// Load reads, defaults and validates a config file. Unknown keys are
// errors: a misspelt key silently ignored is a benchmark silently wrong.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b)
}

// Parse is Load on bytes already read; name is used in messages.
func Parse(name string, b []byte) (*Config, error) {
	c := preset()
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) && len(sm.Errors) > 0 {
			e := sm.Errors[0]
			row, _ := e.Position()
			return nil, fmt.Errorf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), "."))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, fmt.Errorf("%s:%d: %s", name, row, de.Error())
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// Validate checks values that parse but cannot work.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Proxy.Listen); err != nil {
		return fmt.Errorf("proxy.listen %q is not host:port", c.Proxy.Listen)
	}
	if c.Proxy.MaxBodyBytes < 0 {
		return fmt.Errorf("proxy.max_body_bytes must be positive")
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"proxy.connect_timeout", c.Proxy.ConnectTimeout}, {"proxy.idle_timeout", c.Proxy.IdleTimeout}, {"proxy.drain_timeout", c.Proxy.DrainTimeout}, {"recorder.flush_interval", c.Recorder.FlushInterval}} {
		if d.v.Duration < 0 {
			return fmt.Errorf("%s must not be negative", d.name)
		}
	}
	if c.Proxy.EventLoops < -1 || c.Proxy.EventLoops > 256 {
		return fmt.Errorf("proxy.event_loops is %d; use 0 (one per CPU), -1 (a goroutine per stream) or up to 256 loops", c.Proxy.EventLoops)
	}
	if c.Proxy.Procs < 0 || c.Proxy.Procs > 1024 {
		return fmt.Errorf("proxy.procs is %d; use 0 (one CPU while quiet, all when busy) or a CPU count up to 1024", c.Proxy.Procs)
	}
	if c.Proxy.EventLoopMinStreams < 0 {
		return fmt.Errorf("proxy.event_loop_min_streams must not be negative")
	}
	if c.Recorder.FlushInterval.Duration > time.Minute {
		return fmt.Errorf("recorder.flush_interval is %s; at most 1m, so that records reach the database while a run goes on", c.Recorder.FlushInterval.Duration)
	}
	if c.Recorder.QueueSize < 0 {
		return fmt.Errorf("recorder.queue_size must be positive")
	}
	if err := c.Admin.validate(); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "console", "json":
	default:
		return fmt.Errorf("log.format %q is not console or json", c.Log.Format)
	}
	seen := map[string]bool{}
	for i, b := range c.Backends {
		if b.Name == "" {
			return fmt.Errorf("backend #%d has no name", i+1)
		}
		if seen[b.Name] {
			return fmt.Errorf("backend %q is defined twice", b.Name)
		}
		seen[b.Name] = true
		u, err := url.Parse(b.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("backend %q: url %q is not an http(s)://host:port URL", b.Name, b.URL)
		}
	}
	if len(c.Backends) > 0 {
		if _, err := router.New(c.Route.RouterConfig(), c.BackendNames()); err != nil {
			return err
		}
	}
	return c.validateLaunches()
}

// Backend returns the backend with the given name.
func (c *Config) Backend(name string) (Backend, bool) {
	for _, b := range c.Backends {
		if b.Name == name {
			return b, true
		}
	}
	return Backend{}, false
}

// BackendNames lists the configured backend names in order.
func (c *Config) BackendNames() []string {
	out := make([]string, len(c.Backends))
	for i, b := range c.Backends {
		out[i] = b.Name
	}
	return out
}

// validate checks the admin listener: a host:port, and a token whenever
// the address is reachable from other machines.
func (a Admin) validate() error {
	if a.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(a.Listen)
	if err != nil {
		return fmt.Errorf("admin.listen %q is not host:port", a.Listen)
	}
	if a.Token == "" && !IsLoopback(host) {
		return fmt.Errorf("admin.listen %q is not a loopback address, so admin.token (or %s) must be set", a.Listen, AdminTokenEnv)
	}
	return nil
}

// IsLoopback reports whether host (a name or IP, no port) only accepts
// connections from this machine: "localhost" or a loopback IP. An empty
// host (all interfaces) is not loopback.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
