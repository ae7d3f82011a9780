/** Public surface of the NBD server: the server, the backend interface, backends and filters. */
export { NbdServer, type NbdServerOptions, DEFAULT_LIMITS } from './server.js';
export type { Backend, BlockSizes, ByteCount, Capabilities, Extent, WriteFlags, ZeroFlags } from './backend.js';
export { capabilitiesOf, DEFAULT_BLOCK_SIZES } from './backend.js';
export type { ExportSpec } from './exports.js';
export { MemoryBackend } from './backends/memory.js';
export { FileBackend } from './backends/file.js';
export { readOnly } from './filters/read-only.js';
export { parseListenAddress, nbdUri, formatListenAddress, type ListenAddress } from './listen-address.js';
