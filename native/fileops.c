/*
 * fileops: the few Linux file syscalls that node:fs does not expose and a
 * sparse-aware block backend needs.
 *
 *   seekData(fd, offset)  -> next data offset >= offset, or -1 (ENXIO: no data after it)
 *   seekHole(fd, offset)  -> next hole offset >= offset (EOF counts as a hole)
 *   seekEnd(fd)           -> size of a file or block device (stat() says 0 for the latter)
 *   punchHole(fd, offset, length)   fallocate(PUNCH_HOLE|KEEP_SIZE): reads back zeroes, frees blocks
 *   zeroRange(fd, offset, length)   fallocate(ZERO_RANGE|KEEP_SIZE): reads back zeroes, stays allocated
 *   fadviseWillNeed(fd, offset, length)  start readahead (NBD_CMD_CACHE)
 *   lsetxattr(path, name, value)   set an extended attribute on a path, not following a symlink
 *   mknod(path, mode, major, minor)  create a device node or FIFO (mode carries the file type)
 *   preadNoWait(fd, buffer, bufOffset, length, position)
 *       preadv2 with RWF_NOWAIT: read only what can be read without blocking
 *       (data in the page cache). Return the bytes transferred, -1 if it would block (EAGAIN),
 *       -2 if the kernel or file system does not support RWF_NOWAIT. This is the fast path
 *       that spares a libuv threadpool round trip for cached data, without ever blocking
 *       the event loop on the disk.
 *
 *   isCached(fd, offset, length)   1 if every page of the range is in the page cache (cachestat(2)),
 *       0 if not, -2 if the kernel lacks cachestat
 *   sendfileNoWait(socketFd, fd, position, length)
 *   sendNoWait(socketFd, buffer, more)
 *       zero-copy read replies: to a non-blocking socket, return the bytes the kernel took now,
 *       -1 if it has no room (EAGAIN). sendfile passes page references, not copies.
 *
 *   lockExclusive(fd)   flock(LOCK_EX|LOCK_NB): true if this process now holds the lock, false if
 *       another holds it. Released when the descriptor is closed or the process dies.
 *
 *   adviseHugePages(buffer) -> offset
 *       madvise(MADV_HUGEPAGE) on the 2 MiB-aligned whole huge pages inside the buffer; returns
 *       the offset of the first of them in the buffer (the buffer's length if none fits), or -2
 *       if the kernel refuses (no transparent huge pages). Why: on this kind of VM a page fault
 *       costs ~2.6 us, so filling fresh memory 4 KiB at a time ran at ~0.4 GB/s; one fault per
 *       2 MiB is ~40x cheaper (measured: 32 fresh 8 MiB buffers, 676 ms against 15 ms).
 *
 *   writeFileAtomic(path, tmpPath, buffer, durable) -> Promise
 *       create tmpPath (O_EXCL), write the buffer, fdatasync if `durable`, close, rename to path;
 *       on failure the temporary file is removed. One libuv threadpool job where node:fs takes
 *       four (open, write, close, rename): storing each fetched chunk cost ~a quarter of the
 *       cold read's main-thread time that way. (Fetched chunks now go to cache segments; this
 *       stores the chunks made here and the dir store's files.)
 *
 *   syncFs(path) -> Promise
 *       syncfs(2) of the file system holding `path`, on the threadpool: a frozen layer's new chunks
 *       are written without an fdatasync each and made durable by this one call (3,900 fdatasyncs
 *       cost 1.4 s of a 480 MB layer's freeze; docs/BENCHMARKS.md).
 *
 *   copyRanges(outFd, [inFd, inPosition, outPosition, length, ...]) -> Promise
 *       copy_file_range(2) of each range into outFd, all in one threadpool job (pread/pwrite
 *       where the kernel cannot copy between the two files). The descriptors are duplicated at the
 *       call, so the caller may close its own at once. Why: a staged copy's fill wrote its
 *       parent's chunks one by one through JavaScript, two copies and a threadpool round trip each
 *       (3,200 chunks took 0.15-0.27 s); here the kernel copies page cache to page cache.
 *
 * All other calls are synchronous: each is a single metadata syscall that does not wait for data I/O.
 * Errors throw an Error whose `code` is the errno name (as node:fs does), so callers map them
 * the same way as fs errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <node_api.h>
#include "errno-name.h"
#include "napi-job.h"


/* Reads `count` integer arguments (fd, offsets, lengths) as int64. */
static int get_args(napi_env env, napi_callback_info info, size_t count, int64_t *out) {
  napi_value argv[4];
  size_t argc = 4;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < count) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return 0;
  }
  for (size_t i = 0; i < count; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok || out[i] < 0) {
      napi_throw_type_error(env, "EINVAL", "arguments must be non-negative integers");
      return 0;
    }
  }
  return 1;
}

