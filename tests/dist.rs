//! The release archives of `make dist`, used the way their users use them.
//!
//! For each Linux archive in `dist/`: the files are there and flat, the shared library is at most
//! 4 MiB, exports the C interface's functions (every one `appsignal.h` declares) and, on glibc,
//! needs no symbol version above `GLIBC_2.17`; C programs for that platform, built against the
//! archive's shared library and against its static library (with what `appsignal.pc` says to link),
//! run as three processes against the reference receiver, which must receive exactly what they
//! recorded. aarch64 programs run under `qemu-aarch64`. On glibc, the static library is also linked
//! into a shared object with `-static-libgcc`, as the Ruby gem's and the Elixir NIF's builds do, and
//! three host processes `dlopen` it. For the macOS archives, which cannot run here: a C program
//! links against `libappsignal.a` and against the dylib with Zig's libSystem and no framework, and
//! the dylib exports the functions.
//!
//! This test never runs cargo (it would wait on the lock of the target directory it runs from):
//! `make dist-deps && make dist` builds the archives first (`.ci/run` does). Under `CI` a missing
//! archive, an archive built from another commit or a missing tool fails the test; elsewhere the
//! test prints SKIPPED with the command that makes it runnable.

use testkit::run;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");
const MAX_LIBRARY_BYTES: u64 = 4 * 1024 * 1024;
/// Counter increments (and distribution values) per process: 9,000 for the three.
const COUNT: u64 = 3_000;
const WORKERS: usize = 3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Under CI: a failure. Elsewhere: a SKIPPED line on stderr; the test then returns.
fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}

