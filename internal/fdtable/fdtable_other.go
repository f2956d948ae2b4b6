//go:build !linux

package fdtable

// Reserve does nothing where descriptor tables do not stall on growth.
func Reserve(n int) (int, error) { return 0, nil }
