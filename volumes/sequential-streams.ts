/**
 * The sequential readers of one volume, told apart by where each one's next read starts: a read
 * that begins where a known stream ended continues it, any other starts a new one. Several at
 * once (nbdcopy's connections read separate regions; two processes read two files), at most
 * MAX_STREAMS, the least recently continued forgotten first. Pure bookkeeping: the volume decides
 * what to fetch for a stream.
 */
import type { ByteCount } from '../block/backend.js';

const MAX_STREAMS = 8;

export interface Stream {
  /** Where its next read is expected to start. */
  next: ByteCount;
  /** Bytes it has read in a row. */
  run: ByteCount;
  /** Chunks below this index were already fetched ahead for it. */
  followedTo: number;
}

export class SequentialStreams {
  /** Least to most recently continued. */
  private readonly streams: Stream[] = [];

  /** Records a read; returns the stream it continues or starts. */
  note(offset: ByteCount, length: ByteCount): Stream {
    const i = this.streams.findIndex((s) => s.next === offset);
    const s = i >= 0 ? this.streams.splice(i, 1)[0]! : { next: offset, run: 0, followedTo: 0 };
    s.next = offset + length;
    s.run += length;
    this.streams.push(s);
    if (this.streams.length > MAX_STREAMS) this.streams.shift();
    return s;
  }
}