static napi_value make_int64(napi_env env, int64_t v) {
  napi_value r;
  napi_create_int64(env, v, &r);
  return r;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  int64_t a[2];
  if (!get_args(env, info, 2, a)) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  if (r < 0) {
    if (errno == ENXIO) return make_int64(env, -1);
    return throw_errno(env, name, errno);
  }
  return make_int64(env, (int64_t)r);
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

static napi_value seek_end(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  off_t r = lseek((int)a[0], 0, SEEK_END);
  if (r < 0) return throw_errno(env, "lseek(SEEK_END)", errno);
  return make_int64(env, (int64_t)r);
}

static napi_value do_fallocate(napi_env env, napi_callback_info info, int mode, const char *name) {
  int64_t a[3];
  if (!get_args(env, info, 3, a)) return NULL;
  int r;
  do {
    r = fallocate((int)a[0], mode, (off_t)a[1], (off_t)a[2]);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, name, errno);
  return NULL;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)");
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fallocate(ZERO_RANGE)");
}

static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  int r;
  do {
    r = flock((int)a[0], LOCK_EX | LOCK_NB);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EWOULDBLOCK) return throw_errno(env, "flock", errno);
  napi_value result;
  napi_get_boolean(env, r == 0, &result);
  return result;
}

static napi_value fadvise_willneed(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (!get_args(env, info, 3, a)) return NULL;
  int r = posix_fadvise((int)a[0], (off_t)a[1], (off_t)a[2], POSIX_FADV_WILLNEED);
  if (r != 0) return throw_errno(env, "posix_fadvise", r);
  return NULL;
}

/* (fd, buffer, bufOffset, length, position) -> iovec into the buffer, bounds-checked. */
static int get_io_args(napi_env env, napi_callback_info info, int *fd, struct iovec *iov, off_t *pos) {
  napi_value argv[5];
  size_t argc = 5;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return 0;
  }
  void *data;
  size_t size;
  if (napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "second argument must be a Buffer");
    return 0;
  }
  int64_t v[4];
  int idx[4] = {0, 2, 3, 4};
  for (int i = 0; i < 4; i++) {
    if (napi_get_value_int64(env, argv[idx[i]], &v[i]) != napi_ok || v[i] < 0) {
      napi_throw_type_error(env, "EINVAL", "arguments must be non-negative integers");
      return 0;
    }
  }
  if ((uint64_t)v[1] + (uint64_t)v[2] > size) {
    napi_throw_range_error(env, "ERANGE", "range exceeds the buffer");
    return 0;
  }
  *fd = (int)v[0];
  iov->iov_base = (char *)data + v[1];
  iov->iov_len = (size_t)v[2];
  *pos = (off_t)v[3];
  return 1;
}

/* What a non-blocking transfer returns to JS: the bytes moved, -1 if it would block (EAGAIN),
 * else a thrown error named after `syscall`. */
static napi_value nowait_result(napi_env env, ssize_t r, const char *syscall) {
  if (r >= 0) return make_int64(env, (int64_t)r);
  if (errno == EAGAIN) return make_int64(env, -1);
  return throw_errno(env, syscall, errno);
}

