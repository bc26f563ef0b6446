/* A small JSON parser (RFC 8259) for the C test programs, so that they check the documents the
 * library returns field by field, as a language package does after its JSON.parse. Builds a tree
 * of json_t; json_free releases it. Depth is limited to 256; parse errors return NULL. */
#ifndef APPSIGNAL_TEST_JSON_H
#define APPSIGNAL_TEST_JSON_H

#include <stdlib.h>
#include <string.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_t {
  json_type type;
  int boolean;
  double number;
  int is_integer;        /* a number written without fraction or exponent that fits long long */
  long long integer;
  char *string;          /* NUL-terminated UTF-8 (JSON_STRING) */
  size_t string_len;     /* bytes, without the NUL (a string may hold \u0000) */
  size_t count;          /* array items or object members */
  struct json_t *items;  /* array items, or object values */
  char **keys;           /* object keys */
} json_t;

typedef struct {
  const char *at;
  const char *end;
  int depth;
} json_parser;

static inline void json_free(json_t *v);

static inline void json_release(json_t *v) {
  size_t i;
  if (!v) return;
  free(v->string);
  for (i = 0; i < v->count; i++) {
    json_release(&v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
}

static inline void json_free(json_t *v) {
  json_release(v);
  free(v);
}

static inline void json_skip_space(json_parser *p) {
  while (p->at < p->end && (*p->at == ' ' || *p->at == '\t' || *p->at == '\n' || *p->at == '\r')) p->at++;
}

static inline int json_literal(json_parser *p, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(p->end - p->at) < n || memcmp(p->at, word, n) != 0) return 0;
  p->at += n;
  return 1;
}

static inline int json_hex4(json_parser *p, unsigned *out) {
  int i;
  *out = 0;
  if (p->end - p->at < 4) return 0;
  for (i = 0; i < 4; i++) {
    char c = *p->at++;
    *out <<= 4;
    if (c >= '0' && c <= '9') *out |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') *out |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') *out |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  return 1;
}

/* Appends the UTF-8 form of `cp` at `out`; returns the bytes written. */
static inline size_t json_put_utf8(char *out, unsigned cp) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at p->at (on the opening quote) into a fresh buffer. */
static inline char *json_string(json_parser *p, size_t *len_out) {
  /* Decoded text is never longer than its source. */
  char *out = malloc((size_t)(p->end - p->at) + 1);
  size_t n = 0;
  if (!out || p->at >= p->end || *p->at != '"') { free(out); return NULL; }
  p->at++;
  while (p->at < p->end && *p->at != '"') {
    unsigned char c = (unsigned char)*p->at++;
    if (c < 0x20) { free(out); return NULL; }
    if (c != '\\') { out[n++] = (char)c; continue; }
    if (p->at >= p->end) { free(out); return NULL; }
    c = (unsigned char)*p->at++;
    switch (c) {
      case '"': out[n++] = '"'; break;
      case '\\': out[n++] = '\\'; break;
      case '/': out[n++] = '/'; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u': {
        unsigned cp, low;
        if (!json_hex4(p, &cp)) { free(out); return NULL; }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (!json_literal(p, "\\u") || !json_hex4(p, &low) || low < 0xDC00 || low > 0xDFFF) {
            free(out); return NULL;
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          free(out); return NULL;
        }
        n += json_put_utf8(out + n, cp);
        break;
      }
      default: free(out); return NULL;
    }
  }
  if (p->at >= p->end) { free(out); return NULL; }
  p->at++; /* closing quote */
  out[n] = '\0';
  *len_out = n;
  return out;
}

static inline int json_value(json_parser *p, json_t *v);

static inline int json_push(json_t *v, size_t *cap, char *key, json_t *item) {
  if (v->count == *cap) {
    size_t next = *cap ? *cap * 2 : 8;
    json_t *items = realloc(v->items, next * sizeof *items);
    if (!items) return 0;
    v->items = items;
    if (v->type == JSON_OBJECT) {
      char **keys = realloc(v->keys, next * sizeof *keys);
      if (!keys) return 0;
      v->keys = keys;
    }
    *cap = next;
  }
  v->items[v->count] = *item;
  if (v->type == JSON_OBJECT) v->keys[v->count] = key;
  v->count++;
  return 1;
}

