//! The APM functions called through their `extern "C"` entry points, as an integration would call
//! them, without a running agent: NULL handles, empty strings, invalid UTF-8, duplicates, use after
//! complete, threads sharing a span, the misc functions; assertions on the `*_to_json` output.
//! What reaches the Push API is checked end to end by `tests/c/apm.c` (see `c_interface.rs`).

use std::ffi::c_void;
use std::os::raw::c_char;
use std::ptr::{null, null_mut};

use appsignal::*;
use appsignal_agent::apm::ApmConfig;
use serde_json::Value;

/// Held by every test while it runs: the APM configuration is process-wide, and `misc_functions`
/// changes it for a moment.
static CONFIG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sets the tests' configuration; the configuration is this test's until the guard is dropped.
fn setup() -> std::sync::MutexGuard<'static, ()> {
    let guard = CONFIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    configure(None);
    guard
}

fn configure(running_in_container: Option<bool>) {
    appsignal_agent::apm::configure(ApmConfig {
        ignore_actions: vec!["Ffi#ignored".into()],
        ignore_errors: vec!["FfiIgnoredError".into()],
        ignore_namespaces: vec![],
        filter_parameters: vec!["password".into()],
        filter_session_data: vec!["csrf".into()],
        running_in_container,
        revision: "rev-1".into(),
        hostname: "ffi-host".into(),
    });
}

fn s(text: &str) -> appsignal_string_t {
    appsignal_string_t {
        len: text.len(),
        buf: text.as_ptr().cast::<c_char>(),
    }
}

fn bytes(raw: &[u8]) -> appsignal_string_t {
    appsignal_string_t {
        len: raw.len(),
        buf: raw.as_ptr().cast::<c_char>(),
    }
}

fn read(returned: appsignal_string_t) -> String {
    if returned.len == 0 {
        return String::new();
    }
    let slice = unsafe { std::slice::from_raw_parts(returned.buf.cast::<u8>(), returned.len) };
    String::from_utf8(slice.to_vec()).unwrap()
}

fn txn_json(txn: *mut appsignal_transaction_t) -> Value {
    serde_json::from_str(&read(appsignal_transaction_to_json(txn))).unwrap()
}

fn span_json(span: *mut appsignal_span_t) -> Value {
    serde_json::from_str(&read(appsignal_span_to_json(span))).unwrap()
}

