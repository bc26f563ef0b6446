//! `appsignal_data_t`: maps and arrays of scalars, used for tags, sample data and backtraces.
//! A handle holds a [`DataBuf`]: its entries in one buffer inside the handle while small, so that
//! a tags map built per call is one allocation and one deallocation.

use std::os::raw::{c_double, c_int, c_long, c_void};

use appsignal_agent::data::{Data, DataBuf, Value};

use crate::boundary::{appsignal_string_t, return_string, to_bytes, to_str};

/// `long` is 64-bit here but 32-bit on other targets; the conversion is a no-op only here.
#[allow(clippy::useless_conversion)]
fn long(value: c_long) -> i64 {
    i64::from(value)
}

/// An opaque data value (a map or an array). Create with `appsignal_data_map_new` or
/// `appsignal_data_array_new`; free once with `appsignal_free_data`.
pub struct appsignal_data_t {
    pub(crate) data: DataBuf,
}

/// Borrows a handle. NULL gives `None`.
pub(crate) fn data_buf<'a>(ptr: *const appsignal_data_t) -> Option<&'a DataBuf> {
    // SAFETY: the interface's contract: `ptr` is NULL or a live handle made by this library and not
    // yet freed, not changed by another thread during this call.
    unsafe { ptr.as_ref() }.map(|d| &d.data)
}

/// The handle's value as a [`Data`] (a copy), for the APM calls that keep or render it.
pub(crate) fn data_ref(ptr: *const appsignal_data_t) -> Option<Data> {
    data_buf(ptr).map(DataBuf::to_data)
}

fn data_mut<'a>(ptr: *mut appsignal_data_t) -> Option<&'a mut DataBuf> {
    // SAFETY: as in `data_ref`, and the caller does not use the handle elsewhere during the call.
    unsafe { ptr.as_mut() }.map(|d| &mut d.data)
}

fn new_handle(data: DataBuf) -> *mut appsignal_data_t {
    Box::into_raw(Box::new(appsignal_data_t { data }))
}

/// A new empty map. The caller owns it and frees it with `appsignal_free_data`.
#[no_mangle]
pub extern "C" fn appsignal_data_map_new() -> *mut appsignal_data_t {
    ffi_boundary!("appsignal_data_map_new", std::ptr::null_mut(), {
        new_handle(DataBuf::new_map())
    })
}

/// A new empty array. The caller owns it and frees it with `appsignal_free_data`.
#[no_mangle]
pub extern "C" fn appsignal_data_array_new() -> *mut appsignal_data_t {
    ffi_boundary!("appsignal_data_array_new", std::ptr::null_mut(), {
        new_handle(DataBuf::new_array())
    })
}

/// Frees a data handle made by this library. NULL is fine; freeing twice is not. Declared with
/// `void*` so that it can be registered directly as a `void (*)(void*)` destructor.
#[no_mangle]
pub extern "C" fn appsignal_free_data(data: *mut c_void) {
    ffi_boundary!("appsignal_free_data", (), {
        if !data.is_null() {
            // SAFETY: a non-NULL pointer passed here was made by `new_handle` (Box::into_raw) and
            // is freed once, by the interface's contract.
            drop(unsafe { Box::from_raw(data.cast::<appsignal_data_t>()) });
        }
    })
}

fn map_set(
    function: &'static str,
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: Value<'_>,
) {
    let Some(target) = data_mut(map) else { return };
    if !target.map_set(&to_str(key), value) {
        not_a_map(function);
    }
}

#[cold]
fn not_a_map(function: &'static str) {
    tracing::warn!("{function}: the handle is not a map; ignored");
}

fn array_append(function: &'static str, array: *mut appsignal_data_t, value: Value<'_>) {
    let Some(target) = data_mut(array) else {
        return;
    };
    if !target.array_append(value) {
        tracing::warn!("{function}: the handle is not an array; ignored");
    }
}

/// Sets `key` to a string in a map (both copied).
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_string(
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_data_map_set_string", (), {
        let Some(target) = data_mut(map) else { return };
        if !target.map_set_string(to_bytes(key), to_bytes(value)) {
            not_a_map("appsignal_data_map_set_string");
        }
    })
}

/// Sets `key` to an integer in a map.
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_integer(
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: c_long,
) {
    ffi_boundary!("appsignal_data_map_set_integer", (), {
        map_set(
            "appsignal_data_map_set_integer",
            map,
            key,
            Value::Integer(long(value)),
        )
    })
}

