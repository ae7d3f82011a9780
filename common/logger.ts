/**
 * Structured logging (pino, as fastify uses). Logs go to stderr so that stdout stays free for
 * what a command prints for machines (URIs, JSON).
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level?: string;
  name?: string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      name: options.name ?? 'slacker-ts',
      level: options.level ?? process.env.SLACKER_LOG_LEVEL ?? 'info',
    },
    pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that drops everything: the default for library code and tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
