/* The APM half of the C interface, end to end: started against the reference receiver (config from
 * the environment), this program records a transaction with a nested event tree, a SQL event, an
 * error with a backtrace and sample data with parameters to filter; three plain transactions; a root
 * span with a child and a SQL attribute; a log line. Then it stops (the leader pushes at stop). The
 * Rust test reads what the receiver stored. Exits 1 with a message on any failed check. */
#include <time.h>

#define CHECK_NAME "apm"
#include "check.h"

static void wait_for_role(void) {
  struct timespec nap = {0, 5 * 1000 * 1000};
  int i;
  for (i = 0; i < 1000; i++) {
    appsignal_string_t report = appsignal_diagnose();
    if (contains(report, "\"role\":\"leader\"") || contains(report, "\"role\":\"client\"")) return;
    nanosleep(&nap, NULL);
  }
  CHECK(0, "agent became leader or client");
}

int main(void) {
  appsignal_start();
  wait_for_role();

  /* A request with an error: process_action.rails > sql.active_record, then a rendered view. */
  appsignal_transaction_t *txn = appsignal_start_transaction(str("req-1"), str("web"), 0);
  appsignal_set_transaction_action(txn, str("UsersController#show"));
  appsignal_start_event(txn, 0);
  appsignal_start_event(txn, 0);
  appsignal_finish_event(txn, str("sql.active_record"), str("User Load"),
                         str("SELECT * FROM users WHERE id = 42 AND name = 'bob' AND role IN (1, 2, 3)"), 1, 0);
  appsignal_finish_event(txn, str("process_action.rails"), str("UsersController#show"), str(""), 0, 0);
  appsignal_record_event(txn, str("render.action_view"), str("show.html"), str(""), 0, 2000000, 0);

  appsignal_data_t *params = appsignal_data_map_new();
  appsignal_data_map_set_string(params, str("id"), str("42"));
  appsignal_data_map_set_string(params, str("password"), str("hunter2"));
  appsignal_data_t *nested = appsignal_data_map_new();
  appsignal_data_map_set_string(nested, str("password"), str("also-secret"));
  appsignal_data_map_set_string(nested, str("email"), str("bob@example.com"));
  appsignal_data_map_set_data(params, str("user"), nested);
  appsignal_set_transaction_sample_data(txn, str("params"), params);

  appsignal_data_t *backtrace = appsignal_data_array_new();
  appsignal_data_array_append_string(backtrace, str("app/controllers/users_controller.rb:10:in `show'"));
  appsignal_data_array_append_string(backtrace, str("app/models/user.rb:3:in `find'"));
  appsignal_set_transaction_error(txn, str("RuntimeError"), str("boom"), backtrace);
  appsignal_set_transaction_metadata(txn, str("path"), str("/users/42"));

  appsignal_string_t json = appsignal_transaction_to_json(txn);
  CHECK(contains(json, "sql.active_record"), "transaction_to_json shows the event tree");
  CHECK(appsignal_finish_transaction(txn, 0) == 1, "an erroneous transaction is sampled");
  appsignal_complete_transaction(txn);
  /* Used after complete: ignored, no crash. */
  appsignal_set_transaction_action(txn, str("Ignored#after_complete"));
  appsignal_complete_transaction(txn);
  appsignal_free_transaction(txn);

  /* Three plain, fast transactions of another action: counted, not sampled. */
  for (int i = 0; i < 3; i++) {
    appsignal_transaction_t *plain = appsignal_start_transaction(str("req-plain"), str("web"), 0);
    appsignal_set_transaction_action(plain, str("HomeController#index"));
    appsignal_start_event(plain, 0);
    appsignal_finish_event(plain, str("sql.active_record"), str("q"), str("SELECT 1"), 1, 0);
    CHECK(appsignal_finish_transaction(plain, 0) == 0, "a fast transaction without error is not sampled");
    appsignal_complete_transaction(plain);
    appsignal_free_transaction(plain);
  }

  /* Spans: a root with a child; the root is freed before the child. */
  appsignal_span_t *root = appsignal_create_root_span(str("web"));
  appsignal_set_span_name(root, str("GET /spans"));
  appsignal_span_t *child = appsignal_create_child_span(root);
  appsignal_set_span_name(child, str("query"));
  appsignal_set_span_attribute_sql_string(child, str("appsignal:body"), str("SELECT * FROM t WHERE a = 'x'"));
  CHECK(appsignal_span_id(child).len > 0, "a span has an id");
  appsignal_close_span(child);
  CHECK(contains(appsignal_span_to_json(root), "GET /spans"), "span_to_json");
  appsignal_close_span(root);
  CHECK(appsignal_span_to_json(root).len == 0, "a closed span's JSON is empty");
  appsignal_free_span(root);
  appsignal_free_span(child);

  /* A log line with attributes. */
  appsignal_data_t *attributes = appsignal_data_map_new();
  appsignal_data_map_set_string(attributes, str("user"), str("u1"));
  appsignal_log(str("app"), 3, 0, str("hello from C"), attributes);

  /* NULL handles everywhere: ignored. */
  appsignal_start_event(NULL, 0);
  appsignal_complete_transaction(NULL);
  appsignal_close_span(NULL);
  appsignal_free_transaction(NULL);
  appsignal_free_span(NULL);

  appsignal_free_data(params);
  appsignal_free_data(nested);
  appsignal_free_data(backtrace);
  appsignal_free_data(attributes);
  appsignal_stop();
  if (failures) {
    fprintf(stderr, "apm: %d checks failed\n", failures);
    return 1;
  }
  printf("apm: all checks passed\n");
  return 0;
}
