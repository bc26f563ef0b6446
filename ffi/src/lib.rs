//! libappsignal: the C interface of appsignal-agent, call-compatible with the interface AppSignal's
//! Ruby gem and Elixir package call on their native library. This crate converts C types and calls
//! into `appsignal_agent`; it owns no logic.
//!
//! Conventions (stated once here, and in the README):
//! - Strings are passed as `appsignal_string_t { len, buf }` by value, not NUL-terminated. Invalid
//!   UTF-8 is replaced (U+FFFD), never rejected; a NULL `buf` is the empty string.
//! - A returned `appsignal_string_t` is owned by the library and stays valid until the next call of
//!   the same function on the same thread; `len == 0` means "none". Never free it.
//! - Opaque handles (`appsignal_data_t*`) are created by `*_new` and freed once by
//!   `appsignal_free_*`. Data passed into another data object is copied: the caller still owns it.
//! - NULL handles are tolerated everywhere: the call does nothing (or returns 0 / an empty string).
//! - No panic crosses the boundary: a panic is caught, logged, and the call returns its default.
//!
//! # Layout
//! - `boundary`: the panic boundary, string conversion, returned-string storage.
//! - `lifecycle`: start, stop, diagnose, the environment table.
//! - `data`: `appsignal_data_t` maps and arrays.
//! - `metrics`: gauges, counters, distributions.
//! - `transaction`, `span`: `appsignal_transaction_t*` and `appsignal_span_t*` (APM).
//! - `log`: `appsignal_log`.
//! - `misc`: server state, container detection, environment metadata, allocation tracking.

#![allow(non_camel_case_types)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[macro_use]
mod boundary;
mod data;
mod lifecycle;
mod log;
mod metrics;
mod misc;
mod span;
mod transaction;

pub use boundary::appsignal_string_t;
pub use data::*;
pub use lifecycle::*;
pub use log::*;
pub use metrics::*;
pub use misc::*;
pub use span::*;
pub use transaction::*;
