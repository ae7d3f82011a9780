/*
 * blockdevices: the loop device ioctls losetup(8) makes and the mount(2)/umount2(2) calls mount(8)
 * and umount(8) make, without a process per call.
 *
 *   freeLoop() -> N
 *       LOOP_CTL_GET_FREE on /dev/loop-control: the number of a free loop device (the kernel
 *       creates one if none is free). Another process may take it before we configure it.
 *   configureLoop(device, file, readOnly) -> Promise
 *       binds `file` to `device` with LOOP_CONFIGURE (LOOP_SET_FD + LOOP_SET_STATUS64 on kernels
 *       before 5.8), read-only if asked, no autoclear, 512-byte sectors: what `losetup DEVICE FILE`
 *       does. Rejects with code EBUSY if the device is already bound (lost a race for it).
 *   clearLoop(device) -> Promise
 *       LOOP_CLR_FD: what `losetup -d` does. The kernel unbinds at once if nobody has the device
 *       open, else when the last opener closes it.
 *   mount(source, target, fstype, flags, data) -> Promise
 *       mount(2); `flags` are MS_* bits, `data` the file system's own options.
 *   unmount(target) -> Promise
 *       umount2(2) without flags; rejects with EBUSY while something still uses the mount.
 *   setReadahead(device, kib) -> Promise
 *       BLKRASET: the device's readahead window, what `blockdev --setra` sets. Not through sysfs
 *       (queue/read_ahead_kb): a managed plugin sees /sys read-only.
 *   freeze(dir) / thaw(dir) -> Promise
 *       FIFREEZE / FITHAW on the file system mounted at `dir`: what `fsfreeze --freeze` and
 *       `--unfreeze` do (a frozen file system has written everything and takes no writes).
 *   syncFs(dir) -> Promise
 *       syncfs(2) of the file system mounted at `dir`: its dirty data and journal written and
 *       flushed, writers not blocked.
 *   willNeed(file, ranges) -> Promise
 *       posix_fadvise(POSIX_FADV_WILLNEED) on `file` for each [offset, length] pair of the flat
 *       array `ranges` (at most WILLNEED_MAX_RANGES pairs), in order: the kernel starts reading
 *       them into the file's page cache and the call returns without waiting for the data. Each
 *       advice is cut into WILLNEED_STEP pieces, since the kernel reads at most its readahead
 *       window per call (force_page_cache_ra).
 *
 * Why: every Get and Put of a layer attached a loop device, mounted it, unmounted it and detached
 * it, and each step was a process the daemon started: losetup 4.6 ms measured alone and 7.2 ms
 * from the daemon while dockerd created a container, mount and umount ~7.6 ms each
 * (docs/BENCHMARKS.md, issue 19).
 *
 * Each call runs on a thread of its own, never on the libuv threadpool: the kernel serves these
 * calls with I/O to the device, and a layer's device is FUSE and NBD into the server in this very
 * process, whose file I/O needs threadpool threads. LOOP_CONFIGURE fsyncs the backing file (an
 * NBD FLUSH, seen with strace), a mount reads the superblock and replays the journal, the last
 * unmount writes everything back. Four of them at once on the four pool threads would wait for
 * the server forever (64 containers at once deadlocked that way when an unmount ran on the pool).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>
#include <linux/loop.h>
/* From linux/fs.h, whose MS_* clash with sys/mount.h. */
#ifndef BLKRASET
#define BLKRASET _IO(0x12, 98)
#endif
#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif
#include <node_api.h>
#include "errno-name.h"
#include "napi-job.h" /* reject_job */

enum job_kind { CONFIGURE_LOOP, CLEAR_LOOP, MOUNT, UNMOUNT, SET_READAHEAD, FREEZE, THAW, SYNC_FS, WILL_NEED };
static const char *const job_names[] = {"configureLoop", "clearLoop", "mount",  "unmount", "setReadahead",
                                        "freeze",        "thaw",      "syncFs", "willNeed"};

#define WILLNEED_MAX_RANGES 65536
#define WILLNEED_STEP (128 * 1024)

struct job {
  enum job_kind kind;
  char device[4096]; /* the loop device, mount's source, or the mount point (unmount, freeze, thaw, syncFs) */
  char file[4096];   /* the loop's backing file, or mount's target */
  char fstype[64];
  char data[1024];
  unsigned long flags; /* mount's MS_* bits, or the readahead window in KiB */
  bool read_only;
  uint64_t *ranges; /* willNeed: offset, length pairs */
  size_t nranges;
  int err;
  const char *syscall;
  napi_deferred deferred;
  napi_threadsafe_function done;
};

/* Completions back to the event loop; referenced only while jobs run, so it never holds a process open. */
struct instance {
  napi_threadsafe_function done;
  uint64_t pending; /* touched on the event loop only */
};

static napi_value free_loop(napi_env env, napi_callback_info info) {
  (void)info;
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return throw_errno(env, "open(/dev/loop-control)", errno);
  int n = ioctl(ctl, LOOP_CTL_GET_FREE);
  int e = errno;
  close(ctl);
  if (n < 0) return throw_errno(env, "ioctl(LOOP_CTL_GET_FREE)", e);
  napi_value r;
  napi_create_int32(env, n, &r);
  return r;
}

