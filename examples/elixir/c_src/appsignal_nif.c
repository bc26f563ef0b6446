/* appsignal_nif: the Elixir binding of libappsignal (appsignal.h) as NIFs of
 * Elixir.AppsignalExample.Nif. Every function converts its arguments and calls the library.
 *
 *   start/0, stop/0, diagnose/0          (dirty I/O: start prepares the working directory,
 *                                          stop waits up to _APPSIGNAL_STOP_TIMEOUT_MS, diagnose reads files)
 *   env_put/2, env_get/1, env_delete/1, env_clear/0
 *   increment_counter/3, set_gauge/3, add_distribution_value/3   (name, number, %{binary => binary})
 *
 * Configuration goes through env_put (the library's own table), not the process environment: the
 * BEAM's os:putenv is not something a native library can rely on seeing.
 *
 * Strings are passed as appsignal_string_t {size, data} of the binary: no NUL terminator, no copy
 * (the library copies what it keeps).
 *
 * Spans: a span is a NIF resource (type "appsignal_span") holding one appsignal_span_t*; its
 * destructor calls appsignal_free_span when the last term referring to it is garbage collected (the
 * library's own free; a span that was never closed is dropped without reporting).
 *
 *   create_root_span/1 (namespace)  create_child_span/1 (parent)  set_span_name/2
 *   add_span_error/4 (span, name, message, [binary] backtrace)  close_span/1
 *   span_id/1  span_to_json/1
 *
 * A span handle is meant to be used by one Erlang process at a time (the one that created it), as
 * AppsignalExample.instrument/2 does.
 */
#include <string.h>

#include <erl_nif.h>

#include "appsignal.h"

static ERL_NIF_TERM atom_ok;
static ERL_NIF_TERM atom_nil;
static ErlNifResourceType *span_resource;

/* The resource's memory: the library's handle (NULL once freed, never in practice). */
typedef struct {
    appsignal_span_t *span;
} span_res_t;

static void span_dtor(ErlNifEnv *env, void *obj)
{
    span_res_t *res = obj;
    (void)env;
    appsignal_free_span(res->span); /* the library's own free; NULL is fine */
    res->span = NULL;
}

static int open_resources(ErlNifEnv *env)
{
    span_resource = enif_open_resource_type(env, NULL, "appsignal_span", span_dtor,
                                            ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER, NULL);
    return span_resource != NULL;
}

static int load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM load_info)
{
    (void)priv_data;
    (void)load_info;
    atom_ok = enif_make_atom(env, "ok");
    atom_nil = enif_make_atom(env, "nil");
    return open_resources(env) ? 0 : 1;
}

static int upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data, ERL_NIF_TERM load_info)
{
    (void)old_priv_data;
    return load(env, priv_data, load_info);
}

/* A binary (or iolist) term as an appsignal_string_t; valid while the term is alive (the whole
 * NIF call). */
static int get_string(ErlNifEnv *env, ERL_NIF_TERM term, appsignal_string_t *out)
{
    ErlNifBinary bin;
    if (!enif_inspect_iolist_as_binary(env, term, &bin)) {
        return 0;
    }
    out->len = bin.size;
    out->buf = (const char *)bin.data;
    return 1;
}

/* A string from the library (owned by it, valid until the next call of that function on this
 * thread) copied into a new binary; nil when the library says "none" (len == 0). */
static ERL_NIF_TERM make_string(ErlNifEnv *env, appsignal_string_t s)
{
    ERL_NIF_TERM term;
    unsigned char *data;
    if (s.len == 0 || s.buf == NULL) {
        return atom_nil;
    }
    data = enif_make_new_binary(env, s.len, &term);
    memcpy(data, s.buf, s.len);
    return term;
}

/* A float or an integer. */
static int get_number(ErlNifEnv *env, ERL_NIF_TERM term, double *out)
{
    ErlNifSInt64 i;
    if (enif_get_double(env, term, out)) {
        return 1;
    }
    if (enif_get_int64(env, term, &i)) {
        *out = (double)i;
        return 1;
    }
    return 0;
}

