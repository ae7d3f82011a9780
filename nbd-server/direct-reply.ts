/**
 * Zero-copy read replies. When a backend can say which files hold a range (Backend.fileSlices)
 * and every page of them is in the page cache, the reply header goes out with send(2) and the
 * data with sendfile(2), straight to the socket's descriptor: the kernel hands page references
 * to the socket. The copy path instead reads every byte into a buffer and copies it again into
 * the socket, which was most of the event loop's time on warm sequential reads.
 *
 * Bytes sent this way bypass the socket's write queue, so callers use it only while that queue
 * is empty. What the kernel does not take at once (its buffer is full) comes back as Buffers to
 * queue with socket.write: a reply always leaves whole and in order.
 */
import { readSync } from 'node:fs';
import type { Socket } from 'node:net';
import { fileOps } from '../common/fileops.js';
import type { ReadFrame } from './replies.js';

/** Cleared when the kernel has no cachestat(2): without it sendfile might wait for the disk. */
let cachestat = true;

/** The socket's descriptor (unix or TCP), or undefined when it has none we may write to. */
export function socketFd(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Whether every file part is in the page cache, so sending it will not wait for the disk. */
export function allCached(parts: readonly ReadFrame[]): boolean {
  if (!cachestat) return false;
  for (const p of parts) {
    if (Buffer.isBuffer(p)) continue;
    const r = fileOps.isCached(p.fd, p.position, p.length);
    if (r === -2) cachestat = false;
    if (r !== 1) return false;
  }
  return true;
}

/**
 * Sends `parts` to the socket's descriptor now. Returns what the kernel did not take, as
 * Buffers (file ranges read with pread), for the caller to queue behind. Throws on a socket
 * error (the peer went away).
 */
export function sendDirect(socketFd: number, parts: readonly ReadFrame[]): Buffer[] {
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    const more = i < parts.length - 1;
    let done = 0;
    if (Buffer.isBuffer(p)) {
      done = Math.max(0, fileOps.sendNoWait(socketFd, p, more));
    } else {
      while (done < p.length) {
        const n = fileOps.sendfileNoWait(socketFd, p.fd, p.position + done, p.length - done);
        if (n <= 0) break; // -1: no room; 0: the file ends early (read below: zeroes past its end)
        done += n;
      }
    }
    if (done < p.length) return [rest(p, done), ...parts.slice(i + 1).map((q) => rest(q, 0))];
  }
  return [];
}

/** The bytes of a part from `from` on, as a Buffer. */
function rest(p: ReadFrame, from: number): Buffer {
  if (Buffer.isBuffer(p)) return p.subarray(from);
  const out = Buffer.alloc(p.length - from); // zeroes past the end of a file that shrank
  for (let done = 0; done < out.length;) {
    // The pages were cached a moment ago, so this synchronous read is a memory copy.
    const n = readSync(p.fd, out, done, out.length - done, p.position + from + done);
    if (n === 0) break;
    done += n;
  }
  return out;
}
