# OpsPilot developer entry points. `make run` and `make test` work on a bare Debian
# machine: scripts/dev-services.sh starts (or installs) PostgreSQL, Redis and NATS.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# cargo-nextest runs every test in its own process (isolation, parallelism); plain
# cargo test is the fallback where it is not installed.
TEST_RUNNER := $(shell if $(CARGO) nextest --version >/dev/null 2>&1; then echo "nextest run --no-fail-fast"; else echo "test --no-fail-fast"; fi)

.PHONY: help run test stack build release fmt lint check bench chaos clean-stack deploy-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

stack: ## start (or install) PostgreSQL, Redis and NATS for local work
	@scripts/dev-services.sh

build: ## debug build of every service and the simulator
	$(CARGO) build --workspace --bins

release: ## release build of every service and the simulator
	$(CARGO) build --workspace --bins --release

run: build ## the local stack, migrations, all four services and simulated agents
	@scripts/dev-services.sh
	@scripts/run-local.sh

test: ## the local stack, then the whole test suite
	@scripts/dev-services.sh --test
	@source .stack/env && $(CARGO) $(TEST_RUNNER) --workspace

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## formatting and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: lint test ## everything CI runs

chaos: ## faults under load with exact accounting, hostile input, fuzzing, secrets check (release build)
	@scripts/dev-services.sh --test
	@scripts/chaos-tools.sh
	$(CARGO) build --workspace --bins --release
	@source .stack/env && target/release/opspilot-chaos $(CHAOS_ARGS)

bench: ## benchmarks against same-run baselines; writes tools/bench/results/latest.json
	@scripts/bench.sh $(BENCH_ARGS)

deploy-check: ## validate docker-compose.yml, deploy/k8s, deploy/observability (dashboard, alert rules) and deploy/Dockerfile (no Docker needed)
	@bash deploy/check.sh

clean-stack: ## stop the NATS server started by `make run` and forget .stack/env
	@if [ -f .stack/nats.pid ]; then kill "$$(cat .stack/nats.pid)" 2>/dev/null || true; rm -f .stack/nats.pid; fi
	@rm -f .stack/env
