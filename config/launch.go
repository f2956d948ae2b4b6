package config

// Launch describes how `abproxy launch` starts a backend container through
// the Docker Engine API. Owned by the launcher work; see launcher/.
type Launch struct {
	// Image is the container image, e.g. "vllm/vllm-openai:v0.13.0".
	Image string `toml:"image"`
}
