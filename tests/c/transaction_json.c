/* appsignal_transaction_to_json, parsed as the Ruby gem's test helpers parse it: the error as
 * {name, message, backtrace: "<JSON array>"}, every event (nested ones too) in the flat `events`
 * list, found by name as the gem finds it, with name, title, body (as given, SQL not sanitised),
 * body_format, count, its timing fields and parent_index, tag values cut at 10,000 characters plus
 * "...", error causes in the sample data, and the state fields. No agent is started: the view needs
 * none. Prints "transaction_json: all checks passed" or exits 1. */
#define CHECK_NAME "transaction_json"
#include "check.h"
#include "json.h"

/* `n` copies of `unit` (a NUL-terminated byte sequence), NUL-terminated; the caller frees it. */
static char *repeat(const char *unit, size_t n) {
  size_t len = strlen(unit);
  char *out = malloc(len * n + 1);
  size_t i;
  if (!out) return NULL;
  for (i = 0; i < n; i++) memcpy(out + i * len, unit, len);
  out[len * n] = '\0';
  return out;
}

static int is_number(const json_t *v) { return json_is(v, JSON_NUMBER); }

/* The fields every event has, in the view. */
static void check_event(const json_t *event, const char *name, const char *title, const char *body,
                        long long body_format) {
  CHECK(json_is_string(json_get(event, "name"), name), name);
  CHECK(json_is_string(json_get(event, "title"), title), "event title");
  CHECK(json_is_string(json_get(event, "body"), body), "event body as given");
  CHECK(json_is_int(json_get(event, "body_format"), body_format), "event body_format is an integer");
  CHECK(json_is_int(json_get(event, "count"), 1), "event count is 1");
  CHECK(is_number(json_get(event, "start")), "event start");
  CHECK(is_number(json_get(event, "duration")), "event duration");
  CHECK(json_is(json_get(event, "gc_duration"), JSON_NUMBER), "event gc_duration");
  const json_t *parent = json_get(event, "parent_index");
  CHECK(json_is(parent, JSON_NUMBER) && parent->is_integer, "event parent_index is an integer");
  CHECK(json_get(event, "children") == NULL, "no children: the list is flat");
}

/* The index in `events` of the event named `name` (the gem looks events up by name, title and
 * body, at any depth); -1 when there is none. */
static long long find_event(const json_t *events, const char *name) {
  size_t i;
  for (i = 0; events && events->type == JSON_ARRAY && i < events->count; i++) {
    if (json_is_string(json_get(json_at(events, i), "name"), name)) return (long long)i;
  }
  return -1;
}

/* The event at `index` (NULL when out of range). */
static const json_t *event_at(const json_t *events, long long index) {
  return index < 0 ? NULL : json_at(events, (size_t)index);
}