/* A map of binary keys to binary values as a new appsignal_data_t map (NULL for an empty map, which
 * the library takes as "no tags"). Returns 0 on a term that is not such a map. */
static int get_tags(ErlNifEnv *env, ERL_NIF_TERM term, appsignal_data_t **out)
{
    ErlNifMapIterator it;
    ERL_NIF_TERM key, value;
    size_t size;
    appsignal_data_t *map;

    *out = NULL;
    if (!enif_get_map_size(env, term, &size)) {
        return 0;
    }
    if (size == 0) {
        return 1;
    }
    if (!enif_map_iterator_create(env, term, &it, ERL_NIF_MAP_ITERATOR_FIRST)) {
        return 0;
    }
    map = appsignal_data_map_new();
    while (enif_map_iterator_get_pair(env, &it, &key, &value)) {
        appsignal_string_t k, v;
        if (!get_string(env, key, &k) || !get_string(env, value, &v)) {
            enif_map_iterator_destroy(env, &it);
            appsignal_free_data(map);
            return 0;
        }
        appsignal_data_map_set_string(map, k, v);
        enif_map_iterator_next(env, &it);
    }
    enif_map_iterator_destroy(env, &it);
    *out = map;
    return 1;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static ERL_NIF_TERM nif_start(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)env;
    (void)argc;
    (void)argv;
    appsignal_start();
    return atom_ok;
}

static ERL_NIF_TERM nif_stop(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)env;
    (void)argc;
    (void)argv;
    appsignal_stop();
    return atom_ok;
}

static ERL_NIF_TERM nif_diagnose(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return make_string(env, appsignal_diagnose());
}

static ERL_NIF_TERM nif_env_put(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_string_t key, value;
    (void)argc;
    if (!get_string(env, argv[0], &key) || !get_string(env, argv[1], &value)) {
        return enif_make_badarg(env);
    }
    appsignal_env_put(key, value);
    return atom_ok;
}

static ERL_NIF_TERM nif_env_get(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_string_t key;
    (void)argc;
    if (!get_string(env, argv[0], &key)) {
        return enif_make_badarg(env);
    }
    return make_string(env, appsignal_env_get(key));
}

static ERL_NIF_TERM nif_env_delete(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_string_t key;
    (void)argc;
    if (!get_string(env, argv[0], &key)) {
        return enif_make_badarg(env);
    }
    appsignal_env_delete(key);
    return atom_ok;
}

static ERL_NIF_TERM nif_env_clear(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)env;
    (void)argc;
    (void)argv;
    appsignal_env_clear();
    return atom_ok;
}

/* ---- metrics -------------------------------------------------------------------------------- */

typedef void (*metric_fn)(appsignal_string_t, double, const appsignal_data_t *);

/* (name, number, tags): never blocks (the library updates an in-process pre-aggregate). */
static ERL_NIF_TERM call_metric(metric_fn fn, ErlNifEnv *env, const ERL_NIF_TERM argv[])
{
    appsignal_string_t name;
    double value;
    appsignal_data_t *tags;
    if (!get_string(env, argv[0], &name) || !get_number(env, argv[1], &value) ||
        !get_tags(env, argv[2], &tags)) {
        return enif_make_badarg(env);
    }
    fn(name, value, tags);
    appsignal_free_data(tags); /* NULL (no tags) is fine */
    return atom_ok;
}

static ERL_NIF_TERM nif_increment_counter(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return call_metric(appsignal_increment_counter, env, argv);
}

static ERL_NIF_TERM nif_set_gauge(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return call_metric(appsignal_set_gauge, env, argv);
}

static ERL_NIF_TERM nif_add_distribution_value(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return call_metric(appsignal_add_distribution_value, env, argv);
}

/* ---- spans --------------------------------------------------------------------------------- */

/* A new span term owning `span` (NULL: badarg, e.g. a child of nothing). */
static ERL_NIF_TERM make_span(ErlNifEnv *env, appsignal_span_t *span)
{
    span_res_t *res;
    ERL_NIF_TERM term;
    if (span == NULL) {
        return enif_make_badarg(env);
    }
    res = enif_alloc_resource(span_resource, sizeof(span_res_t));
    if (res == NULL) {
        appsignal_free_span(span);
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    }
    res->span = span;
    term = enif_make_resource(env, res);
    enif_release_resource(res); /* the term holds the only reference now */
    return term;
}

