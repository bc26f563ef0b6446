/* appsignal_ext: the Ruby binding of libappsignal (appsignal.h), as thin as AppSignal's own
 * extension: every function converts its arguments and calls the library, nothing more.
 *
 *   AppsignalExt.start / stop / diagnose / env_put(k, v) / env_get(k) / env_delete(k) / env_clear
 *   AppsignalExt.increment_counter(name, value, tags = nil)   (tags: an AppsignalExt::Data map or nil)
 *   AppsignalExt.set_gauge(name, value, tags = nil)
 *   AppsignalExt.add_distribution_value(name, value, tags = nil)
 *   AppsignalExt::Data.map / .array, #set_string / set_integer / set_float / set_boolean / set_null /
 *     set_data, #append_*, #to_json, #==
 *
 * Strings go to the library as appsignal_string_t {RSTRING_LEN, RSTRING_PTR}: no NUL terminator
 * needed, no copy; the library copies what it keeps. An AppsignalExt::Data object owns one
 * appsignal_data_t*, freed by the GC through appsignal_free_data registered directly as `dfree`
 * (the header declares it as void (*)(void*) for exactly this).
 *
 *   AppsignalExt.start_transaction(id, namespace, gc_ms) -> AppsignalExt::Transaction
 *   AppsignalExt::Transaction#set_action(action) / set_namespace(ns) / set_metadata(k, v) /
 *     start_event(gc_ms) / finish_event(name, title, body, body_format, gc_ms) /
 *     set_error(class, message, backtrace = nil) / set_sample_data(key, data) /
 *     finish(gc_ms) -> true when sampled / complete / free / freed? / to_json
 *
 * An AppsignalExt::Transaction owns one appsignal_transaction_t*, with appsignal_free_transaction
 * as `dfree` directly, the same way. `free` releases it early (the request is over; no need to wait
 * for the GC): it frees the handle and clears the pointer, so the GC's later dfree gets NULL (a
 * no-op for the library) and any later call raises instead of touching freed memory.
 *
 *   AppsignalExt.create_root_span(namespace) / create_root_span_with_timestamp(ns, sec, nsec)
 *     -> AppsignalExt::Span
 *   AppsignalExt::Span#create_child / span_id / set_name(name) / set_namespace(ns) /
 *     set_attribute_string / set_attribute_int / set_attribute_bool / set_attribute_double(key, v) /
 *     set_sample_data(key, data) / add_error(name, message, backtrace = nil) / close / to_json / free
 *
 * An AppsignalExt::Span owns one appsignal_span_t* the same way (`dfree` = appsignal_free_span;
 * spans may be freed in any order). `to_json` is nil once the span is closed.
 */
#include <ruby.h>
#include <ruby/thread.h>

#include "appsignal.h"

static VALUE mAppsignalExt;
static VALUE cData;
static VALUE cTransaction;
static VALUE cSpan;

/* ---- strings -------------------------------------------------------------------------------- */

/* `*v` must stay alive until the library call returns: callers pass the address of a local (which
 * keeps the object on the stack, so the GC neither frees nor moves it) and end with RB_GC_GUARD.
 * Raises TypeError for non-strings (after to_str). */
static appsignal_string_t to_appsignal_string(VALUE *v)
{
    appsignal_string_t s;
    rb_string_value(v);
    s.len = (size_t)RSTRING_LEN(*v);
    s.buf = RSTRING_PTR(*v);
    return s;
}

/* A string returned by the library (valid until the next call of that function on this thread),
 * copied into a Ruby string; nil when the library says "none" (len == 0). */
static VALUE from_appsignal_string(appsignal_string_t s)
{
    if (s.len == 0 || s.buf == NULL) {
        return Qnil;
    }
    return rb_utf8_str_new(s.buf, (long)s.len);
}

/* ---- AppsignalExt::Data --------------------------------------------------------------------- */

