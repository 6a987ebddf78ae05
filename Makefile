# ondisk: build, run and test.
#
# RocksDB is compiled from C++ source by the rocksdb crate (12 to 30 minutes on 2 cores), so every
# target builds into one cache outside the checkout and uses ONE profile (release) for the binary
# and the tests: only the first build on a machine pays for RocksDB.

CARGO_TARGET_DIR ?= $(HOME)/.cache/ondisk-target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: ondisk deps certs test lint chaos bench-compare bench-tls-cost bench-failover bench-watch bench-lease bench-big etcd cluster cluster-stop node-stop node-start clean-data

## Build ./ondisk at the repository root.
ondisk: deps
	$(CARGO) build --release --locked --workspace --bins
	cp "$(CARGO_TARGET_DIR)/release/ondisk" ./ondisk.new && mv -f ./ondisk.new ./ondisk

## Install what building and testing need (libclang, a C++ compiler, protoc, fuse3) where missing.
deps:
	@scripts/deps.sh

## Certificates for a TLS cluster on this machine in $(CERTS): a CA, nodes 1-3 and a client (see
## the README's TLS walkthrough). Again with the CA in place: new node and client certificates from
## it, which running nodes pick up by themselves.
CERTS ?= certs
certs: ondisk
	./ondisk ctl certs $(CERTS)

## Everything CI checks: formatting, lints, unit and integration tests.
test: deps lint
	scripts/test-deps.sh
	$(CARGO) test --release --locked --workspace --all-targets

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

## The fault-injection suite at length: make chaos DURATION=30m [SEED=N] (a bounded run is part of
## `make test`). Needs root, for network namespaces and the power-cut file system (powercut-fs,
## built first); see docs/TESTING.md.
DURATION ?= 30m
SEED ?=
chaos: deps
	$(CARGO) build --release --locked --workspace --bins
	ONDISK_CHAOS_DURATION=$(DURATION) ONDISK_CHAOS_SEED=$(SEED) \
		$(CARGO) test --release --locked --test chaos -- --ignored --exact --nocapture long_run

## ondisk and etcd side by side (3 nodes each, loopback, fsync on): every workload on each in
## alternation, ROUNDS times, then one table of medians and ratios. Installs etcd if missing.
## See BENCHMARKS.md. Example: make bench-compare ROUNDS=3 DURATION=5s BIG_KEYS=1000000
ROUNDS ?= 3
BENCH_DURATION ?= 5s
BIG_KEYS ?= 1000000
BENCH_ARGS ?=
bench-compare: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" compare \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" \
		--rounds $(ROUNDS) --duration $(BENCH_DURATION) --big-keys $(BIG_KEYS) $(BENCH_ARGS)

## What TLS costs ondisk and etcd (see BENCHMARKS.md): a plaintext and a TLS cluster of each, every
## workload on each in rotation, ROUNDS times. Example: make bench-tls-cost ROUNDS=5
TLS_WORKLOADS ?= put,get
TLS_CLIENTS ?= 64,256
bench-tls-cost: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" tls-cost \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" \
		--rounds $(ROUNDS) --duration $(BENCH_DURATION) --workloads $(TLS_WORKLOADS) \
		--clients $(TLS_CLIENTS) $(BENCH_ARGS)

## etcd 3.4, the benchmarks' comparison target (Debian's etcd-server), installed if missing.
etcd:
	@command -v etcd >/dev/null || { \
		echo "installing etcd (Debian's etcd-server)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null; }

## Leader failover, ondisk and etcd side by side (see BENCHMARKS.md). Example: make bench-failover KILLS=8
KILLS ?= 8
bench-failover: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" failover \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" --kills $(KILLS)

## Watch fan-out, ondisk and etcd in turn (see BENCHMARKS.md): W watchers on one prefix while puts
## arrive at RATE a second for WATCH_DURATION. Example: make bench-watch WATCHERS=1000 RATE=5000
WATCHERS ?= 1000
RATE ?= 5000
WATCH_DURATION ?= 10s
bench-watch: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" watch \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" \
		--watchers $(WATCHERS) --rate $(RATE) --duration $(WATCH_DURATION) $(BENCH_ARGS)

## Lease keep-alive cost, ondisk and etcd in turn (see BENCHMARKS.md): LEASES leases with a TTL of
## LEASE_TTL seconds, each kept alive once per TTL/3 for LEASE_DURATION (BENCH_ARGS=--flat-out:
## as fast as possible). Example: make bench-lease LEASES=10000
LEASES ?= 10000
LEASE_TTL ?= 30
LEASE_DURATION ?= 10s
bench-lease: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" lease \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" \
		--leases $(LEASES) --ttl $(LEASE_TTL) --duration $(LEASE_DURATION) $(BENCH_ARGS)

## Each system at size (see BENCHMARKS.md): SIZE_KEYS keys of SIZE_VALUE random bytes into each
## 3-member cluster in turn (etcd stops at its 2 GB quota), then disk per member, memory and a full
## restart. The default, 10 million keys of 1,000 bytes, needs about 32 GB free and takes about
## 15 minutes. Example: make bench-big SIZE_KEYS=1000000
SIZE_KEYS ?= 10000000
SIZE_VALUE ?= 1000
bench-big: deps etcd
	$(CARGO) build --release --locked --workspace --bins
	"$(CARGO_TARGET_DIR)/release/ondisk-bench" big \
		--ondisk "$(CARGO_TARGET_DIR)/release/ondisk" --etcd "$$(command -v etcd)" \
		--keys $(SIZE_KEYS) --value-size $(SIZE_VALUE) $(BENCH_ARGS)

## Three nodes in the background (kv-db layout, HTTP on 12380/22380/32380); waits for a leader.
cluster: ondisk
	scripts/cluster.sh start

## Stop exactly the nodes `make cluster` started.
cluster-stop:
	scripts/cluster.sh stop

## Stop or restart one node of that cluster: make node-stop ID=2, make node-start ID=2.
node-stop:
	scripts/cluster.sh stop-node $(ID)

node-start:
	scripts/cluster.sh start-node $(ID)

## Start over: remove every node's data (as in the original example).
clean-data:
	find example-data -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
