#!/usr/bin/env bash
# The one command that runs every test on a fresh machine: installs what is missing, checks
# lint and types, builds, and runs the whole suite against real tools. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run lint
npm test
