/**
 * A benchmark's command line: node's parseArgs, with `--help` listing the options (and their
 * defaults) and a bad option reported in one line with that list, not as a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

export function benchArgs<const O extends Options>(
  command: string,
  what: string,
  options: O,
  { positionals = false }: { positionals?: boolean } = {},
) {
  const text = usage(command, what, options);
  if (process.argv.slice(2).some((a) => a === '--help' || a === '-h')) {
    console.log(text);
    process.exit(0);
  }
  try {
    return parseArgs({ options, allowPositionals: positionals, strict: true });
  } catch (err) {
    console.error(`${command.replace(/ --.*$/, '')}: ${(err as Error).message}\n\n${text}`);
    process.exit(2);
  }
}

function usage(command: string, what: string, options: Options): string {
  const lines = Object.entries(options).map(([name, o]) => {
    const flag = o.type === 'boolean' ? `--${name}` : `--${name} VALUE`;
    const dflt = o.default !== undefined && o.type !== 'boolean' ? ` (default ${String(o.default)})` : '';
    return `  ${flag}${dflt}`;
  });
  return `usage: ${command} [options]\n\n${what}\n\noptions:\n${lines.join('\n')}\n\nWhat each measures, and the results: docs/BENCHMARKS.md.`;
}
