package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/abproxy/abproxy/admin"
	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
)

type serveFlags struct {
	logFlags
	config      string
	listen      string
	db          string
	backends    []string
	run         string
	storeBodies bool
	adminListen string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy: forward OpenAI requests to the backends and record every stream",
		Long: `Run the data plane. Point any OpenAI client's base URL at http://LISTEN/v1.

Each request goes to the backend named in its X-ABProxy-Backend header, or
to the first configured backend. Every response is timestamped per SSE
event and recorded in the SQLite file. SIGINT/SIGTERM stop accepting,
let in-flight streams finish (proxy.drain_timeout), flush the recorder
and exit 0.`,
		Example: `  abproxy serve --config config.toml
  abproxy serve --backend baseline=http://127.0.0.1:8010 --db study.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd.Context(), &f) },
	}
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file (default ./config.toml when it exists)")
	cmd.Flags().StringVar(&f.listen, "listen", "", "listen address, overrides proxy.listen")
	cmd.Flags().StringVar(&f.db, "db", "", "SQLite file, overrides recorder.path")
	cmd.Flags().StringArrayVar(&f.backends, "backend", nil, "backend as NAME=URL[,model=NAME]; repeatable; replaces the config's backends")
	cmd.Flags().StringVar(&f.run, "run", "", "run name for requests without X-ABProxy-Run (default serve-YYYYMMDD-HHMMSS)")
	cmd.Flags().BoolVar(&f.storeBodies, "store-bodies", false, "store prompts and outputs, not only their hashes")
	cmd.Flags().StringVar(&f.adminListen, "admin-listen", "", `admin (metrics, API, dashboard) address, overrides admin.listen; "off" disables it`)
	f.logFlags.register(cmd)
	return cmd
}

// loadConfig reads --config, or ./config.toml when present, or defaults.
func loadConfig(path string) (*config.Config, error) {
	if path != "" {
		return config.Load(path)
	}
	if _, err := os.Stat("config.toml"); err == nil {
		return config.Load("config.toml")
	}
	return config.Default(), nil
}

// parseBackendFlag reads NAME=URL[,model=MODEL].
func parseBackendFlag(s string) (config.Backend, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || rest == "" {
		return config.Backend{}, fmt.Errorf("--backend %q is not NAME=URL", s)
	}
	b := config.Backend{Name: name}
	parts := strings.Split(rest, ",")
	b.URL = parts[0]
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "model":
			b.Model = v
		default:
			return config.Backend{}, fmt.Errorf("--backend %q: unknown option %q (only model=NAME)", s, k)
		}
	}
	return b, nil
}

func runServe(ctx context.Context, f *serveFlags) error {
	cfgPath := f.config
	if cfgPath == "" {
		if _, err := os.Stat("config.toml"); err == nil {
			cfgPath = "config.toml"
		}
	}
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return err
	}
	if f.listen != "" {
		cfg.Proxy.Listen = f.listen
	}
	if f.db != "" {
		cfg.Recorder.Path = f.db
	}
	if f.storeBodies {
		cfg.Recorder.StoreBodies = true
	}
	if f.adminListen != "" {
		cfg.Admin.Listen = f.adminListen
		if cfg.Admin.Listen == "off" {
			cfg.Admin.Listen = ""
		}
	}
	if len(f.backends) > 0 {
		cfg.Backends = nil
		for _, s := range f.backends {
			b, err := parseBackendFlag(s)
			if err != nil {
				return err
			}
			cfg.Backends = append(cfg.Backends, b)
		}
	}
	if f.level != "" {
		cfg.Log.Level = f.level
	}
	if f.format != "" {
		cfg.Log.Format = f.format
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if len(cfg.Backends) == 0 {
		return errors.New("no backend configured: pass --backend NAME=URL or add a [[backend]] section to the config")
	}
	log, err := newLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	rec, err := recorder.Open(recorder.Options{
		Path: cfg.Recorder.Path, QueueSize: cfg.Recorder.QueueSize,
		StoreBodies: cfg.Recorder.StoreBodies, Logger: log.Named("recorder"),
		FlushInterval: cfg.Recorder.FlushInterval.Duration,
	})
	if err != nil {
		return err
	}
	runName := f.run
	if runName == "" {
		runName = "serve-" + time.Now().Format("20060102-150405")
	}
	meta, _ := json.Marshal(map[string]any{"command": "serve", "version": version, "backends": redactBackends(cfg.Backends), "listen": cfg.Proxy.Listen})
	if _, err := rec.EnsureRun(recorder.Run{Name: runName, Kind: "live", StartedNS: time.Now().UnixNano(), Meta: meta}); err != nil {
		rec.Close()
		return err
	}
	metrics := admin.NewMetrics(cfg.BackendNames())
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Logger: log.Named("proxy"), Run: runName, StoreBodies: cfg.Recorder.StoreBodies,
		Observer: metrics, GovernProcs: true})
	if err != nil {
		rec.Close()
		return err
	}
	stopAdmin, err := startAdmin(log, cfg, rec, p, metrics)
	if err != nil {
		rec.Close()
		return err
	}
	ln, err := net.Listen("tcp", cfg.Proxy.Listen)
	if err != nil {
		stopAdmin()
		rec.Close()
		return fmt.Errorf("listen on %s: %w", cfg.Proxy.Listen, err)
	}
	log.Info("serving", zap.String("listen", ln.Addr().String()), zap.Strings("backends", cfg.BackendNames()),
		zap.String("route", p.Route().Describe()), zap.String("db", cfg.Recorder.Path), zap.String("run", runName))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- p.Serve(ln) }()
wait:
	for {
		select {
		case err = <-serveErr:
			log.Error("proxy stopped", zap.Error(err))
			break wait
		case s := <-sigs:
			if s == syscall.SIGHUP {
				reloadRoute(log, p, cfgPath, cfg)
				continue
			}
			log.Info("draining", zap.String("signal", s.String()), zap.Int64("in_flight", p.InFlight()),
				zap.Duration("drain_timeout", cfg.Proxy.DrainTimeout.Duration))
			break wait
		case <-ctxDone(ctx):
			break wait
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.Proxy.DrainTimeout.Duration)
	defer cancel()
	if derr := p.Shutdown(dctx); derr != nil {
		log.Warn("shutdown", zap.Error(derr))
	}
	stopAdmin()
	if eerr := rec.EndRun(runName, time.Now().UnixNano()); eerr != nil {
		log.Warn("end run", zap.Error(eerr))
	}
	if cerr := rec.Close(); cerr != nil {
		return fmt.Errorf("close recorder: %w", cerr)
	}
	st := rec.Stats() // after Close: it writes what was still queued
	log.Info("stopped", zap.Int64("recorded", st.Written), zap.Int64("dropped", st.Dropped))
	return err
}

// reloadRoute re-reads [route] on SIGHUP. Streams in flight keep their
// backend; a config that does not parse or validate changes nothing.
func reloadRoute(log *zap.Logger, p *proxy.Proxy, path string, cur *config.Config) {
	if path == "" {
		log.Warn("SIGHUP ignored: serve was started without a config file")
		return
	}
	next, err := config.Load(path)
	if err != nil {
		log.Warn("reload failed, keeping the current route", zap.Error(err))
		return
	}
	if !sameBackends(cur.Backends, next.Backends) {
		log.Warn("reload: [[backend]] changes need a restart; applying [route] only")
	}
	if err := p.SetRoute(next.Route); err != nil {
		log.Warn("reload failed, keeping the current route", zap.Error(err))
		return
	}
	log.Info("route reloaded", zap.String("route", p.Route().Describe()))
}

func sameBackends(a, b []config.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].URL != b[i].URL || a[i].Model != b[i].Model {
			return false
		}
	}
	return true
}

func ctxDone(ctx context.Context) <-chan struct{} {
	if ctx == nil {
		return nil
	}
	return ctx.Done()
}

// redactBackends is the backend list as recorded in run metadata: keys are
// never stored, only whether one is set.
func redactBackends(bs []config.Backend) []map[string]any {
	out := make([]map[string]any, len(bs))
	for i, b := range bs {
		out[i] = map[string]any{"name": b.Name, "url": b.URL, "model": b.Model, "api_key_set": b.APIKey != ""}
	}
	return out
}

// --- control plane wiring (admin package) ---

// startAdmin starts the backend metrics scraper (admin.scrape_interval) and,
// when admin.listen is set, the admin server: Prometheus /metrics, the JSON
// API and the live dashboard. The returned func stops both; call it after
// the proxy has drained and before the recorder closes.
func startAdmin(log *zap.Logger, cfg *config.Config, rec *recorder.Recorder, p *proxy.Proxy, m *admin.Metrics) (func(), error) {
	m.WatchProxy(p.Stats)
	m.WatchRecorder(rec.Stats)
	ctx, cancel := context.WithCancel(context.Background())
	scraped := make(chan struct{})
	if iv := cfg.Admin.ScrapeInterval.Duration; iv > 0 {
		sc := &admin.Scraper{Interval: iv, Store: rec.WriteBackendMetrics, Metrics: m, Logger: log.Named("scraper")}
		for _, b := range cfg.Backends {
			sc.Targets = append(sc.Targets, admin.ScrapeTarget{Backend: b.Name, URL: strings.TrimRight(b.URL, "/") + "/metrics"})
		}
		go func() { defer close(scraped); sc.Run(ctx) }()
	} else {
		close(scraped)
	}
	if cfg.Admin.Listen == "" {
		return func() { cancel(); <-scraped }, nil
	}
	srv, err := admin.New(admin.Options{Metrics: m, Token: cfg.Admin.Token, DB: rec.DB(), DBPath: cfg.Recorder.Path, Logger: log.Named("admin")})
	if err != nil {
		cancel()
		<-scraped
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil && cfg.Admin.Listen == config.DefaultAdminListen {
		// only the default address: a second serve on this machine still runs
		log.Warn("admin server disabled: its default address is taken; set [admin] listen or --admin-listen",
			zap.String("listen", cfg.Admin.Listen), zap.Error(err))
		return func() { cancel(); <-scraped }, nil
	}
	if err != nil {
		cancel()
		<-scraped
		return nil, fmt.Errorf("admin: listen on %s: %w", cfg.Admin.Listen, err)
	}
	log.Info("admin serving", zap.String("listen", ln.Addr().String()), zap.Bool("token", cfg.Admin.Token != ""))
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil {
			log.Error("admin server stopped", zap.Error(err))
		}
	}()
	return func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("admin shutdown", zap.Error(err))
		}
		<-served
		<-scraped
	}, nil
}
