/*
 * tree-writer: writes the entries of a layer tar into a directory tree, confined to it by the
 * kernel. Why native: (1) containment. Every path is resolved with openat2(2) RESOLVE_IN_ROOT
 * from a descriptor of the layer root, so `..` and symlinks (absolute ones included) resolve as
 * they will inside the container, and no entry name, whiteout, link or symlink in a lower layer
 * can reach outside the root; the final component is never followed (O_NOFOLLOW, *at calls,
 * AT_SYMLINK_NOFOLLOW). (2) bytes. Paths, link targets and extended attribute names and values
 * arrive as Buffers and reach the syscalls byte for byte: no UTF-8 round trip. (3) cost. One
 * threadpool job applies one entry (create, write, owner, xattrs, mode, times), where node:fs
 * took a job per syscall plus an lstat per path component; the parent directory of the last
 * entry stays open, so a tar in the usual order (parents first) resolves each entry from its
 * parent in one short openat2, at any depth (paths longer than PATH_MAX included).
 *
 * JS API (plugin/layer-tar/tree-writer.ts wraps it):
 *   open(rootPath) -> tree                 a context on the layer root (sync)
 *   apply(tree, op) -> Promise<number>     one entry; resolves to the xattrs skipped (ENOTSUP/EPERM)
 *   write(tree, buffers) -> Promise        append to the file that apply(op with stream) left open
 *   finishFile(tree, op) -> Promise<number> that file's owner, xattrs, mode, times; closes it
 *   finish(tree) -> Promise                directory times, recorded by every directory entry
 *   close(tree)                            closes every descriptor (sync; also on GC)
 * op = { kind, path: Buffer, link?: Buffer, mode, uid, gid, sec, nsec, major, minor,
 *        xattrs?: Buffer[] (name, value, name, value...), data?: Buffer, stream?: boolean,
 *        keep?: Buffer (opaque: the sorted, NUL-separated child names to keep) }
 * Paths are clean and relative ('' is the root), with no NUL, '.' or '..' components: the JS side
 * checks that (entryPath). A failure rejects with an Error whose `code` is the errno name and whose
 * message names the step (and the xattr, for xattrs).
 *
 * One job at a time per tree (the JS side awaits each); jobs run on the libuv threadpool, never
 * on the event loop: the layer's ext4 may be served by this same process over NBD.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <node_api.h>
#include "errno-name.h"
#include "napi-job.h"

#ifndef SYS_openat2
#define SYS_openat2 437 /* the same on every architecture (Linux 5.6+) */
#endif

enum { OP_DIR = 1, OP_FILE, OP_SYMLINK, OP_LINK, OP_CHAR, OP_BLOCK, OP_FIFO, OP_WHITEOUT, OP_OPAQUE, OP_ROOT };

/* A path from the root: resolved as in a chroot (RESOLVE_IN_ROOT). From a known directory: no symlink may be
 * crossed at all (RESOLVE_NO_SYMLINKS), so the answer is the same as from the root; a symlink sends the lookup
 * back to the root. No magic links (/proc) and no crossing into another mount either way. */
#define IN_ROOT (RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
#define PLAIN_BENEATH (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

struct dir_time {
  size_t off, len; /* the path in tree.times_arena */
  int64_t sec;
  uint32_t nsec;
};

struct tree {
  int root;         /* O_RDONLY|O_DIRECTORY descriptor of the layer root */
  int cache_fd;     /* O_PATH descriptor of directory cache_path, or -1 */
  char *cache_path; /* relative to the root, not NUL-terminated */
  size_t cache_len, cache_cap;
  bool cache_stale; /* something was removed: drop the cache once the current entry is done */
  int file_fd;      /* the file apply(stream) left open for write(), or -1 */
  bool busy;
  struct dir_time *times; /* directory times, set by finish() once every entry is in */
  size_t ntimes, times_cap;
  char *times_arena;
  size_t arena_len, arena_cap;
};

struct xattr {
  char *name; /* NUL-terminated copy */
  const void *value;
  size_t len;
};

