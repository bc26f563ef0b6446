/* appsignal_span_to_json, parsed as the Elixir package's Span.to_map parses it: the trace and span
 * ids as the interface returns them (16 and 8 hex digits), "" for an unset parent or name, a
 * child's namespace "", start_time_seconds / start_time_nanoseconds, closed, sample data values as
 * JSON strings, the error as {name, message, backtrace_json}, typed attributes (a bigint as the
 * string "bigint:<digits>"), and the empty string once the span is closed. No agent is started.
 * Prints "span_json: all checks passed" or exits 1. */
#include <limits.h>

#define CHECK_NAME "span_json"
#include "check.h"
#include "json.h"

static int is_hex(const json_t *v, size_t len) {
  size_t i;
  if (!json_is(v, JSON_STRING) || v->string_len != len) return 0;
  for (i = 0; i < len; i++) {
    char c = v->string[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
  }
  return 1;
}

/* The returned span id as a NUL-terminated copy (the returned buffer is reused by the next call). */
static void span_id(appsignal_span_t *span, char out[32]) {
  appsignal_string_t id = appsignal_span_id(span);
  size_t n = id.len < 31 ? id.len : 31;
  memcpy(out, id.buf ? id.buf : "", n);
  out[n] = '\0';
}

int main(void) {
  char root_id[32], child_id[32];
  appsignal_span_t *root = appsignal_create_root_span_with_timestamp(str("web"), 1588930137, 508176000);
  span_id(root, root_id);
  CHECK(strlen(root_id) == 8, "span_id returns 8 characters");

  /* A fresh root: nothing set yet. */
  json_t *doc = json_parse_returned(appsignal_span_to_json(root));
  CHECK(json_is(doc, JSON_OBJECT), "span_to_json is a JSON object");
  CHECK(is_hex(json_get(doc, "trace_id"), 16), "trace_id: 16 hex digits");
  CHECK(is_hex(json_get(doc, "span_id"), 8), "span_id: 8 hex digits");
  CHECK(json_is_string(json_get(doc, "span_id"), root_id), "span_id equals appsignal_span_id");
  CHECK(json_is_string(json_get(doc, "parent_span_id"), ""), "a root's parent_span_id is \"\"");
  CHECK(json_is_string(json_get(doc, "name"), ""), "an unset name is \"\"");
  CHECK(json_is_string(json_get(doc, "namespace"), "web"), "the root carries the namespace");
  CHECK(json_is_int(json_get(doc, "start_time_seconds"), 1588930137), "start_time_seconds");
  CHECK(json_is_int(json_get(doc, "start_time_nanoseconds"), 508176000), "start_time_nanoseconds");
  CHECK(json_is_bool(json_get(doc, "closed"), 0), "closed is false while open");
  CHECK(json_is_null(json_get(doc, "error")), "no error yet");
  char trace_id[32] = "";
  if (json_is(json_get(doc, "trace_id"), JSON_STRING)) {
    snprintf(trace_id, sizeof trace_id, "%s", json_get(doc, "trace_id")->string);
  }
  json_free(doc);

  /* Name, attributes of every type, sample data, an error. */
  appsignal_set_span_name(root, str("GET /shapes"));
  appsignal_set_span_attribute_string(root, str("s"), str("text"));
  appsignal_set_span_attribute_int(root, str("i"), LONG_MAX);
  appsignal_set_span_attribute_int(root, str("neg"), -7);
  appsignal_set_span_attribute_bool(root, str("b"), 1);
  appsignal_set_span_attribute_double(root, str("d"), 1.5);
  appsignal_set_span_attribute_string(root, str("big"), str("bigint:123456789012345678901234567890"));
  appsignal_data_t *params = appsignal_data_map_new();
  appsignal_data_map_set_string(params, str("key"), str("value"));
  appsignal_set_span_sample_data(root, str("params"), params);
  appsignal_data_t *list = appsignal_data_array_new();
  appsignal_data_array_append_string(list, str("abc"));
  appsignal_data_array_append_string(list, str("def"));
  appsignal_set_span_sample_data(root, str("custom_data"), list);
  appsignal_data_t *backtrace = appsignal_data_array_new();
  appsignal_data_array_append_string(backtrace, str("lib/app.ex:1: App.run/0"));
  appsignal_add_span_error(root, str("RuntimeError"), str("boom"), backtrace);

  doc = json_parse_returned(appsignal_span_to_json(root));
  CHECK(json_is_string(json_get(doc, "name"), "GET /shapes"), "name");
  const json_t *attributes = json_get(doc, "attributes");
  CHECK(json_is_string(json_get(attributes, "s"), "text"), "string attribute");
  CHECK(json_is_int(json_get(attributes, "i"), LONG_MAX), "integer attribute (64-bit)");
  CHECK(json_is_int(json_get(attributes, "neg"), -7), "negative integer attribute");
  CHECK(json_is_bool(json_get(attributes, "b"), 1), "boolean attribute");
  const json_t *d = json_get(attributes, "d");
  CHECK(json_is(d, JSON_NUMBER) && !d->is_integer && d->number > 1.49 && d->number < 1.51, "double attribute");
  CHECK(json_is_string(json_get(attributes, "big"), "bigint:123456789012345678901234567890"),
        "an integer beyond 64 bits is the string bigint:<digits>");
  const json_t *sample_data = json_get(doc, "sample_data");
  CHECK(json_is_string(json_get(sample_data, "params"), "{\"key\":\"value\"}"), "sample data is a JSON string");
  CHECK(json_is_string(json_get(sample_data, "custom_data"), "[\"abc\",\"def\"]"), "list sample data");
  const json_t *error = json_get(doc, "error");
  CHECK(json_is_string(json_get(error, "name"), "RuntimeError"), "error.name");
  CHECK(json_is_string(json_get(error, "message"), "boom"), "error.message");
  CHECK(json_is_string(json_get(error, "backtrace_json"), "[\"lib/app.ex:1: App.run/0\"]"),
        "error.backtrace_json is a JSON-encoded string");
  json_free(doc);

  /* A child: same trace, the root as parent, no namespace of its own, its own start time. */
  appsignal_span_t *child = appsignal_create_child_span_with_timestamp(root, 1588930138, 5);
  span_id(child, child_id);
  doc = json_parse_returned(appsignal_span_to_json(child));
  CHECK(json_is_string(json_get(doc, "trace_id"), trace_id), "a child has the root's trace_id");
  CHECK(json_is_string(json_get(doc, "parent_span_id"), root_id), "a child's parent_span_id is the root's span_id");
  CHECK(json_is_string(json_get(doc, "span_id"), child_id), "a child's span_id");
  CHECK(json_is_string(json_get(doc, "namespace"), ""), "a child's namespace is \"\"");
  CHECK(json_is_string(json_get(doc, "name"), ""), "a child's unset name is \"\"");
  CHECK(json_is_int(json_get(doc, "start_time_seconds"), 1588930138), "child start_time_seconds");
  CHECK(json_is_int(json_get(doc, "start_time_nanoseconds"), 5), "child start_time_nanoseconds");
  json_free(doc);

  /* Closed: the JSON is the empty string, so "closed?" through to_json says yes. */
  appsignal_close_span(child);
  CHECK(appsignal_span_to_json(child).len == 0, "a closed child's JSON is the empty string");
  doc = json_parse_returned(appsignal_span_to_json(root));
  CHECK(json_is(json_get(doc, "events"), JSON_ARRAY) && json_get(doc, "events")->count == 1,
        "the open root lists its closed child");
  json_free(doc);
  appsignal_close_span_with_timestamp(root, 1588930140, 0);
  CHECK(appsignal_span_to_json(root).len == 0, "a closed root's JSON is the empty string");
  CHECK(appsignal_span_to_json(NULL).len == 0, "NULL handle: empty");

  /* From a traceparent: the short forms of the header's ids. */
  appsignal_span_t *remote =
      appsignal_create_span_from_traceparent(str("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
  doc = json_parse_returned(appsignal_span_to_json(remote));
  CHECK(json_is_string(json_get(doc, "trace_id"), "8448eb211c80319c"), "traceparent trace id: its last 16 digits");
  CHECK(json_is_string(json_get(doc, "parent_span_id"), "69203331"), "traceparent parent id: its last 8 digits");
  json_free(doc);

  appsignal_free_span(remote);
  appsignal_free_span(child);
  appsignal_free_span(root);
  appsignal_free_data(params);
  appsignal_free_data(list);
  appsignal_free_data(backtrace);
  if (failures) {
    fprintf(stderr, "span_json: %d checks failed\n", failures);
    return 1;
  }
  printf("span_json: all checks passed\n");
  return 0;
}
