# The two commands a newcomer needs: `make serve` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models

.PHONY: setup setup-test models serve test test-busy lint bench browser brokers clean

# The gateway's own packages (with WebRTC, OpenTelemetry and result sink support).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[webrtc,otel,auth,sinks,client]'
	touch $@

# Plus what the tests use (pytest, hypothesis, Playwright's driver, linters).
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[webrtc,otel,auth,sinks,client,bench,test]'
	touch $@

models: setup
	$(BIN)/edge models pull --models $(MODELS)

serve: models
	$(BIN)/edge serve --models $(MODELS)

# Debian's Chromium for the browser tests (never a downloaded browser).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

# Debian's MQTT and NATS brokers for the sink tests, which start their own on loopback ports.
# Installed with services held back (policy-rc.d), so no broker runs as a system service.
brokers:
	@test -x /usr/sbin/mosquitto -a -x /usr/sbin/nats-server || { \
	  held=; test -e /usr/sbin/policy-rc.d || { printf '#!/bin/sh\nexit 101\n' \
	    > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && held=1; }; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends mosquitto nats-server; rc=$$?; \
	  test -z "$$held" || rm -f /usr/sbin/policy-rc.d; exit $$rc; }

lint: setup-test
	$(BIN)/ruff check edge tests bench
	$(BIN)/ruff format --check edge tests bench
	$(BIN)/mypy

test: setup-test models browser brokers lint
	$(BIN)/pytest

# The same suite while every core is kept busy by other processes (BURNERS CPU burners per
# core, started and stopped by tests/busy.py): no test may depend on how fast the machine is.
BURNERS ?= 1
test-busy: setup-test models browser brokers lint
	$(BIN)/python tests/busy.py --per-core $(BURNERS) -- $(BIN)/pytest

# The benchmark report for this machine (edge bench): docs/benchmarks.md and its charts in
# docs/benchmarks/. About ten minutes a model; run it on a quiet machine (it refuses a busy one).
BENCH_OUT ?= docs
bench: setup-test models
	$(BIN)/edge bench --out $(BENCH_OUT) --image "$$($(BIN)/python -c 'from tests.imagedata \
	  import sample_image as s; print("blazeface=%s,ppocr_det=%s" % (s("astronaut.png"), \
	  s("page.png")))')"

clean:
	rm -rf $(VENV) .cache artifacts
