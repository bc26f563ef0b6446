/* appsignal_diagnose, parsed as the Ruby gem's `appsignal diagnose` command parses it: the
 * "extension" and "agent" checks, every leaf an object {"result": …} (with "error" / "output" when
 * there is something to say), and our own report under "leader_election". Checked before start
 * (nothing started, nothing created) and once the agent leads or is a client in DIAGNOSE_TMP/wd.
 * Prints "diagnose: all checks passed" or exits 1. */
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK_NAME "diagnose"
#include "check.h"
#include "json.h"

static const json_t *leaf(const json_t *doc, const char *section, const char *category, const char *test) {
  return json_get(json_get(json_get(doc, section), category), test);
}

/* A leaf is an object with a "result"; "error" and "output", when present, are strings. */
static int is_leaf(const json_t *l) {
  const json_t *error = json_get(l, "error"), *output = json_get(l, "output");
  return json_is(l, JSON_OBJECT) && json_get(l, "result") != NULL &&
         (!error || json_is(error, JSON_STRING)) && (!output || json_is(output, JSON_STRING));
}

static const json_t *result(const json_t *l) { return json_get(l, "result"); }

/* Every check the gem's diagnose prints is present and a leaf. */
static void check_all_leaves(const json_t *doc, const char *when) {
  static const char *const tests[][3] = {
      {"extension", "config", "valid"},
      {"agent", "boot", "started"},
      {"agent", "host", "uid"},
      {"agent", "host", "gid"},
      {"agent", "config", "valid"},
      {"agent", "logger", "started"},
      {"agent", "working_directory_stat", "uid"},
      {"agent", "working_directory_stat", "gid"},
      {"agent", "working_directory_stat", "mode"},
      {"agent", "lock_path", "created"},
  };
  size_t i;
  char what[160];
  for (i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    snprintf(what, sizeof what, "%s: %s.%s.%s is {\"result\": ...}", when, tests[i][0], tests[i][1], tests[i][2]);
    CHECK(is_leaf(leaf(doc, tests[i][0], tests[i][1], tests[i][2])), what);
  }
  CHECK(json_get(doc, "error") == NULL, "no top-level error (the gem would print only that)");
}

static json_t *diagnose(void) { return json_parse_returned(appsignal_diagnose()); }

static const char *role(const json_t *doc) {
  const json_t *r = json_get(json_get(doc, "leader_election"), "role");
  return json_is(r, JSON_STRING) ? r->string : "";
}

