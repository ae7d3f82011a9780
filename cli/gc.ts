/** `slacker-ts gc --store URL`: see volumes/store-gc.ts. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { formatSize } from '../common/units.js';
import { openStore } from '../stores/open-store.js';
import { collectGarbage, DEFAULT_GRACE_MS } from '../volumes/store-gc.js';

export const GC_HELP = `usage: slacker-ts gc --store URL [--dry-run] [--grace DURATION] [--json]

Removes the chunks of a backing store that no published snapshot references (those left by
publishes that never finished, or by snapshots removed by hand), and prints what it freed.
Chunks younger than the grace period are kept: a publish running meanwhile is safe.

options:
  --store URL         dir:///PATH (a registry, oci://, collects its own garbage: see the message)
  --dry-run           say what would be removed, remove nothing
  --grace DURATION    keep unreferenced chunks younger than this: 30s, 10m, 1h (default 1h)
  --json              the report as JSON
`;

function duration(text: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (!m) throw new ConfigError(`--grace wants a duration such as 30s, 10m or 1h, got ${JSON.stringify(text)}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}

export async function gcCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      store: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      grace: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (!values.store) throw new ConfigError('gc needs --store URL');
  const store = openStore(values.store);
  try {
    const r = await collectGarbage(store, {
      dryRun: values['dry-run'],
      graceMs: values.grace ? duration(values.grace) : DEFAULT_GRACE_MS,
      log: createLogger({ level: 'warn' }),
    });
    if (values.json) {
      console.log(JSON.stringify(r, null, 2));
      return 0;
    }
    const verb = r.dryRun ? 'would remove' : 'removed';
    console.log(
      `${r.store}: ${r.snapshots} snapshots reference ${r.live.chunks} chunks (${formatSize(r.live.bytes)}); ` +
        `${verb} ${r.removed.chunks} unreferenced chunks, freeing ${formatSize(r.removed.bytes)}; ` +
        `kept ${r.young.chunks} unreferenced chunks younger than the grace period (${formatSize(r.young.bytes)})`,
    );
    return 0;
  } finally {
    store.close?.();
  }
}
