# overlayd — see README.md. `make demo` runs the main job, `make test` the tests.
GO        ?= go
BIN       := bin/overlayd
PKGS      := ./...
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build test vet lint deps demo demo-etcd bench bench-micro clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/overlayd

deps:
	@scripts/deps.sh ip:iproute2 ping:iputils-ping iperf3:iperf3 traceroute:traceroute etcd:etcd-server etcdctl:etcd-client

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

# The cluster growing through a real etcd (a three-member cluster in the
# bed): three nodes join with only their own entry in their files, Calico's
# IPPool is applied with `overlayd apply`, a fourth node joins live and
# `overlayd delete node` removes it. Needs root; `make demo` stays on the
# file datastore.
demo-etcd: deps build
	$(GO) run ./examples/demo-etcd --overlayd $(BIN)

# The encapsulation overhead harness (root): every mode on the standard bed,
# table on stdout, Markdown, JSON and SVG in bench/results/. QUICK=1 runs one
# short pass, PROFILE=DIR saves pprof profiles of each overlayd under load.
# wireguard-go is built from the Go module proxy at the version
# go.mod pins (its tool directive keeps that version's dependencies).
bench: build
	@scripts/deps.sh ip:iproute2 iperf3:iperf3 wg:wireguard-tools ss:iproute2
	$(GO) build -o bin/wireguard-go golang.zx2c4.com/wireguard
	$(GO) run ./bench --overlayd $(BIN) --wireguard-go bin/wireguard-go $(if $(QUICK),--quick) $(if $(PROFILE),--profile $(PROFILE))

# Go microbenchmarks of the per-packet path, six runs each (benchstat wants six for a confidence interval), summarised by
# benchstat (installed with go install if missing).
BENCHSTAT := $(shell $(GO) env GOPATH)/bin/benchstat
bench-micro:
	@test -x $(BENCHSTAT) || $(GO) install golang.org/x/perf/cmd/benchstat@latest
	@mkdir -p bench/results
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./encap/ ./dataplane/ ./nat/ ./conn/ | tee bench/results/micro.txt
	$(BENCHSTAT) bench/results/micro.txt

clean:
	rm -rf bin
