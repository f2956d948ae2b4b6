package fdtable

import "golang.org/x/sys/unix"

// Reserve grows the descriptor table to hold min(n, Max, RLIMIT_NOFILE)
// descriptors and returns that size. The table never shrinks, so later
// opens below the size never wait for a resize.
func Reserve(n int) (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	n = min(n, Max)
	if lim.Cur < uint64(n) {
		n = int(lim.Cur)
	}
	if n < 2 {
		return n, nil
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // needs no file system (FROM scratch)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	// duplicating onto the highest number makes the kernel size the table for it
	if err := unix.Dup3(fd, n-1, unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	return n, unix.Close(n - 1)
}
