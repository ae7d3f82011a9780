/**
 * Prints one plain closing line, `N passed, N failed, N skipped`, after vitest's own report,
 * so that CI logs state the outcome in a form any tool can read.
 */
import type { Reporter, RunnerTask, RunnerTestFile } from 'vitest';

function count(tasks: RunnerTask[], totals: { passed: number; failed: number; skipped: number }): void {
  for (const t of tasks) {
    if (t.type === 'suite') count(t.tasks, totals);
    else if (t.result?.state === 'pass') totals.passed++;
    else if (t.result?.state === 'fail') totals.failed++;
    else totals.skipped++;
  }
}

export default class SummaryReporter implements Reporter {
  onFinished(files: RunnerTestFile[] = [], errors: unknown[] = []): void {
    const totals = { passed: 0, failed: 0, skipped: 0 };
    for (const f of files) {
      count(f.tasks, totals);
      if (f.result?.state === 'fail' && f.tasks.length === 0) totals.failed++; // a file that failed to load
    }
    totals.failed += errors.length;
    process.stdout.write(`\n${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped\n`);
  }
}
