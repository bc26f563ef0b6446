/* appsignal_start with nothing configured (none of _APPSIGNAL_ACTIVE, _APPSIGNAL_PUSH_API_KEY and
 * _APPSIGNAL_EXPORTER set), or with an active configuration it cannot use: it writes the language
 * packages' warning line to stderr (the Rust driver checks the exact line, with this process's real
 * uid and gid that this program prints on stdout), disables itself, and the app runs on. An
 * explicit _APPSIGNAL_ACTIVE=false: no line. Before each start this program writes "step: …" to
 * stderr, so that the driver sees which start wrote which line. The details go to the log
 * (_APPSIGNAL_LOG_FILE_PATH) and to diagnose.
 * Prints "startup_warning: all checks passed" or exits 1. */
#include <unistd.h>

#define CHECK_NAME "startup_warning"
#include "check.h"
#include "json.h"

static json_t *diagnose(void) { return json_parse_returned(appsignal_diagnose()); }

static const json_t *valid(const json_t *doc) {
  return json_get(json_get(json_get(doc, "extension"), "config"), "valid");
}

int main(void) {
  printf("ids %u/%u\n", (unsigned)getuid(), (unsigned)getgid());
  fflush(stdout);

  /* Nothing configured: the warning line, disabled, the reason in diagnose. */
  fprintf(stderr, "step: nothing configured\n");
  appsignal_start();
  json_t *doc = diagnose();
  CHECK(json_is_bool(json_get(valid(doc), "result"), 0), "nothing configured: extension.config.valid is false");
  CHECK(contains(appsignal_diagnose(), "nothing is configured"), "diagnose says nothing is configured");
  CHECK(json_is_string(json_get(json_get(doc, "leader_election"), "role"), "disabled"), "nothing configured: disabled");
  json_free(doc);
  appsignal_increment_counter(str("ignored"), 1.0, NULL); /* a no-op, no crash */
  appsignal_stop();

  /* Explicitly not active: quiet, and diagnose says why. */
  fprintf(stderr, "step: _APPSIGNAL_ACTIVE=false\n");
  appsignal_env_put(str("_APPSIGNAL_ACTIVE"), str("false"));
  appsignal_start();
  CHECK(contains(appsignal_diagnose(), "_APPSIGNAL_ACTIVE is not true"), "diagnose says not active");
  appsignal_stop();

  /* Active without a push API key: the warning line, disabled, the reason in diagnose. */
  fprintf(stderr, "step: active without a key\n");
  appsignal_env_put(str("_APPSIGNAL_ACTIVE"), str("true"));
  appsignal_start();
  doc = diagnose();
  CHECK(json_is_bool(json_get(valid(doc), "result"), 0), "extension.config.valid is false");
  CHECK(contains(appsignal_diagnose(), "_APPSIGNAL_PUSH_API_KEY is not set"), "diagnose names the missing key");
  CHECK(json_is_string(json_get(json_get(doc, "leader_election"), "role"), "disabled"), "disabled");
  CHECK(json_is_bool(json_get(json_get(json_get(json_get(doc, "agent"), "boot"), "started"), "result"), 0),
        "agent.boot.started is false");
  json_free(doc);
  appsignal_increment_counter(str("ignored"), 1.0, NULL); /* a no-op, no crash */
  appsignal_stop();

  /* Active with a key but an endpoint that is not http(s): the same line again. */
  fprintf(stderr, "step: ftp endpoint\n");
  appsignal_env_put(str("_APPSIGNAL_PUSH_API_KEY"), str("warning-secret-key"));
  appsignal_env_put(str("_APPSIGNAL_PUSH_API_ENDPOINT"), str("ftp://127.0.0.1:9"));
  appsignal_start();
  doc = diagnose();
  CHECK(json_is_bool(json_get(valid(doc), "result"), 0), "an ftp endpoint is not valid");
  CHECK(contains(appsignal_diagnose(), "_APPSIGNAL_PUSH_API_ENDPOINT"), "diagnose names the endpoint");
  json_free(doc);
  appsignal_stop();

  if (failures) {
    fprintf(stderr, "startup_warning: %d checks failed\n", failures);
    return 1;
  }
  printf("startup_warning: all checks passed\n");
  return 0;
}
