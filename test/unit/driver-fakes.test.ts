/**
 * The graphdriver conformance suite over fakes: a fake attacher (an NBD session to the real
 * server), tarfs instead of ext4, an in-memory store. No kernel block devices or mounts.
 */
import { driverConformance } from '../helpers/driver-conformance.js';
import { FakeAttacher, tarfs } from '../helpers/fake-layer-devices.js';
import { MemoryStore } from '../helpers/memory-store.js';

driverConformance('fake attacher, tarfs, in-memory store', {
  attacher: () => new FakeAttacher(),
  filesystem: tarfs,
  store: () => new MemoryStore(),
});
