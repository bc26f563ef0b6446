//! The panic boundary and the conversions every exported function shares.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::c_char;

/// A string passed by value: `len` bytes at `buf`, not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct appsignal_string_t {
    pub len: usize,
    pub buf: *const c_char,
}

impl appsignal_string_t {
    pub(crate) const EMPTY: appsignal_string_t = appsignal_string_t {
        len: 0,
        buf: std::ptr::null(),
    };
}

/// Runs `$body`, catching a panic: the panic is logged and `$default` returned instead. First makes
/// sure the fork handlers are registered (one atomic load once they are), so that no call can take
/// one of the library's locks before they are.
macro_rules! ffi_boundary {
    ($name:literal, $default:expr, $body:block) => {{
        appsignal_agent::agent::install_fork_handlers();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => {
                $crate::boundary::report_panic($name);
                $default
            }
        }
    }};
}

pub(crate) fn report_panic(function: &str) {
    tracing::error!("{function} panicked; the call was ignored (this is a bug in libappsignal)");
}

/// Borrows the bytes of a C string as text. Invalid UTF-8 is replaced; NULL is empty.
pub(crate) fn to_str<'a>(s: appsignal_string_t) -> Cow<'a, str> {
    let bytes = to_bytes(s);
    if appsignal_agent::data::is_ascii(bytes) {
        // SAFETY: ASCII is valid UTF-8 (checked just above).
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    // The check alone is much cheaper than the lossy conversion's chunk iterator when (as nearly
    // always) the text is valid.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Borrows the bytes of a C string as they are (no UTF-8 check: for callees that check later, once).
/// NULL is empty.
#[inline]
pub(crate) fn to_bytes<'a>(s: appsignal_string_t) -> &'a [u8] {
    if s.buf.is_null() || s.len == 0 || s.len > isize::MAX as usize {
        return &[];
    }
    // SAFETY: the caller passes `len` readable bytes at `buf` (the interface's contract) that stay
    // valid for the duration of the call; we checked for NULL and an impossible length.
    unsafe { std::slice::from_raw_parts(s.buf.cast::<u8>(), s.len) }
}

thread_local! {
    /// Strings returned to C, one slot per function, valid until that function is called again on this thread.
    static RETURNED: RefCell<HashMap<&'static str, Box<[u8]>>> = RefCell::new(HashMap::new());
}

/// Keeps `text` in this thread's slot for `function` and returns a view of it. An empty text
/// returns `len == 0`.
pub(crate) fn return_string(function: &'static str, text: String) -> appsignal_string_t {
    if text.is_empty() {
        return appsignal_string_t::EMPTY;
    }
    let mut bytes = text.into_bytes();
    let len = bytes.len();
    // A trailing NUL (not counted in len) lets C callers print it directly.
    bytes.push(0);
    let stored = bytes.into_boxed_slice();
    let buf = stored.as_ptr().cast::<c_char>();
    // The thread-local is gone only during thread teardown; then the string is simply not kept.
    let kept = RETURNED.try_with(|slots| {
        slots.borrow_mut().insert(function, stored);
    });
    if kept.is_err() {
        return appsignal_string_t::EMPTY;
    }
    appsignal_string_t { len, buf }
}