#[test]
fn event_data_bodies_and_queue_start() {
    let _config = setup();
    let txn = appsignal_start_transaction(s("req-data"), s("background"), 0);
    appsignal_set_transaction_action(txn, s("FfiJob#perform"));
    appsignal_set_transaction_namespace(txn, s("jobs"));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as std::os::raw::c_long;
    appsignal_set_transaction_queue_start(txn, now_ms - 250);
    let body = appsignal_data_map_new();
    appsignal_data_map_set_string(body, s("find"), s("WHERE a = 'secret'"));
    appsignal_start_event(txn, 0);
    appsignal_finish_event_data(txn, s("query.mongodb"), s("find"), body, 1, 0);
    appsignal_record_event_data(txn, s("query.mongodb"), s("find"), body, 0, 1_000, 0);
    appsignal_free_data(body.cast());
    let j = txn_json(txn);
    assert_eq!(j["namespace"], "jobs");
    // The in-process view shows bodies as given (the sample sanitises format 1).
    assert_eq!(j["events"][0]["body"], r#"{"find":"WHERE a = 'secret'"}"#);
    assert_eq!(j["events"][1]["body"], r#"{"find":"WHERE a = 'secret'"}"#);
    assert!(j["queue_time"].as_f64().unwrap() >= 250.0);
    assert_eq!(appsignal_finish_transaction(txn, 0), 0);
    appsignal_complete_transaction(txn);
    appsignal_free_transaction(txn.cast());
}

#[test]
fn duplicate_and_use_after_complete() {
    let _config = setup();
    let txn = appsignal_start_transaction(s("orig"), s("web"), 0);
    appsignal_set_transaction_action(txn, s("FfiDup#x"));
    appsignal_record_event(txn, s("a.b"), s(""), s(""), 0, 10, 0);
    let copy = appsignal_duplicate_transaction(txn, s("copy"));
    assert!(!copy.is_null());
    appsignal_set_transaction_error(copy, s("E"), s("m"), null());
    assert_eq!(txn_json(copy)["id"], "copy");
    assert_eq!(txn_json(copy)["events"], txn_json(txn)["events"]);
    assert!(txn_json(txn)["error"].is_null());

    // Free the original first: the copy is independent.
    appsignal_complete_transaction(txn);
    // Used after complete: ignored, no crash.
    appsignal_set_transaction_action(txn, s("FfiDup#changed"));
    appsignal_start_event(txn, 0);
    appsignal_finish_event(txn, s("a.b"), s(""), s(""), 0, 0);
    assert_eq!(appsignal_finish_transaction(txn, 0), 0);
    appsignal_complete_transaction(txn);
    assert!(appsignal_duplicate_transaction(txn, s("again")).is_null());
    assert_eq!(txn_json(txn)["action"], "FfiDup#x");
    appsignal_free_transaction(txn.cast());

    assert_eq!(appsignal_finish_transaction(copy, 0), 1);
    appsignal_complete_transaction(copy);
    appsignal_free_transaction(copy.cast());
}

#[test]
fn null_handles_are_tolerated_everywhere() {
    let _config = setup();
    let t: *mut appsignal_transaction_t = null_mut();
    let sp: *mut appsignal_span_t = null_mut();
    appsignal_start_event(t, 0);
    appsignal_finish_event(t, s("a"), s("b"), s("c"), 1, 0);
    appsignal_finish_event_data(t, s("a"), s("b"), null(), 1, 0);
    appsignal_record_event(t, s("a"), s("b"), s("c"), 1, 5, 0);
    appsignal_record_event_data(t, s("a"), s("b"), null(), 1, 5, 0);
    appsignal_set_transaction_error(t, s("E"), s("m"), null());
    appsignal_set_transaction_sample_data(t, s("params"), null());
    appsignal_set_transaction_action(t, s("a"));
    appsignal_set_transaction_namespace(t, s("n"));
    appsignal_set_transaction_queue_start(t, 1);
    appsignal_set_transaction_metadata(t, s("k"), s("v"));
    assert_eq!(appsignal_finish_transaction(t, 0), 0);
    appsignal_complete_transaction(t);
    assert!(appsignal_duplicate_transaction(t, s("x")).is_null());
    assert_eq!(appsignal_transaction_to_json(t).len, 0);
    appsignal_free_transaction(null_mut());

    assert!(appsignal_create_child_span(sp).is_null());
    assert!(appsignal_create_child_span_with_timestamp(sp, 1, 2).is_null());
    assert_eq!(appsignal_span_id(sp).len, 0);
    appsignal_set_span_name(sp, s("n"));
    appsignal_set_span_name_if_nil(sp, s("n"));
    appsignal_set_span_namespace(sp, s("n"));
    appsignal_set_span_attribute_string(sp, s("k"), s("v"));
    appsignal_set_span_attribute_int(sp, s("k"), 1);
    appsignal_set_span_attribute_bool(sp, s("k"), 1);
    appsignal_set_span_attribute_double(sp, s("k"), 1.0);
    appsignal_set_span_attribute_sql_string(sp, s("k"), s("SELECT 1"));
    appsignal_set_span_sample_data(sp, s("k"), null());
    appsignal_set_span_sample_data_if_nil(sp, s("k"), null());
    appsignal_add_span_error(sp, s("E"), s("m"), null());
    appsignal_close_span(sp);
    appsignal_close_span_with_timestamp(sp, 1, 2);
    assert_eq!(appsignal_span_to_json(sp).len, 0);
    appsignal_free_span(null_mut());

    // NULL data on live handles is ignored too.
    let txn = appsignal_start_transaction(s("null-data"), s("web"), 0);
    appsignal_set_transaction_sample_data(txn, s("params"), null());
    appsignal_finish_event_data(txn, s("a.b"), s(""), null(), 0, 0);
    assert!(txn_json(txn)["sample_data"].as_object().unwrap().is_empty());
    appsignal_free_transaction(txn.cast());
    appsignal_log(s("g"), 3, 0, s("null attributes"), null());
}

#[test]
fn empty_strings_and_invalid_utf8() {
    let _config = setup();
    let empty = appsignal_string_t {
        len: 0,
        buf: null(),
    };
    let txn = appsignal_start_transaction(empty, empty, 0);
    let j = txn_json(txn);
    assert_eq!(j["id"].as_str().unwrap().len(), 32);
    assert_eq!(j["namespace"], "");
    let invalid = bytes(b"caf\xe9 \xff\xfe'x'");
    appsignal_set_transaction_action(txn, invalid);
    appsignal_record_event(txn, invalid, invalid, invalid, 1, 1, 0);
    appsignal_set_transaction_metadata(txn, invalid, empty);
    let j = txn_json(txn);
    assert_eq!(j["action"], "caf\u{fffd} \u{fffd}\u{fffd}'x'");
    assert_eq!(j["events"][0]["body"], "caf\u{fffd} \u{fffd}\u{fffd}'x'");
    appsignal_free_transaction(txn.cast());

    let span = appsignal_create_root_span(invalid);
    appsignal_set_span_attribute_sql_string(span, invalid, invalid);
    appsignal_set_span_name(span, empty);
    assert_eq!(span_json(span)["name"], "");
    appsignal_free_span(span.cast());
    let bad = appsignal_create_span_from_traceparent(invalid);
    assert_eq!(read(appsignal_span_id(bad)).len(), 8);
    appsignal_free_span(bad.cast());
    appsignal_log(invalid, 3, 3, invalid, null());
    appsignal_set_environment_metadata(invalid, invalid);
    assert_eq!(appsignal_get_server_state(invalid).len, 0);
}

#[test]
fn spans_are_safe_to_share_between_threads() {
    let _config = setup();
    struct Shared(*mut appsignal_span_t);
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    let root = std::sync::Arc::new(Shared(appsignal_create_root_span(s("web"))));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let root = std::sync::Arc::clone(&root);
            std::thread::spawn(move || {
                let root = &*root;
                for j in 0..100 {
                    let key = format!("t{i}_{j}");
                    appsignal_set_span_attribute_int(root.0, s(&key), j);
                    let child = appsignal_create_child_span(root.0);
                    appsignal_close_span(child);
                    appsignal_free_span(child.cast::<c_void>());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let j = span_json(root.0);
    assert_eq!(j["attributes"].as_object().unwrap().len(), 256); // bounded map
    assert_eq!(j["events"].as_array().unwrap().len(), 400);
    appsignal_free_span(root.0.cast());
}

#[test]
fn misc_functions() {
    let _config = setup();
    // Unconfigured: what detection on this machine's root says.
    let detected = appsignal_agent::apm::misc::detect_container(std::path::Path::new("/"));
    assert_eq!(appsignal_running_in_container(), i32::from(detected));
    // Configured (`_APPSIGNAL_RUNNING_IN_CONTAINER`): the configuration wins, either way.
    configure(Some(!detected));
    assert_eq!(appsignal_running_in_container(), i32::from(!detected));
    configure(Some(detected));
    assert_eq!(appsignal_running_in_container(), i32::from(detected));
    configure(None);
    assert_eq!(appsignal_get_server_state(s("nothing-here")).len, 0);
    appsignal_agent::apm::misc::set_server_state("ffi-state", "on");
    assert_eq!(read(appsignal_get_server_state(s("ffi-state"))), "on");
    appsignal_set_environment_metadata(s("ffi_env_key"), s("erlang 27"));
    let before = appsignal_agent::apm::misc::allocation_count();
    appsignal_track_allocation();
    assert!(appsignal_agent::apm::misc::allocation_count() > before);
    let txn = appsignal_start_transaction(s("env"), s("web"), 0);
    assert_eq!(
        txn_json(txn)["environment_metadata"]["ffi_env_key"],
        "erlang 27"
    );
    appsignal_free_transaction(txn.cast());
}
