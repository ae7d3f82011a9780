#!/usr/bin/env bash
# The main job at this stage of slacker-ts, end to end on an embedded default (a local dir://
# store, state under a temporary directory), cleaned up even on failure. Run as root; installs
# what it needs first.
#   1. A layer volume is created and served over NBD (unix socket), attached as a block device
#      (nbdfuse + loop here; the kernel NBD client elsewhere), given ext4 and files.
#   2. It is frozen and published to the store: its reference is all another host needs.
#   3. A "second host" (another state root) opens the reference, mounts it read-only and reads
#      one file: only the chunks that read touches are fetched, verified, from the store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build

work=$(mktemp -d /tmp/slacker-demo.XXXXXX)
server_pid="" fuse_pid="" loop="" mounted=""
cli() { node dist/cli/main.js volume --store "dir://$work/store" "$@"; }

detach() {
  [[ -n $mounted ]] && umount "$work/mnt" && mounted=""
  [[ -n $loop ]] && losetup -d "$loop" && loop=""
  if [[ -n $fuse_pid ]]; then
    for _ in $(seq 50); do fusermount3 -u "$work/fuse" 2>/dev/null && break; sleep 0.1; done
    wait "$fuse_pid" 2>/dev/null || true
    fuse_pid=""
  fi
  if [[ -n $server_pid ]]; then kill "$server_pid" && wait "$server_pid" 2>/dev/null || true; server_pid=""; fi
}
cleanup() {
  set +e
  detach
  rm -rf "$work"
}
trap cleanup EXIT

# attach ROOT VOLUME [ro]: serve the volume, attach it, mount it on $work/mnt
attach() {
  local root=$1 volume=$2 mode=${3:-rw}
  rm -f "$work/uris" # a stale file would be read before the new server writes it
  # Started directly (not through the cli function) so that $! is node's own PID.
  node dist/cli/main.js volume --store "dir://$work/store" serve "$volume" --root "$root" \
    --listen "unix://$work/nbd.sock" >"$work/uris" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do [[ -s $work/uris ]] && break; sleep 0.1; done
  local uri; uri=$(head -1 "$work/uris")
  [[ -n $uri ]] || { echo "volume serve did not start:" >&2; cat "$work/server.log" >&2; return 1; }
  mkdir -p "$work/fuse" "$work/mnt"
  if [[ $mode == ro ]]; then nbdfuse -r "$work/fuse/disk" "$uri" & else nbdfuse "$work/fuse/disk" "$uri" & fi
  fuse_pid=$!
  for _ in $(seq 50); do [[ -e $work/fuse/disk ]] && break; sleep 0.1; done
  if [[ $mode == ro ]]; then loop=$(losetup -r -f --show "$work/fuse/disk"); else loop=$(losetup -f --show "$work/fuse/disk"); fi
  [[ $mode == ro ]] || mkfs.ext4 -q "$loop"
  mount ${mode:+-o $mode} "$loop" "$work/mnt" && mounted=1
}

echo "== host A: a 1 GiB layer volume over NBD, with ext4 and 64 MiB of files"
cli create layer 1G --root "$work/hostA" >/dev/null
attach "$work/hostA" layer rw
echo "hello from host A" >"$work/mnt/hello.txt"
for i in 1 2 3 4; do head -c 16M /dev/urandom >"$work/mnt/blob$i.bin"; done
df -h "$work/mnt" | tail -1
detach

echo "== host A: freeze and publish"
cli freeze layer --root "$work/hostA" >/dev/null
ref=$(cli publish layer --root "$work/hostA")
echo "snapshot reference: $ref"

echo "== host B: open the reference (metadata only), mount read-only, read one small file"
cli open "$ref" layer --root "$work/hostB" >/dev/null
attach "$work/hostB" layer ro
cat "$work/mnt/hello.txt"
detach
total=$(cli stats layer --root "$work/hostB" --json | sed -E 's/.*"chunks":([0-9]+).*/\1/')
fetched=$(find "$work/hostB/chunks" -type f | wc -l)
echo "host B holds $fetched of the image's $total chunks ($(du -sh "$work/hostB/chunks" | cut -f1)):"
echo "only what mounting ext4 and reading hello.txt touched, each verified against its SHA-256."
cli stats layer --root "$work/hostB"
echo "== done; cleaning up"
