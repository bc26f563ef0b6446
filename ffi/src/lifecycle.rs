//! Lifecycle: start, stop, diagnose and the library's environment table.

use crate::boundary::{appsignal_string_t, return_string, to_str};

/// Starts the agent in this process: reads the configuration (environment and the table filled by
/// `appsignal_env_put`), prepares the working directory and joins the election. Returns within
/// milliseconds and never fails the caller; a problem disables the agent (see `appsignal_diagnose`).
#[no_mangle]
pub extern "C" fn appsignal_start() {
    ffi_boundary!("appsignal_start", (), { appsignal_agent::agent::start() })
}

/// Flushes this process's data (to the leader, or as leader to the Push API) and stops. Waits at
/// most `_APPSIGNAL_STOP_TIMEOUT_MS` (default 5 s).
#[no_mangle]
pub extern "C" fn appsignal_stop() {
    ffi_boundary!("appsignal_stop", (), { appsignal_agent::agent::stop() })
}

/// A JSON report: configuration, working directory, lock holder, socket, role, disabled reason.
/// The returned string is owned by the library (valid until the next call on this thread).
#[no_mangle]
pub extern "C" fn appsignal_diagnose() -> appsignal_string_t {
    ffi_boundary!("appsignal_diagnose", appsignal_string_t::EMPTY, {
        return_string(
            "appsignal_diagnose",
            appsignal_agent::diagnose::report().to_string(),
        )
    })
}

/// Sets `key` to `value` in the library's environment table (read by `appsignal_start`, winning
/// over the process environment). Both strings are copied.
#[no_mangle]
pub extern "C" fn appsignal_env_put(key: appsignal_string_t, value: appsignal_string_t) {
    ffi_boundary!("appsignal_env_put", (), {
        appsignal_agent::config::env_put(&to_str(key), &to_str(value))
    })
}

/// The value of `key` in the library's table; `len == 0` when unset. Owned by the library (valid
/// until the next `appsignal_env_get` on this thread).
#[no_mangle]
pub extern "C" fn appsignal_env_get(key: appsignal_string_t) -> appsignal_string_t {
    ffi_boundary!("appsignal_env_get", appsignal_string_t::EMPTY, {
        let value = appsignal_agent::config::env_get(&to_str(key)).unwrap_or_default();
        return_string("appsignal_env_get", value)
    })
}

/// Removes `key` from the library's table.
#[no_mangle]
pub extern "C" fn appsignal_env_delete(key: appsignal_string_t) {
    ffi_boundary!("appsignal_env_delete", (), {
        appsignal_agent::config::env_delete(&to_str(key))
    })
}

/// Empties the library's table.
#[no_mangle]
pub extern "C" fn appsignal_env_clear() {
    ffi_boundary!("appsignal_env_clear", (), {
        appsignal_agent::config::env_clear()
    })
}
