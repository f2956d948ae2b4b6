# abproxy — see README.md. Two set-up commands on a new machine: make demo, make test.
GO       ?= go
BIN      ?= bin/abproxy
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
# Packages whose tests start goroutines run under the race detector.
RACE_PKGS := ./proxy/... ./router/... ./recorder/... ./sim/... ./bench/... ./report/... ./launcher/... ./admin/... ./cmd/... ./internal/...

.PHONY: build static test test-short bench demo lint fmt clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/abproxy

# A fully static binary for FROM-scratch images (launcher tests, containers).
static:
	CGO_ENABLED=1 $(GO) build -tags netgo,osusergo \
		-ldflags '$(LDFLAGS) -linkmode external -extldflags "-static"' -o bin/abproxy-static ./cmd/abproxy

test: lint
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -short -timeout 30m $(RACE_PKGS)

test-short:
	$(GO) test -short -count=1 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s -timeout 60m ./...

demo: build
	$(BIN) demo

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
