/**
 * The graphdriver conformance suite over the real parts: this host's attacher (nbdfuse + loop,
 * or the kernel NBD client), ext4, a dir:// store. The same suite runs over fakes in
 * test/unit/driver-fakes.test.ts.
 */
import { chooseAttacher } from '../../attach/choose-attacher.js';
import { ext4 } from '../../attach/ext4.js';
import { DirStore } from '../../stores/dir-store.js';
import { driverConformance } from '../helpers/driver-conformance.js';
import { requireRoot, requireTools } from '../helpers/tools.js';

driverConformance('this host attacher, ext4, dir:// store', {
  attacher: () => chooseAttacher('auto'),
  filesystem: ext4,
  store: (dir) => new DirStore(dir),
  requirements: async () => {
    requireRoot();
    await requireTools('nbdfuse', 'losetup', 'mkfs.ext4', 'findmnt');
  },
});