/* LOOP_SET_FD + LOOP_SET_STATUS64, for kernels without LOOP_CONFIGURE (before 5.8). */
static int configure_old(int dev, int file, const struct loop_info64 *info, const char **syscall) {
  if (ioctl(dev, LOOP_SET_FD, file) < 0) {
    *syscall = "ioctl(LOOP_SET_FD)";
    return errno;
  }
  if (ioctl(dev, LOOP_SET_STATUS64, info) < 0) {
    int e = errno;
    ioctl(dev, LOOP_CLR_FD, 0);
    *syscall = "ioctl(LOOP_SET_STATUS64)";
    return e;
  }
  return 0;
}

static void run_job(struct job *j) {
  if (j->kind == MOUNT || j->kind == UNMOUNT) {
    int r = j->kind == MOUNT ? mount(j->device, j->file, j->fstype, j->flags, j->data) : umount2(j->device, 0);
    if (r < 0) {
      j->err = errno;
      j->syscall = j->kind == MOUNT ? "mount" : "umount2";
    }
    return;
  }
  if (j->kind == FREEZE || j->kind == THAW || j->kind == SYNC_FS) {
    int dir = open(j->device, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
      j->err = errno;
      j->syscall = "open(dir)";
      return;
    }
    int r = j->kind == SYNC_FS ? syncfs(dir) : ioctl(dir, j->kind == FREEZE ? FIFREEZE : FITHAW, 0);
    if (r < 0) {
      j->err = errno;
      j->syscall = j->kind == SYNC_FS ? "syncfs" : j->kind == FREEZE ? "ioctl(FIFREEZE)" : "ioctl(FITHAW)";
    }
    close(dir);
    return;
  }
  if (j->kind == WILL_NEED) {
    int fd = open(j->device, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      j->err = errno;
      j->syscall = "open(file)";
      return;
    }
    for (size_t r = 0; r < j->nranges && !j->err; r++) {
      uint64_t off = j->ranges[2 * r], end = off + j->ranges[2 * r + 1];
      for (uint64_t at = off; at < end && !j->err; at += WILLNEED_STEP) {
        uint64_t n = end - at < WILLNEED_STEP ? end - at : WILLNEED_STEP;
        int e = posix_fadvise(fd, (off_t)at, (off_t)n, POSIX_FADV_WILLNEED); /* returns the error */
        if (e) {
          j->err = e;
          j->syscall = "posix_fadvise";
        }
      }
    }
    close(fd);
    return;
  }
  /* As losetup: read-only for a read-only binding and for LOOP_CLR_FD, which needs no more. */
  bool write = j->kind == CONFIGURE_LOOP && !j->read_only;
  int dev = open(j->device, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (dev < 0) {
    j->err = errno;
    j->syscall = "open(device)";
    return;
  }
  if (j->kind == SET_READAHEAD) {
    if (ioctl(dev, BLKRASET, j->flags * 2) < 0) { /* in 512-byte sectors */
      j->err = errno;
      j->syscall = "ioctl(BLKRASET)";
    }
    close(dev);
    return;
  }
  if (j->kind == CLEAR_LOOP) {
    if (ioctl(dev, LOOP_CLR_FD, 0) < 0) {
      j->err = errno;
      j->syscall = "ioctl(LOOP_CLR_FD)";
    }
    close(dev);
    return;
  }
  int file = open(j->file, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (file < 0) {
    j->err = errno;
    j->syscall = "open(file)";
    close(dev);
    return;
  }
  struct loop_config config;
  memset(&config, 0, sizeof config);
  config.fd = (unsigned)file;
  config.info.lo_flags = j->read_only ? LO_FLAGS_READ_ONLY : 0;
  /* The name `losetup -l` shows (it reads the path from sysfs; this is the ioctl's copy). */
  size_t name_len = strlen(j->file);
  if (name_len > LO_NAME_SIZE - 1) name_len = LO_NAME_SIZE - 1; /* the ioctl keeps 63 bytes; config is zeroed */
  memcpy(config.info.lo_file_name, j->file, name_len);
  if (ioctl(dev, LOOP_CONFIGURE, &config) < 0) {
    if (errno == EINVAL || errno == ENOTTY) {
      j->err = configure_old(dev, file, &config.info, &j->syscall);
    } else {
      j->err = errno;
      j->syscall = "ioctl(LOOP_CONFIGURE)";
    }
  }
  close(file);
  close(dev);
}

static void *job_thread(void *arg) {
  struct job *j = arg;
  run_job(j);
  if (napi_call_threadsafe_function(j->done, j, napi_tsfn_blocking) != napi_ok) free(j); /* torn down */
  return NULL;
}

static void settle(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  struct instance *inst = context;
  struct job *j = data;
  if (!env) {
    free(j->ranges);
    free(j);
    return;
  }
  if (j->err) {
    char msg[8400];
    bool two = j->kind == CONFIGURE_LOOP || j->kind == MOUNT;
    snprintf(msg, sizeof msg, "%s: %s (%s%s%s)", j->syscall, strerror(j->err), j->device, two ? " on " : "",
             two ? j->file : "");
    reject_job(env, j->deferred, errno_name(j->err), msg);
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, j->deferred, undefined);
  }
  free(j->ranges);
  free(j);
  if (--inst->pending == 0) napi_unref_threadsafe_function(env, inst->done);
}

static bool get_string(napi_env env, napi_value v, char *out, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, out, size, &len) != napi_ok) return false;
  return len < size - 1; /* a longer string was cut: refuse it rather than use a different path */
}

