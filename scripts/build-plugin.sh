#!/usr/bin/env bash
# Builds the managed plugin: a plugin directory (the top-level config.json + a rootfs made of a
# Debian bookworm minbase with libnbd-bin, fuse3, e2fsprogs, the host's node, and slacker-ts's
# compiled code with its production dependencies), then `docker plugin create` and optionally
# `docker plugin push`.
#
#   scripts/build-plugin.sh [--name NAME] [--push] [--out DIR]
#
# NAME defaults to slacker-ts (use HOST:PORT/slacker-ts to push to a registry). DOCKER_HOST
# (and DOCKER, the client binary) choose the dockerd. The Debian base is debootstrapped once
# into /var/cache/slacker-ts/plugin-base-bookworm (about a minute; needs deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=slacker-ts
OUT=build/plugin
PUSH=0
DOCKER=${DOCKER:-docker}
while (($# > 0)); do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --push) PUSH=1; shift ;;
    *) echo "usage: $0 [--name NAME] [--push] [--out DIR]" >&2; exit 2 ;;
  esac
done

BASE=/var/cache/slacker-ts/plugin-base-bookworm
PACKAGES=libnbd-bin,fuse3,e2fsprogs,mount,util-linux,libstdc++6,ca-certificates
if [[ ! -x $BASE/usr/bin/nbdfuse ]]; then
  command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  echo "making the plugin's Debian base in $BASE (once)"
  rm -rf "$BASE.tmp"
  mkdir -p "$(dirname "$BASE")"
  debootstrap --variant=minbase --include=$PACKAGES bookworm "$BASE.tmp" http://deb.debian.org/debian >/dev/null
  rm -rf "$BASE.tmp/var/cache/apt/archives/"*.deb
  mv "$BASE.tmp" "$BASE"
fi

npm run build >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT/rootfs"
cp -a "$BASE/." "$OUT/rootfs/"
cp "$(command -v node)" "$OUT/rootfs/usr/bin/node"
APP=$OUT/rootfs/opt/slacker-ts
mkdir -p "$APP/build/Release" "$APP/node_modules"
cp -a dist package.json "$APP/"
cp build/Release/*.node "$APP/build/Release/"
# Production dependencies only, as installed here (native ones built for this node).
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | while read -r dir; do
  rel=${dir#"$PWD/"}
  mkdir -p "$APP/$(dirname "$rel")"
  [[ -e $APP/$rel ]] || cp -a "$dir" "$APP/$rel"
done
mkdir -p "$OUT/rootfs/run/docker/plugins" "$OUT/rootfs/var/lib/slacker-ts"
cp config.json "$OUT/config.json"

"$DOCKER" plugin rm -f "$NAME" >/dev/null 2>&1 || true
"$DOCKER" plugin create "$NAME" "$OUT"
if ((PUSH)); then "$DOCKER" plugin push "$NAME"; fi
echo "plugin $NAME created from $OUT ($(du -sh "$OUT" | cut -f1))"