static int get_span(ErlNifEnv *env, ERL_NIF_TERM term, appsignal_span_t **out)
{
    span_res_t *res;
    if (!enif_get_resource(env, term, span_resource, (void **)&res) || res->span == NULL) {
        return 0;
    }
    *out = res->span;
    return 1;
}

static ERL_NIF_TERM nif_create_root_span(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_string_t namespace_;
    (void)argc;
    if (!get_string(env, argv[0], &namespace_)) {
        return enif_make_badarg(env);
    }
    return make_span(env, appsignal_create_root_span(namespace_));
}

static ERL_NIF_TERM nif_create_child_span(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *parent;
    (void)argc;
    if (!get_span(env, argv[0], &parent)) {
        return enif_make_badarg(env);
    }
    return make_span(env, appsignal_create_child_span(parent));
}

static ERL_NIF_TERM nif_set_span_name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *span;
    appsignal_string_t name;
    (void)argc;
    if (!get_span(env, argv[0], &span) || !get_string(env, argv[1], &name)) {
        return enif_make_badarg(env);
    }
    appsignal_set_span_name(span, name);
    return atom_ok;
}

/* (span, name, message, backtrace): backtrace a list of binaries, made into a data array for the
 * call and freed after it. */
static ERL_NIF_TERM nif_add_span_error(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *span;
    appsignal_string_t name, message, line;
    appsignal_data_t *backtrace;
    ERL_NIF_TERM list = argv[3], head;
    (void)argc;
    if (!get_span(env, argv[0], &span) || !get_string(env, argv[1], &name) ||
        !get_string(env, argv[2], &message) || !enif_is_list(env, list)) {
        return enif_make_badarg(env);
    }
    backtrace = appsignal_data_array_new();
    while (enif_get_list_cell(env, list, &head, &list)) {
        if (!get_string(env, head, &line)) {
            appsignal_free_data(backtrace);
            return enif_make_badarg(env);
        }
        appsignal_data_array_append_string(backtrace, line);
    }
    appsignal_add_span_error(span, name, message, backtrace);
    appsignal_free_data(backtrace);
    return atom_ok;
}

static ERL_NIF_TERM nif_close_span(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *span;
    (void)argc;
    if (!get_span(env, argv[0], &span)) {
        return enif_make_badarg(env);
    }
    appsignal_close_span(span);
    return atom_ok;
}

static ERL_NIF_TERM nif_span_id(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *span;
    (void)argc;
    if (!get_span(env, argv[0], &span)) {
        return enif_make_badarg(env);
    }
    return make_string(env, appsignal_span_id(span));
}

static ERL_NIF_TERM nif_span_to_json(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    appsignal_span_t *span;
    (void)argc;
    if (!get_span(env, argv[0], &span)) {
        return enif_make_badarg(env);
    }
    return make_string(env, appsignal_span_to_json(span));
}

static ErlNifFunc nif_funcs[] = {
    {"start", 0, nif_start, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"stop", 0, nif_stop, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"diagnose", 0, nif_diagnose, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"env_put", 2, nif_env_put, 0},
    {"env_get", 1, nif_env_get, 0},
    {"env_delete", 1, nif_env_delete, 0},
    {"env_clear", 0, nif_env_clear, 0},
    {"increment_counter", 3, nif_increment_counter, 0},
    {"set_gauge", 3, nif_set_gauge, 0},
    {"add_distribution_value", 3, nif_add_distribution_value, 0},
    {"create_root_span", 1, nif_create_root_span, 0},
    {"create_child_span", 1, nif_create_child_span, 0},
    {"set_span_name", 2, nif_set_span_name, 0},
    {"add_span_error", 4, nif_add_span_error, 0},
    {"close_span", 1, nif_close_span, 0},
    {"span_id", 1, nif_span_id, 0},
    {"span_to_json", 1, nif_span_to_json, 0},
};

ERL_NIF_INIT(Elixir.AppsignalExample.Nif, nif_funcs, load, NULL, upgrade, NULL)
