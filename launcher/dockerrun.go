package launcher

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// secretFlags are server flags whose values are secrets; DockerRun and the
// recorded metadata show them as <redacted>. Pass secrets through env.
var secretFlags = map[string]bool{"--api-key": true, "--hf-token": true}

// RedactArgs returns args with the values of secret flags (--api-key,
// --hf-token) replaced by "<redacted>".
func RedactArgs(args []string) []string {
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		name, _, hasValue := strings.Cut(out[i], "=")
		if !secretFlags[name] {
			continue
		}
		if hasValue {
			out[i] = name + "=<redacted>"
		} else if i+1 < len(out) {
			out[i+1] = "<redacted>"
			i++
		}
	}
	return out
}

// DockerRun renders the `docker run` command equivalent to what Launch
// creates, one option per line with backslash continuations, in the layout
// of a hand-typed command. Environment values are not shown: each variable
// is passed as `-e NAME`, which docker fills from the caller's environment.
// Values of secret flags in the args are redacted.
func (s *Spec) DockerRun() string {
	var lines []string
	add := func(tokens ...string) {
		q := make([]string, len(tokens))
		for i, t := range tokens {
			q[i] = shellQuote(t)
		}
		lines = append(lines, strings.Join(q, " "))
	}
	lines = append(lines, "docker run -d")
	add("--name", s.ContainerName)
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("--label", k+"="+s.Labels[k])
	}
	switch g := s.GPURequest; {
	case g.All:
		add("--gpus", "all")
	case len(g.DeviceIDs) > 0:
		add("--gpus", `"device=`+strings.Join(g.DeviceIDs, ",")+`"`)
	case g.Count > 0:
		add("--gpus", strconv.Itoa(g.Count))
	}
	if s.IPC != "" {
		add("--ipc=" + s.IPC)
	}
	if s.ShmSize != "" {
		add("--shm-size", s.ShmSize)
	}
	pub := fmt.Sprintf("%d:%d", s.HostPort, s.ContainerPort)
	if s.HostIP != "" {
		host := s.HostIP
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		pub = host + ":" + pub
	}
	add("-p", pub)
	for _, v := range s.Volumes {
		m := v.Source + ":" + v.Target
		if v.Mode != "" {
			m += ":" + v.Mode
		}
		add("-v", m)
	}
	for _, e := range s.Env {
		add("-e", e.Name)
	}
	if s.Entrypoint != "" {
		add("--entrypoint", s.Entrypoint)
	}
	add(s.Image)
	// Arguments: a token starting with "-" opens a line; other tokens
	// (flag values, positionals) follow on the same line.
	var cur []string
	for _, a := range RedactArgs(s.Args) {
		if strings.HasPrefix(a, "-") && len(cur) > 0 {
			add(cur...)
			cur = nil
		}
		cur = append(cur, a)
	}
	if len(cur) > 0 {
		add(cur...)
	}
	var b strings.Builder
	for i, l := range lines {
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(l)
		if i < len(lines)-1 {
			b.WriteString(" \\")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