/* Writes have no such path: ext4 refuses RWF_NOWAIT for buffered writes (block/backends/file.ts). */
static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  int fd;
  struct iovec iov;
  off_t pos;
  if (!get_io_args(env, info, &fd, &iov, &pos)) return NULL;
  ssize_t r;
  do {
    r = preadv2(fd, &iov, 1, pos, RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) return make_int64(env, -2);
  return nowait_result(env, r, "preadv2");
}

/* sendfile(outFd, inFd, position, length) to a non-blocking socket: bytes sent (the kernel takes
 * page references, no copy through user space), -1 if the socket has no room now (EAGAIN). The
 * caller makes sure the pages are cached (isCached): reading them from disk would block. */
static napi_value sendfile_nowait(napi_env env, napi_callback_info info) {
  int64_t a[4];
  if (!get_args(env, info, 4, a)) return NULL;
  off_t pos = (off_t)a[2];
  ssize_t r;
  do {
    r = sendfile((int)a[0], (int)a[1], &pos, (size_t)a[3]);
  } while (r < 0 && errno == EINTR);
  return nowait_result(env, r, "sendfile");
}

/* sendNoWait(fd, buffer, more) to a non-blocking socket: bytes sent, -1 if it has no room now.
 * `more` sets MSG_MORE: on TCP a reply header then waits for the data that follows it. */
static napi_value send_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  int64_t fd;
  bool more = false;
  void *data;
  size_t size;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok ||
      napi_get_value_bool(env, argv[2], &more) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected (fd, Buffer, boolean)");
    return NULL;
  }
  ssize_t r;
  do {
    r = send((int)fd, data, size, MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0));
  } while (r < 0 && errno == EINTR);
  return nowait_result(env, r, "send");
}

/* setSendBuffer(socketFd, bytes): SO_SNDBUF (the kernel caps it at net.core.wmem_max and
 * doubles it for bookkeeping). Returns the size in effect. */
static napi_value set_send_buffer(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (!get_args(env, info, 2, a)) return NULL;
  int v = a[1] > 0x7fffffff ? 0x7fffffff : (int)a[1];
  if (setsockopt((int)a[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof v) < 0) return throw_errno(env, "setsockopt(SO_SNDBUF)", errno);
  socklen_t len = sizeof v;
  if (getsockopt((int)a[0], SOL_SOCKET, SO_SNDBUF, &v, &len) < 0) return throw_errno(env, "getsockopt(SO_SNDBUF)", errno);
  return make_int64(env, v);
}

#ifndef SYS_cachestat
#define SYS_cachestat 451 /* the same number on every architecture (Linux 6.5+) */
#endif
struct cachestat_range_arg { uint64_t off, len; };
struct cachestat_out { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };

/* isCached(fd, offset, length): 1 if every page of the range is in the page cache, 0 if not,
 * -2 if the kernel lacks cachestat(2). One syscall, no I/O. */
static napi_value is_cached(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (!get_args(env, info, 3, a)) return NULL;
  if (a[2] == 0) return make_int64(env, 1);
  struct cachestat_range_arg range = {(uint64_t)a[1], (uint64_t)a[2]};
  struct cachestat_out cs;
  if (syscall(SYS_cachestat, (int)a[0], &range, &cs, 0) < 0) {
    if (errno == ENOSYS || errno == EOPNOTSUPP) return make_int64(env, -2);
    return throw_errno(env, "cachestat", errno);
  }
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = (range.off + range.len + page - 1) / page - range.off / page;
  return make_int64(env, cs.nr_cache >= pages ? 1 : 0);
}

#define HUGE_PAGE ((uintptr_t)2 << 20)

static napi_value advise_huge_pages(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  void *data;
  size_t length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected a Buffer");
    return NULL;
  }
  uintptr_t start = (uintptr_t)data, end = start + length;
  uintptr_t first = (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), last = end & ~(HUGE_PAGE - 1);
  if (last <= first) return make_int64(env, (int64_t)length);
  if (madvise((void *)first, last - first, MADV_HUGEPAGE) < 0) {
    if (errno == EINVAL) return make_int64(env, -2); /* THP not built, or disabled */
    return throw_errno(env, "madvise(MADV_HUGEPAGE)", errno);
  }
  return make_int64(env, (int64_t)(first - start));
}

