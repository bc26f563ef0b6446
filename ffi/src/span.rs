//! `appsignal_span_t`: root and child spans, attributes, sample data, errors. Every function
//! converts its arguments and makes one call into `appsignal_agent::apm::Span`; NULL handles make
//! a call do nothing (or return NULL / an empty string). A handle is safe to use from several
//! threads at once (BEAM schedulers); only `appsignal_free_span` must not race with other calls on
//! the same handle. Spans may be freed in any order (a child keeps what it needs of its root).

use std::os::raw::{c_double, c_int, c_long, c_void};

use appsignal_agent::apm::{timestamp_ns, Span};
use appsignal_agent::data::Data;

use crate::boundary::{appsignal_string_t, return_string, to_str};
use crate::data::{appsignal_data_t, data_ref};
use crate::transaction::long;

/// An opaque span. Create with `appsignal_create_*span*`; free once with `appsignal_free_span`.
pub struct appsignal_span_t {
    pub(crate) span: Span,
}

/// Borrows a handle. NULL gives `None`.
fn span_ref<'a>(ptr: *const appsignal_span_t) -> Option<&'a Span> {
    // SAFETY: the interface's contract: `ptr` is NULL or a live handle made by this library and
    // not yet freed (nor being freed during this call). Shared access is fine: the span's state is
    // behind a mutex.
    unsafe { ptr.as_ref() }.map(|s| &s.span)
}

fn new_handle(span: Span) -> *mut appsignal_span_t {
    Box::into_raw(Box::new(appsignal_span_t { span }))
}

/// A new root span (a new trace) in `namespace` (copied), starting now. The caller owns it and
/// frees it with `appsignal_free_span`.
#[no_mangle]
pub extern "C" fn appsignal_create_root_span(
    namespace: appsignal_string_t,
) -> *mut appsignal_span_t {
    ffi_boundary!("appsignal_create_root_span", std::ptr::null_mut(), {
        new_handle(Span::root(&to_str(namespace), None))
    })
}

/// As `appsignal_create_root_span`, starting at `seconds` + `nanoseconds` since the Unix epoch.
/// The caller owns the returned handle.
#[no_mangle]
pub extern "C" fn appsignal_create_root_span_with_timestamp(
    namespace: appsignal_string_t,
    seconds: i64,
    nanoseconds: i64,
) -> *mut appsignal_span_t {
    ffi_boundary!(
        "appsignal_create_root_span_with_timestamp",
        std::ptr::null_mut(),
        {
            new_handle(Span::root(
                &to_str(namespace),
                Some(timestamp_ns(seconds, nanoseconds)),
            ))
        }
    )
}

/// A child of `parent`, starting now. The caller owns the returned handle (free it with
/// `appsignal_free_span`, before or after the parent) and keeps ownership of `parent`. NULL when
/// `parent` is NULL.
#[no_mangle]
pub extern "C" fn appsignal_create_child_span(
    parent: *mut appsignal_span_t,
) -> *mut appsignal_span_t {
    ffi_boundary!("appsignal_create_child_span", std::ptr::null_mut(), {
        span_ref(parent).map_or(std::ptr::null_mut(), |p| new_handle(p.child(None)))
    })
}

/// As `appsignal_create_child_span`, starting at `seconds` + `nanoseconds` since the Unix epoch.
/// The caller owns the returned handle and keeps ownership of `parent`.
#[no_mangle]
pub extern "C" fn appsignal_create_child_span_with_timestamp(
    parent: *mut appsignal_span_t,
    seconds: i64,
    nanoseconds: i64,
) -> *mut appsignal_span_t {
    ffi_boundary!(
        "appsignal_create_child_span_with_timestamp",
        std::ptr::null_mut(),
        {
            span_ref(parent).map_or(std::ptr::null_mut(), |p| {
                new_handle(p.child(Some(timestamp_ns(seconds, nanoseconds))))
            })
        }
    )
}

/// A root span continuing the trace of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), namespace `web`; an invalid header starts a new trace (log
/// line). The caller owns the returned handle.
#[no_mangle]
pub extern "C" fn appsignal_create_span_from_traceparent(
    traceparent: appsignal_string_t,
) -> *mut appsignal_span_t {
    ffi_boundary!(
        "appsignal_create_span_from_traceparent",
        std::ptr::null_mut(),
        { new_handle(Span::from_traceparent(&to_str(traceparent))) }
    )
}

/// The span id as the packages see it: 8 hex digits, the last 8 of the W3C span id (which stays
/// whole in samples, `traceparent` and OTLP). Owned by the library (valid until the next `appsignal_span_id` on
/// this thread); `len == 0` for a NULL handle. The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_span_id(span: *mut appsignal_span_t) -> appsignal_string_t {
    ffi_boundary!("appsignal_span_id", appsignal_string_t::EMPTY, {
        match span_ref(span) {
            Some(s) => return_string("appsignal_span_id", s.id()),
            None => appsignal_string_t::EMPTY,
        }
    })
}

/// Sets the name (the action of a root span), copied. The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_name(span: *mut appsignal_span_t, name: appsignal_string_t) {
    ffi_boundary!("appsignal_set_span_name", (), {
        if let Some(s) = span_ref(span) {
            s.set_name(&to_str(name))
        }
    })
}

/// Sets the name only if none was set yet (copied). The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_name_if_nil(
    span: *mut appsignal_span_t,
    name: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_span_name_if_nil", (), {
        if let Some(s) = span_ref(span) {
            s.set_name_if_nil(&to_str(name))
        }
    })
}