struct job {
  struct tree *t;
  int kind;
  char *path, *link; /* NUL-terminated copies */
  size_t path_len, link_len;
  uint32_t mode, uid, gid, major, minor, nsec;
  int64_t sec;
  struct xattr *xattrs;
  size_t nxattrs;
  const char *data;
  size_t data_len;
  bool stream;
  char *keep; /* opaque: sorted NUL-separated names, with a trailing NUL */
  size_t keep_len;
  struct iovec *iov; /* write(): the buffers */
  size_t niov;
  int op; /* which call: 0 apply, 1 write, 2 finishFile, 3 finish */
  /* results */
  int err;
  char what[320];
  int skipped;
  napi_ref keep_ref;
  napi_deferred deferred;
  napi_async_work work;
};


static int fail(struct job *j, const char *what) {
  j->err = errno ? errno : EIO;
  snprintf(j->what, sizeof j->what, "%s", what);
  return -1;
}

static int openat2_retry(int dirfd, const char *path, uint64_t flags, uint64_t resolve) {
  struct open_how how = {.flags = flags, .mode = 0, .resolve = resolve};
  int fd;
  do {
    fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
  } while (fd < 0 && (errno == EAGAIN || errno == EINTR)); /* EAGAIN: a rename raced the lookup */
  return fd;
}

static int open_dir(int dirfd, const char *path, uint64_t resolve) {
  return openat2_retry(dirfd, path, O_PATH | O_DIRECTORY | O_CLOEXEC, resolve);
}

static void drop_cache(struct tree *t) {
  if (t->cache_fd >= 0) close(t->cache_fd);
  t->cache_fd = -1;
  t->cache_len = 0;
  t->cache_stale = false;
}

static int set_cache(struct tree *t, int fd, const char *path, size_t len) {
  if (len > t->cache_cap) {
    char *p = realloc(t->cache_path, len);
    if (!p) {
      close(fd);
      errno = ENOMEM;
      return -1;
    }
    t->cache_path = p;
    t->cache_cap = len;
  }
  if (t->cache_fd >= 0) close(t->cache_fd);
  memcpy(t->cache_path, path, len);
  t->cache_len = len;
  t->cache_fd = fd;
  return fd;
}

/*
 * A descriptor of directory `path[0..len)` (relative to the root; the caller's buffer, which is briefly
 * NUL-terminated in place). Missing components are created (0755, as moby does) when `create`. The result is
 * borrowed: the root, or the cache, valid until the next call. -1 and errno on failure.
 */
static int tree_dir(struct tree *t, char *path, size_t len, bool create) {
  if (len == 0) return t->root;
  if (t->cache_fd >= 0 && t->cache_len == len && memcmp(t->cache_path, path, len) == 0) return t->cache_fd;
  char saved = path[len];
  path[len] = 0;
  int fd = -1;
  if (t->cache_fd >= 0 && len > t->cache_len && path[t->cache_len] == '/' &&
      memcmp(t->cache_path, path, t->cache_len) == 0 && len - t->cache_len - 1 < PATH_MAX)
    fd = open_dir(t->cache_fd, path + t->cache_len + 1, PLAIN_BENEATH);
  if (fd < 0 && len < PATH_MAX) {
    fd = open_dir(t->root, path, IN_ROOT);
    if (fd < 0 && !(errno == ENOENT && create)) {
      path[len] = saved;
      return -1;
    }
  }
  path[len] = saved;
  if (fd < 0) {
    /* Through the parent: to create what is missing, or for a path too long for one call. */
    char *slash = memrchr(path, '/', len);
    size_t plen = slash ? (size_t)(slash - path) : 0;
    const char *last = slash ? slash + 1 : path;
    int pfd = tree_dir(t, path, plen, create);
    if (pfd < 0) return -1;
    path[len] = 0;
    fd = open_dir(pfd, last, PLAIN_BENEATH);
    if (fd < 0 && errno == ENOENT && create) {
      if (mkdirat(pfd, last, 0755) == 0 || errno == EEXIST) fd = open_dir(pfd, last, PLAIN_BENEATH);
    }
    /* ELOOP here: a symlink that could not be followed inside the root (its path is longer than PATH_MAX, or it
     * dangles); ENOTDIR: a file where a directory should be. */
    path[len] = saved;
    if (fd < 0) return -1;
  }
  return set_cache(t, fd, path, len);
}

