//! Custom metrics. Each call updates this process's pre-aggregate and returns: no I/O, no waiting
//! on the leader. `tags` is NULL or a map of scalar values; it is read, not kept (the caller still owns it).

use std::os::raw::c_double;

use crate::boundary::{appsignal_string_t, to_bytes};
use crate::data::{appsignal_data_t, data_buf};

/// Sets a gauge: the last value in the window wins.
#[no_mangle]
pub extern "C" fn appsignal_set_gauge(
    key: appsignal_string_t,
    value: c_double,
    tags: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_set_gauge", (), {
        appsignal_agent::recorder::set_gauge(to_bytes(key), value, data_buf(tags))
    })
}

/// Adds `value` to a counter: values are summed per window.
#[no_mangle]
pub extern "C" fn appsignal_increment_counter(
    key: appsignal_string_t,
    value: c_double,
    tags: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_increment_counter", (), {
        appsignal_agent::recorder::increment_counter(to_bytes(key), value, data_buf(tags))
    })
}

/// Adds a value to a distribution: count, sum, min, max and quantiles per window.
#[no_mangle]
pub extern "C" fn appsignal_add_distribution_value(
    key: appsignal_string_t,
    value: c_double,
    tags: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_add_distribution_value", (), {
        appsignal_agent::recorder::add_distribution_value(to_bytes(key), value, data_buf(tags))
    })
}