/// Sets the namespace, copied. The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_namespace(
    span: *mut appsignal_span_t,
    namespace: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_span_namespace", (), {
        if let Some(s) = span_ref(span) {
            s.set_namespace(&to_str(namespace))
        }
    })
}

/// Sets a string attribute (both copied). The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_attribute_string(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_span_attribute_string", (), {
        if let Some(s) = span_ref(span) {
            s.set_attribute(&to_str(key), Data::String(to_str(value).into_owned()))
        }
    })
}

/// Sets an integer attribute (key copied). The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_attribute_int(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    value: c_long,
) {
    ffi_boundary!("appsignal_set_span_attribute_int", (), {
        if let Some(s) = span_ref(span) {
            s.set_attribute(&to_str(key), Data::Integer(long(value)))
        }
    })
}

/// Sets a boolean attribute (non-zero is true; key copied). The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_attribute_bool(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    value: c_int,
) {
    ffi_boundary!("appsignal_set_span_attribute_bool", (), {
        if let Some(s) = span_ref(span) {
            s.set_attribute(&to_str(key), Data::Bool(value != 0))
        }
    })
}

/// Sets a float attribute (key copied). The caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_attribute_double(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    value: c_double,
) {
    ffi_boundary!("appsignal_set_span_attribute_double", (), {
        if let Some(s) = span_ref(span) {
            s.set_attribute(&to_str(key), Data::Float(value))
        }
    })
}

/// Sets an attribute to a SQL query, sanitised (literals replaced by `?`). Both strings are
/// copied; the caller keeps ownership of `span`.
#[no_mangle]
pub extern "C" fn appsignal_set_span_attribute_sql_string(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_span_attribute_sql_string", (), {
        if let Some(s) = span_ref(span) {
            s.set_sql_attribute(&to_str(key), &to_str(value))
        }
    })
}

/// Sets sample data under `key`; `data` is copied (NULL is ignored). The caller keeps ownership of
/// both handles.
#[no_mangle]
pub extern "C" fn appsignal_set_span_sample_data(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    data: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_set_span_sample_data", (), {
        if let Some(s) = span_ref(span) {
            s.set_sample_data(&to_str(key), data_ref(data).as_ref())
        }
    })
}

/// Sets sample data under `key` only if the key has none yet; `data` is copied. The caller keeps
/// ownership of both handles.
#[no_mangle]
pub extern "C" fn appsignal_set_span_sample_data_if_nil(
    span: *mut appsignal_span_t,
    key: appsignal_string_t,
    data: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_set_span_sample_data_if_nil", (), {
        if let Some(s) = span_ref(span) {
            s.set_sample_data_if_nil(&to_str(key), data_ref(data).as_ref())
        }
    })
}

/// Sets the span's error: name (class), message and backtrace (normally an array of strings;
/// NULL is empty). Everything is copied; the caller keeps ownership of both handles.
#[no_mangle]
pub extern "C" fn appsignal_add_span_error(
    span: *mut appsignal_span_t,
    name: appsignal_string_t,
    message: appsignal_string_t,
    backtrace: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_add_span_error", (), {
        if let Some(s) = span_ref(span) {
            s.add_error(
                &to_str(name),
                &to_str(message),
                data_ref(backtrace).as_ref(),
            )
        }
    })
}

/// Closes the span now: a root span reports its metrics (and its sample when sampled), a child
/// becomes an event of its root. The caller still owns the handle and frees it with
/// `appsignal_free_span`.
#[no_mangle]
pub extern "C" fn appsignal_close_span(span: *mut appsignal_span_t) {
    ffi_boundary!("appsignal_close_span", (), {
        if let Some(s) = span_ref(span) {
            s.close(None)
        }
    })
}

/// As `appsignal_close_span`, ending at `seconds` + `nanoseconds` since the Unix epoch (an end
/// before the start is the start). The caller still owns the handle.
#[no_mangle]
pub extern "C" fn appsignal_close_span_with_timestamp(
    span: *mut appsignal_span_t,
    seconds: i64,
    nanoseconds: i64,
) {
    ffi_boundary!("appsignal_close_span_with_timestamp", (), {
        if let Some(s) = span_ref(span) {
            s.close(Some(timestamp_ns(seconds, nanoseconds)))
        }
    })
}

/// The span's current state as JSON, in the shape the Elixir package reads (docs/apm.md); the
/// empty string (`len == 0`) once the span is closed, and for a NULL handle. Owned by the library
/// (valid until the next `appsignal_span_to_json` on this thread). The caller keeps ownership of
/// `span`.
#[no_mangle]
pub extern "C" fn appsignal_span_to_json(span: *mut appsignal_span_t) -> appsignal_string_t {
    ffi_boundary!("appsignal_span_to_json", appsignal_string_t::EMPTY, {
        match span_ref(span) {
            Some(s) => return_string("appsignal_span_to_json", s.to_json()),
            None => appsignal_string_t::EMPTY,
        }
    })
}

/// Frees a span handle made by this library (a span that was not closed is dropped without
/// reporting). NULL is fine; freeing twice is not. Declared with `void*` so that it can be
/// registered directly as a `void (*)(void*)` destructor.
#[no_mangle]
pub extern "C" fn appsignal_free_span(span: *mut c_void) {
    ffi_boundary!("appsignal_free_span", (), {
        if !span.is_null() {
            // SAFETY: a non-NULL pointer passed here was made by `new_handle` (Box::into_raw) and
            // is freed once, by the interface's contract.
            drop(unsafe { Box::from_raw(span.cast::<appsignal_span_t>()) });
        }
    })
}