int main(void) {
  const char *tmp = getenv("DIAGNOSE_TMP");
  char workdir[512];
  struct stat st;
  struct timespec nap = {0, 5 * 1000 * 1000};
  int i;
  if (!tmp) {
    fprintf(stderr, "diagnose: DIAGNOSE_TMP is not set\n");
    return 2;
  }
  snprintf(workdir, sizeof workdir, "%s/wd", tmp);

  /* Before start: the configuration the next start would read, nothing started. */
  appsignal_env_put(str("_APPSIGNAL_WORKING_DIRECTORY_PATH"), str(workdir));
  json_t *doc = diagnose();
  CHECK(json_is(doc, JSON_OBJECT), "diagnose is a JSON object");
  check_all_leaves(doc, "before start");
  CHECK(json_is_bool(result(leaf(doc, "extension", "config", "valid")), 0), "inactive config is not valid");
  CHECK(json_is(json_get(leaf(doc, "extension", "config", "valid"), "error"), JSON_STRING), "and says why");
  CHECK(json_is_bool(result(leaf(doc, "agent", "boot", "started")), 0), "not started");
  CHECK(json_is(json_get(leaf(doc, "agent", "boot", "started"), "error"), JSON_STRING), "says why not");
  CHECK(json_is_int(result(leaf(doc, "agent", "host", "uid")), (long long)getuid()), "host uid");
  CHECK(json_is_int(result(leaf(doc, "agent", "host", "gid")), (long long)getgid()), "host gid");
  CHECK(json_is_bool(result(leaf(doc, "agent", "logger", "started")), 0), "logger not started");
  CHECK(json_is_null(result(leaf(doc, "agent", "working_directory_stat", "mode"))), "no working directory yet");
  CHECK(json_is(json_get(leaf(doc, "agent", "working_directory_stat", "mode"), "error"), JSON_STRING),
        "the missing working directory is explained");
  CHECK(json_is_bool(result(leaf(doc, "agent", "lock_path", "created")), 0), "no lock file yet");
  CHECK(strcmp(role(doc), "stopped") == 0, "leader_election.role is stopped");
  CHECK(stat(workdir, &st) != 0, "diagnose created nothing");
  json_free(doc);

  /* Started against a port nobody listens on (pushes fail and are cached; nothing waits on them). */
  appsignal_env_put(str("_APPSIGNAL_ACTIVE"), str("true"));
  appsignal_env_put(str("_APPSIGNAL_PUSH_API_KEY"), str("diagnose-secret-key"));
  appsignal_env_put(str("_APPSIGNAL_PUSH_API_ENDPOINT"), str("http://127.0.0.1:9"));
  appsignal_env_put(str("_APPSIGNAL_ENABLE_HOST_METRICS"), str("false"));
  appsignal_start();
  doc = NULL;
  for (i = 0; i < 1000; i++) {
    json_free(doc);
    doc = diagnose();
    if (strcmp(role(doc), "leader") == 0 || strcmp(role(doc), "client") == 0) break;
    nanosleep(&nap, NULL);
  }
  CHECK(strcmp(role(doc), "leader") == 0, "the only process leads");
  check_all_leaves(doc, "started");
  CHECK(json_is_bool(result(leaf(doc, "extension", "config", "valid")), 1), "extension config valid");
  CHECK(json_get(leaf(doc, "extension", "config", "valid"), "error") == NULL, "no config error");
  CHECK(json_is_bool(result(leaf(doc, "agent", "config", "valid")), 1), "agent config valid");
  CHECK(json_is_bool(result(leaf(doc, "agent", "boot", "started")), 1), "started");
  CHECK(json_is_string(json_get(leaf(doc, "agent", "boot", "started"), "output"), "leader"), "output: the role");
  CHECK(json_is_bool(result(leaf(doc, "agent", "logger", "started")), 1), "logger started");
  CHECK(stat(workdir, &st) == 0, "the start created the working directory");
  CHECK(json_is_int(result(leaf(doc, "agent", "working_directory_stat", "uid")), (long long)st.st_uid), "wd uid");
  CHECK(json_is_int(result(leaf(doc, "agent", "working_directory_stat", "gid")), (long long)st.st_gid), "wd gid");
  CHECK(json_is_int(result(leaf(doc, "agent", "working_directory_stat", "mode")), (long long)st.st_mode),
        "wd mode is st_mode as an integer (16877 for drwxr-xr-x)");
  CHECK(S_ISDIR(st.st_mode), "st_mode says directory");
  CHECK(json_is_bool(result(leaf(doc, "agent", "lock_path", "created")), 1), "lock file created");
  const json_t *election = json_get(doc, "leader_election");
  CHECK(json_is_int(json_get(json_get(election, "lock"), "holder_pid"), (long long)getpid()),
        "leader_election.lock.holder_pid is this process");
  CHECK(json_is_int(json_get(json_get(election, "process"), "pid"), (long long)getpid()), "leader_election.process.pid");
  CHECK(json_is_string(json_get(json_get(election, "config"), "push_api_key"), "present"), "push key present");
  CHECK(!contains(appsignal_diagnose(), "diagnose-secret-key"), "the push key never appears");
  json_free(doc);

  appsignal_stop();
  doc = diagnose();
  CHECK(json_is_bool(result(leaf(doc, "agent", "boot", "started")), 0), "stopped: not started");
  CHECK(strcmp(role(doc), "stopped") == 0, "leader_election.role is stopped after stop");
  json_free(doc);

  if (failures) {
    fprintf(stderr, "diagnose: %d checks failed\n", failures);
    return 1;
  }
  printf("diagnose: all checks passed\n");
  return 0;
}
