// Package launcher starts, watches and stops abproxy's backend containers
// through the Docker Engine API, from the [backend.launch] sections of
// config.toml.
//
// The flow is a pipeline of small steps, each usable on its own:
//
//	NewPlan   config → []Spec (pure; no engine needed) plus vLLM argument Findings
//	Spec.DockerRun   the equivalent `docker run` command (what --dry-run prints)
//	Connect   a connection to the engine named by DOCKER_HOST (or the default socket)
//	Engine.Launch   preflight, create, start, stream logs, wait healthy, probe → []*Metadata
//	Engine.Status / Engine.Down   the containers abproxy started, found by their labels
//	State     the launch metadata file next to the config, for runs and reports
//
// Every container abproxy creates carries the labels LabelManaged,
// LabelBackend and LabelConfig; Down and Status only ever touch containers
// with those labels. Environment values are never logged or recorded:
// metadata and dry-run output carry variable names only.
package launcher
