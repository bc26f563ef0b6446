//! Replays the committed seed corpus (`fuzz/corpus/<target>/`) and every crash the fuzzer ever found
//! (`fuzz/regressions/<target>/`) through the targets, so that `cargo test` keeps them fixed
//! without AFL installed. Also checks that the committed seeds are the ones the generator makes.

use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_past_crash_runs_clean() {
    let mut replayed = 0;
    for (target, run) in appsignal_fuzz::TARGETS {
        let seeds = files(&dir("corpus", target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for file in seeds
            .iter()
            .chain(files(&dir("regressions", target)).iter())
        {
            let bytes = std::fs::read(file).unwrap();
            run(&bytes);
            replayed += 1;
        }
    }
    assert!(replayed >= appsignal_fuzz::TARGETS.len());
}

#[test]
fn committed_seeds_match_the_generator() {
    for (target, name, bytes) in appsignal_fuzz::seeds::all() {
        let path = dir("corpus", target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p appsignal-fuzz --bin fuzz_seeds`",
                path.display()
            )
        });
        assert_eq!(
            committed,
            bytes,
            "{} is stale; run `cargo run -p appsignal-fuzz --bin fuzz_seeds`",
            path.display()
        );
    }
}
