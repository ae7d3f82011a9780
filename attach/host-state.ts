/**
 * What the kernel has mounted and attached right now, read the way the attach path leaves it:
 * mount points (findmnt) and loop devices with their backing files (losetup). Used to adopt a
 * device after a restart, to tear down what a crashed plugin left, and by tests to prove nothing
 * leaked. (A detach waits on sysfs instead: attach/loop.ts.)
 */
import { readFile } from 'node:fs/promises';
import { run } from '../common/exec.js';

export interface LoopDevice {
  device: string;
  backFile: string;
}

/** Mount points strictly below `dir`, deepest first (the order to unmount them in). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const { stdout } = await run('findmnt', ['-rn', '-o', 'TARGET']);
  return stdout
    .split('\n')
    .filter((t) => t.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/** The source of every mount in this mount namespace (the devices someone has mounted). */
export async function mountSources(): Promise<Set<string>> {
  const out = new Set<string>();
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const source = line.split(' - ')[1]?.split(' ')[1];
    if (source) out.add(source);
  }
  return out;
}

/** Every loop device in use, with the file behind it. */
export async function loopDevices(): Promise<LoopDevice[]> {
  const { stdout } = await run('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE']);
  const out: LoopDevice[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^(\S+)\s+(.*\S)\s*$/.exec(line);
    if (m) out.push({ device: m[1]!, backFile: m[2]! });
  }
  return out;
}

/** Loop devices whose backing file lies below `dir`. */
export async function loopsUnder(dir: string): Promise<LoopDevice[]> {
  return (await loopDevices()).filter((l) => l.backFile.startsWith(`${dir}/`));
}
