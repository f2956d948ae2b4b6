//go:build race

package wire

// Under the race detector the socket calls go through the syscall
// package, whose Read and Write tell the detector that a write to a
// socket happens before the read of the same bytes; raw calls would lose
// that edge and report races the program does not have.
const rawSyscalls = false
