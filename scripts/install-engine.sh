#!/usr/bin/env bash
# Debian trixie's docker.io (Docker 26.1) and containerd (1.7), for the containerd front end's
# tests and benchmarks: downloaded with apt from this machine's own Debian mirror and unpacked
# (not installed) under ENGINE_DIR; they run on bookworm with bookworm's runc (which the
# docker.io package of install-deps.sh brings). Idempotent: skips what is already unpacked.
set -euo pipefail
DIR=${SLACKER_ENGINE_DIR:-/opt/slacker-ts/engine/trixie}
if [[ -x $DIR/usr/bin/containerd && -x $DIR/usr/bin/ctr && -x $DIR/usr/sbin/dockerd ]]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/debs"

# The mirror this machine already uses for bookworm, asked for trixie instead.
uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && u && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [[ -z $uri ]]; then
  uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
if [[ -z $uri ]]; then
  echo "install-engine: no Debian bookworm mirror in /etc/apt to ask for trixie's docker.io and containerd" >&2
  exit 1
fi
printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$uri" > "$work/trixie.sources"
apt=(apt-get -qq -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$work"
  -o Dir::State::Lists="$work/lists" -o APT::Sandbox::User=root -o Debug::NoLocking=1)
echo "install-engine: fetching trixie's docker.io and containerd into $DIR"
"${apt[@]}" update
(cd "$work/debs" && "${apt[@]}" download docker.io containerd)
mkdir -p "$work/root"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
mkdir -p "$(dirname "$DIR")"
rm -rf "$DIR.new"
mv "$work/root" "$DIR.new"
rm -rf "$DIR"
mv "$DIR.new" "$DIR"
"$DIR/usr/bin/containerd" --version
