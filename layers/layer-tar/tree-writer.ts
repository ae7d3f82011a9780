/**
 * Typed access to the native tree writer (native/tree-writer.c): the file system side of
 * applying a layer tar, every path resolved by the kernel inside the layer root
 * (openat2 RESOLVE_IN_ROOT), bytes passed through unchanged, one threadpool job per entry. Each
 * job goes through mount-calls.ts's gate: the root is a layer mount this process serves.
 */
import { ShutdownError } from '../../common/errors.js';
import { loadAddon } from '../../common/native-addon.js';
import { onMount } from '../mount-calls.js';

/** What an op does (the numbers native/tree-writer.c knows). */
export const OpKind = {
  Dir: 1,
  File: 2,
  Symlink: 3,
  Link: 4,
  CharDevice: 5,
  BlockDevice: 6,
  Fifo: 7,
  Whiteout: 8,
  Opaque: 9,
  Root: 10,
} as const;
export type OpKind = (typeof OpKind)[keyof typeof OpKind];

export interface TreeOp {
  kind: OpKind;
  /** Clean path relative to the root ('' is the root), as bytes. */
  path: Buffer;
  /** Symlink target, or a hardlink's target path relative to the root. */
  link?: Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  sec?: number;
  nsec?: number;
  major?: number;
  minor?: number;
  /** name, value, name, value... */
  xattrs?: Buffer[];
  /** A file's data (all of it, or the first part when `stream`). */
  data?: Buffer;
  /** Leave the file open for write() and finishFile(). */
  stream?: boolean;
  /** Opaque whiteout: the children to keep, sorted, each followed by a NUL. */
  keep?: Buffer;
}

type Handle = { readonly __tree: unique symbol };

interface TreeWriterAddon {
  open(root: string): Handle;
  close(tree: Handle): void;
  /** Resolves to the number of xattrs the file system refused as unsupported (skipped, as moby does). */
  apply(tree: Handle, op: TreeOp): Promise<number>;
  write(tree: Handle, buffers: Buffer[]): Promise<number>;
  finishFile(tree: Handle, op: TreeOp): Promise<number>;
  finish(tree: Handle): Promise<number>;
}

const addon = loadAddon<TreeWriterAddon>('treewriter');

/** One layer root being written. Calls must be awaited one at a time; close() in a finally. */
export class TreeWriter {
  private handle: Handle | undefined;

  constructor(root: string) {
    this.handle = addon.open(root);
  }

  apply(op: TreeOp): Promise<number> {
    const tree = this.open();
    return onMount(() => addon.apply(tree, op));
  }

  write(buffers: Buffer[]): Promise<number> {
    const tree = this.open();
    return onMount(() => addon.write(tree, buffers));
  }

  finishFile(op: TreeOp): Promise<number> {
    const tree = this.open();
    return onMount(() => addon.finishFile(tree, op));
  }

  /** Sets the directory times recorded so far (directories' own times change as entries go in). */
  finish(): Promise<number> {
    const tree = this.open();
    return onMount(() => addon.finish(tree));
  }

  close(): void {
    if (this.handle) addon.close(this.handle);
    this.handle = undefined;
  }

  private open(): Handle {
    if (!this.handle) throw new ShutdownError('the tree writer is closed');
    return this.handle;
  }
}