/* Copies a JS string argument into `buf` (NUL-terminated); 0 and a thrown error if it does not fit. */
static int get_string(napi_env env, napi_value v, char *buf, size_t cap) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, buf, cap, &len) != napi_ok || len >= cap - 1) {
    napi_throw_type_error(env, "EINVAL", "expected a string shorter than PATH_MAX");
    return 0;
  }
  return 1;
}

static napi_value lsetxattr_path(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  char path[4096], name[256];
  void *data;
  size_t size;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return NULL;
  }
  if (!get_string(env, argv[0], path, sizeof path) || !get_string(env, argv[1], name, sizeof name)) return NULL;
  if (napi_get_buffer_info(env, argv[2], &data, &size) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "value must be a Buffer");
    return NULL;
  }
  if (lsetxattr(path, name, data, size, 0) < 0) return throw_errno(env, "lsetxattr", errno);
  return NULL;
}

static napi_value mknod_path(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  char path[4096];
  int64_t v[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return NULL;
  }
  if (!get_string(env, argv[0], path, sizeof path)) return NULL;
  for (int i = 0; i < 3; i++) {
    if (napi_get_value_int64(env, argv[i + 1], &v[i]) != napi_ok || v[i] < 0) {
      napi_throw_type_error(env, "EINVAL", "arguments must be non-negative integers");
      return NULL;
    }
  }
  if (mknod(path, (mode_t)v[0], makedev((unsigned)v[1], (unsigned)v[2])) < 0) return throw_errno(env, "mknod", errno);
  return NULL;
}

/* ---- writeFileAtomic: one threadpool job ---- */

struct atomic_write {
  char path[4096], tmp[4096];
  const char *data;
  size_t size;
  bool durable;
  int err;              /* errno of the failed step, 0 on success */
  const char *syscall;  /* the failed step */
  napi_ref buffer;      /* keeps the buffer alive while the job runs */
  napi_deferred deferred;
  napi_async_work work;
};

static void atomic_write_execute(napi_env env, void *arg) {
  (void)env;
  struct atomic_write *w = arg;
  int fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    w->err = errno;
    w->syscall = "open";
    return;
  }
  size_t done = 0;
  while (done < w->size) {
    ssize_t n = write(fd, w->data + done, w->size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      w->err = n < 0 ? errno : EIO;
      w->syscall = "write";
      break;
    }
    done += (size_t)n;
  }
  if (!w->err && w->durable && fdatasync(fd) < 0) {
    w->err = errno;
    w->syscall = "fdatasync";
  }
  if (close(fd) < 0 && !w->err) {
    w->err = errno;
    w->syscall = "close";
  }
  if (!w->err && rename(w->tmp, w->path) < 0) {
    w->err = errno;
    w->syscall = "rename";
  }
  if (w->err) unlink(w->tmp);
}

/*
 * Settles the promise of a job that resolves to nothing: rejected with "<syscall>: <strerror>"
 * and the errno name as its code if the job failed (or was cancelled), resolved otherwise.
 */
static void settle_void_job(napi_env env, napi_status status, napi_deferred deferred, int err, const char *syscall,
                            const char *job) {
  if (status != napi_ok && !err) {
    err = ECANCELED;
    syscall = job;
  }
  if (err) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
    reject_job(env, deferred, errno_name(err), msg);
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, deferred, undefined);
  }
}

static void atomic_write_complete(napi_env env, napi_status status, void *arg) {
  struct atomic_write *w = arg;
  settle_void_job(env, status, w->deferred, w->err, w->syscall, "writeFileAtomic");
  napi_delete_reference(env, w->buffer);
  napi_delete_async_work(env, w->work);
  free(w);
}

