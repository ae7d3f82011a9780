/*
 * The errno name an Error from an addon carries in `code`, as node:fs errors do, so that JS
 * maps native and node:fs failures alike (systemErrorCode in common/errors.ts); and the one way
 * the addons throw such an Error.
 */
#ifndef SLACKER_ERRNO_NAME_H
#define SLACKER_ERRNO_NAME_H
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <node_api.h>

static inline const char *errno_name(int e) {
  switch (e) {
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOSPC: return "ENOSPC";
    case EIO: return "EIO";
    case EFBIG: return "EFBIG";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case ENODEV: return "ENODEV";
    case ESPIPE: return "ESPIPE";
    case EPIPE: return "EPIPE";
    case ECONNRESET: return "ECONNRESET";
    case ENOTCONN: return "ENOTCONN";
    case EINTR: return "EINTR";
    case EAGAIN: return "EAGAIN";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EDQUOT: return "EDQUOT";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ELOOP: return "ELOOP";
    case EXDEV: return "EXDEV";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EMLINK: return "EMLINK";
    case ENOMEM: return "ENOMEM";
    case E2BIG: return "E2BIG";
    case ERANGE: return "ERANGE";
    case EBUSY: return "EBUSY";
    case ENOSYS: return "ENOSYS";
    case ECANCELED: return "ECANCELED";
    default: return "EUNKNOWN";
  }
}

/* Throws an Error "<syscall>: <strerror>" whose `code` is the errno name; returns NULL to return. */
static inline napi_value throw_errno(napi_env env, const char *syscall, int e) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(e));
  napi_throw_error(env, errno_name(e), msg);
  return NULL;
}

#endif
