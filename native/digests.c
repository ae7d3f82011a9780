/*
 * digests: SHA-256 of many buffers as one libuv threadpool job.
 *
 *   sha256Batch(buffers) -> Promise<Buffer>   the 32-byte digests of the buffers, concatenated in order
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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
  int failed;
};

static void batch_free(napi_env env, struct batch *b) {
  if (b->buffers) napi_delete_reference(env, b->buffers);
  if (b->work) napi_delete_async_work(env, b->work);
  free(b->data);
  free(b->lengths);
  free(b->digests);
  free(b);
}

static void batch_execute(napi_env env, void *arg) {
  (void)env;
  struct batch *b = arg;
  const EVP_MD *sha256 = EVP_sha256();
  for (size_t i = 0; i < b->count && !b->failed; i++) {
    if (EVP_Digest(b->data[i], b->lengths[i], b->digests + i * DIGEST_BYTES, NULL, sha256, NULL) != 1) b->failed = 1;
  }
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
  napi_value argv[1];
  size_t argc = 1;
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
