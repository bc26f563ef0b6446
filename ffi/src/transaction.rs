//! `appsignal_transaction_t`: transactions, their events, error, sample data and metadata.
//! Every function converts its arguments and makes one call into
//! `appsignal_agent::apm::Transaction`; NULL handles make a call do nothing (or return 0 / NULL /
//! an empty string). A handle is safe to use from several threads at once (calls are serialised);
//! only `appsignal_free_transaction` must not race with other calls on the same handle.

use std::os::raw::{c_int, c_long, c_void};

use appsignal_agent::apm::transaction::Body;
use appsignal_agent::apm::Transaction;

use crate::boundary::{appsignal_string_t, return_string, to_bytes, to_str};
use crate::data::{appsignal_data_t, data_ref};

/// `long` is 64-bit here but 32-bit on other targets; the conversion is a no-op only here.
#[allow(clippy::useless_conversion)]
pub(crate) fn long(value: c_long) -> i64 {
    i64::from(value)
}

/// An opaque transaction. Create with `appsignal_start_transaction` (or
/// `appsignal_duplicate_transaction`); free once with `appsignal_free_transaction`.
pub struct appsignal_transaction_t {
    pub(crate) txn: Transaction,
}

/// Borrows a handle. NULL gives `None`.
fn txn_ref<'a>(ptr: *const appsignal_transaction_t) -> Option<&'a Transaction> {
    // SAFETY: the interface's contract: `ptr` is NULL or a live handle made by this library and
    // not yet freed (nor being freed during this call). Shared access is fine: the transaction's
    // state is behind a mutex.
    unsafe { ptr.as_ref() }.map(|t| &t.txn)
}

fn new_handle(txn: Transaction) -> *mut appsignal_transaction_t {
    Box::into_raw(Box::new(appsignal_transaction_t { txn }))
}

/// Starts a transaction now. `id` is the request id (empty: a random one), `namespace` e.g.
/// `web` or `background`, `gc_duration_ms` the process's total GC time so far. The caller owns
/// the returned handle and frees it with `appsignal_free_transaction` (after
/// `appsignal_complete_transaction`, or instead of it to drop the transaction).
#[no_mangle]
pub extern "C" fn appsignal_start_transaction(
    id: appsignal_string_t,
    namespace: appsignal_string_t,
    gc_duration_ms: c_long,
) -> *mut appsignal_transaction_t {
    ffi_boundary!("appsignal_start_transaction", std::ptr::null_mut(), {
        new_handle(Transaction::start(
            to_bytes(id),
            to_bytes(namespace),
            long(gc_duration_ms),
        ))
    })
}

/// Starts an event (events nest: the next `appsignal_finish_event` closes the innermost one).
/// The caller keeps ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_start_event(
    transaction: *mut appsignal_transaction_t,
    gc_duration_ms: c_long,
) {
    ffi_boundary!("appsignal_start_event", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.start_event(long(gc_duration_ms))
        }
    })
}

/// Finishes the innermost started event with its name, title and body (all copied). Body format
/// 1 means SQL: the body is sanitised. Without a started event the call is ignored (log line).
/// The caller keeps ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_finish_event(
    transaction: *mut appsignal_transaction_t,
    name: appsignal_string_t,
    title: appsignal_string_t,
    body: appsignal_string_t,
    body_format: c_int,
    gc_duration_ms: c_long,
) {
    ffi_boundary!("appsignal_finish_event", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.finish_event(
                to_bytes(name),
                to_bytes(title),
                Body::Bytes(to_bytes(body)),
                body_format,
                long(gc_duration_ms),
            )
        }
    })
}

/// As `appsignal_finish_event`, with a data body (rendered as JSON; with format 1 its strings are
/// sanitised). The caller keeps ownership of `transaction` and `body` (which is copied).
#[no_mangle]
pub extern "C" fn appsignal_finish_event_data(
    transaction: *mut appsignal_transaction_t,
    name: appsignal_string_t,
    title: appsignal_string_t,
    body: *const appsignal_data_t,
    body_format: c_int,
    gc_duration_ms: c_long,
) {
    ffi_boundary!("appsignal_finish_event_data", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.finish_event(
                to_bytes(name),
                to_bytes(title),
                Body::Data(data_ref(body).as_ref()),
                body_format,
                long(gc_duration_ms),
            )
        }
    })
}

/// Adds an already finished event that ended now and lasted `duration` **nanoseconds** (negative
/// counts as 0), under the innermost started event. `gc_duration_ms` is accepted for
/// compatibility; the event's GC time is reported as 0. Strings are copied; the caller keeps
/// ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_record_event(
    transaction: *mut appsignal_transaction_t,
    name: appsignal_string_t,
    title: appsignal_string_t,
    body: appsignal_string_t,
    body_format: c_int,
    duration: c_long,
    gc_duration_ms: c_long,
) {
    ffi_boundary!("appsignal_record_event", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.record_event(
                to_bytes(name),
                to_bytes(title),
                Body::Bytes(to_bytes(body)),
                body_format,
                long(duration),
                long(gc_duration_ms),
            )
        }
    })
}

/// As `appsignal_record_event`, with a data body (copied). The caller keeps ownership of both
/// handles.
#[no_mangle]
pub extern "C" fn appsignal_record_event_data(
    transaction: *mut appsignal_transaction_t,
    name: appsignal_string_t,
    title: appsignal_string_t,
    body: *const appsignal_data_t,
    body_format: c_int,
    duration: c_long,
    gc_duration_ms: c_long,
) {
    ffi_boundary!("appsignal_record_event_data", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.record_event(
                to_bytes(name),
                to_bytes(title),
                Body::Data(data_ref(body).as_ref()),
                body_format,
                long(duration),
                long(gc_duration_ms),
            )
        }
    })
}