/* Removes `name` in `at` and, for a directory, everything below it, never following a symlink. */
static int remove_tree(int at, const char *name) {
  if (unlinkat(at, name, 0) == 0 || errno == ENOENT) return 0;
  if (errno != EISDIR && errno != EPERM) return -1;
  for (int pass = 0; pass < 2; pass++) {
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    DIR *d = fdopendir(fd);
    if (!d) {
      close(fd);
      return -1;
    }
    int rc = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      if (remove_tree(dirfd(d), e->d_name) < 0) {
        rc = -1;
        break;
      }
      errno = 0;
    }
    if (rc == 0 && errno) rc = -1;
    int saved = errno;
    closedir(d);
    errno = saved;
    if (rc < 0) return -1;
    if (unlinkat(at, name, AT_REMOVEDIR) == 0 || errno == ENOENT) return 0;
    if (errno != ENOTEMPTY) return -1; /* entries readdir did not show while we deleted: once more */
  }
  return -1;
}

/* A final component must name an entry in its directory: never the directory itself or its parent. */
static bool bad_name(const char *name) {
  return name[0] == 0 || !strcmp(name, ".") || !strcmp(name, "..");
}

/* Splits j->path into its parent (length) and last component. */
static const char *split(struct job *j, size_t *parent_len) {
  char *slash = memrchr(j->path, '/', j->path_len);
  *parent_len = slash ? (size_t)(slash - j->path) : 0;
  return slash ? slash + 1 : j->path;
}

/* Owner, xattrs, mode and (unless a directory) times, through `fd` or else `name` in `pfd`. Order matters:
 * chown clears set-id bits and security.capability, so it comes first. */
static int set_attrs(struct job *j, int fd, int pfd, const char *name, bool is_symlink, bool is_dir) {
  if ((fd >= 0 ? fchown(fd, j->uid, j->gid) : fchownat(pfd, name, j->uid, j->gid, AT_SYMLINK_NOFOLLOW)) < 0)
    return fail(j, "chown");
  char proc[PATH_MAX];
  if (fd < 0 && j->nxattrs > 0) snprintf(proc, sizeof proc, "/proc/self/fd/%d/%s", pfd, name);
  for (size_t i = 0; i < j->nxattrs; i++) {
    struct xattr *x = &j->xattrs[i];
    int r = fd >= 0 ? fsetxattr(fd, x->name, x->value, x->len, 0) : lsetxattr(proc, x->name, x->value, x->len, 0);
    if (r < 0) {
      /* As moby: a file system (or a symlink, for user.*) that takes no such xattr is not an error. */
      if (errno == ENOTSUP || errno == EPERM) {
        j->skipped++;
        continue;
      }
      char what[300];
      snprintf(what, sizeof what, "setxattr %s", x->name);
      return fail(j, what);
    }
  }
  if (!is_symlink && (fd >= 0 ? fchmod(fd, j->mode) : fchmodat(pfd, name, j->mode, 0)) < 0) return fail(j, "chmod");
  if (!is_dir) {
    struct timespec ts[2] = {{.tv_sec = j->sec, .tv_nsec = j->nsec}, {.tv_sec = j->sec, .tv_nsec = j->nsec}};
    if ((fd >= 0 ? futimens(fd, ts) : utimensat(pfd, name, ts, AT_SYMLINK_NOFOLLOW)) < 0) return fail(j, "utimensat");
  }
  return 0;
}

