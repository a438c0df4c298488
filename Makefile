# Trunkline. `make run` starts the local stack and the worker; `make test` runs every test
# (lint, types, unit, real-stack, chaos, end-to-end calls). `make stress` re-runs them under load.
# Both install what is missing (a virtualenv, redis-server, livekit-server).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK := bash ops/stack.sh
DEV_ENV := .stack/dev.env
API_HOST ?= 127.0.0.1
API_PORT ?= 8000
ORG ?= dev-org
# The test suite runs its own stack instance so it never touches `make run` data.
TEST_STACK := TRUNKLINE_STACK_DIR=$(CURDIR)/.stack/test TRUNKLINE_REDIS_PORT=6391 \
	LIVEKIT_PORT=7890 TRUNKLINE_LIVEKIT_UDP_PORT=7892
# The end-to-end calls run on a stack instance and SIP bridge of their own (debug: the bridge
# logs the calls it drops only at that level).
E2E_STACK := TRUNKLINE_STACK_DIR=$(CURDIR)/.stack/e2e TRUNKLINE_REDIS_PORT=6395 \
	LIVEKIT_PORT=7896 TRUNKLINE_LIVEKIT_UDP_PORT=7898 TRUNKLINE_SIP_PORT=5096 \
	TRUNKLINE_SIP_RTP_PORTS=20900-20959 TRUNKLINE_SIP_LOG_LEVEL=debug
SIP := bash ops/sip.sh
# The agent `make run` starts (tests/e2e/agent.py): provision numbers with this agentName.
AGENT_NAME ?= local-agent

.PHONY: help install run api-key worker stack-up stack-down stack-status test unit integration lint \
	typecheck clean e2e bench mutants

help:
	@echo "make run          start redis-server, livekit-server, the SIP bridge, a worker, a test agent"
	@echo "                  (AGENT_NAME, default local-agent) and the API (foreground)"
	@echo "make api-key      create an API key for ORG (default dev-org) on the local stack"
	@echo "make test         lint, type-check, unit, integration and end-to-end tests on the real stack"
	@echo "make e2e          real calls only: sipp -> SIP bridge -> LiveKit -> test agent, and out"
	@echo "make unit         fast tests only (fakeredis, MockTransport)"
	@echo "make integration  tests against the real stack"
	@echo "make mutants      mutation testing of the retry, sweeper, runner, saga and contract"
	@echo "                  modules (not part of make test; MUTANTS='worker.retry*' for some)"
	@echo "make stack-up | stack-down | stack-status"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

stack-up:
	$(STACK) up

stack-down:
	-$(SIP) down
	$(STACK) down

stack-status:
	$(STACK) status

# A local encryption key for the dev stack only; production sets TRUNKLINE_SECRET_KEYS itself.
$(DEV_ENV): | $(STAMP)
	@mkdir -p $(dir $@)
	@umask 077; echo "export TRUNKLINE_SECRET_KEYS=$$($(BIN)/trunkline keygen)" > $@
	@echo "generated a local dev encryption key in $@"

run: $(STAMP) $(DEV_ENV) stack-up
	$(SIP) up
	@eval "$$($(STACK) env)"; eval "$$($(SIP) env)"; source $(DEV_ENV); \
	export TRUNKLINE_GATEWAY_ALLOWLIST=$${TRUNKLINE_GATEWAY_ALLOWLIST-127.0.0.0/8}; \
	echo "worker on $$REDIS_URL, LiveKit at $$LIVEKIT_URL"; \
	$(BIN)/celery -A worker worker --loglevel=INFO & worker=$$!; \
	LIVEKIT_URL="ws://$${LIVEKIT_URL#http://}" TRUNKLINE_AGENT_NAME=$(AGENT_NAME) \
		TRUNKLINE_AGENT_REPORT=$(CURDIR)/.stack/logs/agent-report.jsonl \
		$(BIN)/python -m livekit.agents start tests/e2e/agent.py --log-format json \
		>>.stack/logs/agent.log 2>&1 & agent=$$!; \
	trap 'kill -TERM $$worker $$agent 2>/dev/null; wait $$worker $$agent' EXIT INT TERM; \
	echo "SIP bridge on sip:$$TRUNKLINE_SIP_HOST:$$TRUNKLINE_SIP_PORT; agent '$(AGENT_NAME)' (log .stack/logs/agent.log)"; \
	echo "API on http://$(API_HOST):$(API_PORT) (docs: /docs). An API key: make api-key ORG=my-org"; \
	echo "Ctrl-C stops the API, the worker and the agent; 'make stack-down' stops Redis, LiveKit and the bridge."; \
	$(BIN)/trunkline api --host $(API_HOST) --port $(API_PORT)