static napi_value write_file_atomic(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return NULL;
  }
  struct atomic_write *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "writeFileAtomic", ENOMEM);
  void *data;
  if (!get_string(env, argv[0], w->path, sizeof w->path) || !get_string(env, argv[1], w->tmp, sizeof w->tmp) ||
      napi_get_buffer_info(env, argv[2], &data, &w->size) != napi_ok ||
      napi_get_value_bool(env, argv[3], &w->durable) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_type_error(env, "EINVAL", "expected (path, tmpPath, Buffer, durable)");
    free(w);
    return NULL;
  }
  w->data = data;
  return start_job(env, argv[2], "slacker:writeFileAtomic", atomic_write_execute, atomic_write_complete, w, &w->buffer,
                   &w->deferred, &w->work);
}

/* ---- syncFs: syncfs(2) of the file system holding a path, one threadpool job ---- */

struct sync_fs {
  char path[4096];
  int err;
  const char *syscall;
  napi_ref keep;
  napi_deferred deferred;
  napi_async_work work;
};

static void sync_fs_execute(napi_env env, void *arg) {
  (void)env;
  struct sync_fs *w = arg;
  int fd = open(w->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    w->err = errno;
    w->syscall = "open";
    return;
  }
  if (syncfs(fd) < 0) {
    w->err = errno;
    w->syscall = "syncfs";
  }
  close(fd);
}

static void sync_fs_complete(napi_env env, napi_status status, void *arg) {
  struct sync_fs *w = arg;
  settle_void_job(env, status, w->deferred, w->err, w->syscall, "syncFs");
  napi_delete_reference(env, w->keep);
  napi_delete_async_work(env, w->work);
  free(w);
}

static napi_value sync_fs(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return NULL;
  }
  struct sync_fs *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "syncFs", ENOMEM);
  if (!get_string(env, argv[0], w->path, sizeof w->path)) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_type_error(env, "EINVAL", "expected (path)");
    free(w);
    return NULL;
  }
  return start_job(env, argv[0], "slacker:syncFs", sync_fs_execute, sync_fs_complete, w, &w->keep, &w->deferred,
                   &w->work);
}

/* ---- copyRanges: copy_file_range of many ranges into one file, one threadpool job ---- */

struct copy_ranges {
  int out;
  size_t count;
  int *fds; /* duplicated input descriptors, -1 where the dup failed */
  int64_t *args; /* inPosition, outPosition, length for each range */
  int err;
  const char *syscall;
  napi_ref keep;
  napi_deferred deferred;
  napi_async_work work;
};

static void copy_ranges_free(napi_env env, struct copy_ranges *c) {
  if (c->keep) napi_delete_reference(env, c->keep);
  if (c->work) napi_delete_async_work(env, c->work);
  if (c->out >= 0) close(c->out);
  if (c->fds)
    for (size_t i = 0; i < c->count; i++)
      if (c->fds[i] >= 0) close(c->fds[i]);
  free(c->fds);
  free(c->args);
  free(c);
}

/* The fallback where copy_file_range refuses the pair of files: through a buffer. */
static int copy_by_hand(int in, off_t ip, int out, off_t op, int64_t len, const char **syscall) {
  const size_t size = 256 * 1024;
  char *buf = malloc(size);
  int err = 0;
  if (!buf) {
    *syscall = "malloc";
    return ENOMEM;
  }
  while (len > 0 && !err) {
    ssize_t n = pread(in, buf, len < (int64_t)size ? (size_t)len : size, ip);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *syscall = "pread";
      err = n < 0 ? errno : EIO; /* a source shorter than the range */
      break;
    }
    for (ssize_t done = 0; done < n && !err;) {
      ssize_t w = pwrite(out, buf + done, (size_t)(n - done), op + done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        *syscall = "pwrite";
        err = errno;
      } else {
        done += w;
      }
    }
    ip += n;
    op += n;
    len -= n;
  }
  free(buf);
  return err;
}

