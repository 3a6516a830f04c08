# sendtrack — the two commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SENDTRACK_KAFKA_BROKER ?= localhost:9092

.PHONY: all install browser kafka-up kafka-down kafka-status test test-soak test-unit test-integration demo bench bench-quick bench-floor bench-engine-memory bench-funnel-merge bench-dashboard screenshot migrate worker clean

# Runs the command $(1) with a broker: starts one if none answers, and stops what it started; exits
# with the command's status.
with_kafka = started=0; \
	if ! scripts/kafka/kafka.sh status >/dev/null 2>&1; then scripts/kafka/kafka.sh up && started=1; fi; \
	$(1); rc=$$?; \
	if [ $$started = 1 ]; then scripts/kafka/kafka.sh down; fi; \
	exit $$rc

all: install

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ is required (python3 not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

# The dashboard's browser tests drive Debian's chromium through Playwright (which cannot download a
# browser of its own here). As root (CI) it is installed; otherwise, say how.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the browser tests need Debian's chromium: sudo apt-get install -y chromium"; exit 1; fi; }

kafka-up:
	@scripts/kafka/kafka.sh up

kafka-down:
	@scripts/kafka/kafka.sh down

kafka-status:
	@scripts/kafka/kafka.sh status

test-unit: install
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

# Starts the broker if none answers, runs everything, and stops what it started.
test: install browser
	@$(call with_kafka,$(PY) -m pytest tests -q -p no:cacheprovider -ra)

# The reliability tests (SIGKILL loop, two-worker rebalance, broker restart) SOAK_RUNS times over,
# with their printed measurements; `make test` runs them once. See docs/reliability.md.
SOAK_RUNS ?= 5
test-soak: install
	@started=0; \
	if ! scripts/kafka/kafka.sh status >/dev/null 2>&1; then scripts/kafka/kafka.sh up && started=1; fi; \
	rc=0; for i in $$(seq 1 $(SOAK_RUNS)); do echo "== soak run $$i of $(SOAK_RUNS)"; \
	  $(PY) -m pytest tests/integration/test_reliability.py -q -p no:cacheprovider -ra -s || { rc=1; break; }; done; \
	if [ $$started = 1 ]; then scripts/kafka/kafka.sh down; fi; \
	exit $$rc

test-integration: install browser kafka-up
	$(PY) -m pytest tests/integration -q -p no:cacheprovider -ra

migrate: install
	$(VENV)/bin/sendtrack migrate

worker: install kafka-up
	$(VENV)/bin/sendtrack worker

demo: install
	@scripts/demo.sh

bench: install
	@$(call with_kafka,$(PY) bench/run.py $(BENCH_ARGS))

bench-quick:
	@$(MAKE) --no-print-directory bench BENCH_ARGS=--quick

# The floor of the engine's design on this machine: plain aiokafka + RocksDB loops, with and without the
# status rules, beside the real engine alone, against the same-run passthrough (see bench/floor.py).
bench-floor: install
	@$(call with_kafka,$(PY) bench/floor.py $(BENCH_ARGS))

# The embedded engine's own memory while it ingests, with ClickHouse's allocator settings and with sendtrack's.
bench-engine-memory: install
	$(PY) bench/engine_memory.py $(BENCH_ARGS)

bench-funnel-merge: install
	$(PY) bench/funnel_merge.py $(BENCH_ARGS)

# The README's picture of the dashboard (docs/img/dashboard.png), from a worker fed simulated traffic.
screenshot: install browser
	@$(call with_kafka,$(PY) scripts/screenshot.py $(SCREENSHOT_ARGS))

# The dashboard API's latency over a large database (BENCH_ARGS: see bench/dashboard.py --help).
bench-dashboard: install
	@$(call with_kafka,$(PY) bench/dashboard.py $(BENCH_ARGS))

clean:
	rm -rf $(VENV) .kafka data
