//! Gives the shared library the soname of a C library, `libappsignal.so.<major>`, so that programs
//! linked with `-lappsignal` record that name and keep working across compatible upgrades
//! (`make install` puts `libappsignal.so.<major>.<minor>.<patch>` there with the two symlinks).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    // ELF platforms with GNU-style linkers; macOS uses install names instead.
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libappsignal.so.{major}");
    }
}
