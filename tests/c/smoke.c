/* Exercises the C interface the way an integration does: data objects, the environment table,
 * diagnose, metrics before and after start, NULL handles, invalid UTF-8, and appsignal_free_data
 * registered as a plain void (*)(void*) destructor. Prints "smoke: all checks passed" or exits 1. */
#define _POSIX_C_SOURCE 199309L /* nanosleep, under -std=c11 */
#define CHECK_NAME "smoke"
#include <time.h>

#include "check.h"

/* The shape of Ruby's dfree: the free functions must be usable as this type without a cast. */
typedef void (*destructor_t)(void *);

int main(void) {
  destructor_t destroy = appsignal_free_data;
  const char *tmp = getenv("SMOKE_TMP");
  char workdir[512];

  /* Data: maps sorted by key, nested copies, arrays of every scalar. */
  appsignal_data_t *map = appsignal_data_map_new();
  appsignal_data_map_set_string(map, str("b"), str("two"));
  appsignal_data_map_set_integer(map, str("a"), 1);
  appsignal_data_map_set_float(map, str("c"), 1.5);
  appsignal_data_map_set_boolean(map, str("d"), 1);
  appsignal_data_map_set_null(map, str("e"));
  appsignal_data_t *array = appsignal_data_array_new();
  appsignal_data_array_append_string(array, str("x"));
  appsignal_data_array_append_integer(array, -7);
  appsignal_data_array_append_float(array, 0.25);
  appsignal_data_array_append_boolean(array, 0);
  appsignal_data_array_append_null(array);
  appsignal_data_map_set_data(map, str("list"), array);
  /* Copied in: changing the array afterwards does not change the map. */
  appsignal_data_array_append_integer(array, 99);
  CHECK(equals(appsignal_data_to_json(map),
               "{\"a\":1,\"b\":\"two\",\"c\":1.5,\"d\":true,\"e\":null,"
               "\"list\":[\"x\",-7,0.25,false,null]}"),
        "map to json");

  appsignal_data_t *other = appsignal_data_map_new();
  appsignal_data_map_set_null(other, str("e"));
  appsignal_data_map_set_boolean(other, str("d"), 1);
  appsignal_data_map_set_float(other, str("c"), 1.5);
  appsignal_data_map_set_string(other, str("b"), str("two"));
  appsignal_data_map_set_integer(other, str("a"), 1);
  CHECK(appsignal_data_equal(map, other) == 0, "maps differ while one lacks the list");
  appsignal_data_t *list = appsignal_data_array_new();
  appsignal_data_array_append_string(list, str("x"));
  appsignal_data_array_append_integer(list, -7);
  appsignal_data_array_append_float(list, 0.25);
  appsignal_data_array_append_boolean(list, 0);
  appsignal_data_array_append_null(list);
  appsignal_data_map_set_data(other, str("list"), list);
  CHECK(appsignal_data_equal(map, other) == 1, "equal maps built in another order");
  appsignal_data_array_append_data(list, map);
  CHECK(contains(appsignal_data_to_json(list), "\"list\":[\"x\""), "nested map in array");

  /* Wrong container, NULL handles, invalid UTF-8: no crash, nothing changes. */
  appsignal_data_array_append_integer(map, 5);
  appsignal_data_map_set_integer(array, str("k"), 5);
  appsignal_data_map_set_string(NULL, str("k"), str("v"));
  appsignal_data_array_append_data(NULL, map);
  appsignal_data_map_set_data(map, str("k"), NULL);
  CHECK(appsignal_data_to_json(NULL).len == 0, "json of NULL is empty");
  CHECK(appsignal_data_equal(NULL, NULL) == 1 && appsignal_data_equal(map, NULL) == 0, "equal with NULL");
  appsignal_string_t bad = {3, "\xff\xfe\x41"};
  appsignal_data_t *odd = appsignal_data_map_new();
  appsignal_data_map_set_string(odd, bad, bad);
  CHECK(contains(appsignal_data_to_json(odd), "A"), "invalid UTF-8 is replaced, not rejected");
  appsignal_string_t nullbuf = {10, NULL};
  appsignal_data_map_set_string(odd, nullbuf, nullbuf);

  /* The environment table. */
  appsignal_env_put(str("_APPSIGNAL_SMOKE"), str("value"));
  CHECK(equals(appsignal_env_get(str("_APPSIGNAL_SMOKE")), "value"), "env_get after put");
  appsignal_env_delete(str("_APPSIGNAL_SMOKE"));
  CHECK(appsignal_env_get(str("_APPSIGNAL_SMOKE")).len == 0, "env_get after delete");
  appsignal_env_put(str("_APPSIGNAL_SMOKE"), str("value"));
  appsignal_env_clear();
  CHECK(appsignal_env_get(str("_APPSIGNAL_SMOKE")).len == 0, "env_get after clear");

  /* Metrics before start are ignored; diagnose answers. */
  appsignal_increment_counter(str("early"), 1.0, map);
  appsignal_set_gauge(str("early"), 1.0, NULL);
  appsignal_add_distribution_value(bad, 1.0, NULL);
  CHECK(contains(appsignal_diagnose(), "\"role\":\"stopped\""), "diagnose before start");

  /* Nothing configured: start returns (with the warning line on stderr) and diagnose says why. */
  appsignal_start();
  CHECK(contains(appsignal_diagnose(), "nothing is configured"), "a start with nothing configured is explained");
  appsignal_stop();

  /* Active, with a working directory that cannot exist (under a regular file): disabled, app runs on. */
  if (tmp) {
    FILE *f;
    snprintf(workdir, sizeof workdir, "%s/plain-file", tmp);
    f = fopen(workdir, "w");
    if (f) fclose(f);
    snprintf(workdir, sizeof workdir, "%s/plain-file/appsignal", tmp);
    appsignal_env_put(str("_APPSIGNAL_ACTIVE"), str("true"));
    appsignal_env_put(str("_APPSIGNAL_PUSH_API_KEY"), str("smoke-secret-key"));
    appsignal_env_put(str("_APPSIGNAL_PUSH_API_ENDPOINT"), str("http://127.0.0.1:9"));
    appsignal_env_put(str("_APPSIGNAL_WORKING_DIRECTORY_PATH"), str(workdir));
    appsignal_start();
    /* The agent's own thread prepares the directory (start() does no file-system work): the role
     * is "starting" until it found the directory unusable, a few milliseconds at most. */
    struct timespec nap = {0, 5 * 1000 * 1000};
    appsignal_string_t report = appsignal_diagnose();
    for (int i = 0; i < 2000 && contains(report, "\"role\":\"starting\""); i++) {
      nanosleep(&nap, NULL);
      report = appsignal_diagnose();
    }
    CHECK(contains(report, "\"role\":\"disabled\""), "unusable working directory disables");
    CHECK(contains(report, "working directory unusable"), "diagnose says why");
    CHECK(!contains(report, "smoke-secret-key"), "diagnose never shows the push key");
    appsignal_increment_counter(str("ignored"), 1.0, NULL);
    appsignal_stop();
  }

  destroy(map);
  destroy(array);
  destroy(other);
  destroy(list);
  destroy(odd);
  appsignal_free_data(NULL);

  if (failures) {
    fprintf(stderr, "smoke: %d checks failed\n", failures);
    return 1;
  }
  printf("smoke: all checks passed\n");
  return 0;
}
