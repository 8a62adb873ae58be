#!/usr/bin/env bash
# A Debian bookworm base image made from Debian's archive, for builds where no image
# registry can be reached: debootstrap --variant=minbase, slimmed the way Docker's official
# debian:bookworm-slim is (no docs, man pages or locales installed later, no apt lists), then
# one `ADD rootfs.tar /` onto scratch, built for the platform (`docker import` cannot set the
# image's architecture on Debian's engine). The root filesystem is cached as a tarball, so it
# survives `docker system prune` and a new engine:
#
#   deploy/images/base.sh amd64|arm64     # prints the image's tag: edge-base:bookworm-<arch>
#
# Cache: ${EDGE_IMAGE_CACHE:-~/.cache/edge-gateway/images}/debian-bookworm-minbase-<arch>/rootfs.tar
# The mirror is this machine's own (its apt sources), never one written here.
set -euo pipefail
arch=${1:?usage: base.sh amd64|arm64}
suite=bookworm
cache=${EDGE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-gateway/images}
dir=$cache/debian-$suite-minbase-$arch
tarball=$dir/rootfs.tar
tag=edge-base:$suite-$arch
docker() { command /usr/bin/docker "$@"; }

mirror() {  # the first Debian archive URI in this machine's apt sources (deb822 or one-line)
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}
               /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; break}}' "$f" \
          | grep -v -- '-security' | head -1)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo "base: no Debian mirror in /etc/apt/sources*" >&2; return 1
}

if [ ! -s "$tarball" ]; then
  mkdir -p "$dir"
  root=$(mktemp -d "$cache/.root-$arch.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  chmod 0755 "$root"  # it becomes the image's /: mktemp's 0700 would lock out every user
  echo "base: debootstrap $suite $arch (minbase) from $(mirror)" >&2
  debootstrap --variant=minbase --arch="$arch" "$suite" "$root" "$(mirror)" >&2
  # As in debian:bookworm-slim (debuerreotype): later packages skip docs, man pages, locales;
  # apt keeps no downloaded .debs; no lists shipped.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/var/lib/apt/lists" -maxdepth 1 -type f -delete  # partial/ stays, _apt's
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/* \
    "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi

if ! docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base: $tarball as $tag (linux/$arch)" >&2
  printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["bash"]' \
    | DOCKER_BUILDKIT=1 docker build -q --platform "linux/$arch" -t "$tag" -f - "$dir" >/dev/null
fi
got=$(docker image inspect --format '{{.Architecture}}' "$tag")
[ "$got" = "$arch" ] || { echo "base: $tag is $got, not $arch" >&2; exit 1; }
echo "$tag"
