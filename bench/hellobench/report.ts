/** Results of a harness run: medians and spread, a markdown table, an SVG chart, raw JSON. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Driver } from './topology.js';

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
export const spread = (xs: number[]): string => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;

/** One measured deployment: an item (image or variant) on a driver, one repetition. */
export interface Row {
  item: string;
  category: string;
  driver: Driver;
  rep: number;
  /** Seconds; push is measured once per item on the builder. */
  push: number;
  pull: number;
  create: number;
  run: number;
  deploy: number;
  linkBytes: number;
  bytesFetched: number;
  imageBytes: number;
}

export interface Summary {
  item: string;
  category: string;
  deploy: Record<Driver, number>;
  speedup: number;
  fetchedFraction: number;
  /**
   * Slacker's pull + create + run over overlay2's create + run in the same deployment: what the
   * lazy path costs beyond starting from a local image (1 would be the ceiling: pulls for free).
   */
  lazyOverhead: number;
  /** The Slacker paper's development cycle, push + pull + create + run: overlay2's over slacker's. */
  cycleSpeedup: number;
}

export function summarise(rows: Row[]): {
  items: Summary[];
  medianSpeedup: number;
  medianFetched: number;
  medianOverhead: number;
  medianCycleSpeedup: number;
} {
  const items: Summary[] = [];
  for (const item of [...new Set(rows.map((r) => r.item))]) {
    const of = (d: Driver) => rows.filter((r) => r.item === item && r.driver === d);
    const deploy = {
      overlay2: median(of('overlay2').map((r) => r.deploy)),
      slacker: median(of('slacker').map((r) => r.deploy)),
    };
    const s = of('slacker');
    const o = of('overlay2');
    const cycle = (rs: Row[]): number => median(rs.map((r) => r.push + r.deploy));
    items.push({
      item,
      category: s[0]?.category ?? '',
      deploy,
      speedup: deploy.overlay2 / deploy.slacker,
      fetchedFraction: median(s.map((r) => r.bytesFetched / r.imageBytes)),
      lazyOverhead: median(s.map((r) => r.pull + r.create + r.run)) / median(o.map((r) => r.create + r.run)),
      cycleSpeedup: cycle(o) / cycle(s),
    });
  }
  return {
    items,
    medianSpeedup: median(items.map((i) => i.speedup)),
    medianFetched: median(items.map((i) => i.fetchedFraction)),
    medianOverhead: median(items.map((i) => i.lazyOverhead)),
    medianCycleSpeedup: median(items.map((i) => i.cycleSpeedup)),
  };
}

const mb = (b: number): string => (b / 1e6).toFixed(1);