/// Sets `key` to a float in a map.
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_float(
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: c_double,
) {
    ffi_boundary!("appsignal_data_map_set_float", (), {
        map_set(
            "appsignal_data_map_set_float",
            map,
            key,
            Value::Float(value),
        )
    })
}

/// Sets `key` to a boolean (non-zero is true) in a map.
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_boolean(
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: c_int,
) {
    ffi_boundary!("appsignal_data_map_set_boolean", (), {
        map_set(
            "appsignal_data_map_set_boolean",
            map,
            key,
            Value::Bool(value != 0),
        )
    })
}

/// Sets `key` to null in a map.
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_null(map: *mut appsignal_data_t, key: appsignal_string_t) {
    ffi_boundary!("appsignal_data_map_set_null", (), {
        map_set("appsignal_data_map_set_null", map, key, Value::Null)
    })
}

/// Sets `key` to a copy of `value` (a map or array) in a map. The caller still owns `value`.
#[no_mangle]
pub extern "C" fn appsignal_data_map_set_data(
    map: *mut appsignal_data_t,
    key: appsignal_string_t,
    value: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_data_map_set_data", (), {
        if std::ptr::eq(map, value) {
            tracing::warn!("appsignal_data_map_set_data: a map cannot contain itself; ignored");
            return;
        }
        let Some(value) = data_buf(value) else {
            return;
        };
        map_set("appsignal_data_map_set_data", map, key, Value::Data(value))
    })
}

/// Appends a string (copied) to an array.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_string(
    array: *mut appsignal_data_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_data_array_append_string", (), {
        array_append(
            "appsignal_data_array_append_string",
            array,
            Value::Str(&to_str(value)),
        )
    })
}

/// Appends an integer to an array.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_integer(array: *mut appsignal_data_t, value: c_long) {
    ffi_boundary!("appsignal_data_array_append_integer", (), {
        array_append(
            "appsignal_data_array_append_integer",
            array,
            Value::Integer(long(value)),
        )
    })
}

/// Appends a float to an array.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_float(array: *mut appsignal_data_t, value: c_double) {
    ffi_boundary!("appsignal_data_array_append_float", (), {
        array_append(
            "appsignal_data_array_append_float",
            array,
            Value::Float(value),
        )
    })
}

/// Appends a boolean (non-zero is true) to an array.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_boolean(array: *mut appsignal_data_t, value: c_int) {
    ffi_boundary!("appsignal_data_array_append_boolean", (), {
        array_append(
            "appsignal_data_array_append_boolean",
            array,
            Value::Bool(value != 0),
        )
    })
}

/// Appends null to an array.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_null(array: *mut appsignal_data_t) {
    ffi_boundary!("appsignal_data_array_append_null", (), {
        array_append("appsignal_data_array_append_null", array, Value::Null)
    })
}

/// Appends a copy of `value` (a map or array) to an array. The caller still owns `value`.
#[no_mangle]
pub extern "C" fn appsignal_data_array_append_data(
    array: *mut appsignal_data_t,
    value: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_data_array_append_data", (), {
        if std::ptr::eq(array, value) {
            tracing::warn!(
                "appsignal_data_array_append_data: an array cannot contain itself; ignored"
            );
            return;
        }
        let Some(value) = data_buf(value) else {
            return;
        };
        array_append(
            "appsignal_data_array_append_data",
            array,
            Value::Data(value),
        )
    })
}

/// 1 when both handles hold equal data (maps compare by content, whatever the insertion order),
/// else 0. Two NULLs are equal; NULL and a handle are not.
#[no_mangle]
pub extern "C" fn appsignal_data_equal(
    a: *const appsignal_data_t,
    b: *const appsignal_data_t,
) -> c_int {
    ffi_boundary!("appsignal_data_equal", 0, {
        c_int::from(data_ref(a) == data_ref(b))
    })
}

/// The data as JSON. Owned by the library (valid until the next `appsignal_data_to_json` on this
/// thread); `len == 0` for a NULL handle.
#[no_mangle]
pub extern "C" fn appsignal_data_to_json(data: *const appsignal_data_t) -> appsignal_string_t {
    ffi_boundary!("appsignal_data_to_json", appsignal_string_t::EMPTY, {
        match data_ref(data) {
            Some(d) => return_string("appsignal_data_to_json", d.to_json()),
            None => appsignal_string_t::EMPTY,
        }
    })
}
