# keygate's one task runner; CI runs `make test` (through .ci/run) and nothing else.
#   make demo   the gateway on conf/demo.yaml (file store) with a demo upstream on :8080
#   make deps   what the build and the tests need, with apt (through sudo unless root) when
#               missing: cmake, build-essential, redis-server, nginx and its headers-more
#               module, systemd (for systemd-analyze)
#   make test   lint, compile the benches and the fuzz crate, then every test (what CI runs)
#   make lint   rustfmt check and clippy with warnings denied
#   make bench  criterion micro-benchmarks (the real decision), the memory figure,
#               benches/e2e.sh (wrk against keygate's floors: a Pingora pass-through and
#               Pingora's cheapest rejection, built as keygate is; nginx beside them, and the
#               stretch references: nginx with a Lua key check, HAProxy with a static map),
#               benches/instructions.sh (instructions per request against the same floors,
#               counted by valgrind: deterministic where req/s move from run to run),
#               benches/slowloris.sh (valid keys under a slowloris attack),
#               benches/flood.sh (memory through three floods), benches/fleet.sh (fleet
#               limits: hot path against scope local, overshoot against the bound) and the
#               fleet's sync cost and allocations per request; every wrk run checks its
#               answers and fails the bench on a wrong one
#   make bench-deps  what `make bench` needs on top of `make deps`, with apt when missing:
#               wrk, nginx's Lua module, HAProxy and valgrind (`make test` needs none of them)
#   make fuzz   cargo-fuzz on key extraction and config parsing (nightly; FUZZ_SECONDS each)
#   make soak   benches/soak.sh: 10 minutes at 60% load with Redis faults (not in CI)

CARGO ?= cargo
# One build profile for everything (tests, demo, benches): pingora builds once.
PROFILE := --release
# apt needs root: through sudo for anyone else.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: deps bench-deps demo test lint compile-all bench build fuzz soak

deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ] || \
		missing="$$missing libnginx-mod-http-headers-more-filter"; \
	command -v cc >/dev/null || missing="$$missing build-essential"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; \
	fi

# The references of benches/e2e.sh and the valgrind of benches/instructions.sh are optional
# there (each skipped with a note when absent); `make bench` installs them so its tables hold
# them.
bench-deps: deps
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing="$$missing libnginx-mod-http-lua"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; \
	fi

build: deps
	$(CARGO) build $(PROFILE) --bin keygate --example demo_upstream

demo: build
	@./target/release/examples/demo_upstream 127.0.0.1:8080 & up=$$!; \
	trap 'kill $$up 2>/dev/null' EXIT INT TERM; \
	echo "try: curl -i localhost:6188/ingest -H 'X-ApiKey: demo-key-0001' -d '{}'"; \
	./target/release/keygate -c conf/demo.yaml

# Lint and compile every target first, so nothing rots unseen: the benches, and the fuzz crate
# (its own workspace; checked on stable against the main crate's locked versions, in the main
# target folder, so the dependencies it shares are not built twice).
test: deps lint compile-all
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run $(PROFILE) --no-fail-fast; \
	else \
		$(CARGO) test $(PROFILE) --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(PROFILE) --all-targets -- -D warnings

compile-all:
	$(CARGO) check $(PROFILE) --benches
	cd fuzz && { [ -e Cargo.lock ] || cp ../Cargo.lock Cargo.lock; } && \
		$(CARGO) check $(PROFILE) --target-dir ../target

bench: bench-deps
	$(CARGO) bench --bench decision
	$(CARGO) bench --bench memory
	$(CARGO) bench --bench fleet_sync
	$(CARGO) bench --bench allocations
	$(CARGO) build $(PROFILE) --bin keygate --example passthrough --example passthrough_reject \
		--example passthrough_headers
	benches/e2e.sh
	benches/instructions.sh
	benches/slowloris.sh
	benches/flood.sh
	benches/fleet.sh

# Fuzzing (nightly, not in CI): FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 120
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz run extract -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run config -- -max_total_time=$(FUZZ_SECONDS)

# Soak (not in CI): SOAK_SECONDS (600) at about 60% of measured capacity with Redis faults.
soak: deps
	@command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(APT_INSTALL) wrk)
	$(CARGO) build $(PROFILE) --bin keygate
	benches/soak.sh