static const rb_data_type_t data_type = {
    .wrap_struct_name = "AppsignalExt::Data",
    .function = {
        .dmark = NULL,                /* the handle holds no Ruby objects */
        .dfree = appsignal_free_data, /* the library's own free, directly */
        .dsize = NULL,
    },
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE wrap_data(appsignal_data_t *data)
{
    if (data == NULL) {
        rb_raise(rb_eNoMemError, "appsignal: cannot create a data object");
    }
    return TypedData_Wrap_Struct(cData, &data_type, data);
}

static appsignal_data_t *get_data(VALUE self)
{
    appsignal_data_t *data;
    TypedData_Get_Struct(self, appsignal_data_t, &data_type, data);
    return data;
}

/* nil -> NULL (the library accepts NULL tags); an AppsignalExt::Data -> its handle; else TypeError. */
static const appsignal_data_t *optional_data(VALUE v)
{
    if (NIL_P(v)) {
        return NULL;
    }
    return (const appsignal_data_t *)rb_check_typeddata(v, &data_type);
}

static VALUE data_s_map(VALUE klass)
{
    (void)klass;
    return wrap_data(appsignal_data_map_new());
}

static VALUE data_s_array(VALUE klass)
{
    (void)klass;
    return wrap_data(appsignal_data_array_new());
}

static VALUE data_set_string(VALUE self, VALUE key, VALUE value)
{
    appsignal_data_map_set_string(get_data(self), to_appsignal_string(&key),
                                  to_appsignal_string(&value));
    RB_GC_GUARD(key);
    RB_GC_GUARD(value);
    return self;
}

static VALUE data_set_integer(VALUE self, VALUE key, VALUE value)
{
    long n = NUM2LONG(value);
    appsignal_data_map_set_integer(get_data(self), to_appsignal_string(&key), n);
    RB_GC_GUARD(key);
    return self;
}

static VALUE data_set_float(VALUE self, VALUE key, VALUE value)
{
    double d = NUM2DBL(value);
    appsignal_data_map_set_float(get_data(self), to_appsignal_string(&key), d);
    RB_GC_GUARD(key);
    return self;
}

static VALUE data_set_boolean(VALUE self, VALUE key, VALUE value)
{
    appsignal_data_map_set_boolean(get_data(self), to_appsignal_string(&key), RTEST(value) ? 1 : 0);
    RB_GC_GUARD(key);
    return self;
}

static VALUE data_set_null(VALUE self, VALUE key)
{
    appsignal_data_map_set_null(get_data(self), to_appsignal_string(&key));
    RB_GC_GUARD(key);
    return self;
}

static VALUE data_set_data(VALUE self, VALUE key, VALUE value)
{
    appsignal_data_map_set_data(get_data(self), to_appsignal_string(&key), get_data(value));
    RB_GC_GUARD(key);
    RB_GC_GUARD(value);
    return self;
}

static VALUE data_append_string(VALUE self, VALUE value)
{
    appsignal_data_array_append_string(get_data(self), to_appsignal_string(&value));
    RB_GC_GUARD(value);
    return self;
}

static VALUE data_append_integer(VALUE self, VALUE value)
{
    appsignal_data_array_append_integer(get_data(self), NUM2LONG(value));
    return self;
}

static VALUE data_append_float(VALUE self, VALUE value)
{
    appsignal_data_array_append_float(get_data(self), NUM2DBL(value));
    return self;
}

static VALUE data_append_boolean(VALUE self, VALUE value)
{
    appsignal_data_array_append_boolean(get_data(self), RTEST(value) ? 1 : 0);
    return self;
}

static VALUE data_append_null(VALUE self)
{
    appsignal_data_array_append_null(get_data(self));
    return self;
}

static VALUE data_append_data(VALUE self, VALUE value)
{
    appsignal_data_array_append_data(get_data(self), get_data(value));
    RB_GC_GUARD(value);
    return self;
}

static VALUE data_to_json(VALUE self)
{
    return from_appsignal_string(appsignal_data_to_json(get_data(self)));
}

static VALUE data_equal(VALUE self, VALUE other)
{
    if (!rb_typeddata_is_kind_of(other, &data_type)) {
        return Qfalse;
    }
    return appsignal_data_equal(get_data(self), get_data(other)) == 1 ? Qtrue : Qfalse;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

/* start returns within milliseconds and stop waits at most _APPSIGNAL_STOP_TIMEOUT_MS (5 s):
 * both run without the GVL so that other Ruby threads keep running meanwhile. */
static void *start_without_gvl(void *unused)
{
    (void)unused;
    appsignal_start();
    return NULL;
}

static void *stop_without_gvl(void *unused)
{
    (void)unused;
    appsignal_stop();
    return NULL;
}

static VALUE ext_start(VALUE self)
{
    (void)self;
    rb_thread_call_without_gvl(start_without_gvl, NULL, NULL, NULL);
    return Qnil;
}

static VALUE ext_stop(VALUE self)
{
    (void)self;
    rb_thread_call_without_gvl(stop_without_gvl, NULL, NULL, NULL);
    return Qnil;
}

static VALUE ext_diagnose(VALUE self)
{
    (void)self;
    return from_appsignal_string(appsignal_diagnose());
}

static VALUE ext_env_put(VALUE self, VALUE key, VALUE value)
{
    (void)self;
    appsignal_env_put(to_appsignal_string(&key), to_appsignal_string(&value));
    RB_GC_GUARD(key);
    RB_GC_GUARD(value);
    return Qnil;
}

static VALUE ext_env_get(VALUE self, VALUE key)
{
    VALUE result;
    (void)self;
    result = from_appsignal_string(appsignal_env_get(to_appsignal_string(&key)));
    RB_GC_GUARD(key);
    return result;
}

static VALUE ext_env_delete(VALUE self, VALUE key)
{
    (void)self;
    appsignal_env_delete(to_appsignal_string(&key));
    RB_GC_GUARD(key);
    return Qnil;
}

static VALUE ext_env_clear(VALUE self)
{
    (void)self;
    appsignal_env_clear();
    return Qnil;
}

/* ---- metrics -------------------------------------------------------------------------------- */

typedef void (*metric_fn)(appsignal_string_t, double, const appsignal_data_t *);

static VALUE call_metric(metric_fn fn, int argc, VALUE *argv)
{
    VALUE name, value, tags;
    double d;
    const appsignal_data_t *t;
    rb_scan_args(argc, argv, "21", &name, &value, &tags);
    d = NUM2DBL(value);
    t = optional_data(tags);
    fn(to_appsignal_string(&name), d, t);
    RB_GC_GUARD(name);
    RB_GC_GUARD(tags);
    return Qnil;
}

static VALUE ext_increment_counter(int argc, VALUE *argv, VALUE self)
{
    (void)self;
    return call_metric(appsignal_increment_counter, argc, argv);
}

static VALUE ext_set_gauge(int argc, VALUE *argv, VALUE self)
{
    (void)self;
    return call_metric(appsignal_set_gauge, argc, argv);
}

static VALUE ext_add_distribution_value(int argc, VALUE *argv, VALUE self)
{
    (void)self;
    return call_metric(appsignal_add_distribution_value, argc, argv);
}

/* ---- AppsignalExt::Transaction ------------------------------------------------------------ */

static const rb_data_type_t transaction_type = {
    .wrap_struct_name = "AppsignalExt::Transaction",
    .function = {
        .dmark = NULL,                       /* the handle holds no Ruby objects */
        .dfree = appsignal_free_transaction, /* the library's own free, directly (NULL is fine) */
        .dsize = NULL,
    },
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

/* The live handle; raises once `free` was called. */
static appsignal_transaction_t *get_transaction(VALUE self)
{
    appsignal_transaction_t *txn;
    TypedData_Get_Struct(self, appsignal_transaction_t, &transaction_type, txn);
    if (txn == NULL) {
        rb_raise(rb_eRuntimeError, "appsignal: transaction already freed");
    }
    return txn;
}

static VALUE ext_start_transaction(VALUE self, VALUE id, VALUE namespace_, VALUE gc_ms)
{
    long gc = NUM2LONG(gc_ms);
    appsignal_transaction_t *txn;
    (void)self;
    txn = appsignal_start_transaction(to_appsignal_string(&id), to_appsignal_string(&namespace_), gc);
    RB_GC_GUARD(id);
    RB_GC_GUARD(namespace_);
    if (txn == NULL) {
        rb_raise(rb_eNoMemError, "appsignal: cannot create a transaction");
    }
    return TypedData_Wrap_Struct(cTransaction, &transaction_type, txn);
}

static VALUE txn_set_action(VALUE self, VALUE action)
{
    appsignal_set_transaction_action(get_transaction(self), to_appsignal_string(&action));
    RB_GC_GUARD(action);
    return self;
}

static VALUE txn_set_namespace(VALUE self, VALUE namespace_)
{
    appsignal_set_transaction_namespace(get_transaction(self), to_appsignal_string(&namespace_));
    RB_GC_GUARD(namespace_);
    return self;
}

static VALUE txn_set_metadata(VALUE self, VALUE key, VALUE value)
{
    appsignal_set_transaction_metadata(get_transaction(self), to_appsignal_string(&key),
                                       to_appsignal_string(&value));
    RB_GC_GUARD(key);
    RB_GC_GUARD(value);
    return self;
}

static VALUE txn_start_event(VALUE self, VALUE gc_ms)
{
    appsignal_start_event(get_transaction(self), NUM2LONG(gc_ms));
    return self;
}

static VALUE txn_finish_event(VALUE self, VALUE name, VALUE title, VALUE body, VALUE body_format,
                              VALUE gc_ms)
{
    int format = NUM2INT(body_format);
    long gc = NUM2LONG(gc_ms);
    appsignal_finish_event(get_transaction(self), to_appsignal_string(&name),
                           to_appsignal_string(&title), to_appsignal_string(&body), format, gc);
    RB_GC_GUARD(name);
    RB_GC_GUARD(title);
    RB_GC_GUARD(body);
    return self;
}

/* (class, message, backtrace = nil): backtrace an AppsignalExt::Data array or nil. */
static VALUE txn_set_error(int argc, VALUE *argv, VALUE self)
{
    VALUE klass, message, backtrace;
    const appsignal_data_t *bt;
    rb_scan_args(argc, argv, "21", &klass, &message, &backtrace);
    bt = optional_data(backtrace);
    appsignal_set_transaction_error(get_transaction(self), to_appsignal_string(&klass),
                                    to_appsignal_string(&message), bt);
    RB_GC_GUARD(klass);
    RB_GC_GUARD(message);
    RB_GC_GUARD(backtrace);
    return self;
}

static VALUE txn_set_sample_data(VALUE self, VALUE key, VALUE data)
{
    appsignal_set_transaction_sample_data(get_transaction(self), to_appsignal_string(&key),
                                          get_data(data));
    RB_GC_GUARD(key);
    RB_GC_GUARD(data);
    return self;
}

static VALUE txn_finish(VALUE self, VALUE gc_ms)
{
    return appsignal_finish_transaction(get_transaction(self), NUM2LONG(gc_ms)) == 1 ? Qtrue : Qfalse;
}

static VALUE txn_complete(VALUE self)
{
    appsignal_complete_transaction(get_transaction(self));
    return self;
}

static VALUE txn_to_json(VALUE self)
{
    return from_appsignal_string(appsignal_transaction_to_json(get_transaction(self)));
}

/* Frees the handle now (idempotent); the GC's dfree later sees NULL. */
static VALUE txn_free(VALUE self)
{
    void *txn = rb_check_typeddata(self, &transaction_type);
    RTYPEDDATA_DATA(self) = NULL;
    appsignal_free_transaction(txn);
    return Qnil;
}

static VALUE txn_freed_p(VALUE self)
{
    rb_check_typeddata(self, &transaction_type);
    return RTYPEDDATA_DATA(self) == NULL ? Qtrue : Qfalse;
}

/* ---- AppsignalExt::Span ------------------------------------------------------------------- */

static const rb_data_type_t span_type = {
    .wrap_struct_name = "AppsignalExt::Span",
    .function = {
        .dmark = NULL,                /* the handle holds no Ruby objects */
        .dfree = appsignal_free_span, /* the library's own free, directly (NULL is fine) */
        .dsize = NULL,
    },
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

static appsignal_span_t *get_span(VALUE self)
{
    appsignal_span_t *span;
    TypedData_Get_Struct(self, appsignal_span_t, &span_type, span);
    if (span == NULL) {
        rb_raise(rb_eRuntimeError, "appsignal: span already freed");
    }
    return span;
}

static VALUE wrap_span(appsignal_span_t *span)
{
    if (span == NULL) {
        rb_raise(rb_eNoMemError, "appsignal: cannot create a span");
    }
    return TypedData_Wrap_Struct(cSpan, &span_type, span);
}

static VALUE ext_create_root_span(VALUE self, VALUE namespace_)
{
    appsignal_span_t *span;
    (void)self;
    span = appsignal_create_root_span(to_appsignal_string(&namespace_));
    RB_GC_GUARD(namespace_);
    return wrap_span(span);
}

static VALUE ext_create_root_span_with_timestamp(VALUE self, VALUE namespace_, VALUE sec, VALUE nsec)
{
    int64_t s = NUM2LL(sec), ns = NUM2LL(nsec);
    appsignal_span_t *span;
    (void)self;
    span = appsignal_create_root_span_with_timestamp(to_appsignal_string(&namespace_), s, ns);
    RB_GC_GUARD(namespace_);
    return wrap_span(span);
}

static VALUE span_create_child(VALUE self)
{
    return wrap_span(appsignal_create_child_span(get_span(self)));
}

static VALUE span_span_id(VALUE self)
{
    return from_appsignal_string(appsignal_span_id(get_span(self)));
}

static VALUE span_set_name(VALUE self, VALUE name)
{
    appsignal_set_span_name(get_span(self), to_appsignal_string(&name));
    RB_GC_GUARD(name);
    return self;
}

static VALUE span_set_namespace(VALUE self, VALUE namespace_)
{
    appsignal_set_span_namespace(get_span(self), to_appsignal_string(&namespace_));
    RB_GC_GUARD(namespace_);
    return self;
}

static VALUE span_set_attribute_string(VALUE self, VALUE key, VALUE value)
{
    appsignal_set_span_attribute_string(get_span(self), to_appsignal_string(&key),
                                        to_appsignal_string(&value));
    RB_GC_GUARD(key);
    RB_GC_GUARD(value);
    return self;
}

static VALUE span_set_attribute_int(VALUE self, VALUE key, VALUE value)
{
    long v = NUM2LONG(value);
    appsignal_set_span_attribute_int(get_span(self), to_appsignal_string(&key), v);
    RB_GC_GUARD(key);
    return self;
}

static VALUE span_set_attribute_bool(VALUE self, VALUE key, VALUE value)
{
    appsignal_set_span_attribute_bool(get_span(self), to_appsignal_string(&key), RTEST(value) ? 1 : 0);
    RB_GC_GUARD(key);
    return self;
}

static VALUE span_set_attribute_double(VALUE self, VALUE key, VALUE value)
{
    double v = NUM2DBL(value);
    appsignal_set_span_attribute_double(get_span(self), to_appsignal_string(&key), v);
    RB_GC_GUARD(key);
    return self;
}

static VALUE span_set_sample_data(VALUE self, VALUE key, VALUE data)
{
    appsignal_set_span_sample_data(get_span(self), to_appsignal_string(&key), get_data(data));
    RB_GC_GUARD(key);
    RB_GC_GUARD(data);
    return self;
}

/* (name, message, backtrace = nil): backtrace an AppsignalExt::Data array or nil. */
static VALUE span_add_error(int argc, VALUE *argv, VALUE self)
{
    VALUE name, message, backtrace;
    const appsignal_data_t *bt;
    rb_scan_args(argc, argv, "21", &name, &message, &backtrace);
    bt = optional_data(backtrace);
    appsignal_add_span_error(get_span(self), to_appsignal_string(&name), to_appsignal_string(&message), bt);
    RB_GC_GUARD(name);
    RB_GC_GUARD(message);
    RB_GC_GUARD(backtrace);
    return self;
}

static VALUE span_close(VALUE self)
{
    appsignal_close_span(get_span(self));
    return self;
}

static VALUE span_to_json(VALUE self)
{
    return from_appsignal_string(appsignal_span_to_json(get_span(self)));
}

/* Frees the handle now (idempotent); the GC's dfree later sees NULL. */
static VALUE span_free(VALUE self)
{
    void *span = rb_check_typeddata(self, &span_type);
    RTYPEDDATA_DATA(self) = NULL;
    appsignal_free_span(span);
    return Qnil;
}

void Init_appsignal_ext(void)
{
    mAppsignalExt = rb_define_module("AppsignalExt");

    rb_define_module_function(mAppsignalExt, "start", ext_start, 0);
    rb_define_module_function(mAppsignalExt, "stop", ext_stop, 0);
    rb_define_module_function(mAppsignalExt, "diagnose", ext_diagnose, 0);
    rb_define_module_function(mAppsignalExt, "env_put", ext_env_put, 2);
    rb_define_module_function(mAppsignalExt, "env_get", ext_env_get, 1);
    rb_define_module_function(mAppsignalExt, "env_delete", ext_env_delete, 1);
    rb_define_module_function(mAppsignalExt, "env_clear", ext_env_clear, 0);
    rb_define_module_function(mAppsignalExt, "increment_counter", ext_increment_counter, -1);
    rb_define_module_function(mAppsignalExt, "set_gauge", ext_set_gauge, -1);
    rb_define_module_function(mAppsignalExt, "add_distribution_value", ext_add_distribution_value, -1);

    cData = rb_define_class_under(mAppsignalExt, "Data", rb_cObject);
    rb_undef_alloc_func(cData); /* only through Data.map / Data.array */
    rb_define_singleton_method(cData, "map", data_s_map, 0);
    rb_define_singleton_method(cData, "array", data_s_array, 0);
    rb_define_method(cData, "set_string", data_set_string, 2);
    rb_define_method(cData, "set_integer", data_set_integer, 2);
    rb_define_method(cData, "set_float", data_set_float, 2);
    rb_define_method(cData, "set_boolean", data_set_boolean, 2);
    rb_define_method(cData, "set_null", data_set_null, 1);
    rb_define_method(cData, "set_data", data_set_data, 2);
    rb_define_method(cData, "append_string", data_append_string, 1);
    rb_define_method(cData, "append_integer", data_append_integer, 1);
    rb_define_method(cData, "append_float", data_append_float, 1);
    rb_define_method(cData, "append_boolean", data_append_boolean, 1);
    rb_define_method(cData, "append_null", data_append_null, 0);
    rb_define_method(cData, "append_data", data_append_data, 1);
    rb_define_method(cData, "to_json", data_to_json, 0);
    rb_define_method(cData, "==", data_equal, 1);

    rb_define_module_function(mAppsignalExt, "start_transaction", ext_start_transaction, 3);
    cTransaction = rb_define_class_under(mAppsignalExt, "Transaction", rb_cObject);
    rb_undef_alloc_func(cTransaction); /* only through AppsignalExt.start_transaction */
    rb_define_method(cTransaction, "set_action", txn_set_action, 1);
    rb_define_method(cTransaction, "set_namespace", txn_set_namespace, 1);
    rb_define_method(cTransaction, "set_metadata", txn_set_metadata, 2);
    rb_define_method(cTransaction, "start_event", txn_start_event, 1);
    rb_define_method(cTransaction, "finish_event", txn_finish_event, 5);
    rb_define_method(cTransaction, "set_error", txn_set_error, -1);
    rb_define_method(cTransaction, "set_sample_data", txn_set_sample_data, 2);
    rb_define_method(cTransaction, "finish", txn_finish, 1);
    rb_define_method(cTransaction, "complete", txn_complete, 0);
    rb_define_method(cTransaction, "to_json", txn_to_json, 0);
    rb_define_method(cTransaction, "free", txn_free, 0);
    rb_define_method(cTransaction, "freed?", txn_freed_p, 0);

    rb_define_module_function(mAppsignalExt, "create_root_span", ext_create_root_span, 1);
    rb_define_module_function(mAppsignalExt, "create_root_span_with_timestamp",
                              ext_create_root_span_with_timestamp, 3);
    cSpan = rb_define_class_under(mAppsignalExt, "Span", rb_cObject);
    rb_undef_alloc_func(cSpan); /* only through AppsignalExt.create_root_span / Span#create_child */
    rb_define_method(cSpan, "create_child", span_create_child, 0);
    rb_define_method(cSpan, "span_id", span_span_id, 0);
    rb_define_method(cSpan, "set_name", span_set_name, 1);
    rb_define_method(cSpan, "set_namespace", span_set_namespace, 1);
    rb_define_method(cSpan, "set_attribute_string", span_set_attribute_string, 2);
    rb_define_method(cSpan, "set_attribute_int", span_set_attribute_int, 2);
    rb_define_method(cSpan, "set_attribute_bool", span_set_attribute_bool, 2);
    rb_define_method(cSpan, "set_attribute_double", span_set_attribute_double, 2);
    rb_define_method(cSpan, "set_sample_data", span_set_sample_data, 2);
    rb_define_method(cSpan, "add_error", span_add_error, -1);
    rb_define_method(cSpan, "close", span_close, 0);
    rb_define_method(cSpan, "to_json", span_to_json, 0);
    rb_define_method(cSpan, "free", span_free, 0);
}