static int write_all(struct job *j, int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return fail(j, "write");
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

static int record_dir_time(struct tree *t, struct job *j) {
  if (t->ntimes == t->times_cap) {
    size_t cap = t->times_cap ? t->times_cap * 2 : 64;
    struct dir_time *p = realloc(t->times, cap * sizeof *p);
    if (!p) return errno = ENOMEM, fail(j, "record directory time");
    t->times = p;
    t->times_cap = cap;
  }
  if (t->arena_len + j->path_len + 1 > t->arena_cap) {
    size_t cap = t->arena_cap ? t->arena_cap : 4096;
    while (cap < t->arena_len + j->path_len + 1) cap *= 2;
    char *p = realloc(t->times_arena, cap);
    if (!p) return errno = ENOMEM, fail(j, "record directory time");
    t->times_arena = p;
    t->arena_cap = cap;
  }
  memcpy(t->times_arena + t->arena_len, j->path, j->path_len + 1);
  t->times[t->ntimes++] = (struct dir_time){.off = t->arena_len, .len = j->path_len, .sec = j->sec, .nsec = j->nsec};
  t->arena_len += j->path_len + 1;
  return 0;
}

static int keep_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Opaque whiteout: everything in the directory goes but the children this layer made (j->keep). */
static int apply_opaque(struct job *j) {
  struct tree *t = j->t;
  int pfd = tree_dir(t, j->path, j->path_len, true);
  if (pfd < 0) return fail(j, "resolve");
  size_t n = 0;
  for (size_t i = 0; i < j->keep_len; i++) n += j->keep[i] == 0;
  const char **names = calloc(n ? n : 1, sizeof *names);
  if (!names) return errno = ENOMEM, fail(j, "opaque");
  for (size_t i = 0, k = 0; i < j->keep_len && k < n; k++) {
    names[k] = j->keep + i;
    i += strlen(j->keep + i) + 1;
  }
  int fd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd < 0 ? NULL : fdopendir(fd);
  if (!d) {
    if (fd >= 0) close(fd);
    free(names);
    return fail(j, "opendir");
  }
  /* Collect first, delete after: deleting while reading a directory may skip entries. */
  char **victims = NULL;
  size_t nv = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  errno = 0;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    const char *key = e->d_name;
    if (n && bsearch(&key, names, n, sizeof *names, keep_cmp)) continue;
    if (nv == cap) {
      cap = cap ? cap * 2 : 16;
      char **p = realloc(victims, cap * sizeof *p);
      if (!p) {
        errno = ENOMEM;
        rc = fail(j, "opaque");
        break;
      }
      victims = p;
    }
    if (!(victims[nv] = strdup(e->d_name))) {
      errno = ENOMEM;
      rc = fail(j, "opaque");
      break;
    }
    nv++;
    errno = 0;
  }
  if (rc == 0 && errno) rc = fail(j, "readdir");
  for (size_t i = 0; i < nv; i++) {
    if (rc == 0 && remove_tree(dirfd(d), victims[i]) < 0) rc = fail(j, "remove");
    free(victims[i]);
  }
  if (nv) t->cache_stale = true;
  free(victims);
  free(names);
  closedir(d);
  return rc;
}

