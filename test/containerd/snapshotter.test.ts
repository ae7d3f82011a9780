/**
 * The containerd front end under a real containerd (Debian trixie's 1.7, unpacked by
 * scripts/install-engine.sh), through `ctr`: snapshots prepared, mounted as containerd mounts
 * them (ext4 on the device Mounts names), committed, cloned, viewed, labelled, removed; an
 * image imported and a container run on slacker layers; and the gRPC service's own answers to
 * bad input, asked directly.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopsUnder } from '../../attach/host-state.js';
import { digestOf } from '../../common/digests.js';
import { run } from '../../common/exec.js';
import {
  startSlackerContainerd,
  startSnapshotter,
  type Containerd,
  type SlackerContainerd,
  type SnapshotterProcess,
} from '../../harness/containerd.js';
import { ControlClient } from '../../containerd/control-service.js';
import { busyboxRootfs, imageArchive } from '../../harness/images.js';
import { sample, scrape } from '../helpers/metrics.js';
import { requireRoot, requireTools } from '../helpers/tools.js';
import { tempDir } from '../helpers/tmp.js';

const NAME = 'slk';

describe('containerd snapshotter (containerd 1.7, ctr)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let containerd: Containerd;
  let host: SlackerContainerd;
  const ctrSnap = (args: string[]) => containerd.ctr(['snapshots', '--snapshotter', NAME, ...args]);

  /** Mounts a snapshot as containerd would (the mount Mounts answers), runs `fn` on it, unmounts. */
  async function withMounted<T>(key: string, fn: (dir: string) => Promise<T>): Promise<T> {
    const target = join(dir.path, `mnt-${Math.random().toString(36).slice(2)}`);
    await mkdir(target);
    const line = (await ctrSnap(['mounts', target, key])).stdout.trim();
    const m = /^mount -t ext4 (\/dev\/\S+) (\S+) -o (ro|rw)$/.exec(line);
    expect(m, line).not.toBeNull();
    await run('mount', ['-t', 'ext4', '-o', m![3]!, m![1]!, target]);
    try {
      return await fn(target);
    } finally {
      await run('umount', [target]);
    }
  }

  beforeAll(async () => {
    requireRoot();
    await requireTools('nbdfuse', 'losetup', 'mkfs.ext4', 'runc');
    dir = await tempDir('slacker-containerd-');
    // Without our differ: containerd's walking differ applies every layer, markers included
    // (the Docker 26 tests run with it).
    host = await startSlackerContainerd(dir.path, {
      name: NAME,
      size: '256M',
      metrics: `unix://${join(dir.path, 'metrics.sock')}`,
      differ: false,
    });
    containerd = host.containerd;
  }, 120_000);

  afterAll(async () => {
    const left = (await host?.stop()) ?? [];
    if (dir) await run('rm', ['-rf', dir.path]);
    expect(left).toEqual([]);
  }, 120_000);

  it('prepares, mounts, commits, clones, views, labels and removes snapshots', async () => {
    await ctrSnap(['prepare', 'base']);
    await withMounted('base', async (d) => {
      await writeFile(join(d, 'from-base'), 'base data');
      expect(await run('ls', ['-A', d]).then((r) => r.stdout.trim())).toBe('from-base');
    });
    await ctrSnap(['commit', 'base-c', 'base']);
    await ctrSnap(['prepare', 'child', 'base-c']);
    await withMounted('child', async (d) => {
      expect(await readFile(join(d, 'from-base'), 'utf8')).toBe('base data');
      await writeFile(join(d, 'from-child'), 'x'.repeat(300_000));
    });
    await ctrSnap(['commit', 'child-c', 'child']);
    await ctrSnap(['view', 'v1', 'child-c']);
    await withMounted('v1', async (d) => {
      expect((await readFile(join(d, 'from-child'), 'utf8')).length).toBe(300_000);
      await expect(writeFile(join(d, 'nope'), 'x')).rejects.toThrow(/read-only/i);
    });
    const info = JSON.parse((await ctrSnap(['info', 'child-c'])).stdout) as Record<string, unknown>;
    expect(info).toMatchObject({ Kind: 'Committed', Parent: 'base-c' });
    await ctrSnap(['label', 'child-c', 'purpose=test']);
    expect(JSON.parse((await ctrSnap(['info', 'child-c'])).stdout).Labels).toMatchObject({ purpose: 'test' });
    const usage = (await ctrSnap(['usage', 'child-c'])).stdout;
    expect(usage).toMatch(/child-c/);
    const ls = (await ctrSnap(['ls'])).stdout;
    for (const key of ['base-c', 'child-c', 'v1']) expect(ls).toContain(key);

    await expect(ctrSnap(['rm', 'base-c'])).rejects.toThrow(/child/);
    await ctrSnap(['rm', 'v1']);
    await ctrSnap(['rm', 'child-c']);
    await ctrSnap(['rm', 'base-c']);
    expect((await ctrSnap(['ls'])).stdout).not.toContain('base-c');

    const m = await scrape(join(dir.path, 'metrics.sock'));
    expect(
      sample(m, 'slacker_requests_total{front_end="containerd",method="Prepare",outcome="ok"}'),
    ).toBeGreaterThanOrEqual(2);
    expect(
      sample(m, 'slacker_requests_total{front_end="containerd",method="Commit",outcome="ok"}'),
    ).toBeGreaterThanOrEqual(2);
    expect(sample(m, 'slacker_layer_attaches_total')).toBeGreaterThanOrEqual(3);
    expect(sample(m, 'slacker_volumes')).toBeGreaterThanOrEqual(1);
    expect(m).toContain('process_cpu_seconds_total');
  });

  it('imports an image onto slacker layers and runs a container on them', async () => {
    const rootfs = await busyboxRootfs(join(dir.path, 'rootfs'));
    await run('tar', ['-C', rootfs, '-cf', join(dir.path, 'rootfs.tar'), '.']);
    const archive = join(dir.path, 'bb.tar');
    await writeFile(
      archive,
      await imageArchive([await readFile(join(dir.path, 'rootfs.tar'))], 'bb:1', { config: { Cmd: ['/bin/sh'] } }),
    );
    await containerd.ctr(['images', 'import', '--snapshotter', NAME, archive]);
    const out = await containerd.ctr([
      'run',
      '--rm',
      '--snapshotter',
      NAME,
      'docker.io/library/bb:1',
      `c-${Math.random().toString(36).slice(2, 8)}`,
      '/bin/sh',
      '-c',
      'cat /etc/motd; echo written > /tmp/x; cat /tmp/x',
    ]);
    expect(out.stdout).toBe('slacker-ts test image\nwritten\n');
  });

  it("a marker applied by containerd's own differ becomes the lazily opened snapshot, its file not visible", async () => {
    // bb:1 (imported above: one layer, so its chain ID is that layer's diff ID) published, and
    // its marker imported as an image of its own.
    const chainId = digestOf(await readFile(join(dir.path, 'rootfs.tar')));
    const control = new ControlClient(host.snap.socket);
    try {
      const published = await control.publish({
        namespace: 'test',
        name: chainId,
        profile_from: '',
      });
      const archive = join(dir.path, 'lazy.tar');
      await writeFile(archive, await imageArchive([published.marker], 'lazy:1', { config: { Cmd: ['/bin/sh'] } }));
      await containerd.ctr(['images', 'import', '--snapshotter', NAME, archive]);
      const out = await containerd.ctr([
        'run',
        '--rm',
        '--snapshotter',
        NAME,
        'docker.io/library/lazy:1',
        `c-${Math.random().toString(36).slice(2, 8)}`,
        '/bin/sh',
        '-c',
        'cat /etc/motd; ls -a /',
      ]);
      expect(out.stdout).toContain('slacker-ts test image\n');
      expect(out.stdout).not.toContain('.slacker');
      // Two layers are now that snapshot: bb:1's own, and the one opened from the marker.
      const report = JSON.parse((await control.status()).report_json) as { layers: { snapshotRef: string | null }[] };
      expect(report.layers.filter((l) => l.snapshotRef === published.ref)).toHaveLength(2);
    } finally {
      control.close();
    }
  });

  // Its own snapshotter, registered with no containerd: containerd's garbage collector removes
  // backend snapshots it does not know, such as the ones this test makes directly.
  describe('the gRPC service, asked directly', () => {
    let alone: SnapshotterProcess;
    type Client = grpc.Client &
      Record<string, (req: unknown, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void>;
    let client: Client;
    const call = (method: string, req: unknown): Promise<unknown> =>
      new Promise((resolve, reject) => client[method]!(req, (err, res) => (err ? reject(err) : resolve(res))));
    const code = (p: Promise<unknown>): Promise<number> =>
      p.then(
        () => -1,
        (e: grpc.ServiceError) => e.code,
      );

    beforeAll(async () => {
      alone = await startSnapshotter({
        root: join(dir.path, 'alone'),
        socket: join(dir.path, 'alone.sock'),
        logFile: join(dir.path, 'alone.log'),
        size: '64M',
        containerdAddress: join(dir.path, 'no-containerd.sock'),
      });
      const def = protoLoader.loadSync('containerd/services/snapshots/v1/snapshots.proto', {
        includeDirs: [join(import.meta.dirname, '../../containerd/proto')],
        keepCase: true,
        longs: Number,
        enums: String,
        defaults: true,
      });
      const api = grpc.loadPackageDefinition(def) as unknown as {
        containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
      };
      client = new api.containerd.services.snapshots.v1.Snapshots(
        `unix://${alone.socket}`,
        grpc.credentials.createInsecure(),
      ) as unknown as Client;
    });

    afterAll(async () => {
      client?.close();
      await alone?.stop();
      expect(await loopsUnder(join(dir.path, 'alone'))).toEqual([]);
    });

    it('the differ and the control API answer bad input with clear codes, and change nothing', async () => {
      const other = (proto: string, path: string[]): Client => {
        const def = protoLoader.loadSync(proto, {
          includeDirs: [join(import.meta.dirname, '../../containerd/proto')],
          keepCase: true,
          longs: Number,
          enums: String,
          defaults: true,
        });
        let ctor = grpc.loadPackageDefinition(def) as unknown as Record<string, unknown>;
        for (const p of path) ctor = ctor[p] as Record<string, unknown>;
        return new (ctor as unknown as grpc.ServiceClientConstructor)(
          `unix://${alone.socket}`,
          grpc.credentials.createInsecure(),
        ) as unknown as Client;
      };
      const diff = other('containerd/services/diff/v1/diff.proto', ['containerd', 'services', 'diff', 'v1', 'Diff']);
      const control = other('slacker/v1/control.proto', ['slacker', 'v1', 'Control']);
      const ask = (c: Client, method: string, req: unknown): Promise<unknown> =>
        new Promise((resolve, reject) => c[method]!(req, (err, res) => (err ? reject(err) : resolve(res))));
      const error = (p: Promise<unknown>): Promise<grpc.ServiceError> =>
        p.then(
          () => ({ code: -1, details: 'answered' }) as unknown as grpc.ServiceError,
          (e: grpc.ServiceError) => e,
        );
      const tar = 'application/vnd.oci.image.layer.v1.tar';
      const blob = { media_type: tar, digest: `sha256:${'1'.repeat(64)}`, size: 2048 };
      try {
        // Mounts that are not ours, a large layer, a media type we leave alone: the next differ's.
        const overlay = [{ type: 'overlay', source: 'overlay', target: '', options: ['lowerdir=/a'] }];
        expect((await error(ask(diff, 'Apply', { diff: blob, mounts: overlay }))).code).toBe(grpc.status.UNIMPLEMENTED);
        expect((await error(ask(diff, 'Diff', { left: overlay, right: overlay }))).code).toBe(
          grpc.status.UNIMPLEMENTED,
        );
        const key = 'ns1/7/extract-1 sha256:x';
        const { mounts } = (await call('Prepare', { key, parent: '' })) as { mounts: unknown[] };
        const big = { ...blob, size: 10 * 2 ** 20 };
        expect((await error(ask(diff, 'Apply', { diff: big, mounts }))).code).toBe(grpc.status.UNIMPLEMENTED);
        const zstd = { ...blob, media_type: `${tar}+zstd` };
        expect((await error(ask(diff, 'Apply', { diff: zstd, mounts }))).code).toBe(grpc.status.UNIMPLEMENTED);
        // A small layer, but containerd's content store is not there: say where it was looked for.
        const down = await error(ask(diff, 'Apply', { diff: blob, mounts }));
        expect(down.code).toBe(grpc.status.UNAVAILABLE);
        expect(down.details).toContain('no-containerd.sock');
        expect(down.details).toContain('--containerd-address');
        expect((await error(ask(diff, 'Apply', { diff: { ...blob, digest: 'md5:x' }, mounts }))).code).toBe(
          grpc.status.INVALID_ARGUMENT,
        );
        // The snapshot is as Prepare made it.
        const stat = (await call('Stat', { key })) as { info: { kind: string } };
        expect(stat.info.kind).toBe('ACTIVE');
        await call('Remove', { key });
        // The control API: unknown snapshots.
        const unknown = await error(ask(control, 'Publish', { namespace: 'moby', name: 'sha256:nope' }));
        expect(unknown.code).toBe(grpc.status.NOT_FOUND);
        expect(unknown.details).toContain('no snapshot "sha256:nope" in containerd namespace moby');
        const report = (await ask(control, 'Status', {})) as { report_json: string };
        expect(JSON.parse(report.report_json)).toMatchObject({ store: { reachable: true } });
      } finally {
        diff.close();
        control.close();
      }
    });

    it('answers with containerd status codes, and leaves nothing half-made', async () => {
      expect(await code(call('Stat', { key: 'no-such' }))).toBe(grpc.status.NOT_FOUND);
      expect(await code(call('Prepare', { key: 'k1', parent: 'no-such-parent' }))).toBe(grpc.status.NOT_FOUND);
      expect(await code(call('Stat', { key: 'k1' }))).toBe(grpc.status.NOT_FOUND); // nothing half-made
      expect(await code(call('Prepare', { key: '' }))).toBe(grpc.status.INVALID_ARGUMENT);
      await call('Prepare', { key: 'k1', parent: '' });
      expect(await code(call('Prepare', { key: 'k1', parent: '' }))).toBe(grpc.status.ALREADY_EXISTS);
      expect(await code(call('Prepare', { key: 'k2', parent: 'k1' }))).toBe(grpc.status.INVALID_ARGUMENT); // not committed
      await call('Commit', { name: 'k1-c', key: 'k1' });
      expect(await code(call('Commit', { name: 'k1-d', key: 'k1-c' }))).toBe(grpc.status.FAILED_PRECONDITION); // not active
      expect(await code(call('Commit', { name: 'k1-d', key: 'no-such' }))).toBe(grpc.status.NOT_FOUND);
      expect(await code(call('Mounts', { key: 'k1-c' }))).toBe(grpc.status.FAILED_PRECONDITION);
      await call('Prepare', { key: 'k2', parent: 'k1-c' });
      expect(await code(call('Remove', { key: 'k1-c' }))).toBe(grpc.status.FAILED_PRECONDITION);
      expect(await code(call('Commit', { name: 'k1-c', key: 'k2' }))).toBe(grpc.status.ALREADY_EXISTS);
      const usage = (await call('Usage', { key: 'k1-c' })) as { size: number };
      expect(usage.size).toBeGreaterThanOrEqual(0);
      await call('Remove', { key: 'k2' });
      await call('Remove', { key: 'k1-c' });
      await call('Cleanup', {});
    });
  });
});
