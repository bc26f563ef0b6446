//! The table of `docs/architecture.md` (module → what it may import), checked against the code.
//!
//! Every path that starts with `crate::`, `$crate::`, `super::` or `self::` in `src/**/*.rs`, and
//! every `appsignal_agent::` path in `ffi/src/**/*.rs`, is resolved to the module it reaches,
//! `use` groups (`use crate::{a, b::{c, d}}`, over any number of lines) included; comments and
//! string literals are not code and are skipped. A path from one top-level module into another
//! (`leader::connection` → `journal`) must be allowed by the table's row for the most specific
//! module that contains the file (`leader::connection` before `leader`): an entry allows the
//! module it names and everything inside it (`otlp` allows `otlp::settings`, `otlp::settings`
//! allows only that). Paths inside one top-level module (`leader::connection` →
//! `leader::counting`) are its own business and not listed.
//!
//! Test code is not checked: an item under `#[cfg(test)]` (or `#[cfg(all(test, …))]`), most often
//! a `mod tests { … }` or a `mod tests;` in a file of its own, builds its inputs from whatever
//! module makes them.
//!
//! The test fails with one line for each: an import the table does not allow, an allowance that
//! no file of its row uses (so the table stays the graph of the code, not a wish), a row or entry
//! naming a module that does not exist, and a top-level module without a row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

fn show(path: &[String]) -> String {
    path.join("::")
}

fn split(path: &str) -> ModPath {
    path.split("::").map(str::to_owned).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the repository")
        .to_path_buf()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Tokens of Rust source with their line numbers, without comments, string, byte-string, raw-string
/// and character literals (a lifetime's quote is dropped, its name stays an identifier).
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i, None, &mut line);
        } else if ch == '\'' {
            if c.get(i + 1) == Some(&'\\') {
                // '\n', '\'', '\u{…}'
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1; // a lifetime
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // String prefixes: b"…", c"…", r"…", r#"…"#, br#"…"#, cr"…".
            if matches!(word.as_str(), "b" | "c" | "r" | "br" | "cr") {
                let raw = word.ends_with('r');
                let mut j = i;
                let mut hashes = 0;
                while raw && c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) == Some(&'"') {
                    i = skip_string(&c, j, raw.then_some(hashes), &mut line);
                    continue;
                }
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// Index after the string literal whose opening quote is at `i` (`raw`: its number of `#`s).
fn skip_string(c: &[char], mut i: usize, raw: Option<usize>, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' if raw.is_none() => {
                *line += usize::from(c.get(i + 1) == Some(&'\n'));
                i += 2;
                continue;
            }
            '"' => {
                let hashes = raw.unwrap_or(0);
                if (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    return i + 1 + hashes;
                }
            }
            '\n' => *line += 1,
            _ => {}
        }
        i += 1;
    }
    i
}

fn is(toks: &[(Tok, usize)], i: usize, tok: &Tok) -> bool {
    toks.get(i).is_some_and(|(t, _)| t == tok)
}

