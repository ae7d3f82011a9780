/*
 * The one N-API pattern both addons share: run `execute` on the libuv threadpool and `complete`
 * back on the event loop, with `keep` (the JS value whose memory the job uses) referenced until
 * then, and hand JS a promise. `complete` settles `*deferred` (reject_job for failures) and
 * deletes `*ref` and `*work`.
 */
#ifndef SLACKER_NAPI_JOB_H
#define SLACKER_NAPI_JOB_H
#include <node_api.h>

static inline napi_value start_job(napi_env env, napi_value keep, const char *name, napi_async_execute_callback execute,
                                   napi_async_complete_callback complete, void *data, napi_ref *ref,
                                   napi_deferred *deferred, napi_async_work *work) {
  napi_value promise, resource_name;
  napi_create_reference(env, keep, 1, ref);
  napi_create_promise(env, deferred, &promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
  napi_create_async_work(env, NULL, resource_name, execute, complete, data, work);
  napi_queue_async_work(env, *work);
  return promise;
}

/* Rejects a job's promise with an Error whose `code` is `code` (an errno name, as node:fs errors carry). */
static inline void reject_job(napi_env env, napi_deferred deferred, const char *code, const char *message) {
  napi_value code_value, message_value, error;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_value);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &message_value);
  napi_create_error(env, code_value, message_value, &error);
  napi_reject_deferred(env, deferred, error);
}

#endif
