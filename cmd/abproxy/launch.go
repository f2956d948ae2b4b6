package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/launcher"
)

// launchConfigPath is --config, or ./config.toml when it exists.
func launchConfigPath(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if _, err := os.Stat("config.toml"); err == nil {
		return "config.toml", nil
	}
	return "", errors.New("no config: pass --config FILE (or run where config.toml is)")
}

type launchFlags struct {
	logFlags
	config   string
	dryRun   bool
	keep     bool
	replace  bool
	pull     bool
	strict   bool
	timeout  time.Duration
	metadata string
}

func newLaunchCmd() *cobra.Command {
	var f launchFlags
	cmd := &cobra.Command{
		Use:   "launch [NAME...]",
		Short: "Start the backends' containers from config.toml through the Docker Engine API",
		Long: `Start each named backend (default: every backend with a [backend.launch]
section) as a container, one after the other: create, start, stream its
output with a "[name] " prefix, wait for GET <url><health_path> to answer
200, then read /v1/models and /version.

Before anything is created the vLLM arguments are checked (flags vLLM does
not accept, contradictory settings), and every image, the nvidia runtime
(when GPUs are requested), container names and host ports are checked.
When a container fails, the containers this launch created are removed
unless --keep is given.

What ran (container id, image id and digest, full command, env variable
names, served models, server version) is written to <config>.launch.json
next to the config, or to --metadata.`,
		Example: `  abproxy launch --config examples/reference-study.toml --dry-run
  abproxy launch baseline optimized
  abproxy launch --replace --metadata - optimized`,
		RunE: func(cmd *cobra.Command, args []string) error { return runLaunch(cmd, &f, args) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.config, "config", "c", "", "config file (default ./config.toml)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the equivalent docker run commands and the argument check; start nothing")
	fl.BoolVar(&f.keep, "keep", false, "keep containers that fail to start, for inspection")
	fl.BoolVar(&f.replace, "replace", false, "replace containers abproxy started earlier under the same names")
	fl.BoolVar(&f.pull, "pull", false, "pull images that are not on the engine")
	fl.BoolVar(&f.strict, "strict", false, "refuse to launch when the argument check finds errors")
	fl.DurationVar(&f.timeout, "startup-timeout", 0, "override every backend's launch.startup_timeout")
	fl.StringVar(&f.metadata, "metadata", "", `launch metadata file (default <config>.launch.json next to the config; "-" prints it)`)
	f.logFlags.register(cmd)
	return cmd
}

func runLaunch(cmd *cobra.Command, f *launchFlags, names []string) error {
	path, err := launchConfigPath(f.config)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	plan, err := launcher.NewPlan(cfg, path, names)
	if err != nil {
		return err
	}
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.dryRun {
		printDryRun(stdout, plan)
		if f.strict && launcher.HasErrors(plan.Findings) {
			return errors.New("the argument check found errors (see the comments above)")
		}
		return nil
	}
	for _, fd := range plan.Findings {
		fmt.Fprintf(stderr, "vLLM check: %s\n", fd)
	}
	if f.strict && launcher.HasErrors(plan.Findings) {
		return errors.New("the argument check found errors; fix them or launch without --strict")
	}
	log, err := newLogger(pick(f.level, cfg.Log.Level), pick(f.format, cfg.Log.Format))
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
	defer stop()
	eng, err := launcher.Connect(ctx, launcher.Options{Logger: log.Named("launch"), LogOutput: stderr})
	if err != nil {
		return err
	}
	defer eng.Close()
	metas, err := eng.Launch(ctx, plan, launcher.LaunchOptions{Keep: f.keep, Replace: f.replace, Pull: f.pull, StartupTimeout: f.timeout})
	if err != nil {
		var se *launcher.StartError
		if errors.As(err, &se) && len(se.Logs) > 0 {
			what := fmt.Sprintf("last %d log lines", len(se.Logs))
			if len(se.Logs) == 1 {
				what = "last log line"
			}
			fmt.Fprintf(stderr, "%s of %s:\n", what, se.Container)
			for _, l := range se.Logs {
				fmt.Fprintf(stderr, "  %s\n", l)
			}
		}
		return err
	}
	for _, m := range metas {
		var served []string
		for _, sm := range m.ServedModels {
			s := sm.ID
			if sm.MaxModelLen > 0 {
				s += fmt.Sprintf(" (max_model_len %d)", sm.MaxModelLen)
			}
			served = append(served, s)
		}
		fmt.Fprintf(stdout, "%s healthy at %s in %.1fs: container %.12s, image %s, serving %s\n",
			m.Backend, m.URL, m.StartupSeconds, m.ContainerID, m.Image, strings.Join(served, ", "))
	}
	return writeLaunchMetadata(stdout, f.metadata, plan.ConfigPath, metas)
}

// writeLaunchMetadata merges metas into the state file, or prints them.
func writeLaunchMetadata(stdout io.Writer, dest, configPath string, metas []*launcher.Metadata) error {
	if dest == "-" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(metas)
	}
	if dest == "" {
		dest = launcher.MetadataPath(configPath)
	}
	st, err := launcher.ReadState(dest)
	if err != nil {
		return err
	}
	st.Config = configPath
	for _, m := range metas {
		st.Backends[m.Backend] = m
	}
	if err := st.Write(dest); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "launch metadata: %s\n", dest)
	return nil
}

