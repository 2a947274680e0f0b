# HeteroPod build. `make test` and `make demo` work on a fresh Debian 12 machine as
# root: `deps` installs whatever the machine lacks, then everything is built here.
SHELL := /bin/bash
.DEFAULT_GOAL := build

BUILD := build
CC ?= gcc
CFLAGS_COMMON := -O2 -Wall -Wextra -Werror -D_GNU_SOURCE

# Debian packages the project runs, with one command each that proves it is there.
APT_PACKAGES := containerd runc containernetworking-plugins iptables iproute2 ethtool \
	busybox-static haproxy prometheus-node-exporter iperf3 sockperf wrk util-linux procps openssl libssl-dev libjansson-dev
APT_PROBES := containerd runc /usr/lib/cni/bridge iptables ip ethtool busybox haproxy \
	prometheus-node-exporter iperf3 sockperf wrk nsenter ps openssl /usr/include/openssl/ssl.h /usr/include/jansson.h

.PHONY: deps deps-apt deps-npm build build-ts build-c test test-unit test-e2e demo bench clean

deps: deps-apt deps-npm

deps-apt:
	@missing=""; for p in $(APT_PROBES); do command -v $$p >/dev/null 2>&1 || [ -e $$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "deps: missing$$missing; installing Debian packages"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

deps-npm: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

build: deps-npm build-ts build-c

build-ts: node_modules/.installed
	npx tsc -p tsconfig.json

build-c: $(BUILD)/pause

$(BUILD)/pause: src/images/pause.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -static -o $@ $<

# Module makefiles add their own C targets to build-c and test-c.
-include src/*/module.mk

# End-to-end tests share the machine's one test bed; the lock keeps two runs apart.
TESTBED_LOCK := /run/heteropod-testbed.lock

test: deps build
	flock $(TESTBED_LOCK) node scripts/run-tests.js

test-unit: build
	node scripts/run-tests.js test/unit

test-e2e: deps build
	flock $(TESTBED_LOCK) node scripts/run-tests.js test/e2e

demo: deps build
	bash scripts/demo.sh

# The offload benchmark (not a test): host vs DPU start time with the layer cache
# warm, the cold-cache layer transfer, bytes sent for a second pod. It brings the
# test bed up if needed (and down again), so it takes the test bed's lock.
.PHONY: bench-offload bench-agent
bench: bench-offload
bench-offload: deps build
	flock $(TESTBED_LOCK) node dist/scripts/bench-offload.js

# What one call to the DPU agent costs the node daemon: ttrpc over mutual TLS
# against grpc-js over the same TLS (not a test; needs no test bed).
bench-agent: deps build
	node dist/scripts/bench-agent.js

# The sidecar benchmark (not a test): HTTP load through a pod's haproxy sidecar on
# the host and offloaded to the DPU; host CPU per request, p50/p99, DPU CPU. Same
# lock and test-bed handling as bench-offload.
.PHONY: bench-sidecar
bench: bench-sidecar
bench-sidecar: deps build
	flock $(TESTBED_LOCK) node dist/scripts/bench-sidecar.js

clean:
	rm -rf dist $(BUILD)
