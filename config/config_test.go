package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestShippedConfigLoads(t *testing.T) {
	c, err := Load("../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy.Listen != "127.0.0.1:8080" || c.Recorder.Path != "abproxy.db" {
		t.Fatalf("unexpected values: %+v", c)
	}
	if got := c.BackendNames(); len(got) != 2 || got[0] != "baseline" || got[1] != "optimized" {
		t.Fatalf("backends = %v", got)
	}
	if c.Proxy.IdleTimeout.Duration != 5*time.Minute {
		t.Fatalf("idle_timeout = %v", c.Proxy.IdleTimeout)
	}
}

func TestDefaultsApplied(t *testing.T) {
	c, err := Parse("x.toml", []byte("[[backend]]\nname='a'\nurl='http://127.0.0.1:1'\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy.MaxBodyBytes != 16<<20 || c.Proxy.DrainTimeout.Duration != 30*time.Second || c.Log.Level != "info" {
		t.Fatalf("defaults not applied: %+v", c.Proxy)
	}
	if c.Recorder.FlushInterval.Duration != DefaultFlushInterval {
		t.Fatalf("recorder.flush_interval = %v, want the default %v", c.Recorder.FlushInterval, DefaultFlushInterval)
	}
}

func TestErrors(t *testing.T) {
	cases := map[string]string{
		"[proxy]\nlisen = 'x'\n":                 `x.toml:2: unknown key "proxy.lisen"`,
		"[proxy]\nidle_timeout = '5 minutes'\n":  `invalid duration`,
		"[proxy]\nlisten = 'nope'\n":             `proxy.listen "nope" is not host:port`,
		"[[backend]]\nurl='http://a:1'\n":        `backend #1 has no name`,
		"[[backend]]\nname='a'\nurl='ftp://a'\n": `url "ftp://a" is not an http(s)://host:port URL`,
		"[[backend]]\nname='a'\nurl='http://a:1'\n[[backend]]\nname='a'\nurl='http://a:2'\n": `backend "a" is defined twice`,
		"[log]\nlevel='loud'\n":                  `log.level "loud"`,
		"[proxy]\nevent_loops = -2\n":            `proxy.event_loops is -2; use 0 (one per CPU), -1 (a goroutine per stream) or up to 256 loops`,
		"[proxy]\nevent_loop_min_streams = -1\n": `proxy.event_loop_min_streams must not be negative`,
		"[proxy]\nprocs = -1\n":                  `proxy.procs is -1; use 0 (one CPU while quiet, all when busy) or a CPU count up to 1024`,
		"[proxy\n":                               `x.toml:1:`,
		"[recorder]\nflush_interval = '-1s'\n":   `recorder.flush_interval must not be negative`,
		"[recorder]\nflush_interval = '2m'\n":    `recorder.flush_interval is 2m0s; at most 1m`,
	}
	for in, want := range cases {
		_, err := Parse("x.toml", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error = %v, want it to contain %q", in, err, want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/none.toml")
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("err = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestAdminSection(t *testing.T) {
	t.Setenv(AdminTokenEnv, "")
	c, err := Parse("x.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.Listen != DefaultAdminListen || c.Admin.ScrapeInterval.Duration != 5*time.Second {
		t.Fatalf("admin defaults = %+v", c.Admin)
	}
	if c, err = Parse("x.toml", []byte("[admin]\nlisten = ''\n")); err != nil || c.Admin.Listen != "" {
		t.Fatalf("explicit empty listen: %+v, %v", c, err)
	}
	_, err = Parse("x.toml", []byte("[admin]\nlisten = '0.0.0.0:8081'\n"))
	if err == nil || !strings.Contains(err.Error(), "admin.token") {
		t.Fatalf("non-loopback without token: err = %v", err)
	}
	for _, in := range []string{"[admin]\nlisten = '0.0.0.0:8081'\ntoken = 's'\n", "[admin]\nlisten = '[::1]:8081'\n", "[admin]\nlisten = 'localhost:8081'\n"} {
		if _, err := Parse("x.toml", []byte(in)); err != nil {
			t.Errorf("Parse(%q): %v", in, err)
		}
	}
	t.Setenv(AdminTokenEnv, "from-env")
	c, err = Parse("x.toml", []byte("[admin]\nlisten = ':8081'\n"))
	if err != nil || c.Admin.Token != "from-env" {
		t.Fatalf("token from env: %+v, %v", c, err)
	}
}
