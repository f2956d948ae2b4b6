package fdtable

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// fdSize reads the kernel's current table size for this process.
func fdSize(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "FDSize:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}

func TestReserveGrowsTheTable(t *testing.T) {
	before := fdSize(t)
	want := 8192
	if before >= want {
		t.Skipf("table already %d", before)
	}
	got, err := Reserve(want)
	if err != nil {
		t.Fatal(err)
	}
	if after := fdSize(t); after < got || got < 1024 {
		t.Fatalf("FDSize %d -> %d after Reserve(%d) = %d", before, after, want, got)
	}
	// nothing is left open
	if _, err := os.Stat("/proc/self/fd/" + strconv.Itoa(got-1)); err == nil {
		t.Fatalf("descriptor %d still open", got-1)
	}
}
