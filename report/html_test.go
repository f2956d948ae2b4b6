package report

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chromium finds Debian's headless browser, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("skipping: no chromium binary on PATH (Debian: apt-get install chromium) to open the HTML report in")
	return ""
}

func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--hide-scrollbars", "--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// TestHTMLInChromium opens the HTML report in headless Chromium, takes a
// screenshot and checks, in the DOM Chromium built, that every chart is
// there with non-empty data.
func TestHTMLInChromium(t *testing.T) {
	bin := chromium(t)
	r, _ := fixtureReport(t, Options{SLO: SLO{TTFTms: 250}})
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	var buf bytes.Buffer
	if err := WriteHTML(&buf, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "http://") && regexp.MustCompile(`(src|href)="https?://`).MatchString(buf.String()) {
		t.Error("the page loads something from the network")
	}
	if err := os.WriteFile(page, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	shot := filepath.Join(dir, "report.png")
	runChromium(t, bin, "--window-size=1280,2400", "--screenshot="+shot, "file://"+page)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 2400 {
		t.Errorf("screenshot is %v", b)
	}
	// the baseline and optimized series colours are on screen
	colours := map[[3]uint32]int{}
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y += 2 {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 2 {
			r, g, b, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, b >> 8}]++
		}
	}
	for name, c := range map[string][3]uint32{"baseline #4e79a7": {0x4e, 0x79, 0xa7}, "optimized #f28e2b": {0xf2, 0x8e, 0x2b}} {
		n := 0
		for k, v := range colours {
			if absDiff(k[0], c[0]) < 12 && absDiff(k[1], c[1]) < 12 && absDiff(k[2], c[2]) < 12 {
				n += v
			}
		}
		if n < 50 {
			t.Errorf("the screenshot has %d pixels of %s: the charts did not render", n, name)
		}
	}
	t.Logf("screenshot: %s", shot)

	dom := string(runChromium(t, bin, "--dump-dom", "file://"+page))
	svgRe := regexp.MustCompile(`(?s)<svg class="chart" data-chart="([a-z0-9-]+)".*?</svg>`)
	pathRe := regexp.MustCompile(`<path class="series" data-series="([^"]*)" data-points="(\d+)" d="([^"]*)"`)
	found := map[string]int{}
	for _, m := range svgRe.FindAllStringSubmatch(dom, -1) {
		for _, p := range pathRe.FindAllStringSubmatch(m[0], -1) {
			n, _ := strconv.Atoi(p[2])
			if n == 0 || !strings.Contains(p[3], "L") {
				t.Errorf("chart %s series %q is empty: %d points, d=%q", m[1], p[1], n, p[3])
			}
			found[m[1]]++
		}
	}
	for _, id := range []string{"throughput", "ttft", "curve", "cdf-e2e", "cdf-ttft", "itl"} {
		if found[id] < 2 {
			t.Errorf("chart %s has %d series in Chromium's DOM, want one per backend (2)", id, found[id])
		}
	}
	for _, want := range []string{"Max Throughput Test", "Min Latency Test", "Improvement Summary", "Mirrored Traffic", "Live Traffic", "Provenance"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

func absDiff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}