fn ident(toks: &[(Tok, usize)], i: usize) -> Option<&str> {
    match toks.get(i) {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Parses the path (or `use` tree) starting at `i`, pushing every full path into `out` (a group's
/// `self` is its prefix; a glob ends its path); returns the index after it.
fn parse_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    mut path: ModPath,
    out: &mut Vec<ModPath>,
) -> usize {
    loop {
        match toks.get(i).map(|(t, _)| t) {
            Some(Tok::Ident(s)) => {
                // A group's `self` is the group's prefix.
                if s != "self" || path.is_empty() {
                    path.push(s.clone());
                }
                i += 1;
                if is(toks, i, &Tok::Sep) {
                    i += 1;
                } else {
                    out.push(path);
                    return i;
                }
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while i < toks.len() && !is(toks, i, &Tok::Punct('}')) {
                    i = parse_tree(toks, i, path.clone(), out);
                    // `as name`, then the separator.
                    while i < toks.len()
                        && !is(toks, i, &Tok::Punct(','))
                        && !is(toks, i, &Tok::Punct('}'))
                    {
                        i += 1;
                    }
                    if is(toks, i, &Tok::Punct(',')) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            // `*`, or `::<…>` of a generic call.
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

/// Whether the attribute starting at `i` (`#`) is `#[cfg(test)]` or `#[cfg(all(test, …))]`, and the
/// index after it.
fn attribute(toks: &[(Tok, usize)], i: usize) -> (bool, usize) {
    let mut j = i + 2; // `#[`
    let mut depth = 1;
    while j < toks.len() && depth > 0 {
        match toks[j].0 {
            Tok::Punct('[') => depth += 1,
            Tok::Punct(']') => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    let words: Vec<&str> = (i + 2..j - 1).filter_map(|k| ident(toks, k)).collect();
    let test_only =
        matches!(words.as_slice(), ["cfg", "test"]) || words.starts_with(&["cfg", "all", "test"]);
    (test_only, j)
}

/// Index after the item starting at `i` (after its attributes): up to a `;` or `,` outside brackets
/// and generics, or the end of its first `{ … }` block; an unmatched closing bracket ends it without
/// being taken. `mod name;` items are reported through `declared_mod`.
fn skip_item(toks: &[(Tok, usize)], mut i: usize, declared_mod: &mut Option<String>) -> usize {
    while is(toks, i, &Tok::Punct('#')) {
        i = attribute(toks, i).1;
    }
    let mut k = i;
    while matches!(ident(toks, k), Some("pub" | "crate" | "in" | "super"))
        || is(toks, k, &Tok::Punct('('))
        || is(toks, k, &Tok::Punct(')'))
    {
        k += 1;
    }
    if ident(toks, k) == Some("mod") && is(toks, k + 2, &Tok::Punct(';')) {
        *declared_mod = ident(toks, k + 1).map(str::to_owned);
        return k + 3;
    }
    let mut depth = 0i32;
    // `<…>` of generics in the item's head (`fn f() -> Result<(), E>`), not `->` or `=>`.
    let mut angles = 0i32;
    while i < toks.len() {
        let arrow = i > 0 && matches!(toks[i - 1].0, Tok::Punct('-' | '='));
        match toks[i].0 {
            Tok::Punct('<') if depth == 0 => angles += 1,
            Tok::Punct('>') if depth == 0 && !arrow => angles -= 1,
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth < 0 {
                    return i;
                }
                if depth == 0 && toks[i].0 == Tok::Punct('}') {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            Tok::Punct(',') if depth == 0 && angles <= 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// One path from a file into the crate, resolved.
struct Reference {
    file: String,
    line: usize,
    /// The module the code is in (the file's, with inline modules).
    from: ModPath,
    to: ModPath,
}

#[derive(Default)]
struct Scan {
    references: Vec<Reference>,
    /// Modules declared test-only as `#[cfg(test)] mod name;` (their file is skipped).
    test_modules: BTreeSet<ModPath>,
    /// Every module found: files and inline `mod name { … }`.
    modules: BTreeSet<ModPath>,
}

/// Scans one file whose module is `module`. `ffi`: a file of the ffi crate, where `crate::` is that
/// crate and the core crate is `appsignal_agent::`.
fn scan_file(scan: &mut Scan, file: &str, src: &str, module: &[String], ffi: bool) {
    let toks = lex(src);
    let mut depth = 0usize;
    // Inline modules open around this point: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let current = |inline: &[(String, usize)]| -> ModPath {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect()
    };
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('#') if is(&toks, i + 1, &Tok::Punct('[')) => {
                let (test_only, after) = attribute(&toks, i);
                if test_only {
                    let mut declared = None;
                    i = skip_item(&toks, after, &mut declared);
                    if let Some(name) = declared {
                        let mut path = current(&inline);
                        path.push(name);
                        scan.test_modules.insert(path);
                    }
                } else {
                    i = after;
                }
                continue;
            }
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                    scan.modules.insert(current(&inline));
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Punct(';') => pending_mod = None,
            Tok::Ident(word) if word == "mod" => {
                pending_mod = ident(&toks, i + 1).map(str::to_owned)
            }
            Tok::Ident(word)
                if is(&toks, i + 1, &Tok::Sep)
                    && !(i > 0 && is(&toks, i - 1, &Tok::Sep))
                    && matches!(
                        (word.as_str(), ffi),
                        ("crate" | "super" | "self", false) | ("appsignal_agent", true)
                    ) =>
            {
                let mut paths = Vec::new();
                let after = parse_tree(&toks, i, Vec::new(), &mut paths);
                let here = current(&inline);
                for path in paths {
                    let to = resolve(&path, &here);
                    if !to.is_empty() {
                        scan.references.push(Reference {
                            file: file.to_owned(),
                            line: *line,
                            from: if ffi {
                                vec!["ffi".to_owned()]
                            } else {
                                here.clone()
                            },
                            to,
                        });
                    }
                }
                i = after;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// The crate path `path` names from module `here`.
fn resolve(path: &[String], here: &[String]) -> ModPath {
    let mut base: ModPath;
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate" | "appsignal_agent") => {
            base = Vec::new();
            rest = &path[1..];
        }
        Some("self") => {
            base = here.to_vec();
            rest = &path[1..];
        }
        Some("super") => {
            base = here.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return Vec::new(),
    }
    base.extend(rest.iter().cloned());
    base
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module of a file under `src/`: `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`, `lib.rs`
/// the crate root.
fn module_of(relative: &Path) -> ModPath {
    let mut parts: ModPath = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

struct Row {
    module: ModPath,
    allowed: Vec<ModPath>,
    line: usize,
}

/// The rows of the table: the first backquoted name of the first column (`ffi/` is `ffi`), and
/// every backquoted name of the third outside parentheses (`—`: none).
fn table(doc: &str) -> Vec<Row> {
    let backquoted = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut rows = Vec::new();
    for (n, text) in doc.lines().enumerate() {
        let cells: Vec<&str> = text.split('|').collect();
        if !text.starts_with("| `") || cells.len() < 5 {
            continue;
        }
        let Some(module) = backquoted(cells[1]).into_iter().next() else {
            continue;
        };
        let mut outside = String::new();
        let mut parens = 0;
        for ch in cells[3].chars() {
            match ch {
                '(' => parens += 1,
                ')' => parens -= 1,
                _ if parens == 0 => outside.push(ch),
                _ => {}
            }
        }
        rows.push(Row {
            module: split(module.trim_end_matches('/')),
            allowed: backquoted(&outside).iter().map(|s| split(s)).collect(),
            line: n + 1,
        });
    }
    rows
}

#[test]
fn every_import_between_modules_is_in_the_table_of_docs_architecture_md() {
    let root = root();
    let mut scan = Scan::default();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut file_modules = Vec::new();
    for path in &files {
        let module = module_of(path.strip_prefix(root.join("src")).unwrap());
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        for k in 1..=module.len() {
            scan.modules.insert(module[..k].to_vec());
        }
        scan_file(&mut scan, &name, &src, &module, false);
        file_modules.push((name, module));
    }
    let mut ffi_files = Vec::new();
    rust_files(&root.join("ffi/src"), &mut ffi_files);
    for path in &ffi_files {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        scan_file(&mut scan, &name, &src, &[], true);
    }
    scan.modules.insert(vec!["ffi".to_owned()]);
    // Files that are test modules of their own (`#[cfg(test)] mod tests;`) are test code.
    let test_files: BTreeSet<&String> = file_modules
        .iter()
        .filter(|(_, m)| scan.test_modules.iter().any(|t| m.starts_with(t)))
        .map(|(f, _)| f)
        .collect();

    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let rows = table(&doc);
    let mut failures = Vec::new();
    let mut seen = BTreeMap::new();
    for row in &rows {
        if let Some(first) = seen.insert(row.module.clone(), row.line) {
            failures.push(format!(
                "docs/architecture.md:{}: a second row for `{}` (first on line {first})",
                row.line,
                show(&row.module)
            ));
        }
        if !scan.modules.contains(&row.module) {
            failures.push(format!(
                "docs/architecture.md:{}: the row `{}` names no module",
                row.line,
                show(&row.module)
            ));
        }
        for entry in &row.allowed {
            if !scan.modules.contains(entry) {
                failures.push(format!(
                    "docs/architecture.md:{}: `{}` may import `{}`, which is no module",
                    row.line,
                    show(&row.module),
                    show(entry)
                ));
            }
        }
    }
    for module in scan.modules.iter().filter(|m| m.len() == 1) {
        if !seen.contains_key(module) {
            failures.push(format!(
                "docs/architecture.md: no row for the module `{}`",
                show(module)
            ));
        }
    }

    // The most specific row for a module.
    let row_of = |module: &[String]| -> Option<&Row> {
        rows.iter()
            .filter(|r| module.starts_with(&r.module))
            .max_by_key(|r| r.module.len())
    };
    let mut used: BTreeSet<(ModPath, ModPath)> = BTreeSet::new();
    let mut refused: BTreeMap<(ModPath, String), Vec<String>> = BTreeMap::new();
    for r in &scan.references {
        let own = r.from.first() == r.to.first() && r.from.first().is_some_and(|m| m != "ffi");
        if own || test_files.contains(&r.file) || !scan.modules.contains(&r.to[..1]) {
            // Inside one module; test code; or an item of the crate root (lib.rs).
            continue;
        }
        let Some(row) = row_of(&r.from) else {
            continue; // reported above: no row for its module
        };
        let allowing: Vec<&ModPath> = row.allowed.iter().filter(|a| r.to.starts_with(a)).collect();
        if allowing.is_empty() {
            refused
                .entry((row.module.clone(), r.to[0].clone()))
                .or_default()
                .push(format!("{}:{} `{}`", r.file, r.line, show(&r.to)));
        }
        for a in allowing {
            used.insert((row.module.clone(), a.clone()));
        }
    }
    for ((from, to), sites) in &refused {
        failures.push(format!(
            "`{}` imports `{to}`, which its row does not allow: {}",
            show(from),
            sites.join(", ")
        ));
    }
    for row in &rows {
        for entry in &row.allowed {
            if !used.contains(&(row.module.clone(), entry.clone())) && scan.modules.contains(entry)
            {
                failures.push(format!(
                    "docs/architecture.md:{}: `{}` may import `{}`, but none of its files does",
                    row.line,
                    show(&row.module),
                    show(entry)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "docs/architecture.md and the code differ:\n{}\n",
        failures.join("\n")
    );
}

#[test]
fn the_scanner_reads_use_groups_super_and_skips_comments_strings_and_tests() {
    let src = r##"
        //! crate::agent in a doc comment
        use crate::{protocol::{self, Batch}, config as cfg,
            journal::*};
        use super::sibling;
        /* crate::agent in a block comment */
        const S: &str = "crate::agent in a string";
        const R: &str = r#"crate::agent "in" a raw string"#;
        fn f<'a>(x: &'a str) -> char { let _ = crate::log::warn(x); 'c' }
        pub(crate) fn g() {}
        mod inner { use super::super::sort; }
        #[cfg(test)]
        mod tests { use crate::agent; }
        #[cfg(all(test, target_os = "linux"))]
        mod more_tests;
        #[cfg(test)]
        fn helper() -> Result<(), crate::agent::Error> { crate::agent::start() }
        struct S { #[cfg(test)] a: crate::agent::A, b: crate::ids::B }
    "##;
    let mut scan = Scan::default();
    scan_file(&mut scan, "src/a/b.rs", src, &split("a::b"), false);
    let found: Vec<String> = scan
        .references
        .iter()
        .map(|r| format!("{} {}", show(&r.from), show(&r.to)))
        .collect();
    assert_eq!(
        found,
        [
            "a::b protocol",
            "a::b protocol::Batch",
            "a::b config",
            "a::b journal",
            "a::b a::sibling",
            "a::b log::warn",
            "a::b::inner a::sort",
            "a::b ids::B",
        ]
    );
    assert_eq!(
        scan.test_modules,
        BTreeSet::from([split("a::b::more_tests")])
    );
}