func printDryRun(w io.Writer, plan *launcher.Plan) {
	fmt.Fprintf(w, "# abproxy launch --dry-run: %s\n", plan.ConfigPath)
	for _, fd := range plan.Findings {
		if strings.Contains(fd.Backend, ", ") {
			fmt.Fprintf(w, "# %s\n", fd)
		}
	}
	for i := range plan.Specs {
		s := &plan.Specs[i]
		fmt.Fprintf(w, "\n# %s → %s\n", s.Backend, s.URL)
		for _, fd := range plan.Findings {
			if fd.Backend == s.Backend {
				fmt.Fprintf(w, "# %s: %s\n", fd.Severity, fd.Message)
			}
		}
		if len(s.Env) > 0 {
			fmt.Fprintf(w, "# env values are not shown: export %s first; -e NAME passes it through\n", strings.Join(s.EnvNames(), ", "))
		}
		fmt.Fprint(w, s.DockerRun())
	}
}

func pick(flag, fromConfig string) string {
	if flag != "" {
		return flag
	}
	return fromConfig
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

type manageFlags struct {
	logFlags
	config  string
	all     bool
	timeout time.Duration
	json    bool
}

// selector builds the container selector for down and status: the
// config's containers (optionally only NAMEs), or every abproxy container
// with --all.
func (f *manageFlags) selector(names []string, forStatus bool) (launcher.Selector, string, error) {
	if f.all && f.config == "" {
		return launcher.Selector{Backends: names}, "", nil
	}
	path, err := launchConfigPath(f.config)
	if err != nil {
		return launcher.Selector{}, "", fmt.Errorf("%w, or pass --all for every container abproxy started", err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return launcher.Selector{}, "", err
	}
	bs, err := launcher.SelectBackends(cfg, path, names, false)
	if err != nil {
		return launcher.Selector{}, "", err
	}
	sel := launcher.Selector{Backends: names}
	if !f.all {
		sel.ConfigID = launcher.ConfigID(path)
	}
	if forStatus && len(names) == 0 {
		for _, b := range bs {
			sel.Backends = append(sel.Backends, b.Name)
		}
	}
	return sel, path, nil
}

func (f *manageFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file (default ./config.toml)")
	cmd.Flags().BoolVar(&f.all, "all", false, "every container abproxy started, from any config")
	f.logFlags.register(cmd)
}

func newDownCmd() *cobra.Command {
	var f manageFlags
	cmd := &cobra.Command{
		Use:   "down [NAME...]",
		Short: "Stop and remove the backend containers abproxy launched",
		Long: `Stop and remove the containers abproxy launched from the config (only
those NAMEs when given), found by their abproxy.* labels. Containers
abproxy did not start are never touched. Their entries are dropped from
the launch metadata file.`,
		Example: `  abproxy down
  abproxy down optimized
  abproxy down --all`,
		RunE: func(cmd *cobra.Command, args []string) error { return runDown(cmd, &f, args) },
	}
	f.register(cmd)
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "how long each server may take to exit before it is killed")
	return cmd
}

func runDown(cmd *cobra.Command, f *manageFlags, names []string) error {
	sel, path, err := f.selector(names, false)
	if err != nil {
		return err
	}
	log, err := newLogger(f.level, f.format)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	eng, err := launcher.Connect(cmdContext(cmd), launcher.Options{Logger: log.Named("down")})
	if err != nil {
		return err
	}
	defer eng.Close()
	removed, err := eng.Down(cmdContext(cmd), sel, f.timeout)
	for _, r := range removed {
		fmt.Fprintf(cmd.OutOrStdout(), "removed %s (container %s)\n", r.Backend, r.Container)
	}
	if len(removed) == 0 && err == nil {
		fmt.Fprintln(cmd.OutOrStdout(), "nothing to remove")
	}
	if path != "" && len(removed) > 0 {
		mp := launcher.MetadataPath(path)
		st, rerr := launcher.ReadState(mp)
		if rerr == nil {
			for _, r := range removed {
				if m := st.Backends[r.Backend]; m != nil && m.ContainerID == r.ID {
					delete(st.Backends, r.Backend)
				}
			}
			rerr = st.Write(mp)
		}
		if rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

func newStatusCmd() *cobra.Command {
	var f manageFlags
	cmd := &cobra.Command{
		Use:   "status [NAME...]",
		Short: "List the backend containers abproxy launched, with their health",
		Example: `  abproxy status
  abproxy status --all --json`,
		RunE: func(cmd *cobra.Command, args []string) error { return runStatus(cmd, &f, args) },
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	return cmd
}

func runStatus(cmd *cobra.Command, f *manageFlags, names []string) error {
	sel, _, err := f.selector(names, true)
	if err != nil {
		return err
	}
	eng, err := launcher.Connect(cmdContext(cmd), launcher.Options{})
	if err != nil {
		return err
	}
	defer eng.Close()
	rows, err := eng.Status(cmdContext(cmd), sel)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if f.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []launcher.Status{}
		}
		return enc.Encode(rows)
	}
	if len(rows) == 0 {
		fmt.Fprintln(out, "no containers started by abproxy")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tCONTAINER\tIMAGE\tSTATE\tHEALTH\tURL")
	for _, r := range rows {
		state := r.State
		if r.Detail != "" {
			state += " (" + r.Detail + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Backend, dash(r.Container), dash(r.Image), state, r.Health, dash(r.HealthURL))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
