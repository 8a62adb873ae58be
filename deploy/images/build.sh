#!/usr/bin/env bash
# Builds the gateway's image for each platform asked (default: arm64 and amd64) from the one
# Dockerfile, tags it edge-gateway:<VERSION>-<arch>, prints its size and fails over budget.
#
#   deploy/images/build.sh [arm64] [amd64]
#
# Environment:
#   VERSION          image version and tag (default: the package's, edge.__version__)
#   BASE_IMAGE       the base for every platform (default: debian:bookworm-slim when a registry
#                    answers, otherwise a base made from Debian's archive, deploy/images/base.sh)
#   IMAGE_BUDGET_MB  the most an image may take uncompressed, as `docker image inspect` counts
#                    it (default 700; docs/deploy.md has the measured sizes)
#   EDGE_CA_BUNDLE   CA bundle pip and npm trust during the build (default: this machine's)
#   PIP_INDEX_URL    passed to pip in the build when set
#
# Debian's docker.io client is used for its built-in BuildKit (no buildx plugin needed); the
# foreign platform runs under QEMU (deploy/images/host.sh registers it).
set -euo pipefail
cd "$(dirname "$0")/../.."
docker() { command /usr/bin/docker "$@"; }
export DOCKER_BUILDKIT=1

archs=("$@"); ((${#archs[@]})) || archs=(arm64 amd64)
version=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' edge/__init__.py)}
budget=${IMAGE_BUDGET_MB:-700}
host=$(dpkg --print-architecture)
ca=${EDGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

base_for() {  # the base image for one platform: BASE_IMAGE, the registry's, or a local one
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"
  elif timeout 30 /usr/bin/docker pull -q --platform "linux/$1" debian:bookworm-slim >/dev/null 2>&1
  then echo debian:bookworm-slim
  else deploy/images/base.sh "$1"
  fi
}

args=(--build-arg "VERSION=$version" --build-arg "VCS_REF=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
      --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" --network host)
[ -s "$ca" ] && args+=(--secret "id=ca,src=$ca")
[ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg PIP_INDEX_URL)
build_base=$(base_for "$host")

for arch in "${archs[@]}"; do
  tag=edge-gateway:$version-$arch
  base=$(base_for "$arch")
  echo "images: building $tag for linux/$arch on $base (build stage: $build_base)"
  start=$SECONDS
  docker build --platform "linux/$arch" "${args[@]}" --progress plain \
    --build-arg "BASE_IMAGE=$base" --build-arg "BUILD_IMAGE=$build_base" -t "$tag" . >&2
  size=$(docker image inspect --format '{{.Size}}' "$tag")
  mb=$((size / 1000000))
  echo "images: $tag built in $((SECONDS - start)) s, $mb MB (budget $budget MB)"
  ((mb <= budget)) || { echo "images: $tag is over its budget" >&2; exit 1; }
done
