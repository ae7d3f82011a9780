/*
 * digests: SHA-256 of many buffers as one libuv threadpool job.
 *
 *   sha256Batch(buffers, originals?) -> Promise<Buffer>   the 32-byte digests of the buffers, concatenated in order
 *       originals: [fd, position, fd, position, ...], one pair per buffer (fd -1: none). Where a
 *       buffer's original bytes are in the page cache at that place of that file and equal the
 *       buffer, its digest is left as 32 zero bytes ("unchanged") instead of computed: a read
 *       and a memcmp cost less than half of SHA-256 (a staged layer's freeze compares the
 *       chunks its parent had; docs/BENCHMARKS.md). The descriptors are duplicated at the call,
 *       so the caller's may close once it returns; what would wait for the disk is hashed.
 *
 * Why: a cold read verifies every fetched chunk before it uses a byte of it, and hashing on the
 * event loop was its largest single cost there (~0.17 s of CPU per 256 MiB, and more in wall
 * time when the two cores are shared with the registry and the NBD client). One job per fetched
 * batch takes it off the event loop without a job, a copy or an allocation per chunk (WebCrypto's
 * digest copies its input on the event loop and runs one job per call).
 *
 * The hashing is OpenSSL's, the one Node itself is built with (its symbols are exported to
 * addons), so it uses the CPU's SHA extensions where Node's crypto does. The buffers are held by
 * a reference until the job completes; the caller must not change them meanwhile.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <node_api.h>
#include <openssl/evp.h>
#include "napi-job.h"

#define DIGEST_BYTES 32

struct batch {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buffers; /* keeps the hashed buffers alive */
  size_t count;
  const uint8_t **data;
  size_t *lengths;
  uint8_t *digests; /* count * DIGEST_BYTES */
  int *fds;         /* originals: duplicated descriptors (-1: none), or NULL */
  int64_t *positions;
  int failed;
};

static void batch_free(napi_env env, struct batch *b) {
  if (b->buffers) napi_delete_reference(env, b->buffers);
  if (b->work) napi_delete_async_work(env, b->work);
  if (b->fds)
    for (size_t i = 0; i < b->count; i++)
      if (b->fds[i] >= 0) close(b->fds[i]);
  free(b->fds);
  free(b->positions);
  free(b->data);
  free(b->lengths);
  free(b->digests);
  free(b);
}

/* Whether buffer i equals its original, read without waiting for the disk. */
static int same_as_original(struct batch *b, size_t i, uint8_t **scratch, size_t *scratch_len) {
  if (!b->fds || b->fds[i] < 0) return 0;
  size_t len = b->lengths[i];
  if (*scratch_len < len) {
    free(*scratch);
    *scratch = malloc(len);
    *scratch_len = *scratch ? len : 0;
    if (!*scratch) return 0;
  }
  struct iovec iov = {*scratch, len};
  ssize_t n = preadv2(b->fds[i], &iov, 1, b->positions[i], RWF_NOWAIT);
  return n == (ssize_t)len && memcmp(*scratch, b->data[i], len) == 0;
}

static void batch_execute(napi_env env, void *arg) {
  (void)env;
  struct batch *b = arg;
  const EVP_MD *sha256 = EVP_sha256();
  uint8_t *scratch = NULL;
  size_t scratch_len = 0;
  for (size_t i = 0; i < b->count && !b->failed; i++) {
    if (same_as_original(b, i, &scratch, &scratch_len)) {
      memset(b->digests + i * DIGEST_BYTES, 0, DIGEST_BYTES);
      continue;
    }
    if (EVP_Digest(b->data[i], b->lengths[i], b->digests + i * DIGEST_BYTES, NULL, sha256, NULL) != 1) b->failed = 1;
  }
  free(scratch);
}

static void batch_complete(napi_env env, napi_status status, void *arg) {
  struct batch *b = arg;
  napi_value out;
  void *copy;
  if (status != napi_ok || b->failed) {
    reject_job(env, b->deferred, "EIO", "sha256Batch: hashing failed");
  } else if (napi_create_buffer_copy(env, b->count * DIGEST_BYTES, b->digests, &copy, &out) != napi_ok) {
    reject_job(env, b->deferred, "ENOMEM", "sha256Batch: no memory for the result");
  } else {
    napi_resolve_deferred(env, b->deferred, out);
  }
  batch_free(env, b);
}

static napi_value sha256_batch(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  bool is_array = false;
  uint32_t count = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[0], &count) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected (Buffer[])");
    return NULL;
  }
  struct batch *b = calloc(1, sizeof *b);
  if (!b || !(b->data = calloc(count ? count : 1, sizeof *b->data)) ||
      !(b->lengths = calloc(count ? count : 1, sizeof *b->lengths)) ||
      !(b->digests = malloc(count ? count * DIGEST_BYTES : 1))) {
    if (b) batch_free(env, b);
    napi_throw_error(env, "ENOMEM", "sha256Batch: out of memory");
    return NULL;
  }
  b->count = count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    void *data;
    bool is_buffer = false;
    if (napi_get_element(env, argv[0], i, &item) != napi_ok || napi_is_buffer(env, item, &is_buffer) != napi_ok ||
        !is_buffer || napi_get_buffer_info(env, item, &data, &b->lengths[i]) != napi_ok) {
      batch_free(env, b);
      napi_throw_type_error(env, "EINVAL", "expected (Buffer[])");
      return NULL;
    }
    b->data[i] = data;
  }
  napi_valuetype second = napi_undefined;
  if (argc >= 2) napi_typeof(env, argv[1], &second);
  if (second != napi_undefined) {
    uint32_t pairs = 0;
    bool ok = napi_is_array(env, argv[1], &is_array) == napi_ok && is_array &&
              napi_get_array_length(env, argv[1], &pairs) == napi_ok && pairs == 2 * count;
    if (ok) {
      b->fds = malloc((count ? count : 1) * sizeof *b->fds);
      b->positions = malloc((count ? count : 1) * sizeof *b->positions);
      ok = b->fds && b->positions;
      if (ok)
        for (uint32_t i = 0; i < count; i++) b->fds[i] = -1;
    }
    for (uint32_t i = 0; ok && i < count; i++) {
      napi_value fd_value, position_value;
      int32_t fd;
      int64_t position;
      ok = napi_get_element(env, argv[1], 2 * i, &fd_value) == napi_ok &&
           napi_get_value_int32(env, fd_value, &fd) == napi_ok &&
           napi_get_element(env, argv[1], 2 * i + 1, &position_value) == napi_ok &&
           napi_get_value_int64(env, position_value, &position) == napi_ok;
      b->positions[i] = position;
      /* A failed dup only costs the comparison: the buffer is hashed. */
      if (ok && fd >= 0) b->fds[i] = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    }
    if (!ok) {
      batch_free(env, b);
      napi_throw_type_error(env, "EINVAL", "expected (Buffer[], [fd, position, ...] for each buffer)");
      return NULL;
    }
  }
  return start_job(env, argv[0], "slacker:sha256Batch", batch_execute, batch_complete, b, &b->buffers, &b->deferred,
                   &b->work);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sha256Batch", NULL, sha256_batch, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
