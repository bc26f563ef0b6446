/* The events of appsignal_transaction_to_json as the language packages look them up: every event of
 * the transaction in the top-level `events` list, at whatever depth it was recorded, in the order
 * the events started, each with `parent_index` (its parent's index in the list, -1 at the top) from
 * which the nesting is rebuilt. A three-level tree:
 *
 *   process_action.rails            (0, parent -1)
 *     render.action_view            (1, parent 0)
 *       sql.active_record           (2, parent 1)
 *     cache.read                    (3, parent 0)
 *   render.layout                   (4, parent -1)
 *
 * No agent is started: the view needs none. Prints "transaction_events: all checks passed" or
 * exits 1. */
#define CHECK_NAME "transaction_events"
#include "check.h"
#include "json.h"

#define EVENTS 5

static const char *const NAMES[EVENTS] = {"process_action.rails", "render.action_view", "sql.active_record",
                                          "cache.read", "render.layout"};
static const long long PARENTS[EVENTS] = {-1, 0, 1, 0, -1};
static const int DEPTHS[EVENTS] = {0, 1, 2, 1, 0};

/* The index of the first event with this name, title and body, as the gem's `include_event` finds
 * one (any depth); -1 when there is none. */
static long long find_event(const json_t *events, const char *name, const char *title, const char *body) {
  size_t i;
  for (i = 0; events && events->type == JSON_ARRAY && i < events->count; i++) {
    const json_t *e = json_at(events, i);
    if (json_is_string(json_get(e, "name"), name) && json_is_string(json_get(e, "title"), title) &&
        json_is_string(json_get(e, "body"), body))
      return (long long)i;
  }
  return -1;
}

/* The parent_index of the event at `i`, or -2 when it is missing or not an integer. */
static long long parent_of(const json_t *events, size_t i) {
  const json_t *p = json_get(json_at(events, i), "parent_index");
  return p && p->type == JSON_NUMBER && p->is_integer ? p->integer : -2;
}

int main(void) {
  appsignal_transaction_t *txn = appsignal_start_transaction(str("req-events"), str("web"), 0);
  appsignal_start_event(txn, 0);   /* process_action.rails */
  appsignal_start_event(txn, 0);   /*   render.action_view */
  appsignal_start_event(txn, 0);   /*     sql.active_record */
  appsignal_finish_event(txn, str("sql.active_record"), str("User Load"), str("SELECT * FROM users WHERE id = 1"),
                         1, 0);
  appsignal_finish_event(txn, str("render.action_view"), str("users/show"), str(""), 0, 0);
  appsignal_start_event(txn, 0);   /*   cache.read */
  appsignal_finish_event(txn, str("cache.read"), str(""), str("users/1"), 0, 0);

  /* While the outer event is open, what finished inside it is not listed yet. */
  json_t *doc = json_parse_returned(appsignal_transaction_to_json(txn));
  const json_t *events = json_get(doc, "events");
  CHECK(json_is(events, JSON_ARRAY) && events->count == 0, "nothing listed inside an open event");
  CHECK(json_is_int(json_get(doc, "open_events"), 1), "one open event");
  json_free(doc);

  appsignal_finish_event(txn, str("process_action.rails"), str("UsersController#show"), str(""), 0, 0);
  appsignal_start_event(txn, 0);   /* render.layout */
  appsignal_finish_event(txn, str("render.layout"), str("application"), str(""), 0, 0);

  doc = json_parse_returned(appsignal_transaction_to_json(txn));
  CHECK(json_is(doc, JSON_OBJECT), "transaction_to_json is a JSON object");
  events = json_get(doc, "events");
  CHECK(json_is(events, JSON_ARRAY) && events->count == EVENTS, "every event, nested ones too, in `events`");
  CHECK(json_is_int(json_get(doc, "open_events"), 0), "no open event");

  size_t i;
  double previous_start = -1.0;
  for (i = 0; events && events->type == JSON_ARRAY && i < events->count && i < EVENTS; i++) {
    const json_t *e = json_at(events, i);
    CHECK(json_is_string(json_get(e, "name"), NAMES[i]), NAMES[i]);
    CHECK(parent_of(events, i) == PARENTS[i], "parent_index");
    CHECK(parent_of(events, i) < (long long)i, "a parent is listed before what is nested in it");
    CHECK(json_get(e, "children") == NULL, "no children: the list is flat");
    CHECK(json_is_int(json_get(e, "count"), 1), "count");
    const json_t *start = json_get(e, "start");
    CHECK(json_is(start, JSON_NUMBER) && start->number >= previous_start, "in the order they started");
    if (start) previous_start = start->number;

    /* The depth, rebuilt from parent_index alone. */
    int depth = 0;
    long long at = (long long)i;
    while (depth <= EVENTS && at >= 0) {
      at = parent_of(events, (size_t)at);
      if (at >= 0) depth++;
    }
    CHECK(at == -1 && depth == DEPTHS[i], "depth from parent_index");
  }

  /* The innermost event, looked up as the gem looks it up, and its ancestry. */
  long long sql = find_event(events, "sql.active_record", "User Load", "SELECT * FROM users WHERE id = 1");
  CHECK(sql == 2, "the nested SQL event is found by name, title and body (as given, not sanitised)");
  const json_t *sql_event = sql >= 0 ? json_at(events, (size_t)sql) : NULL;
  CHECK(json_is_int(json_get(sql_event, "body_format"), 1), "body_format");
  long long render = sql >= 0 ? parent_of(events, (size_t)sql) : -2;
  CHECK(render >= 0 && json_is_string(json_get(json_at(events, (size_t)render), "name"), "render.action_view"),
        "the SQL event's parent is the render event");
  long long outer = render >= 0 ? parent_of(events, (size_t)render) : -2;
  CHECK(outer >= 0 && json_is_string(json_get(json_at(events, (size_t)outer), "name"), "process_action.rails"),
        "the render event's parent is the outer event");
  CHECK(find_event(events, "cache.read", "", "users/1") == 3, "the second child is found too");
  json_free(doc);

  appsignal_free_transaction(txn);
  if (failures) {
    fprintf(stderr, "transaction_events: %d checks failed\n", failures);
    return 1;
  }
  printf("transaction_events: all checks passed\n");
  return 0;
}
