# The two commands a newcomer needs: `make serve` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models

.PHONY: setup setup-test models serve test test-busy test-pythons test-smoke lint bench browser brokers screenshot clean \
  images test-images

# The package's extras the server is installed with, and those the tests add: one list each, so
# a new extra reaches `setup`, `setup-test` and every interpreter of `test-pythons` at once.
EXTRAS := webrtc,otel,auth,sinks,client
TEST_EXTRAS := $(EXTRAS),bench,test

# The gateway's own packages (with WebRTC, OpenTelemetry and result sink support).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Plus what the tests use (pytest, hypothesis, Playwright's driver, linters).
setup-test: $(VENV)/.installed-test

# In one resolution with the server's extras: installed after them, the test extra's pins
# (grpcio-tools, hence protobuf 4) would downgrade some of what they brought and leave the rest.
$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(VENV)/.installed $@

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

# The container images from the one Dockerfile, arm64 (under QEMU) and x86-64, tagged
# edge-gateway:<version>-<arch>: Docker, QEMU, debootstrap and a registry from Debian
# (deploy/images/host.sh, starts dockerd if none answers); the base image made from Debian's
# archive when no registry answers, cached in ~/.cache/edge-gateway/images. Each image's size
# is checked against IMAGE_BUDGET_MB (docs/deploy.md, "Images built here").
IMAGE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' edge/__init__.py)
IMAGE_ARCHS ?= arm64 amd64
images:
	deploy/images/host.sh
	nice -n 19 deploy/images/build.sh $(IMAGE_ARCHS)

# The arm64 image run under QEMU: non-root, its health check, /readyz, a face over the
# WebSocket, models on a volume with hot reload and canary, drain on `docker stop`, and the
# over-the-air update v1 -> v2 -> broken v3 through a loopback registry (tests/test_images.py).
test-images: setup-test images
	EDGE_TEST_IMAGE=edge-gateway:$(IMAGE_VERSION)-arm64 nice -n 19 $(BIN)/pytest -v -s \
	  -p no:cacheprovider tests/test_images.py

# The README's dashboard screenshot (docs/dashboard.png), refreshed on purpose: `make test`
# leaves its screenshots in artifacts/ and changes no tracked file.
screenshot: setup-test models browser
	EDGE_REFRESH_SCREENSHOT=1 $(BIN)/pytest tests/test_e2e.py -k test_websocket_dashboard_boxes_the_face

# The same suite while every core is kept busy by other processes (BURNERS CPU burners per
# core, started and stopped by tests/busy.py): no test may depend on how fast the machine is.
BURNERS ?= 1
test-busy: setup-test models browser brokers lint
	$(BIN)/python tests/busy.py --per-core $(BURNERS) -- $(BIN)/pytest

# The unit and integration tests on the other supported interpreters, each in its own venv
# (.venv-3.10, ...): pyenv's (~/.pyenv/versions/3.X.*) or python3.X on PATH. The browser test
# and the aarch64 wheel check (which covers every Python from any one) stay with `make test`.
# Times in docs/deploy.md ("Python versions"); too long for CI's `make test`, which runs 3.11.
PYTHONS ?= 3.10 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
PYTEST_PYTHONS ?= -m 'not e2e and not network'
python_for = $(firstword $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)) \
  $(shell command -v python$(1)))

.venv-%/.installed-test: pyproject.toml
	@test -n "$(call python_for,$*)" || { echo "no Python $* (pyenv or python$* on PATH)" >&2; exit 1; }
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $@

test-pythons: models brokers $(foreach v,$(PYTHONS),.venv-$(v)/.installed-test)
	@failed=; for v in $(PYTHONS); do \
	  echo "==> Python $$v"; .venv-$$v/bin/pytest $(PYTEST_PYTHONS) || failed="$$failed $$v"; \
	done; test -z "$$failed" || { echo "test-pythons: failed on$$failed" >&2; exit 1; }

# CI's short run on Python 3.10 (JetPack 6's, and the oldest supported): the unit tests, and
# the integration tests of the code that runs on 3.10's backports (edge/compat.py: timeouts in
# streams, WebRTC, sinks and the supervisor; model.toml). About 2 minutes on the 2-core box.
SMOKE_TESTS ?= tests/test_stream.py tests/test_processes.py tests/test_models.py \
  tests/test_sinks.py tests/test_webrtc.py
test-smoke: models brokers .venv-3.10/.installed-test
	.venv-3.10/bin/pytest -m 'unit and not network'
	.venv-3.10/bin/pytest -m integration $(SMOKE_TESTS)

# The benchmark report for this machine (edge bench): docs/benchmarks.md and its charts in
# docs/benchmarks/. About ten minutes a model; run it on a quiet machine (it refuses a busy one).
BENCH_OUT ?= docs
bench: setup-test models
	$(BIN)/edge bench --out $(BENCH_OUT) --image "$$($(BIN)/python -c 'from tests.imagedata \
	  import sample_image as s; print("blazeface=%s,ppocr_det=%s" % (s("astronaut.png"), \
	  s("page.png")))')"

clean:
	rm -rf $(VENV) $(foreach v,$(PYTHONS),.venv-$(v)) .cache artifacts