int main(void) {
  appsignal_transaction_t *txn = appsignal_start_transaction(str("req-shape"), str("web"), 0);
  appsignal_set_transaction_action(txn, str("ShapesController#show"));

  /* process_action.rails > sql.active_record, then a render with no title and no body. */
  appsignal_start_event(txn, 0);
  appsignal_start_event(txn, 0);
  appsignal_finish_event(txn, str("sql.active_record"), str("User Load"),
                         str("SELECT * FROM users WHERE id = 1 AND name = 'bob'"), 1, 0);
  appsignal_finish_event(txn, str("process_action.rails"), str("ShapesController#show"), str(""), 0, 0);
  appsignal_record_event(txn, str("render.action_view"), str(""), str(""), 0, 2000000, 0);

  appsignal_data_t *backtrace = appsignal_data_array_new();
  appsignal_data_array_append_string(backtrace, str("app/controllers/shapes_controller.rb:10:in `show'"));
  appsignal_data_array_append_string(backtrace, str("lib/\"quoted\".rb:3"));
  appsignal_set_transaction_error(txn, str("RuntimeError"), str("boom"), backtrace);

  /* Tags: a value of 10,050 ASCII characters, one of 10,001 two-byte characters, one of exactly
   * 10,000, and a key of 10,050 characters (kept whole). */
  char *long_ascii = repeat("x", 10050);
  char *long_utf8 = repeat("\xc3\xa9", 10001);
  char *exact = repeat("y", 10000);
  char *long_key = repeat("k", 10050);
  char *cut_ascii = repeat("x", 10000);
  char *cut_utf8 = repeat("\xc3\xa9", 10000);
  if (!long_ascii || !long_utf8 || !exact || !long_key || !cut_ascii || !cut_utf8) return 2;
  appsignal_data_t *tags = appsignal_data_map_new();
  appsignal_data_map_set_string(tags, str("ascii"), str(long_ascii));
  appsignal_data_map_set_string(tags, str("utf8"), str(long_utf8));
  appsignal_data_map_set_string(tags, str("exact"), str(exact));
  appsignal_data_map_set_string(tags, str(long_key), str("v"));
  appsignal_data_map_set_integer(tags, str("number"), 42);
  appsignal_set_transaction_sample_data(txn, str("tags"), tags);

  appsignal_data_t *causes = appsignal_data_array_new();
  appsignal_data_t *cause = appsignal_data_map_new();
  appsignal_data_map_set_string(cause, str("name"), str("IOError"));
  appsignal_data_map_set_string(cause, str("message"), str("closed stream"));
  appsignal_data_array_append_data(causes, cause);
  appsignal_set_transaction_sample_data(txn, str("error_causes"), causes);

  json_t *doc = json_parse_returned(appsignal_transaction_to_json(txn));
  CHECK(json_is(doc, JSON_OBJECT), "transaction_to_json is a JSON object");

  /* The error. */
  const json_t *error = json_get(doc, "error");
  CHECK(json_is_string(json_get(error, "name"), "RuntimeError"), "error.name is the class");
  CHECK(json_get(error, "class") == NULL, "no error.class in the view");
  CHECK(json_is_string(json_get(error, "message"), "boom"), "error.message");
  const json_t *bt_text = json_get(error, "backtrace");
  CHECK(json_is(bt_text, JSON_STRING), "error.backtrace is a string");
  json_t *bt = bt_text && bt_text->type == JSON_STRING ? json_parse(bt_text->string, bt_text->string_len) : NULL;
  CHECK(json_is(bt, JSON_ARRAY) && bt->count == 2, "error.backtrace holds a JSON array of 2 lines");
  CHECK(json_is_string(json_at(bt, 0), "app/controllers/shapes_controller.rb:10:in `show'"), "backtrace line 1");
  CHECK(json_is_string(json_at(bt, 1), "lib/\"quoted\".rb:3"), "backtrace line 2");
  json_free(bt);

  /* The events: all three in one list (the order is tests/c/transaction_events.c's concern; the
   * render event's start, 2 ms before it was recorded, may come before the outer event's). */
  const json_t *events = json_get(doc, "events");
  CHECK(json_is(events, JSON_ARRAY) && events->count == 3, "three events, the nested one included");
  long long outer_at = find_event(events, "process_action.rails");
  long long sql_at = find_event(events, "sql.active_record");
  long long render_at = find_event(events, "render.action_view");
  const json_t *outer = event_at(events, outer_at);
  const json_t *sql = event_at(events, sql_at);
  const json_t *render = event_at(events, render_at);
  check_event(outer, "process_action.rails", "ShapesController#show", "", 0);
  check_event(sql, "sql.active_record", "User Load", "SELECT * FROM users WHERE id = 1 AND name = 'bob'", 1);
  check_event(render, "render.action_view", "", "", 0);
  CHECK(json_is_int(json_get(outer, "parent_index"), -1), "the outer event is at the top");
  CHECK(json_is_int(json_get(sql, "parent_index"), outer_at), "the SQL event is nested in the outer one");
  CHECK(json_is_int(json_get(render, "parent_index"), -1), "the recorded event is at the top");
  const json_t *render_duration = json_get(render, "duration");
  CHECK(render_duration && render_duration->number > 1.999 && render_duration->number < 2.001,
        "record_event duration (ns to ms)");

  /* Tags: values cut to 10,000 characters plus "...", keys whole. */
  const json_t *t = json_get(json_get(doc, "sample_data"), "tags");
  const json_t *ascii = json_get(t, "ascii");
  CHECK(json_is(ascii, JSON_STRING) && ascii->string_len == 10003 &&
            memcmp(ascii->string, cut_ascii, 10000) == 0 && strcmp(ascii->string + 10000, "...") == 0,
        "an ASCII tag value is cut to 10,000 characters + ...");
  const json_t *utf8 = json_get(t, "utf8");
  CHECK(json_is(utf8, JSON_STRING) && utf8->string_len == 20003 &&
            memcmp(utf8->string, cut_utf8, 20000) == 0 && strcmp(utf8->string + 20000, "...") == 0,
        "a multi-byte tag value is cut to 10,000 characters (not bytes) + ...");
  CHECK(json_is_string(json_get(t, "exact"), exact), "a 10,000-character value is kept");
  CHECK(json_is_string(json_get(t, long_key), "v"), "a long tag key is kept whole");
  CHECK(json_is_int(json_get(t, "number"), 42), "a numeric tag stays a number");

  /* Error causes, in the sample data as given. */
  const json_t *c = json_at(json_get(json_get(doc, "sample_data"), "error_causes"), 0);
  CHECK(json_is_string(json_get(c, "name"), "IOError"), "error_causes in sample_data");

  /* Identity and state. */
  CHECK(json_is_string(json_get(doc, "id"), "req-shape"), "id");
  CHECK(json_is_string(json_get(doc, "action"), "ShapesController#show"), "action");
  CHECK(json_is_string(json_get(doc, "namespace"), "web"), "namespace");
  CHECK(json_is_bool(json_get(doc, "finished"), 0), "finished");
  CHECK(json_is_bool(json_get(doc, "completed"), 0), "completed");
  CHECK(json_is_int(json_get(doc, "open_events"), 0), "open_events");
  json_free(doc);

  /* After finish and complete the view still answers, with the state updated. */
  CHECK(appsignal_finish_transaction(txn, 0) == 1, "an erroneous transaction is sampled");
  appsignal_complete_transaction(txn);
  doc = json_parse_returned(appsignal_transaction_to_json(txn));
  CHECK(json_is_bool(json_get(doc, "completed"), 1) && json_is_bool(json_get(doc, "sampled"), 1),
        "completed and sampled after complete");
  events = json_get(doc, "events");
  CHECK(json_is_string(json_get(event_at(events, find_event(events, "sql.active_record")), "body"),
                       "SELECT * FROM users WHERE id = 1 AND name = 'bob'"),
        "the view never shows the sanitised body");
  json_free(doc);
  CHECK(appsignal_transaction_to_json(NULL).len == 0, "NULL handle: empty");

  appsignal_free_transaction(txn);
  appsignal_free_data(backtrace);
  appsignal_free_data(tags);
  appsignal_free_data(causes);
  appsignal_free_data(cause);
  free(long_ascii); free(long_utf8); free(exact); free(long_key); free(cut_ascii); free(cut_utf8);
  if (failures) {
    fprintf(stderr, "transaction_json: %d checks failed\n", failures);
    return 1;
  }
  printf("transaction_json: all checks passed\n");
  return 0;
}
