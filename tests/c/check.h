/* Helpers shared by the C test programs: a failure counter with CHECK, and appsignal_string_t
 * conversions. Each program defines CHECK_NAME (its prefix in messages) before including this. */
#ifndef APPSIGNAL_TEST_CHECK_H
#define APPSIGNAL_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "appsignal.h"

static int failures = 0;

#define CHECK(cond, what)                                                        \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, CHECK_NAME ": FAILED %s (line %d)\n", what, __LINE__);     \
      failures++;                                                                \
    }                                                                            \
  } while (0)

/* A view of a C string (the library copies what it keeps). */
static inline appsignal_string_t str(const char *s) {
  appsignal_string_t out = {strlen(s), s};
  return out;
}

static inline int equals(appsignal_string_t got, const char *expected) {
  return got.len == strlen(expected) && memcmp(got.buf, expected, got.len) == 0;
}

static inline int contains(appsignal_string_t got, const char *needle) {
  char *copy = malloc(got.len + 1);
  int found;
  if (!copy) return 0;
  memcpy(copy, got.buf, got.len);
  copy[got.len] = '\0';
  found = strstr(copy, needle) != NULL;
  free(copy);
  return found;
}

/* The value of leader_election.role in a diagnose report ("" if absent), into `out`. */
static inline void role_of(appsignal_string_t report, char *out, size_t size) {
  const char *key = "\"role\":\"";
  out[0] = '\0';
  for (size_t i = 0; i + strlen(key) <= report.len; i++) {
    if (memcmp(report.buf + i, key, strlen(key)) != 0) continue;
    size_t start = i + strlen(key), n = 0;
    while (start + n < report.len && report.buf[start + n] != '"' && n + 1 < size) {
      out[n] = report.buf[start + n];
      n++;
    }
    out[n] = '\0';
    return;
  }
}

#endif
