//! Gives the shared library the soname of a C library, `libappsignal.so.<major>`, so that programs
//! linked with `-lappsignal` record that name and keep working across compatible upgrades
//! (`make install` puts `libappsignal.so.<major>.<minor>.<patch>` there with the two symlinks).
//!
//! It also leaves the link `libappsignal.so.<major> -> libappsignal.so` in cargo's output directory:
//! a program linked with `-L target/release -lappsignal` looks for the soname at run time, and cargo
//! itself makes no such name. This is the one file written outside `OUT_DIR`, and only a relative
//! symlink next to the library cargo is about to write there.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    if os == "macos" {
        // Found through the loading program's rpath, as a dylib meant to be shipped is (cargo
        // would record the absolute path of its build directory); and no load command for a
        // library none of its symbols comes from (the libc crate names libiconv).
        println!("cargo:rustc-cdylib-link-arg=-Wl,-install_name,@rpath/libappsignal.dylib");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-dead_strip_dylibs");
    }
    // ELF platforms with GNU-style linkers; macOS uses install names instead.
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        let soname = format!("libappsignal.so.{major}");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        if let Some(dir) = std::env::var_os("OUT_DIR").and_then(|out| output_dir(Path::new(&out))) {
            link_soname(&dir, &soname);
        }
    }
}

/// Cargo's output directory (`target/[<triple>/]<profile>`) from this script's `OUT_DIR`
/// (`…/<profile>/build/appsignal-ffi-<hash>/out`), or `None` if the layout is not that one.
fn output_dir(out: &Path) -> Option<PathBuf> {
    let build = out.parent()?.parent()?;
    if build.file_name()? != "build" {
        return None;
    }
    Some(build.parent()?.to_path_buf())
}

/// `dir/<soname> -> libappsignal.so`, unless something is already there. A failure only warns:
/// the build itself does not need the link.
fn link_soname(dir: &Path, soname: &str) {
    let link = dir.join(soname);
    if link.symlink_metadata().is_ok() {
        return;
    }
    if let Err(e) = std::os::unix::fs::symlink("libappsignal.so", &link) {
        println!(
            "cargo:warning=cannot link {} to libappsignal.so: {e}",
            link.display()
        );
    }
}