static int apply_entry(struct job *j) {
  struct tree *t = j->t;
  if (j->kind == OP_OPAQUE) return apply_opaque(j);
  if (j->kind == OP_ROOT) return set_attrs(j, t->root, -1, NULL, false, true) < 0 ? -1 : record_dir_time(t, j);
  size_t plen;
  const char *name = split(j, &plen);
  if (bad_name(name)) return errno = EINVAL, fail(j, "entry name");
  int tfd = -1; /* a hardlink's target directory: resolved first, since the cache holds one directory */
  const char *tname = NULL;
  if (j->kind == OP_LINK) {
    char *slash = memrchr(j->link, '/', j->link_len);
    size_t tlen = slash ? (size_t)(slash - j->link) : 0;
    tname = slash ? slash + 1 : j->link;
    if (bad_name(tname)) return errno = EINVAL, fail(j, "link target name");
    int fd = tree_dir(t, j->link, tlen, false);
    if (fd < 0 || (tfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) return fail(j, "resolve link target");
  }
  int rc = -1;
  int pfd = tree_dir(t, j->path, plen, j->kind != OP_WHITEOUT);
  if (pfd < 0) {
    /* A whiteout whose parent is missing has nothing to delete. */
    if (j->kind == OP_WHITEOUT && (errno == ENOENT || errno == ENOTDIR)) rc = 0;
    else fail(j, "resolve");
    goto out;
  }
  if (j->kind == OP_WHITEOUT) {
    if (remove_tree(pfd, name) < 0) fail(j, "remove");
    else rc = 0;
    t->cache_stale = true;
    goto out;
  }
  /* What is in the way goes, unless both are directories (they merge). */
  struct stat st;
  if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!(j->kind == OP_DIR && S_ISDIR(st.st_mode))) {
      t->cache_stale = true;
      if (remove_tree(pfd, name) < 0) {
        fail(j, "remove what is in the way");
        goto out;
      }
    }
  } else if (errno != ENOENT) {
    fail(j, "lstat");
    goto out;
  }
  switch (j->kind) {
    case OP_DIR: {
      if (mkdirat(pfd, name, 0700) < 0 && errno != EEXIST) {
        fail(j, "mkdir");
        break;
      }
      int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        fail(j, "open directory");
        break;
      }
      rc = set_attrs(j, fd, -1, NULL, false, true);
      close(fd);
      if (rc == 0) rc = record_dir_time(t, j);
      break;
    }
    case OP_FILE: {
      int fd = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0) {
        fail(j, "create");
        break;
      }
      if (write_all(j, fd, j->data, j->data_len) < 0) {
        close(fd);
        break;
      }
      if (j->stream) {
        t->file_fd = fd; /* write() and finishFile() go on with it */
        rc = 0;
        break;
      }
      rc = set_attrs(j, fd, -1, NULL, false, false);
      if (close(fd) < 0 && rc == 0) rc = fail(j, "close");
      break;
    }
    case OP_SYMLINK:
      if (symlinkat(j->link, pfd, name) < 0) fail(j, "symlink");
      else rc = set_attrs(j, -1, pfd, name, true, false);
      break;
    case OP_LINK:
      /* linkat without AT_SYMLINK_FOLLOW: the new name shares the target entry itself, and its attributes. */
      if (linkat(tfd, tname, pfd, name, 0) < 0) fail(j, "link");
      else rc = 0;
      break;
    case OP_CHAR:
    case OP_BLOCK:
    case OP_FIFO: {
      mode_t type = j->kind == OP_CHAR ? S_IFCHR : j->kind == OP_BLOCK ? S_IFBLK : S_IFIFO;
      if (mknodat(pfd, name, type | (j->mode & 07777), makedev(j->major, j->minor)) < 0) fail(j, "mknod");
      else rc = set_attrs(j, -1, pfd, name, false, false);
      break;
    }
    default:
      errno = EINVAL;
      fail(j, "unknown entry kind");
  }
out:
  if (tfd >= 0) close(tfd);
  return rc;
}

static int write_stream(struct job *j) {
  struct tree *t = j->t;
  if (t->file_fd < 0) return errno = EBADF, fail(j, "write (no file open)");
  for (size_t i = 0; i < j->niov; i++)
    if (write_all(j, t->file_fd, j->iov[i].iov_base, j->iov[i].iov_len) < 0) return -1;
  return 0;
}

static int finish_file(struct job *j) {
  struct tree *t = j->t;
  if (t->file_fd < 0) return errno = EBADF, fail(j, "finishFile (no file open)");
  int rc = set_attrs(j, t->file_fd, -1, NULL, false, false);
  if (close(t->file_fd) < 0 && rc == 0) rc = fail(j, "close");
  t->file_fd = -1;
  return rc;
}

/* Directory times, in the order the directories came: each one's parent was usually the one before, so the
 * cache resolves it in one step. Setting a directory's times does not change its parent's. */
