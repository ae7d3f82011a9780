/**
 * The export registry shared by the handshake and the server: name -> backend, plus what is
 * derived from the backend once (capabilities, transmission flags, block sizes).
 */
import { InvalidArgumentError } from '../common/errors.js';
import { blockSizesOf, capabilitiesOf, type Backend, type BlockSizes, type Capabilities } from '../block/backend.js';
import { TFLAG } from './protocol.js';

export interface ExportSpec {
  name: string;
  backend: Backend;
  description?: string;
}

export interface Export {
  readonly name: string;
  readonly description: string;
  readonly backend: Backend;
  readonly caps: Capabilities;
  readonly blockSizes: BlockSizes;
  readonly readOnly: boolean;
  /** Connections currently attached to this export. */
  attached: number;
}

export function transmissionFlags(e: Export, structuredReplies: boolean): number {
  let flags = TFLAG.HAS_FLAGS;
  if (e.readOnly) flags |= TFLAG.READ_ONLY;
  if (e.caps.flush) flags |= TFLAG.SEND_FLUSH;
  if (e.caps.fua) flags |= TFLAG.SEND_FUA;
  if (e.caps.trim) flags |= TFLAG.SEND_TRIM;
  if (e.caps.zero) flags |= TFLAG.SEND_WRITE_ZEROES;
  if (e.caps.fastZero) flags |= TFLAG.SEND_FAST_ZERO;
  if (e.caps.cache) flags |= TFLAG.SEND_CACHE;
  if (e.caps.multiConn) flags |= TFLAG.CAN_MULTI_CONN;
  if (structuredReplies) flags |= TFLAG.SEND_DF;
  return flags;
}

export class ExportRegistry {
  private readonly byName = new Map<string, Export>();

  add(spec: ExportSpec): Export {
    if (Buffer.byteLength(spec.name, 'utf8') > 4096) {
      throw new InvalidArgumentError('export names are limited to 4096 bytes', { context: { name: spec.name } });
    }
    if (this.byName.has(spec.name)) {
      throw new InvalidArgumentError(`export ${JSON.stringify(spec.name)} already exists`, {
        context: { name: spec.name },
      });
    }
    const caps = capabilitiesOf(spec.backend);
    const e: Export = {
      name: spec.name,
      description: spec.description ?? spec.backend.description ?? '',
      backend: spec.backend,
      caps,
      blockSizes: blockSizesOf(spec.backend),
      readOnly: !caps.write,
      attached: 0,
    };
    this.byName.set(spec.name, e);
    return e;
  }

  remove(name: string): Export | undefined {
    const e = this.byName.get(name);
    this.byName.delete(name);
    return e;
  }

  get(name: string): Export | undefined {
    return this.byName.get(name);
  }

  list(): Export[] {
    return [...this.byName.values()];
  }
}