/* willNeed's ranges: a flat array of non-negative safe integers, offset and length pairs. */
static bool get_ranges(napi_env env, napi_value v, struct job *j) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array || napi_get_array_length(env, v, &n) != napi_ok ||
      n % 2 != 0 || n / 2 > WILLNEED_MAX_RANGES)
    return false;
  j->nranges = n / 2;
  j->ranges = n ? calloc(n, sizeof *j->ranges) : NULL;
  if (n && !j->ranges) return false;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    double d = -1;
    if (napi_get_element(env, v, i, &e) != napi_ok || napi_get_value_double(env, e, &d) != napi_ok || !(d >= 0) ||
        d > 9007199254740991.0 || d != (double)(uint64_t)d)
      return false;
    j->ranges[i] = (uint64_t)d;
  }
  return true;
}

/* Every job's entry point: its kind is the property's data (init). */
static napi_value start(napi_env env, napi_callback_info info) {
  static const char *const usage[] = {"expected (device, file, readOnly)", "expected (device)",
                                      "expected (source, target, fstype, flags, data)", "expected (target)",
                                      "expected (device, kib)", "expected (dir)", "expected (dir)",
                                      "expected (dir)", "expected (file, [offset, length, ...])"};
  static const size_t arity[] = {3, 1, 5, 1, 2, 1, 1, 1, 2};
  napi_value argv[5];
  size_t argc = 5;
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data) != napi_ok) return NULL;
  enum job_kind kind = (enum job_kind)(intptr_t)data;
  struct job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, job_names[kind], ENOMEM);
  j->kind = kind;
  bool ok = argc >= arity[kind] && get_string(env, argv[0], j->device, sizeof j->device);
  if (ok && kind == CONFIGURE_LOOP)
    ok = get_string(env, argv[1], j->file, sizeof j->file) && napi_get_value_bool(env, argv[2], &j->read_only) == napi_ok;
  if (ok && kind == MOUNT) {
    int64_t flags = -1;
    ok = get_string(env, argv[1], j->file, sizeof j->file) && get_string(env, argv[2], j->fstype, sizeof j->fstype) &&
         napi_get_value_int64(env, argv[3], &flags) == napi_ok && flags >= 0 &&
         get_string(env, argv[4], j->data, sizeof j->data);
    j->flags = (unsigned long)flags;
  }
  if (ok && kind == SET_READAHEAD) {
    int64_t kib = -1;
    ok = napi_get_value_int64(env, argv[1], &kib) == napi_ok && kib >= 0 && kib <= (1 << 20);
    j->flags = (unsigned long)kib;
  }
  if (ok && kind == WILL_NEED) ok = get_ranges(env, argv[1], j);
  if (!ok) {
    free(j->ranges);
    free(j);
    napi_throw_type_error(env, "EINVAL", usage[kind]);
    return NULL;
  }
  struct instance *inst;
  napi_get_instance_data(env, (void **)&inst);
  j->done = inst->done;
  napi_value promise;
  napi_create_promise(env, &j->deferred, &promise);
  if (inst->pending++ == 0) napi_ref_threadsafe_function(env, inst->done);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int e = pthread_create(&thread, &attr, job_thread, j);
  pthread_attr_destroy(&attr);
  if (e) {
    j->err = e;
    j->syscall = "pthread_create";
    settle(env, NULL, inst, j); /* rejects the promise, frees the job */
  }
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  struct instance *inst = calloc(1, sizeof *inst);
  napi_value name;
  napi_create_string_utf8(env, "slacker:blockDevices", NAPI_AUTO_LENGTH, &name);
  if (!inst ||
      napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, inst, settle, &inst->done) != napi_ok) {
    free(inst);
    return throw_errno(env, "napi_create_threadsafe_function", ENOMEM);
  }
  napi_unref_threadsafe_function(env, inst->done);
  napi_set_instance_data(env, inst, NULL, NULL);
  /* freeLoop answers at once; every other call is a job named after its kind, on a thread of its own. */
  enum { JOBS = sizeof job_names / sizeof job_names[0] };
  napi_property_descriptor props[JOBS + 1];
  props[0] = (napi_property_descriptor){"freeLoop", NULL, free_loop, NULL, NULL, NULL, napi_enumerable, NULL};
  for (size_t k = 0; k < JOBS; k++)
    props[k + 1] =
        (napi_property_descriptor){job_names[k], NULL, start, NULL, NULL, NULL, napi_enumerable, (void *)(intptr_t)k};
  napi_define_properties(env, exports, JOBS + 1, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