static int finish_tree(struct job *j) {
  struct tree *t = j->t;
  for (size_t i = 0; i < t->ntimes; i++) {
    struct dir_time *d = &t->times[i];
    char *path = t->times_arena + d->off;
    char *slash = memrchr(path, '/', d->len);
    size_t plen = slash ? (size_t)(slash - path) : 0;
    const char *name = slash ? slash + 1 : path;
    int pfd = tree_dir(t, path, plen, false);
    struct timespec ts[2] = {{.tv_sec = d->sec, .tv_nsec = d->nsec}, {.tv_sec = d->sec, .tv_nsec = d->nsec}};
    int r = d->len == 0 ? futimens(t->root, ts) : pfd < 0 ? -1 : utimensat(pfd, name, ts, AT_SYMLINK_NOFOLLOW);
    if (r < 0) {
      if (errno == ENOENT) continue; /* removed again by a later whiteout */
      snprintf(j->what, sizeof j->what, "utimensat %.*s", (int)(d->len > 200 ? 200 : d->len), path);
      j->err = errno;
      return -1;
    }
  }
  t->ntimes = 0;
  t->arena_len = 0;
  return 0;
}

static void job_execute(napi_env env, void *arg) {
  (void)env;
  struct job *j = arg;
  errno = 0;
  switch (j->op) {
    case 0: apply_entry(j); break;
    case 1: write_stream(j); break;
    case 2: finish_file(j); break;
    case 3: finish_tree(j); break;
  }
  if (j->t->cache_stale) drop_cache(j->t);
}

static void free_job(struct job *j) {
  free(j->path);
  free(j->link);
  for (size_t i = 0; i < j->nxattrs; i++) free(j->xattrs[i].name);
  free(j->xattrs);
  free(j->keep);
  free(j->iov);
  free(j);
}

static void job_complete(napi_env env, napi_status status, void *arg) {
  struct job *j = arg;
  j->t->busy = false;
  if (status != napi_ok && !j->err) {
    j->err = ECANCELED;
    snprintf(j->what, sizeof j->what, "job");
  }
  if (j->err) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", j->what, strerror(j->err));
    reject_job(env, j->deferred, errno_name(j->err), msg);
  } else {
    napi_value v;
    napi_create_int32(env, j->skipped, &v);
    napi_resolve_deferred(env, j->deferred, v);
  }
  napi_delete_reference(env, j->keep_ref);
  napi_delete_async_work(env, j->work);
  free_job(j);
}

/* ---- argument plumbing ---- */

static void tree_free(struct tree *t) {
  if (t->file_fd >= 0) close(t->file_fd);
  drop_cache(t);
  if (t->root >= 0) close(t->root);
  t->file_fd = t->root = -1;
  free(t->cache_path);
  free(t->times);
  free(t->times_arena);
  t->cache_path = NULL;
  t->times = NULL;
  t->times_arena = NULL;
  t->cache_cap = t->times_cap = t->arena_cap = t->ntimes = t->arena_len = 0;
}

static void tree_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct tree *t = data;
  tree_free(t);
  free(t);
}

static struct tree *get_tree(napi_env env, napi_value v) {
  struct tree *t = NULL;
  if (napi_get_value_external(env, v, (void **)&t) != napi_ok || !t || t->root < 0) {
    napi_throw_type_error(env, "EINVAL", "expected an open tree");
    return NULL;
  }
  if (t->busy) {
    napi_throw_error(env, "EBUSY", "the tree has a job running: await each call");
    return NULL;
  }
  return t;
}

static napi_value tree_open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  char path[PATH_MAX];
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len >= sizeof path - 1) {
    napi_throw_type_error(env, "EINVAL", "expected the root directory's path");
    return NULL;
  }
  struct tree *t = calloc(1, sizeof *t);
  if (!t) return throw_errno(env, "open", ENOMEM);
  t->cache_fd = t->file_fd = -1;
  t->root = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (t->root < 0) {
    int e = errno;
    free(t);
    return throw_errno(env, "open root", e);
  }
  napi_value ext;
  napi_create_external(env, t, tree_finalize, NULL, &ext);
  return ext;
}

