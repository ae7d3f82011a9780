/**
 * A container that reads and writes throughout while the slacker daemon under it is restarted
 * (issue 20): it appends a counter to /log and syncs after every line (so each line is flushed
 * through the block device), and checks an 8 MiB file it wrote at start against its checksum
 * every round, noting any mismatch in /errors. The host side drops the page cache after each
 * restart, so that the reads really go to the device again.
 */
import { expect } from 'vitest';
import { run } from '../../common/exec.js';
import type { Dockerd } from '../../harness/dockerd.js';

export const WORKLOAD = [
  'head -c 8388608 /dev/urandom > /data && sha256sum /data > /data.sum && sync',
  'i=0',
  'while [ ! -e /stop ]; do',
  '  i=$((i+1)); echo $i >> /log; sync',
  '  sha256sum -c /data.sum > /dev/null 2>&1 || echo "bad read in round $i" >> /errors',
  '  sleep 0.02',
  'done',
].join('\n');

/** The lines of the container's /log, checked to be 1, 2, 3, ... with none missing. */
export async function logLines(docker: Dockerd, container: string): Promise<number> {
  const text = (await docker.docker(['exec', container, 'cat', '/log'])).stdout;
  const lines = text.split('\n');
  lines.pop(); // after the last newline: '' (or a line being written)
  lines.forEach((line, i) => expect(line, `line ${i + 1} of /log`).toBe(String(i + 1)));
  return lines.length;
}

/** Waits until the container has written `more` lines beyond `from`: its I/O goes on. */
export async function writesGoOn(docker: Dockerd, container: string, from: number, more = 20): Promise<number> {
  let n = from;
  await expect
    .poll(async () => (n = await logLines(docker, container)), { timeout: 60_000, interval: 200 })
    .toBeGreaterThanOrEqual(from + more);
  return n;
}

export async function dropCaches(): Promise<void> {
  await run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
}

/** No read came back wrong, the root file system is still writable, and the log is whole. */
export async function workloadHealthy(docker: Dockerd, container: string): Promise<void> {
  const errors = await docker.docker(['exec', container, 'sh', '-c', 'cat /errors 2>/dev/null; true']);
  expect(errors.stdout).toBe('');
  await docker.docker(['exec', container, 'sh', '-c', 'echo still-writable > /tmp/probe && sync']);
  await logLines(docker, container);
}
