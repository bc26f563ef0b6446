//! `appsignal_log`: one log line handed to the agent. Converts its arguments and makes one call
//! into `appsignal_agent::apm::log`.

use std::os::raw::c_int;

use crate::boundary::{appsignal_string_t, to_str};
use crate::data::{appsignal_data_t, data_ref};

/// Records a log line. `severity`: 2 debug, 3 info, 5 warn, 6 error, 7 fatal (others clamped).
/// `format`: 0 plaintext, 1 logfmt, 2 JSON, 3 autodetect (logfmt and JSON messages are parsed into
/// attributes). `attributes` is NULL or a map; it is read, not kept (the caller still owns it).
/// Strings are copied.
#[no_mangle]
pub extern "C" fn appsignal_log(
    group: appsignal_string_t,
    severity: c_int,
    format: c_int,
    message: appsignal_string_t,
    attributes: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_log", (), {
        appsignal_agent::apm::log::log(
            &to_str(group),
            severity,
            format,
            &to_str(message),
            data_ref(attributes).as_ref(),
        )
    })
}