static napi_value tree_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  struct tree *t = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&t) != napi_ok || !t) return NULL;
  if (t->busy) {
    napi_throw_error(env, "EBUSY", "the tree has a job running: await it before close");
    return NULL;
  }
  tree_free(t);
  return NULL;
}

static bool prop(napi_env env, napi_value obj, const char *key, napi_value *out) {
  bool has = false;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has) return false;
  napi_get_named_property(env, obj, key, out);
  napi_valuetype type;
  napi_typeof(env, *out, &type);
  return type != napi_undefined && type != napi_null;
}

static bool u32_prop(napi_env env, napi_value obj, const char *key, uint32_t *out) {
  napi_value v;
  *out = 0;
  return !prop(env, obj, key, &v) || napi_get_value_uint32(env, v, out) == napi_ok;
}

/* A Buffer property as a NUL-terminated copy (refusing embedded NULs: they would cut the path short). */
static bool bytes_prop(napi_env env, napi_value obj, const char *key, char **out, size_t *len) {
  napi_value v;
  *out = NULL;
  *len = 0;
  if (!prop(env, obj, key, &v)) return true;
  void *data;
  size_t n;
  if (napi_get_buffer_info(env, v, &data, &n) != napi_ok || memchr(data, 0, n)) return false;
  if (!(*out = malloc(n + 1))) return false;
  memcpy(*out, data, n);
  (*out)[n] = 0;
  *len = n;
  return true;
}

static napi_value start(napi_env env, struct job *j, napi_value keep) {
  j->t->busy = true;
  char name[32];
  snprintf(name, sizeof name, "slacker:treeWriter%d", j->op);
  return start_job(env, keep, name, job_execute, job_complete, j, &j->keep_ref, &j->deferred, &j->work);
}

static napi_value bad_op(napi_env env, struct job *j, const char *msg) {
  free_job(j);
  napi_throw_type_error(env, "EINVAL", msg);
  return NULL;
}

/* apply(tree, op) and finishFile(tree, op): the op object's fields into a job. */
static napi_value op_call(napi_env env, napi_callback_info info, int which) {
  napi_value argv[2];
  size_t argc = 2;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2)
    return napi_throw_type_error(env, "EINVAL", "expected (tree, op)"), NULL;
  struct tree *t = get_tree(env, argv[0]);
  if (!t) return NULL;
  struct job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, "apply", ENOMEM);
  j->t = t;
  j->op = which;
  napi_value op = argv[1], v;
  uint32_t kind;
  if (!u32_prop(env, op, "kind", &kind) || !u32_prop(env, op, "mode", &j->mode) ||
      !u32_prop(env, op, "uid", &j->uid) || !u32_prop(env, op, "gid", &j->gid) ||
      !u32_prop(env, op, "major", &j->major) || !u32_prop(env, op, "minor", &j->minor) ||
      !u32_prop(env, op, "nsec", &j->nsec) || j->nsec >= 1000000000u)
    return bad_op(env, j, "op: kind, mode, uid, gid, major, minor and nsec must be unsigned 32-bit integers");
  j->kind = (int)kind;
  j->mode &= 07777;
  if (prop(env, op, "sec", &v) && napi_get_value_int64(env, v, &j->sec) != napi_ok)
    return bad_op(env, j, "op.sec must be a number");
  if (!bytes_prop(env, op, "path", &j->path, &j->path_len) || !bytes_prop(env, op, "link", &j->link, &j->link_len))
    return bad_op(env, j, "op.path and op.link must be Buffers without NUL bytes");
  if (!j->path) {
    if (!(j->path = calloc(1, 1))) return bad_op(env, j, "out of memory");
  }
  if ((j->kind == OP_SYMLINK || j->kind == OP_LINK) && !j->link) return bad_op(env, j, "op.link is needed");
  if (j->kind != OP_ROOT && j->kind != OP_OPAQUE && j->path_len == 0) return bad_op(env, j, "op.path is empty");
  if (prop(env, op, "data", &v)) {
    void *data;
    if (napi_get_buffer_info(env, v, &data, &j->data_len) != napi_ok) return bad_op(env, j, "op.data must be a Buffer");
    j->data = data;
  }
  if (prop(env, op, "stream", &v)) napi_get_value_bool(env, v, &j->stream);
  if (prop(env, op, "keep", &v)) {
    void *data;
    size_t n;
    if (napi_get_buffer_info(env, v, &data, &n) != napi_ok || !(j->keep = malloc(n + 1)))
      return bad_op(env, j, "op.keep must be a Buffer");
    memcpy(j->keep, data, n);
    j->keep[n] = 0;
    j->keep_len = n;
  }
  if (prop(env, op, "xattrs", &v)) {
    uint32_t n;
    if (napi_get_array_length(env, v, &n) != napi_ok || n % 2) return bad_op(env, j, "op.xattrs: [name, value, ...]");
    j->xattrs = calloc(n / 2 + 1, sizeof *j->xattrs);
    if (!j->xattrs) return bad_op(env, j, "out of memory");
    for (uint32_t i = 0; i < n; i += 2) {
      napi_value name, value;
      void *data, *vdata;
      size_t nlen, vlen;
      napi_get_element(env, v, i, &name);
      napi_get_element(env, v, i + 1, &value);
      if (napi_get_buffer_info(env, name, &data, &nlen) != napi_ok || nlen == 0 || memchr(data, 0, nlen) ||
          napi_get_buffer_info(env, value, &vdata, &vlen) != napi_ok)
        return bad_op(env, j, "op.xattrs: names and values must be Buffers (names non-empty, without NUL)");
      struct xattr *x = &j->xattrs[j->nxattrs++];
      if (!(x->name = malloc(nlen + 1))) return bad_op(env, j, "out of memory");
      memcpy(x->name, data, nlen);
      x->name[nlen] = 0;
      x->value = vdata;
      x->len = vlen;
    }
  }
  if (which == 0 && j->stream && t->file_fd >= 0) return bad_op(env, j, "a streamed file is still open: finishFile first");
  return start(env, j, op);
}

