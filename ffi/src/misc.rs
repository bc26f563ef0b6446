//! Process-wide calls: server state, container detection, environment metadata, allocation
//! tracking. Each converts its arguments and makes one call into `appsignal_agent::apm::misc`.

use std::os::raw::c_int;

use crate::boundary::{appsignal_string_t, return_string, to_str};

/// The server state stored under `key`; `len == 0` for a key that is not set. Owned by the
/// library (valid until the next `appsignal_get_server_state` on this thread).
#[no_mangle]
pub extern "C" fn appsignal_get_server_state(key: appsignal_string_t) -> appsignal_string_t {
    ffi_boundary!("appsignal_get_server_state", appsignal_string_t::EMPTY, {
        return_string(
            "appsignal_get_server_state",
            appsignal_agent::apm::misc::get_server_state(&to_str(key)),
        )
    })
}

/// 1 when this process runs in a container (the `_APPSIGNAL_RUNNING_IN_CONTAINER` setting when
/// given, else detection), else 0.
#[no_mangle]
pub extern "C" fn appsignal_running_in_container() -> c_int {
    ffi_boundary!("appsignal_running_in_container", 0, {
        c_int::from(appsignal_agent::apm::misc::running_in_container())
    })
}

/// Sets `key` to `value` (both copied) in the environment metadata added to every sample.
#[no_mangle]
pub extern "C" fn appsignal_set_environment_metadata(
    key: appsignal_string_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_environment_metadata", (), {
        appsignal_agent::apm::misc::set_environment_metadata(&to_str(key), &to_str(value))
    })
}

/// Counts one allocation (an atomic increment); each sample reports the allocations counted
/// between its start and its completion.
#[no_mangle]
pub extern "C" fn appsignal_track_allocation() {
    ffi_boundary!("appsignal_track_allocation", (), {
        appsignal_agent::apm::misc::track_allocation()
    })
}
