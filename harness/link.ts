/**
 * A rate-limited "network" on one machine: a network namespace joined to the host by a veth
 * pair, with a tbf qdisc on both ends (this kernel has no netem, so no added delay). A server
 * started in the namespace (`netnsExec`) is reached at `nsAddress`, from the host at
 * `hostAddress`. Names and the /30 are random per link; `close` deletes the namespace, which
 * removes the veth pair. Needs root and iproute2.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { run } from '../common/exec.js';
import { requireTools } from './tools.js';

export interface Link {
  netns: string;
  hostAddress: string;
  nsAddress: string;
  /** tbf rate, e.g. '1gbit', or 'unlimited'. */
  rate: string;
  /** The host end of the veth pair (its counters measure what crossed the link). */
  hostInterface: string;
  /** Bytes the host has received over the link so far. */
  receivedBytes(): Promise<number>;
  close(): Promise<void>;
}

export async function createLink(rate = '1gbit'): Promise<Link> {
  await requireTools('ip', 'tc');
  const id = randomBytes(3).toString('hex');
  const netns = `slk-${id}`;
  const hostIf = `slkh${id}`;
  const nsIf = `slkn${id}`;
  const base = randomInt(0, 64) * 4;
  const subnet = `10.231.${randomInt(0, 256)}`;
  const hostAddress = `${subnet}.${base + 1}`;
  const nsAddress = `${subnet}.${base + 2}`;
  const inNs = (...args: string[]) => run('ip', ['netns', 'exec', netns, ...args]);
  await run('ip', ['netns', 'add', netns]);
  try {
    await run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    await run('ip', ['link', 'set', nsIf, 'netns', netns]);
    await run('ip', ['addr', 'add', `${hostAddress}/30`, 'dev', hostIf]);
    await run('ip', ['link', 'set', hostIf, 'up']);
    await inNs('ip', 'addr', 'add', `${nsAddress}/30`, 'dev', nsIf);
    await inNs('ip', 'link', 'set', nsIf, 'up');
    await inNs('ip', 'link', 'set', 'lo', 'up');
    if (rate !== 'unlimited') {
      const tbf = ['root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '50ms'];
      await run('tc', ['qdisc', 'add', 'dev', hostIf, ...tbf]);
      await inNs('tc', 'qdisc', 'add', 'dev', nsIf, ...tbf);
    }
  } catch (err) {
    await run('ip', ['netns', 'del', netns]).catch(() => undefined);
    throw err;
  }
  return {
    netns,
    hostAddress,
    nsAddress,
    rate,
    hostInterface: hostIf,
    receivedBytes: async () => Number((await readFile(`/sys/class/net/${hostIf}/statistics/rx_bytes`, 'utf8')).trim()),
    close: async () => {
      await run('ip', ['netns', 'del', netns]).catch(() => undefined);
      await run('ip', ['link', 'del', hostIf]).catch(() => undefined); // usually gone with the namespace
    },
  };
}
