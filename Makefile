# overlayd — see README.md. `make demo` runs the main job, `make test` the tests.
GO        ?= go
BIN       := bin/overlayd
PKGS      := ./...
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build test test-cni-cycles soak vet lint deps demo demo-etcd bench bench-micro bench-scale clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/overlayd

deps:
	@scripts/deps.sh ip:iproute2 ping:iputils-ping iperf3:iperf3 traceroute:traceroute etcd:etcd-server etcdctl:etcd-client podman:podman runc:runc busybox:busybox-static

vet:
	$(GO) vet $(PKGS)

# Unit and end-to-end tests, with the race detector: the data path is concurrent.
# Tests that need root and network namespaces skip with a message when not root.
test: deps vet
	$(GO) test -race -count=1 -timeout 9m $(PKGS)

# The CNI plugin's long run: 1,000 ADD/DEL cycles through libcni on the bed
# (make test runs 100), then nothing may be left: no allocation but the
# tunnel address, no veth, no route, an empty libcni cache. Needs root.
test-cni-cycles: deps
	OVERLAYD_CNI_CYCLES=1000 $(GO) test -race -count=1 -timeout 30m -run 'TestE2ECNI/sequential' -v ./cmd/overlayd/

# The soak (root): the standard bed for DURATION under TCP streams both ways
# (VXLAN, IP-in-IP, direct), UDP request/response and NAT flows opened and
# closed, with a reload every minute that swaps the encapsulations and
# switches CrossSubnet <-> Always. Then: every stream byte verified, no
# stream broken, the NAT tables empty, every overlayd's memory, goroutines
# and descriptors flat after the warm-up, drops only for the expected
# reasons. The summary is printed and written to bench/results/soak-*.json.
# make test runs 2 minutes of it. The test timeout is DURATION plus 10
# minutes: Go adds up "30m10m". SOAK_RACE= runs overlayd without the race
# detector, for memory figures of the build people run.
DURATION ?= 30m
SOAK_RACE ?= -race
soak: deps
	@mkdir -p bench/results
	GORACE=atexit_sleep_ms=0 OVERLAYD_SOAK_DURATION=$(DURATION) \
	OVERLAYD_SOAK_JSON=$(CURDIR)/bench/results/soak-$$(date -u +%Y-%m-%dT%H%M%SZ).json \
		$(GO) test $(SOAK_RACE) -count=1 -timeout $(DURATION)10m -run '^TestSoak$$' -v ./cmd/overlayd/

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
	@scripts/deps.sh ip:iproute2 iperf3:iperf3 wg:wireguard-tools ss:iproute2 iptables:iptables pasta:passt slirp4netns:slirp4netns
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

# The etcd datastore at the issue's scale (benchmarks, not tests): 5,000 nodes
# × 20 blocks in an embedded etcd; one node's list, build and plan; a new
# node's claim reaching 1 and SCALE_WATCHERS watching Sources (each its own
# node) and 100 plain etcd watches; 5,000 nodes joining at once, in a pool
# of four times the blocks they need and in one of exactly as many.
# SCALE_NODES, SCALE_BLOCKS, SCALE_WATCHERS, SCALE_STREAMS and SCALE_RUNS
# (iterations of each) change the figures. At 5,000 × 20 a watcher (its
# Source, cluster and plan) keeps about 130 MB (it was 350 MB before the
# Source kept block heads only): 100 watchers would need about 13 GB (not
# measured); 25 keep the run short, whose longest part is their first Loads
# (4 minutes on 2 cores).
SCALE_NODES    ?= 5000
SCALE_BLOCKS   ?= 20
SCALE_WATCHERS ?= 25
SCALE_STREAMS  ?= 100
SCALE_RUNS     ?= 3
SCALE_MEMLIMIT ?= 18GiB
bench-scale:
	GOMEMLIMIT=$(SCALE_MEMLIMIT) OVERLAYD_SCALE_NODES=$(SCALE_NODES) OVERLAYD_SCALE_BLOCKS=$(SCALE_BLOCKS) \
	OVERLAYD_SCALE_WATCHERS=$(SCALE_WATCHERS) OVERLAYD_SCALE_STREAMS=$(SCALE_STREAMS) \
		$(GO) test -run '^$$' -bench '^BenchmarkScale$$' -benchtime $(SCALE_RUNS)x -benchmem -timeout 90m ./datastore/etcd/
	for spare in 4 1; do \
		OVERLAYD_IPAM_BENCH_NODES=$(SCALE_NODES) OVERLAYD_IPAM_BENCH_SPARE=$$spare \
		$(GO) test -run '^$$' -bench '^BenchmarkEnsureBlocks$$' -benchtime $(SCALE_RUNS)x -timeout 30m ./datastore/etcd/ || exit 1; \
	done

clean:
	rm -rf bin
