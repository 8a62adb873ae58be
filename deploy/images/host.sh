#!/usr/bin/env bash
# What `make images` and `make test-images` need on a Debian bookworm build host, as root:
# Debian's Docker engine, QEMU for arm64 binaries (binfmt_misc), debootstrap for the base
# images and Debian's registry for the OTA test. Installs what is missing, registers
# qemu-aarch64, starts dockerd (vfs storage: works inside containers and VMs alike) when no
# engine answers. Idempotent; prints what it did.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
test -x /usr/bin/qemu-aarch64-static || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
test -x /usr/bin/docker-registry || need+=(docker-registry)
if ((${#need[@]})); then
  echo "host: installing ${need[*]} from Debian"
  # Services held back while installing (policy-rc.d): dockerd is started below, the
  # registry by the OTA script on a loopback port of its own.
  held=; test -e /usr/sbin/policy-rc.d || { printf '#!/bin/sh\nexit 101\n' \
    >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && held=1; }
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${need[@]}" || { test -z "$held" || rm -f /usr/sbin/policy-rc.d; exit 1; }
  test -z "$held" || rm -f /usr/sbin/policy-rc.d
fi

if ! test -e /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  test -e /proc/sys/fs/binfmt_misc/register \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  /usr/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
  echo "host: qemu-aarch64 registered with binfmt_misc"
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || { echo "host: qemu-aarch64 lacks the F flag: containers cannot run arm64 programs" >&2; exit 1; }

if ! /usr/bin/docker version >/dev/null 2>&1; then
  echo "host: starting dockerd --storage-driver=vfs (log: /var/log/edge-dockerd.log)"
  nohup dockerd --storage-driver=vfs >/var/log/edge-dockerd.log 2>&1 &
  for _ in $(seq 60); do /usr/bin/docker version >/dev/null 2>&1 && break; sleep 1; done
  /usr/bin/docker version >/dev/null
fi
echo "host: docker $(/usr/bin/docker version --format '{{.Server.Version}}'), qemu-aarch64 registered"