api-key: $(STAMP) $(DEV_ENV)
	@eval "$$($(STACK) env)"; source $(DEV_ENV); $(BIN)/trunkline keys create --org $(ORG) --json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not chaos and not e2e" -q

integration: $(STAMP)
	$(TEST_STACK) $(STACK) up
	$(TEST_STACK) $(BIN)/python -m pytest -m "integration or chaos" -q

test: $(STAMP)
	$(TEST_STACK) $(STACK) up
	@# The partition test runs workers in network namespaces (`ip netns`, package iproute2).
	@command -v ip >/dev/null 2>&1 || PROG=make bash -c 'source ops/lib.sh && apt_install iproute2'
	@# The /docs and /ops tests drive headless Chromium (tests/support/browser.py).
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		PROG=make bash -c 'source ops/lib.sh && apt_install chromium chromium-driver'
	@# The SIP bridge builds (niced) while the other suites run; `make e2e` waits for it and
	@# reports a failed build itself.
	@mkdir -p .stack/e2e/logs; ($(E2E_STACK) nice -n 10 $(SIP) install \
		>.stack/e2e/logs/sip-install.log 2>&1 &)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(TEST_STACK) $(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory e2e

clean:
	-$(SIP) down
	-$(STACK) down
	-$(TEST_STACK) $(STACK) down
	-$(E2E_STACK) $(SIP) down
	-$(E2E_STACK) $(STACK) down
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache

# End-to-end calls through LiveKit's SIP bridge, sipp and the test agent, on a stack instance
# and bridge of their own (.stack/e2e, own ports). ops/sip.sh up installs what is missing
# (sipp, the cgo build dependencies), builds the bridge from ../shared/third_party/livekit-sip
# once (TRUNKLINE_SIP_SRC elsewhere), and starts redis, livekit-server and the bridge.
e2e: $(STAMP)
	$(E2E_STACK) $(SIP) up
	$(E2E_STACK) $(BIN)/python -m pytest -m e2e -q tests/e2e $(E2E_ARGS)

# The benchmark (bench/README.md): the pipeline against direct LiveKit calls, with workers,
# a Redis database (3) and a cleanup of its own; on the local stack unless REDIS_URL and
# LIVEKIT_* are set. Extra flags: make bench BENCH_ARGS="--jobs 500 --rss-jobs 2000".
bench: $(STAMP)
	$(BIN)/python -m bench --json bench/results/latest.json $(BENCH_ARGS)

# Mutation testing (README, "Mutation testing"): mutmut changes worker/{retry,sweeper,runner,saga,
# contract}.py one mutant at a time and runs the unit tests covering it. Not part of `make test`
# (it takes tens of minutes). MUTANTS selects mutants by name; MUTANTS_CHILDREN (default 2) caps
# the parallel pytest runs.
mutants: $(STAMP)
	bash ops/mutants.sh $(foreach pattern,$(MUTANTS),'$(pattern)')

# Not part of `make test`: the unit and real-stack suites with CPU hogs on every core, then the
# tests that once failed under load, STRESS_REPEAT times each (ops/stress.sh; installs stress-ng).
.PHONY: stress
stress: $(STAMP)
	$(TEST_STACK) bash ops/stress.sh