static void copy_ranges_execute(napi_env env, void *arg) {
  (void)env;
  struct copy_ranges *c = arg;
  for (size_t i = 0; i < c->count && !c->err; i++) {
    if (c->fds[i] < 0) {
      c->err = EBADF;
      c->syscall = "dup";
      break;
    }
    off_t ip = (off_t)c->args[3 * i], op = (off_t)c->args[3 * i + 1];
    int64_t len = c->args[3 * i + 2];
    while (len > 0) {
      ssize_t n = copy_file_range(c->fds[i], &ip, c->out, &op, (size_t)len, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
        c->err = copy_by_hand(c->fds[i], ip, c->out, op, len, &c->syscall);
        break;
      }
      if (n <= 0) {
        c->err = n < 0 ? errno : EIO; /* n == 0: the source ends inside the range */
        c->syscall = "copy_file_range";
        break;
      }
      len -= n;
    }
  }
}

static void copy_ranges_complete(napi_env env, napi_status status, void *arg) {
  struct copy_ranges *c = arg;
  settle_void_job(env, status, c->deferred, c->err, c->syscall, "copyRanges");
  copy_ranges_free(env, c);
}

static napi_value copy_ranges(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  int32_t out = -1;
  bool is_array = false;
  uint32_t n = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &out) != napi_ok || out < 0 ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &n) != napi_ok || n % 4 != 0) {
    napi_throw_type_error(env, "EINVAL", "expected (outFd, [inFd, inPosition, outPosition, length, ...])");
    return NULL;
  }
  struct copy_ranges *c = calloc(1, sizeof *c);
  size_t count = n / 4;
  if (!c || !(c->fds = malloc((count ? count : 1) * sizeof *c->fds)) ||
      !(c->args = malloc((count ? count : 1) * 3 * sizeof *c->args))) {
    if (c) {
      c->out = -1;
      copy_ranges_free(env, c);
    }
    return throw_errno(env, "copyRanges", ENOMEM);
  }
  c->count = count;
  for (size_t i = 0; i < count; i++) c->fds[i] = -1;
  c->out = fcntl(out, F_DUPFD_CLOEXEC, 0);
  if (c->out < 0) {
    int e = errno;
    copy_ranges_free(env, c);
    return throw_errno(env, "dup", e);
  }
  for (size_t i = 0; i < count; i++) {
    napi_value v;
    int64_t x[4];
    for (int k = 0; k < 4; k++) {
      if (napi_get_element(env, argv[1], (uint32_t)(4 * i + k), &v) != napi_ok ||
          napi_get_value_int64(env, v, &x[k]) != napi_ok || x[k] < 0) {
        copy_ranges_free(env, c);
        napi_throw_type_error(env, "EINVAL", "copyRanges: each range is four non-negative integers");
        return NULL;
      }
    }
    c->fds[i] = fcntl((int)x[0], F_DUPFD_CLOEXEC, 0);
    c->args[3 * i] = x[1];
    c->args[3 * i + 1] = x[2];
    c->args[3 * i + 2] = x[3];
  }
  return start_job(env, argv[1], "slacker:copyRanges", copy_ranges_execute, copy_ranges_complete, c, &c->keep,
                   &c->deferred, &c->work);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekEnd", NULL, seek_end, NULL, NULL, NULL, napi_enumerable, NULL},
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL},
    {"preadNoWait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fadviseWillNeed", NULL, fadvise_willneed, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lsetxattr", NULL, lsetxattr_path, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mknod", NULL, mknod_path, NULL, NULL, NULL, napi_enumerable, NULL},
    {"sendfileNoWait", NULL, sendfile_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"sendNoWait", NULL, send_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setSendBuffer", NULL, set_send_buffer, NULL, NULL, NULL, napi_enumerable, NULL},
    {"isCached", NULL, is_cached, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lockExclusive", NULL, lock_exclusive, NULL, NULL, NULL, napi_enumerable, NULL},
    {"adviseHugePages", NULL, advise_huge_pages, NULL, NULL, NULL, napi_enumerable, NULL},
    {"writeFileAtomic", NULL, write_file_atomic, NULL, NULL, NULL, napi_enumerable, NULL},
    {"syncFs", NULL, sync_fs, NULL, NULL, NULL, napi_enumerable, NULL},
    {"copyRanges", NULL, copy_ranges, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
