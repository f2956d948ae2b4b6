//go:build !race

package wire

// rawSyscalls: see race.go.
const rawSyscalls = true