/// Whether `command` (a program and its arguments) runs and succeeds.
fn have(command: &[&str]) -> bool {
    Command::new(command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `python3 -m ziglang cc`, Zig's C compiler (the PyPI package `make dist-deps` installs).
fn zig_cc(target: &str) -> Command {
    let mut cc = Command::new("python3");
    cc.args(["-m", "ziglang", "cc", "-target", target]);
    cc
}

/// One unpacked archive of `dist/`.
struct Archive {
    target: &'static str,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Archive {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The archive of `target` unpacked into a temporary directory, checked to be of this commit and
/// to hold its files flat; `None` (after [`skip`]) when it is missing or stale outside CI, or when
/// one of `tools` (command, version flag) is missing.
fn unpack(test: &str, target: &'static str, tools: &[&[&str]]) -> Option<Archive> {
    for tool in tools {
        if !have(tool) {
            skip(
                test,
                &format!("`{}` fails: run `make dist-deps`", tool.join(" ")),
            );
            return None;
        }
    }
    let path = root()
        .join("dist")
        .join(format!("libappsignal-{VERSION}-{target}.tar.gz"));
    if !path.is_file() {
        skip(
            test,
            &format!(
                "{} is missing: run `make dist-deps && make dist`",
                path.display()
            ),
        );
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(target);
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(&dir));
    let archive = Archive {
        target,
        _tmp: tmp,
        dir,
    };

    let version = std::fs::read_to_string(archive.file("appsignal.version")).unwrap();
    let head = stdout(
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(["rev-parse", "HEAD"]),
    );
    // A build from a tree with uncommitted changes says `<commit>-dirty`: the same commit.
    let expected = format!(
        "version={VERSION}\ncommit={}\ntarget={target}\n",
        head.trim()
    );
    if version != expected && version != expected.replace("\ntarget=", "-dirty\ntarget=") {
        skip(
            test,
            &format!(
                "{} was built from another commit or version ({version:?}, this is {expected:?}): run `make dist`",
                path.display()
            ),
        );
        return None;
    }

    let mut names: Vec<String> = std::fs::read_dir(&archive.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = [
        "LICENSE",
        "THIRD-PARTY-LICENSES",
        "appsignal-agent",
        "appsignal.h",
        "appsignal.pc",
        "appsignal.version",
        "libappsignal.a",
    ]
    .map(String::from)
    .to_vec();
    if target.ends_with("-apple-darwin") {
        expected.push("libappsignal.dylib".into());
    } else {
        expected.push("libappsignal.so".into());
        expected.push(format!("libappsignal.so.{MAJOR}"));
        assert_eq!(
            std::fs::read_link(archive.file(&format!("libappsignal.so.{MAJOR}"))).unwrap(),
            Path::new("libappsignal.so"),
            "the soname is a link to the library"
        );
    }
    expected.sort();
    assert_eq!(names, expected, "the files of {}", path.display());
    assert_eq!(
        std::fs::read(archive.file("appsignal.h")).unwrap(),
        std::fs::read(root().join("appsignal.h")).unwrap(),
        "the archive's header is this commit's"
    );
    let licenses = std::fs::read_to_string(archive.file("THIRD-PARTY-LICENSES")).unwrap();
    assert!(
        licenses.contains(&format!("for {target}")) && licenses.contains("\ntokio "),
        "THIRD-PARTY-LICENSES names the crates linked in:\n{}",
        &licenses[..licenses.len().min(500)]
    );
    let agent = run(&mut Command::new(archive.file("appsignal-agent")));
    assert!(
        String::from_utf8_lossy(&agent.stdout).contains("runs inside libappsignal"),
        "appsignal-agent says where the agent runs"
    );
    Some(archive)
}

/// Every function `appsignal.h` declares.
fn declared_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(root().join("appsignal.h")).unwrap();
    let mut names = BTreeSet::new();
    for (i, _) in header.match_indices("appsignal_") {
        let rest = &header[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with('(') {
            names.insert(rest[..end].to_owned());
        }
    }
    assert_eq!(names.len(), 70, "appsignal.h declares the 70 functions");
    names
}

/// The `appsignal_*` functions an ELF shared library defines in its dynamic symbol table.
fn elf_exports(library: &Path) -> BTreeSet<String> {
    stdout(
        Command::new("readelf")
            .args(["--dyn-syms", "-W"])
            .arg(library),
    )
    .lines()
    .filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Num: Value Size Type Bind Vis Ndx Name
        (cols.len() >= 8 && cols[3] == "FUNC" && cols[4] == "GLOBAL" && cols[6] != "UND")
            .then(|| cols[7].split('@').next().unwrap_or_default().to_owned())
    })
    .filter(|name| name.starts_with("appsignal_"))
    .collect()
}

/// The highest `GLIBC_x.y` version any dynamic symbol of `library` needs.
fn highest_glibc(library: &Path) -> (u32, u32) {
    let symbols = stdout(
        Command::new("readelf")
            .args(["--dyn-syms", "-W"])
            .arg(library),
    );
    symbols
        .split("@GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the library uses glibc")
}

fn check_shared_library(archive: &Archive) {
    let so = archive.file("libappsignal.so");
    let size = std::fs::metadata(&so).unwrap().len();
    assert!(
        size <= MAX_LIBRARY_BYTES,
        "{}: libappsignal.so is {size} bytes, over 4 MiB",
        archive.target
    );
    assert_eq!(
        elf_exports(&so),
        declared_functions(),
        "{}: the exports",
        archive.target
    );
    if archive.target.ends_with("-gnu") {
        let highest = highest_glibc(&so);
        assert!(
            highest <= (2, 17),
            "{}: libappsignal.so needs GLIBC_{}.{}, above the 2.17 floor",
            archive.target,
            highest.0,
            highest.1
        );
    }
    eprintln!(
        "{}: libappsignal.so {size} bytes, {} exports",
        archive.target,
        declared_functions().len()
    );
}

/// `Libs.private` of the archive's `appsignal.pc`: what a program links besides `libappsignal.a`.
fn libs_private(archive: &Archive) -> Vec<String> {
    let pc = std::fs::read_to_string(archive.file("appsignal.pc")).unwrap();
    assert!(pc.contains("prefix=${pcfiledir}\n"), "{pc}");
    assert!(pc.contains(&format!("Version: {VERSION}\n")), "{pc}");
    pc.lines()
        .find_map(|l| l.strip_prefix("Libs.private:"))
        .expect("appsignal.pc has Libs.private")
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// How a program of `target` runs here: natively, or under `qemu-aarch64` (with the aarch64 glibc
/// of Debian's `libc6-arm64-cross` for dynamically linked glibc programs).
fn runner(target: &str, program: &Path) -> Command {
    if target.starts_with("aarch64-") {
        let mut qemu = Command::new("qemu-aarch64");
        if target.ends_with("-gnu") {
            qemu.args(["-L", "/usr/aarch64-linux-gnu"]);
        }
        qemu.arg(program);
        qemu
    } else {
        Command::new(program)
    }
}

/// Runs `WORKERS` processes made by `command(i)` at once against a fresh receiver and working
/// directory, and checks that the receiver got exactly what they recorded.
fn three_processes_exact_totals(what: &str, command: impl Fn(usize) -> Command) {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = testkit::receiver::Receiver::start("dist-key", None).unwrap();
    let env = testkit::fleet::config_env(&receiver.url, "dist-key", &tmp.path().join("wd"), 1_000);
    let children: Vec<(usize, Child)> = (0..WORKERS)
        .map(|i| {
            let mut cmd = command(i);
            cmd.envs(env.iter().cloned())
                .env("DIST_INDEX", i.to_string())
                .env("DIST_COUNT", COUNT.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (
                i,
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("{what}: {cmd:?}: {e}")),
            )
        })
        .collect();
    let mut roles = Vec::new();
    for (i, child) in children {
        let output = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && out.contains("all checks passed"),
            "{what}: worker {i} failed ({}):\n{out}\n{err}",
            output.status
        );
        roles.push(out.lines().next().unwrap_or_default().to_owned());
    }
    let expected_sum = (0..COUNT).map(|i| (i % 10) as f64).sum::<f64>();
    let complete = |s: &serde_json::Value| {
        (0..WORKERS).all(|i| {
            let series = format!("{{worker={i}}}");
            s["counters"][format!("dist_requests{series}")] == COUNT as f64
                && s["distributions"][format!("dist_latency{series}")]["count"] == COUNT
                && s["distributions"][format!("dist_latency{series}")]["sum"] == expected_sum
                && s["gauges"][format!("dist_worker{series}")] == i as f64
        })
    };
    assert!(
        testkit::poll(Duration::from_secs(30), || complete(&receiver.summary())),
        "{what}: the receiver's totals are not what {WORKERS} x {COUNT} recorded ({roles:?}):\n{}",
        receiver.summary()
    );
    let summary = receiver.summary();
    let total: f64 = (0..WORKERS)
        .map(|i| {
            summary["counters"][format!("dist_requests{{worker={i}}}")]
                .as_f64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, (WORKERS as u64 * COUNT) as f64, "{what}");
    assert_eq!(summary["duplicates"], 0, "{what}: {summary}");
    eprintln!(
        "{what}: {total} of {} received, roles {roles:?}",
        WORKERS as u64 * COUNT
    );
}

fn c_source(name: &str) -> PathBuf {
    root().join("tests/c").join(name)
}

/// The flags every test program is compiled with, and the archive's header.
fn c_flags(cc: &mut Command, archive: &Archive) {
    cc.args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(&archive.dir)
        .arg("-I")
        .arg(root().join("tests/c"));
}

/// The Linux test of one archive: its files and library, then the programs. `cc` makes the C
/// compiler for the target: gcc (native or Debian's cross compiler) for glibc, Zig for musl.
fn linux_archive(test: &str, target: &'static str, cc: fn() -> Command, tools: &[&[&str]]) {
    let Some(archive) = unpack(test, target, tools) else {
        return;
    };
    check_shared_library(&archive);
    let build = archive.dir.join("build");
    std::fs::create_dir(&build).unwrap();
    let musl = target.ends_with("-musl");

    // 1. Against the shared library, found at run time through its soname link. On musl: a
    //    dynamically linked musl program, where this machine has a musl loader (Debian's `musl`
    //    gives the x86_64 one; there is none for aarch64 here).
    if !musl || target == "x86_64-unknown-linux-musl" {
        let exe = build.join("dist_worker_shared");
        let mut compile = cc();
        c_flags(&mut compile, &archive);
        if musl {
            compile.arg("-dynamic");
        }
        run(compile
            .arg("-o")
            .arg(&exe)
            .arg(c_source("dist_worker.c"))
            .arg("-L")
            .arg(&archive.dir)
            .arg("-lappsignal"));
        three_processes_exact_totals(&format!("{target}: libappsignal.so"), |_| {
            let mut cmd = runner(target, &exe);
            cmd.env("LD_LIBRARY_PATH", &archive.dir);
            cmd
        });
    }

    // 2. Against the static library, with what appsignal.pc says to link besides it: on musl a
    //    static program, as Alpine's builds of the language packages are linked.
    let exe = build.join("dist_worker_static");
    let mut compile = cc();
    c_flags(&mut compile, &archive);
    if musl {
        compile.arg("-static");
    }
    run(compile
        .arg("-o")
        .arg(&exe)
        .arg(c_source("dist_worker.c"))
        .arg(archive.file("libappsignal.a"))
        .args(libs_private(&archive)));
    three_processes_exact_totals(&format!("{target}: libappsignal.a"), |_| {
        runner(target, &exe)
    });

    // 3. As the language packages use it: libappsignal.a inside the package's own shared object,
    //    linked as the Elixir NIF's Makefile links it (the whole archive, -static-libgcc, nothing
    //    else of ours; every member must resolve); the VM (here a small host) dlopens it.
    if !musl {
        let extension = build.join("dist_extension.so");
        let mut compile = cc();
        c_flags(&mut compile, &archive);
        run(compile
            .args([
                "-shared",
                "-fPIC",
                "-DDIST_WORKER_EXTENSION",
                "-static-libgcc",
            ])
            .arg("-o")
            .arg(&extension)
            .arg(c_source("dist_worker.c"))
            .arg("-Wl,--whole-archive")
            .arg(archive.file("libappsignal.a"))
            .arg("-Wl,--no-whole-archive")
            .args(["-lpthread", "-ldl", "-lm"]));
        let needed = stdout(Command::new("readelf").arg("-d").arg(&extension));
        assert!(
            !needed.contains("libappsignal") && !needed.contains("libgcc_s"),
            "{target}: the extension needs neither libappsignal.so nor libgcc_s:\n{needed}"
        );
        let host = build.join("dist_host");
        let mut compile = cc();
        c_flags(&mut compile, &archive);
        run(compile
            .arg("-o")
            .arg(&host)
            .arg(c_source("dist_host.c"))
            .arg("-ldl"));
        three_processes_exact_totals(&format!("{target}: extension with libappsignal.a"), |_| {
            let mut cmd = runner(target, &host);
            cmd.arg(&extension);
            cmd
        });
    }
}

fn gcc() -> Command {
    Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
}

fn aarch64_gcc() -> Command {
    Command::new("aarch64-linux-gnu-gcc")
}

fn zig_x86_64_musl() -> Command {
    zig_cc("x86_64-linux-musl")
}

fn zig_aarch64_musl() -> Command {
    zig_cc("aarch64-linux-musl")
}

const READELF: &[&str] = &["readelf", "--version"];
const ZIG: &[&str] = &["python3", "-m", "ziglang", "version"];
const QEMU: &[&str] = &["qemu-aarch64", "--version"];
/// The x86_64 musl dynamic loader (Debian's `musl`), for the musl `libappsignal.so`.
const MUSL_LOADER: &[&str] = &["test", "-e", "/lib/ld-musl-x86_64.so.1"];
const AARCH64_GCC: &[&str] = &["aarch64-linux-gnu-gcc", "--version"];
/// LLVM's tools read Mach-O files (Debian's `llvm`; GNU binutils do not read arm64 Mach-O).
const LLVM_NM: &[&str] = &["llvm-nm", "--version"];

#[test]
fn x86_64_linux_gnu_archive_loads_on_glibc_2_17_and_counts_exactly() {
    linux_archive(
        "x86_64_linux_gnu",
        "x86_64-unknown-linux-gnu",
        gcc,
        &[READELF],
    );
}

#[test]
fn aarch64_linux_gnu_archive_counts_exactly_under_qemu() {
    linux_archive(
        "aarch64_linux_gnu",
        "aarch64-unknown-linux-gnu",
        aarch64_gcc,
        &[READELF, QEMU, AARCH64_GCC],
    );
}

#[test]
fn x86_64_linux_musl_archive_links_statically_and_counts_exactly() {
    linux_archive(
        "x86_64_linux_musl",
        "x86_64-unknown-linux-musl",
        zig_x86_64_musl,
        &[READELF, ZIG, MUSL_LOADER],
    );
}

#[test]
fn aarch64_linux_musl_archive_links_statically_and_counts_exactly_under_qemu() {
    linux_archive(
        "aarch64_linux_musl",
        "aarch64-unknown-linux-musl",
        zig_aarch64_musl,
        &[READELF, ZIG, QEMU],
    );
}

/// The macOS archives: `libappsignal.a` and the dylib link into a C program with Zig's libSystem
/// and no framework, and the dylib exports every declared function.
fn macos_archive(test: &str, target: &'static str, zig_target: &str) {
    let Some(archive) = unpack(test, target, &[ZIG, LLVM_NM]) else {
        return;
    };
    let dylib = archive.file("libappsignal.dylib");
    let size = std::fs::metadata(&dylib).unwrap().len();
    assert!(
        size <= MAX_LIBRARY_BYTES,
        "{target}: libappsignal.dylib is {size} bytes, over 4 MiB"
    );
    let exports: BTreeSet<String> = stdout(
        Command::new("llvm-nm")
            .args(["--extern-only", "--defined-only", "--format=just-symbols"])
            .arg(&dylib),
    )
    .lines()
    // Mach-O C symbols carry a leading underscore.
    .filter_map(|s| s.strip_prefix('_'))
    .filter(|s| s.starts_with("appsignal_"))
    .map(String::from)
    .collect();
    assert_eq!(
        exports,
        declared_functions(),
        "{target}: the dylib's exports"
    );

    let build = archive.dir.join("build");
    std::fs::create_dir(&build).unwrap();
    let libs = libs_private(&archive);
    assert!(
        !libs.iter().any(|l| l.contains("framework")),
        "{target}: no framework in {libs:?}"
    );
    for (what, link) in [
        (
            "libappsignal.a",
            vec![archive.file("libappsignal.a").display().to_string()],
        ),
        (
            "libappsignal.dylib",
            vec![
                "-L".into(),
                archive.dir.display().to_string(),
                "-lappsignal".into(),
            ],
        ),
    ] {
        let exe = build.join(format!("dist_worker_{what}"));
        let mut compile = zig_cc(zig_target);
        c_flags(&mut compile, &archive);
        let output = run(compile
            .arg("-o")
            .arg(&exe)
            .arg(c_source("dist_worker.c"))
            .args(&link)
            .args(&libs));
        assert!(exe.is_file(), "{target}: {what}: no program linked");
        let loads = stdout(
            Command::new("llvm-objdump")
                .args(["--macho", "--dylibs-used"])
                .arg(&exe),
        );
        let others: Vec<&str> = loads
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| {
                !l.starts_with("/usr/lib/libSystem.B.dylib")
                    && !l.starts_with("@rpath/libappsignal.dylib")
            })
            .collect();
        assert!(
            others.is_empty(),
            "{target}: {what}: the program loads more than libSystem (and the dylib): {others:?}"
        );
        assert!(
            !loads.contains(".framework/"),
            "{target}: {what}: the program loads a framework:\n{loads}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{target}: a C program links against {what}; it loads:{loads}");
    }
}

#[test]
fn x86_64_apple_darwin_archive_links_without_frameworks() {
    macos_archive(
        "x86_64_apple_darwin",
        "x86_64-apple-darwin",
        "x86_64-macos.11.0",
    );
}

#[test]
fn aarch64_apple_darwin_archive_links_without_frameworks() {
    macos_archive(
        "aarch64_apple_darwin",
        "aarch64-apple-darwin",
        "aarch64-macos.11.0",
    );
}
