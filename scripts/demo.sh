#!/usr/bin/env bash
# The main job, end to end on embedded defaults (demo/two-hosts.ts): two throwaway dockerd
# instances on slacker, a local dir:// store and a local registry; an image committed and
# converted on host A is pulled by host B as metadata and started, reading only what it needs.
# Run as root; installs what it needs first; cleans up after itself, also on failure.
# The layer-volume demo without Docker: scripts/demo-volumes.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build
node dist/demo/two-hosts.js
