# overlayd — see README.md. `make demo` runs the main job, `make test` the tests.
GO        ?= go
BIN       := bin/overlayd
PKGS      := ./...
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build test test-unit vet lint deps demo fuzz clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/overlayd

deps:
	@scripts/deps.sh ip:iproute2 ping:iputils-ping

vet:
	$(GO) vet $(PKGS)

# Unit and end-to-end tests, with the race detector: the data path is concurrent.
# Tests that need root and network namespaces skip with a message when not root.
test: deps vet
	$(GO) test -race -count=1 -timeout 9m $(PKGS)

lint: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@latest
	$(STATICCHECK) $(PKGS)

# The main job: three nodes in network namespaces, overlayd on each, pings
# and transfers across the same subnet (direct) and the other (encapsulated),
# what crossed the wire, and a teardown. Needs root.
demo: deps build
	$(GO) run ./examples/demo --overlayd $(BIN) --config examples/vxlan-cross-subnet.toml

clean:
	rm -rf bin
