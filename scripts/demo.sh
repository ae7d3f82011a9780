#!/usr/bin/env bash
# The main job at this stage of slacker-ts, end to end on an embedded default: serve a sparse
# 1 GiB image over NBD (unix socket), attach it as a block device (nbdfuse + loop here; the
# kernel NBD client elsewhere), put ext4 on it, write files, then detach and stop everything,
# even on failure. Installs what it needs first. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build

work=$(mktemp -d /tmp/slacker-demo.XXXXXX)
server_pid="" fuse_pid="" loop="" mounted=""
cleanup() {
  set +e
  [[ -n $mounted ]] && umount "$work/mnt"
  [[ -n $loop ]] && losetup -d "$loop"
  if [[ -n $fuse_pid ]]; then
    for _ in $(seq 50); do fusermount3 -u "$work/fuse" 2>/dev/null && break; sleep 0.1; done
    wait "$fuse_pid" 2>/dev/null
  fi
  [[ -n $server_pid ]] && kill "$server_pid" && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 1G "$work/layer.img"
mkdir -p "$work/fuse" "$work/mnt"
node dist/cli/main.js nbd-serve --export layer="$work/layer.img" --listen "unix://$work/nbd.sock" \
  >"$work/uris" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do [[ -s $work/uris ]] && break; sleep 0.1; done
uri=$(head -1 "$work/uris")
echo "== serving $uri"
nbdinfo "$uri"

echo "== attaching with nbdfuse + losetup, mkfs.ext4, mount"
nbdfuse "$work/fuse/disk" "$uri" &
fuse_pid=$!
for _ in $(seq 50); do [[ -e $work/fuse/disk ]] && break; sleep 0.1; done
loop=$(losetup -f --show "$work/fuse/disk")
mkfs.ext4 -q "$loop"
mount "$loop" "$work/mnt" && mounted=1
echo "hello from slacker-ts" >"$work/mnt/hello.txt"
head -c 32M /dev/urandom >"$work/mnt/blob.bin"
sync
df -h "$work/mnt"
cat "$work/mnt/hello.txt"
umount "$work/mnt" && mounted=""
losetup -d "$loop" && loop=""

echo "== what the image holds: only written blocks are allocated (nbdinfo --map, totals)"
nbdinfo --map --totals "$uri"
echo "== done; cleaning up"
