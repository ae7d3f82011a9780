/** Public surface of the NBD server: the server, and the block/ parts an export is made of (re-exported). */
export { NbdServer, type NbdServerOptions, DEFAULT_LIMITS } from './server.js';
export type { Backend, BlockSizes, ByteCount, Capabilities, Extent, WriteFlags, ZeroFlags } from '../block/backend.js';
export { capabilitiesOf, DEFAULT_BLOCK_SIZES } from '../block/backend.js';
export type { ExportSpec } from './exports.js';
export { MemoryBackend } from '../block/backends/memory.js';
export { FileBackend } from '../block/backends/file.js';
export { readOnly } from '../block/filters/read-only.js';
export { parseListenAddress, nbdUri, formatListenAddress, type ListenAddress } from './listen-address.js';