static napi_value tree_apply(napi_env env, napi_callback_info info) { return op_call(env, info, 0); }
static napi_value tree_finish_file(napi_env env, napi_callback_info info) { return op_call(env, info, 2); }

static napi_value tree_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  uint32_t n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_array_length(env, argv[1], &n) != napi_ok)
    return napi_throw_type_error(env, "EINVAL", "expected (tree, Buffer[])"), NULL;
  struct tree *t = get_tree(env, argv[0]);
  if (!t) return NULL;
  struct job *j = calloc(1, sizeof *j);
  if (!j || !(j->iov = calloc(n ? n : 1, sizeof *j->iov))) {
    free(j);
    return throw_errno(env, "write", ENOMEM);
  }
  j->t = t;
  j->op = 1;
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    void *data;
    size_t len;
    napi_get_element(env, argv[1], i, &b);
    if (napi_get_buffer_info(env, b, &data, &len) != napi_ok) return bad_op(env, j, "expected (tree, Buffer[])");
    j->iov[j->niov++] = (struct iovec){.iov_base = data, .iov_len = len};
  }
  return start(env, j, argv[1]);
}

static napi_value tree_finish(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return napi_throw_type_error(env, "EINVAL", "expected (tree)"), NULL;
  struct tree *t = get_tree(env, argv[0]);
  if (!t) return NULL;
  struct job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, "finish", ENOMEM);
  j->t = t;
  j->op = 3;
  return start(env, j, argv[0]);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"open", NULL, tree_open, NULL, NULL, NULL, napi_enumerable, NULL},
    {"close", NULL, tree_close, NULL, NULL, NULL, napi_enumerable, NULL},
    {"apply", NULL, tree_apply, NULL, NULL, NULL, napi_enumerable, NULL},
    {"write", NULL, tree_write, NULL, NULL, NULL, napi_enumerable, NULL},
    {"finishFile", NULL, tree_finish_file, NULL, NULL, NULL, napi_enumerable, NULL},
    {"finish", NULL, tree_finish, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