/// Sets the transaction's error: class, message and backtrace (normally an array of strings;
/// NULL is an empty backtrace). A later call replaces it. Everything is copied; the caller keeps
/// ownership of both handles.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_error(
    transaction: *mut appsignal_transaction_t,
    error_class: appsignal_string_t,
    error_message: appsignal_string_t,
    backtrace: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_set_transaction_error", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_error(
                &to_str(error_class),
                &to_str(error_message),
                data_ref(backtrace).as_ref(),
            )
        }
    })
}

/// Sets sample data under `key` (`params`, `session_data`, `environment`, `tags`,
/// `custom_data`, …). `data` is copied (NULL is ignored); the caller keeps ownership of both
/// handles. `params` and `session_data` are filtered when they leave the process.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_sample_data(
    transaction: *mut appsignal_transaction_t,
    key: appsignal_string_t,
    data: *const appsignal_data_t,
) {
    ffi_boundary!("appsignal_set_transaction_sample_data", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_sample_data(&to_str(key), data_ref(data).as_ref())
        }
    })
}

/// Sets the action (e.g. `UsersController#show`), copied. The caller keeps ownership of
/// `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_action(
    transaction: *mut appsignal_transaction_t,
    action: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_transaction_action", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_action(to_bytes(action))
        }
    })
}

/// Sets the namespace, copied. The caller keeps ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_namespace(
    transaction: *mut appsignal_transaction_t,
    namespace: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_transaction_namespace", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_namespace(to_bytes(namespace))
        }
    })
}

/// Sets when the request entered the queue, in milliseconds since the Unix epoch (0 or negative
/// clears it). The caller keeps ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_queue_start(
    transaction: *mut appsignal_transaction_t,
    queue_start: c_long,
) {
    ffi_boundary!("appsignal_set_transaction_queue_start", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_queue_start(long(queue_start))
        }
    })
}

/// Sets a metadata string (e.g. `path`, `method`), both copied. The caller keeps ownership of
/// `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_set_transaction_metadata(
    transaction: *mut appsignal_transaction_t,
    key: appsignal_string_t,
    value: appsignal_string_t,
) {
    ffi_boundary!("appsignal_set_transaction_metadata", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.set_metadata(&to_str(key), &to_str(value))
        }
    })
}

/// Ends the transaction now and returns 1 when it will be sampled (it has an error, is slow
/// (≥ 1 s) or the sampling rate picks it; never when ignored), else 0 — the caller then adds sample
/// data before `appsignal_complete_transaction`. The caller keeps ownership of `transaction`.
#[no_mangle]
pub extern "C" fn appsignal_finish_transaction(
    transaction: *mut appsignal_transaction_t,
    gc_duration_ms: c_long,
) -> c_int {
    ffi_boundary!("appsignal_finish_transaction", 0, {
        txn_ref(transaction).map_or(0, |txn| c_int::from(txn.finish(long(gc_duration_ms))))
    })
}

/// Completes the transaction: its per-action metrics and, when sampled, its sample go to the
/// agent. Later calls on it are ignored (one log line). The caller still owns the handle and frees
/// it with `appsignal_free_transaction`.
#[no_mangle]
pub extern "C" fn appsignal_complete_transaction(transaction: *mut appsignal_transaction_t) {
    ffi_boundary!("appsignal_complete_transaction", (), {
        if let Some(txn) = txn_ref(transaction) {
            txn.complete()
        }
    })
}

/// A copy of the transaction under `new_id` (copied), completed separately. The caller owns the
/// returned handle (free it with `appsignal_free_transaction`) and keeps ownership of the
/// original. NULL when `transaction` is NULL or already completed.
#[no_mangle]
pub extern "C" fn appsignal_duplicate_transaction(
    transaction: *mut appsignal_transaction_t,
    new_id: appsignal_string_t,
) -> *mut appsignal_transaction_t {
    ffi_boundary!("appsignal_duplicate_transaction", std::ptr::null_mut(), {
        txn_ref(transaction)
            .and_then(|txn| txn.duplicate(&to_str(new_id)))
            .map_or(std::ptr::null_mut(), new_handle)
    })
}

/// The transaction's current state as JSON, in the shape the Ruby gem reads (docs/apm.md): event
/// bodies as given (not sanitised), `error.name`, the backtrace as a JSON string, filtered sample
/// data, plus `finished`, `sampled`, `completed`, `open_events`. Owned by the library (valid until the next
/// `appsignal_transaction_to_json` on this thread); `len == 0` for a NULL handle.
#[no_mangle]
pub extern "C" fn appsignal_transaction_to_json(
    transaction: *mut appsignal_transaction_t,
) -> appsignal_string_t {
    ffi_boundary!(
        "appsignal_transaction_to_json",
        appsignal_string_t::EMPTY,
        {
            match txn_ref(transaction) {
                Some(txn) => return_string("appsignal_transaction_to_json", txn.to_json()),
                None => appsignal_string_t::EMPTY,
            }
        }
    )
}

/// Frees a transaction handle made by this library (a transaction that was not completed is
/// dropped without reporting). NULL is fine; freeing twice is not. Declared with `void*` so that
/// it can be registered directly as a `void (*)(void*)` destructor.
#[no_mangle]
pub extern "C" fn appsignal_free_transaction(transaction: *mut c_void) {
    ffi_boundary!("appsignal_free_transaction", (), {
        if !transaction.is_null() {
            // SAFETY: a non-NULL pointer passed here was made by `new_handle` (Box::into_raw) and
            // is freed once, by the interface's contract.
            drop(unsafe { Box::from_raw(transaction.cast::<appsignal_transaction_t>()) });
        }
    })
}