export function markdown(title: string, command: string, rows: Row[], context: string): string {
  const { items, medianSpeedup, medianFetched, medianOverhead, medianCycleSpeedup } = summarise(rows);
  const lines = [
    `# ${title}`,
    '',
    `Command: \`${command}\``,
    '',
    context,
    '',
    'Image MB: the size of the image\'s uncompressed layer tar; "slacker fetched" is a fraction of it.',
    '',
    '| item | category | image MB | overlay2: push / pull / create / run = deploy (s) | slacker: push / pull / create / run = deploy (s) | speedup | lazy overhead | cycle speedup | over the link MB (overlay2 / slacker) | slacker fetched |',
    '| --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- | ---: |',
  ];
  for (const s of items) {
    const cell = (d: Driver): string => {
      const rs = rows.filter((r) => r.item === s.item && r.driver === d);
      const m = (k: 'push' | 'pull' | 'create' | 'run' | 'deploy') => median(rs.map((r) => r[k])).toFixed(2);
      return `${m('push')} / ${m('pull')} / ${m('create')} / ${m('run')} = **${m('deploy')}** (${spread(rs.map((r) => r.deploy))})`;
    };
    const link = (d: Driver) =>
      mb(median(rows.filter((r) => r.item === s.item && r.driver === d).map((r) => r.linkBytes)));
    const img = rows.find((r) => r.item === s.item)!.imageBytes;
    lines.push(
      `| ${s.item} | ${s.category} | ${mb(img)} | ${cell('overlay2')} | ${cell('slacker')} | ${s.speedup.toFixed(2)}× | ${s.lazyOverhead.toFixed(2)} | ${s.cycleSpeedup.toFixed(2)}× | ${link('overlay2')} / ${link('slacker')} | ${(100 * s.fetchedFraction).toFixed(1)}% |`,
    );
  }
  lines.push(
    '',
    `**Median deploy speedup over overlay2: ${medianSpeedup.toFixed(2)}×. Median bytes fetched by slacker: ${(100 * medianFetched).toFixed(1)}% of the image. Median lazy overhead: ${medianOverhead.toFixed(2)}. Median development-cycle speedup: ${medianCycleSpeedup.toFixed(2)}×.**`,
    '',
    'Medians over the repetitions (range of deploy times in parentheses). Deploy = pull + create + run to ready; push is measured once on the builder.',
    "Lazy overhead = slacker's pull + create + run over overlay2's create + run (what deploying lazily costs beyond starting from a local image; 1.0 is the ceiling). Cycle speedup = overlay2's push + deploy over slacker's (the Slacker paper's development cycle).",
    '',
  );
  return lines.join('\n');
}

/** Horizontal bars: median deploy time per item, overlay2 and slacker side by side. */
export function svgChart(title: string, rows: Row[]): string {
  const { items } = summarise(rows);
  const max = Math.max(...items.flatMap((i) => [i.deploy.overlay2, i.deploy.slacker]), 0.001);
  const barH = 14;
  const rowH = 2 * barH + 12;
  const left = 110;
  const width = 640;
  const height = 40 + items.length * rowH + 30;
  const scale = (width - left - 70) / max;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<text x="10" y="20" font-size="14">${title}: median deploy time (s)</text>`,
  ];
  items.forEach((it, i) => {
    const y = 36 + i * rowH;
    out.push(`<text x="10" y="${y + barH + 4}">${it.item}</text>`);
    (['overlay2', 'slacker'] as const).forEach((d, j) => {
      const w = Math.max(1, it.deploy[d] * scale);
      const color = d === 'overlay2' ? '#8a8a8a' : '#2b7bb9';
      out.push(`<rect x="${left}" y="${y + j * barH}" width="${w.toFixed(1)}" height="${barH - 2}" fill="${color}"/>`);
      out.push(`<text x="${left + w + 4}" y="${y + j * barH + barH - 3}">${it.deploy[d].toFixed(2)}</text>`);
    });
  });
  const ly = height - 14;
  out.push(
    `<rect x="${left}" y="${ly - 10}" width="12" height="10" fill="#8a8a8a"/><text x="${left + 16}" y="${ly}">overlay2</text>`,
  );
  out.push(
    `<rect x="${left + 90}" y="${ly - 10}" width="12" height="10" fill="#2b7bb9"/><text x="${left + 106}" y="${ly}">slacker</text>`,
  );
  out.push('</svg>');
  return out.join('\n');
}

/** docs/results of this checkout, from sources or from dist/. */
export const RESULTS_DIR = join(
  import.meta.dirname,
  '..',
  '..',
  ...(import.meta.dirname.includes('/dist/') ? ['..'] : []),
  'docs',
  'results',
);

export async function writeResults(
  name: string,
  title: string,
  command: string,
  context: string,
  rows: Row[],
  json: string | undefined,
  dir = RESULTS_DIR,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, `${name}.md`), markdown(title, command, rows, context));
  await writeFile(join(dir, `${name}.svg`), svgChart(title, rows));
  if (json) await writeFile(json, JSON.stringify({ rows, summary: summarise(rows) }, null, 2));
}