static inline int json_container(json_parser *p, json_t *v, char close) {
  size_t cap = 0;
  p->at++;
  json_skip_space(p);
  if (p->at < p->end && *p->at == close) { p->at++; return 1; }
  for (;;) {
    json_t item;
    char *key = NULL;
    size_t key_len;
    json_skip_space(p);
    if (v->type == JSON_OBJECT) {
      key = json_string(p, &key_len);
      if (!key) return 0;
      json_skip_space(p);
      if (p->at >= p->end || *p->at != ':') { free(key); return 0; }
      p->at++;
    }
    memset(&item, 0, sizeof item);
    if (!json_value(p, &item) || !json_push(v, &cap, key, &item)) {
      json_release(&item);
      free(key);
      return 0;
    }
    json_skip_space(p);
    if (p->at < p->end && *p->at == ',') { p->at++; continue; }
    if (p->at < p->end && *p->at == close) { p->at++; return 1; }
    return 0;
  }
}

static inline int json_number(json_parser *p, json_t *v) {
  const char *start = p->at;
  char buf[64];
  size_t n;
  int integral = 1;
  if (p->at < p->end && *p->at == '-') p->at++;
  if (p->at >= p->end || *p->at < '0' || *p->at > '9') return 0;
  while (p->at < p->end && ((*p->at >= '0' && *p->at <= '9') || *p->at == '.' || *p->at == 'e' ||
                            *p->at == 'E' || *p->at == '+' || *p->at == '-')) {
    if (*p->at == '.' || *p->at == 'e' || *p->at == 'E') integral = 0;
    p->at++;
  }
  n = (size_t)(p->at - start);
  if (n >= sizeof buf) {
    /* Longer than any 64-bit integer or double we need: a number, not an integer. */
    v->type = JSON_NUMBER;
    v->number = 0;
    return 1;
  }
  memcpy(buf, start, n);
  buf[n] = '\0';
  v->type = JSON_NUMBER;
  v->number = strtod(buf, NULL);
  if (integral && n <= 19) {
    v->is_integer = 1;
    v->integer = strtoll(buf, NULL, 10);
  }
  return 1;
}

static inline int json_value(json_parser *p, json_t *v) {
  json_skip_space(p);
  if (p->at >= p->end || ++p->depth > 256) return 0;
  switch (*p->at) {
    case 'n': if (!json_literal(p, "null")) return 0; v->type = JSON_NULL; break;
    case 't': if (!json_literal(p, "true")) return 0; v->type = JSON_BOOL; v->boolean = 1; break;
    case 'f': if (!json_literal(p, "false")) return 0; v->type = JSON_BOOL; v->boolean = 0; break;
    case '"':
      v->type = JSON_STRING;
      v->string = json_string(p, &v->string_len);
      if (!v->string) return 0;
      break;
    case '[': v->type = JSON_ARRAY; if (!json_container(p, v, ']')) return 0; break;
    case '{': v->type = JSON_OBJECT; if (!json_container(p, v, '}')) return 0; break;
    default: if (!json_number(p, v)) return 0;
  }
  p->depth--;
  return 1;
}

/* Parses `len` bytes; NULL on any error (including trailing garbage). */
static inline json_t *json_parse(const char *text, size_t len) {
  json_parser p;
  json_t *v = calloc(1, sizeof *v);
  if (!v || !text) { free(v); return NULL; }
  p.at = text;
  p.end = text + len;
  p.depth = 0;
  if (!json_value(&p, v)) { json_free(v); return NULL; }
  json_skip_space(&p);
  if (p.at != p.end) { json_free(v); return NULL; }
  return v;
}

/* The member `key` of an object; NULL when `obj` is NULL, not an object, or lacks it. */
static inline const json_t *json_get(const json_t *obj, const char *key) {
  size_t i;
  if (!obj || obj->type != JSON_OBJECT) return NULL;
  for (i = 0; i < obj->count; i++) {
    if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
  }
  return NULL;
}

/* Item `i` of an array; NULL when out of range or not an array. */
static inline const json_t *json_at(const json_t *arr, size_t i) {
  if (!arr || arr->type != JSON_ARRAY || i >= arr->count) return NULL;
  return &arr->items[i];
}

static inline int json_is_string(const json_t *v, const char *expected) {
  return v && v->type == JSON_STRING && strlen(expected) == v->string_len &&
         memcmp(v->string, expected, v->string_len) == 0;
}

static inline int json_is_int(const json_t *v, long long expected) {
  return v && v->type == JSON_NUMBER && v->is_integer && v->integer == expected;
}

static inline int json_is_bool(const json_t *v, int expected) {
  return v && v->type == JSON_BOOL && v->boolean == (expected != 0);
}

static inline int json_is_null(const json_t *v) { return v && v->type == JSON_NULL; }

static inline int json_is(const json_t *v, json_type type) { return v && v->type == type; }

/* Parses a returned appsignal string (NULL when empty or not JSON). */
#define json_parse_returned(s) json_parse((s).buf, (s).len)

#endif
