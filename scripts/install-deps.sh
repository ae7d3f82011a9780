#!/usr/bin/env bash
# Installs what slacker-ts needs on a Debian machine, skipping what is already there:
# the system tools the tests and the attach path use, then the npm dependencies (npm ci,
# which also builds the native addon with node-gyp). Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A NEED=(
  [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin [nbdfuse]=libnbd-bin
  [qemu-io]=qemu-utils [qemu-img]=qemu-utils
  [nbdkit]=nbdkit
  [mkfs.ext4]=e2fsprogs
  [fusermount3]=fuse3
  [losetup]=mount
  [fio]=fio
  [docker-registry]=docker-registry [htpasswd]=apache2-utils [openssl]=openssl
  [make]=make [g++]=g++ [python3]=python3
  [dockerd]=docker.io [findmnt]=util-linux [debootstrap]=debootstrap
  [ip]=iproute2 [tc]=iproute2 [curl]=curl
)

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# A static busybox makes the tests' tiny images (a dynamic one would need its libraries).
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]} > 0)); then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [[ $(id -u) -ne 0 ]]; then
    echo "slacker-ts needs these Debian packages: ${pkgs[*]}" >&2
    echo "install them as root: apt-get install ${pkgs[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if ! command -v node >/dev/null 2>&1; then
  echo "slacker-ts needs Node.js 20 or newer (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if [[ ! -e /dev/fuse ]]; then
  echo "warning: /dev/fuse is missing: the nbdfuse attach path (and its tests) cannot work here" >&2
fi

# Docker 26 and containerd 1.7 (Debian trixie's, unpacked) for the containerd front end.
bash scripts/install-engine.sh

# npm ci when node_modules is missing or older than the lock file (always in CI).
if [[ -n "${CI:-}" || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
