package config

import (
	"strings"
	"testing"
	"time"
)

const launchBase = "[[backend]]\nname='a'\nurl='http://127.0.0.1:8010'\n[backend.launch]\nimage='img'\n"

func TestLaunchDefaults(t *testing.T) {
	c, err := Parse("x.toml", []byte(launchBase))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Backends[0].Launch
	if l.HostPort != 8010 || l.ContainerPort != 8000 || l.HealthPath != "/health" ||
		l.StartupTimeout.Duration != 15*time.Minute || l.ContainerNameFor("a") != "abproxy-a" {
		t.Fatalf("defaults: %+v", l)
	}
}

func TestLaunchErrors(t *testing.T) {
	cases := map[string]string{
		"[[backend]]\nname='a'\nurl='http://h:1'\n[backend.launch]\n": `backend "a": launch.image is required`,
		launchBase + "gpus='some'\n":                                  `gpus "some" is not "all", a count or device ids`,
		launchBase + "gpus='0'\n":                                     `must be a positive count`,
		launchBase + "ipc='yes'\n":                                    `ipc "yes"`,
		launchBase + "shm_size='lots'\n":                              `shm_size: size "lots"`,
		launchBase + "host_port=8011\n":                               `host_port 8011 differs from the port of url`,
		launchBase + "container_port=70000\n":                         `container_port 70000`,
		launchBase + "volumes=['models:/model']\n":                    `host path "models" is not absolute`,
		launchBase + "volumes=['/m:/model:rx']\n":                     `mode "rx" is not ro or rw`,
		launchBase + "env={ 'A-B' = 'x' }\n":                          `"A-B" is not a valid variable name`,
		launchBase + "env={ T = '${T' }\n":                            `env.T: unterminated ${`,
		launchBase + "env={ T = '${1X}' }\n":                          `${1X} is not a valid variable reference`,
		launchBase + "labels={ 'abproxy.backend' = 'x' }\n":           `reserved prefix`,
		launchBase + "health_path='health'\n":                         `health_path "health" must start with /`,
		launchBase + "container_name='-bad'\n":                        `container_name "-bad"`,
		launchBase + "host_ip='localhost'\n":                          `host_ip "localhost" is not an IP address`,
		launchBase + "imagee='x'\n":                                   `unknown key "backend.launch.imagee"`,
		launchBase + "[[backend]]\nname='b'\nurl='http://127.0.0.1:8010'\n[backend.launch]\nimage='i'\n":                                         `both publish host port 8010`,
		launchBase + "container_name='c'\n[[backend]]\nname='b'\nurl='http://127.0.0.1:8011'\n[backend.launch]\nimage='i'\ncontainer_name='c'\n": `both use container name "c"`,
	}
	for in, want := range cases {
		_, err := Parse("x.toml", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error = %v, want it to contain %q", in, err, want)
		}
	}
}

func TestParseGPUs(t *testing.T) {
	for in, want := range map[string]int{"": 0, "all": -1, "4": 4, "0,1": 2, "device=2,3,4": 3, `"device=0"`: 1, "GPU-abc": 1} {
		g, err := ParseGPUs(in)
		if err != nil || g.N() != want {
			t.Errorf("ParseGPUs(%q) = %+v (N %d), %v; want N %d", in, g, g.N(), err, want)
		}
	}
	if _, err := ParseGPUs("0,,1"); err == nil {
		t.Error("empty device id accepted")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"16g": 16 << 30, "512m": 512 << 20, "1.5GB": 3 << 29, "64k": 64 << 10, "1024": 1024, "2GiB": 2 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "g", "-1g", "ten"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestExpandEnv(t *testing.T) {
	look := func(k string) (string, bool) {
		v, ok := map[string]string{"A": "1", "EMPTY": ""}[k]
		return v, ok
	}
	got, err := ExpandEnv("x${A}y${EMPTY}$HOME", look)
	if err != nil || got != "x1y$HOME" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := ExpandEnv("${NOPE}", look); err == nil || err.Error() != "${NOPE} is not set in the environment" {
		t.Fatalf("err = %v", err)
	}
}
