/**
 * One error hierarchy for all of slacker-ts. Every error has a stable `code` that callers
 * match on (never on the message) and an optional `context` object that goes into structured
 * logs. Protocol layers map these to their own wire errors in exactly one place each
 * (nbd-server/errno.ts for NBD; the plugin maps them to `{"Err": ...}`).
 */

export type ErrorContext = Record<string, unknown>;

export interface SlackerErrorOptions {
  cause?: unknown;
  context?: ErrorContext;
}

export class SlackerError extends Error {
  readonly code: string = 'SLACKER_ERR';
  readonly context: ErrorContext;

  constructor(message: string, options: SlackerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.context = options.context ?? {};
  }
}

/** A caller passed something malformed (bad offset, bad flag, bad option string). */
export class InvalidArgumentError extends SlackerError {
  override readonly code = 'SLACKER_ERR_INVALID_ARGUMENT';
}

/** A request reaches past the end of a device or volume. */
export class OutOfRangeError extends SlackerError {
  override readonly code = 'SLACKER_ERR_OUT_OF_RANGE';
}

/** A write-type operation on something read-only (an export, a frozen snapshot). */
export class ReadOnlyError extends SlackerError {
  override readonly code = 'SLACKER_ERR_READ_ONLY';
}

/** The operation exists but this backend cannot do it (or cannot do it fast, for FAST_ZERO). */
export class NotSupportedError extends SlackerError {
  override readonly code = 'SLACKER_ERR_NOT_SUPPORTED';
}

/** Out of space: the disk under the state root, or a quota. */
export class NoSpaceError extends SlackerError {
  override readonly code = 'SLACKER_ERR_NO_SPACE';
}

/** Data could not be read or written: the disk failed, or fetched data failed verification. */
export class IoError extends SlackerError {
  override readonly code = 'SLACKER_ERR_IO';
}

/** The component is shutting down and refuses new work. */
export class ShutdownError extends SlackerError {
  override readonly code = 'SLACKER_ERR_SHUTDOWN';
}

/** A peer broke a wire protocol; the connection cannot continue. */
export class ProtocolError extends SlackerError {
  override readonly code = 'SLACKER_ERR_PROTOCOL';
}

/** A named export (volume) does not exist. */
export class UnknownExportError extends SlackerError {
  override readonly code = 'SLACKER_ERR_UNKNOWN_EXPORT';
}

/** A named thing (volume, layer, snapshot) does not exist. */
export class NotFoundError extends SlackerError {
  override readonly code = 'SLACKER_ERR_NOT_FOUND';
}

/** The operation conflicts with the current state: already exists, in use, has dependants. */
export class ConflictError extends SlackerError {
  override readonly code = 'SLACKER_ERR_CONFLICT';
}

/** Something of that name or key exists already. */
export class AlreadyExistsError extends SlackerError {
  override readonly code = 'SLACKER_ERR_ALREADY_EXISTS';
}

/** Configuration or command-line input that cannot be used. */
export class ConfigError extends SlackerError {
  override readonly code = 'SLACKER_ERR_CONFIG';
}

/** A graphdriver call that came before dockerd's Init. */
export class NotInitializedError extends SlackerError {
  override readonly code = 'SLACKER_ERR_NOT_INITIALIZED';
}

/** A call to a running plugin (convert, tools) that it answered with an error. */
export class PluginCallError extends SlackerError {
  override readonly code = 'SLACKER_ERR_PLUGIN_CALL';
}

/** An external program (mount, losetup, nbdfuse...) exited non-zero, was killed, or could not start. */
export class CommandError extends SlackerError {
  override readonly code = 'SLACKER_ERR_COMMAND';
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly stdout: string,
    readonly stderr: string,
    options: SlackerErrorOptions = {},
  ) {
    super(message, options);
  }
}

/** A connection to a remote service (a registry) failed, or the service broke its protocol. */
export class TransportError extends SlackerError {
  override readonly code = 'SLACKER_ERR_TRANSPORT';
}

/** Something awaited (a condition another process brings about, a deadline) did not come in time. */
export class TimeoutError extends SlackerError {
  override readonly code = 'SLACKER_ERR_TIMEOUT';
}

/** Node's own system errors carry an errno name in `code` (ENOSPC, EIO...). */
export function systemErrorCode(err: unknown): string | undefined {
  if (err instanceof Error && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}
