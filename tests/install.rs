//! `make install` as a C user runs it: the library of this build is installed into a temporary
//! prefix (versioned file name, soname link, dev link, static archive, header, `appsignal.pc`), a C
//! program is built with `pkg-config --cflags --libs appsignal` and runs against the installed
//! library, pushing to the reference receiver. `make install-files` is used so that no cargo runs
//! inside `cargo test`; `make install` is that plus the shipped build (checked with `make -n`).

use testkit::run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn make_install_files(prefix: &str, destdir: Option<&Path>) {
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(root())
        .arg("install-files")
        .arg(format!("PREFIX={prefix}"))
        .arg(format!("BUILD_DIR={}", testkit::lib_dir().display()));
    if let Some(d) = destdir {
        make.arg(format!("DESTDIR={}", d.display()));
    }
    run(&mut make);
}

/// The dynamic section entries of kind `tag` (e.g. `SONAME`, `NEEDED`) that `readelf -d` shows.
fn dynamic(path: &Path, tag: &str) -> Vec<String> {
    let out = run(Command::new("readelf").arg("-d").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("({tag})")))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_owned()))
        .collect()
}

#[test]
fn installs_into_a_prefix_and_a_c_program_builds_with_pkg_config_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    make_install_files(prefix.to_str().unwrap(), None);

    let lib = prefix.join("lib");
    let real = lib.join(format!("libappsignal.so.{VERSION}"));
    assert!(real.is_file(), "{} missing", real.display());
    assert_eq!(
        std::fs::read_link(lib.join(format!("libappsignal.so.{MAJOR}"))).unwrap(),
        Path::new(&format!("libappsignal.so.{VERSION}"))
    );
    assert_eq!(
        std::fs::read_link(lib.join("libappsignal.so")).unwrap(),
        Path::new(&format!("libappsignal.so.{MAJOR}"))
    );
    assert!(lib.join("libappsignal.a").is_file());
    assert_eq!(
        std::fs::read(prefix.join("include/appsignal.h")).unwrap(),
        std::fs::read(root().join("appsignal.h")).unwrap()
    );
    assert_eq!(
        dynamic(&real, "SONAME"),
        vec![format!("libappsignal.so.{MAJOR}")]
    );

    // pkg-config finds it and says how to build against it.
    let pkg_config = |args: &[&str]| {
        let out = run(Command::new("pkg-config")
            .args(args)
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
            .env_remove("PKG_CONFIG_LIBDIR"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(pkg_config(&["--modversion", "appsignal"]), VERSION);
    let flags = pkg_config(&["--cflags", "--libs", "appsignal"]);
    assert!(
        flags.contains(&format!("-I{}", prefix.join("include").display()))
            && flags.contains(&format!("-L{}", lib.display()))
            && flags.contains("-lappsignal"),
        "{flags}"
    );

    // A C program built the way a C user builds one, from a directory without appsignal.h.
    let exe = tmp.path().join("installed");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for file in ["installed.c", "check.h"] {
        std::fs::copy(root().join("tests/c").join(file), src.join(file)).unwrap();
    }
    run(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o"])
            .arg(&exe)
            .arg(src.join("installed.c"))
            .args(flags.split_whitespace()),
    );
    assert_eq!(
        dynamic(&exe, "NEEDED")
            .iter()
            .filter(|n| n.starts_with("libappsignal"))
            .collect::<Vec<_>>(),
        vec![&format!("libappsignal.so.{MAJOR}")],
        "the program records the soname, not the file name"
    );

    let receiver = testkit::receiver::Receiver::start("install-key", None).unwrap();
    let output = Command::new(&exe)
        .env_clear()
        // The installed library only: the loader finds it through its soname link.
        .env("LD_LIBRARY_PATH", &lib)
        .envs(testkit::fleet::config_env(
            &receiver.url,
            "install-key",
            &tmp.path().join("wd"),
            60_000,
        ))
        .output()
        .expect("the installed program runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("installed: role leader"), "{stdout}");
    assert!(stdout.contains("installed: all checks passed"), "{stdout}");
    // stop() pushed what it counted before returning.
    assert!(
        testkit::poll(Duration::from_secs(10), || {
            receiver.summary()["counters"]["installed{}"] == 3.0
        }),
        "{}",
        receiver.summary()
    );
}

#[test]
fn destdir_stages_the_files_for_the_final_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("stage");
    make_install_files("/opt/appsignal", Some(&stage));
    let lib = stage.join("opt/appsignal/lib");
    assert!(lib.join(format!("libappsignal.so.{VERSION}")).is_file());
    assert!(stage.join("opt/appsignal/include/appsignal.h").is_file());
    let pc = std::fs::read_to_string(lib.join("pkgconfig/appsignal.pc")).unwrap();
    // The .pc file names where the files will be, not the staging directory.
    assert!(pc.contains("prefix=/opt/appsignal\n"), "{pc}");
    assert!(pc.contains("libdir=/opt/appsignal/lib\n"), "{pc}");
    assert!(!pc.contains(stage.to_str().unwrap()), "{pc}");
    assert!(pc.contains(&format!("Version: {VERSION}\n")), "{pc}");
}

#[test]
fn make_install_builds_the_shipped_library_first() {
    let out = run(Command::new("make")
        .arg("-n")
        .arg("-C")
        .arg(root())
        .arg("install")
        .arg("PREFIX=/nonexistent"));
    let plan = String::from_utf8_lossy(&out.stdout);
    let build = plan
        .lines()
        .find(|l| l.contains("cargo build"))
        .unwrap_or_else(|| panic!("make install runs no cargo build:\n{plan}"));
    assert!(
        build.contains("--release -p appsignal-ffi") && !build.contains("feature"),
        "not the shipped build: {build}"
    );
}

/// `cargo build` leaves `libappsignal.so.<major> -> libappsignal.so` in its output directory
/// (ffi/build.rs), so that a program linked with `-L target/release -lappsignal` finds the soname
/// it recorded at run time.
#[test]
fn the_build_leaves_the_soname_link_beside_the_library() {
    let link = testkit::target_dir().join(format!("libappsignal.so.{MAJOR}"));
    assert_eq!(
        std::fs::read_link(&link)
            .unwrap_or_else(|e| panic!("{}: {e} (ffi/build.rs makes it)", link.display())),
        Path::new("libappsignal.so")
    );
}
