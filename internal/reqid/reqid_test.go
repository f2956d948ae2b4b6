package reqid

import "testing"

func TestIDsUniqueAndPrefixed(t *testing.T) {
	var a, b Gen
	a.Init()
	b.Init()
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := a.Next()
		if len(id) != 32 || seen[id] {
			t.Fatalf("id %q: len %d, repeated %v", id, len(id), seen[id])
		}
		seen[id] = true
	}
	if x, y := a.Next(), b.Next(); x[:16] == y[:16] {
		t.Fatalf("two generators share a prefix: %s %s", x, y)
	}
}
