//! Stable-Rust smoke version of the cargo-fuzz target `fuzz/fuzz_targets/connection.rs`:
//! the seed conversations, then 8,000 deterministic pseudo-random inputs (fresh and
//! mutated seeds), each played against the real connection code over an in-memory stream by
//! `pier_server::fuzzing::run`, which panics on a server panic, a hang or a leak.
//!
//! `PIER_WRITE_CORPUS=1 cargo test -p pier-server --test connection_fuzz_smoke` rewrites the
//! seed corpus in `fuzz/corpus/connection/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pier_fuzz_smoke::Rng;
use pier_server::fuzzing::{run, seeds};

const ITERATIONS: usize = 8_000;

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/connection")
}

#[test]
fn seeds_and_committed_corpus() {
    let seeds = seeds();
    if std::env::var_os("PIER_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(corpus_dir()).unwrap();
        for (name, data) in &seeds {
            std::fs::write(corpus_dir().join(format!("seed-{name}")), data).unwrap();
        }
    }
    for (name, data) in &seeds {
        let sent = run(data);
        eprintln!("seed {name}: the server sent {sent} bytes");
        if *name != "handshake_only" {
            // start, tune, open-ok, channel.open-ok, declare-ok, ... : the conversation ran.
            assert!(sent > 300, "seed {name}: only {sent} bytes from the server");
        }
    }
    // The committed corpus (`seed-*`, including minimized regressions) is replayed too; the
    // rest of the directory is a local fuzzer's working corpus (ignored by git, and changing
    // under a running fuzzer).
    if let Ok(dir) = std::fs::read_dir(corpus_dir()) {
        for entry in dir.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("seed-") {
                continue;
            }
            let data = std::fs::read(entry.path()).unwrap();
            let _ = run(&data);
        }
    }
}

#[test]
fn random_and_mutated_conversations() {
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, d)| d).collect();
    let mut rng = Rng::new(0x5EED_C0DE_1234_5678);
    let started = std::time::Instant::now();
    for i in 0..ITERATIONS {
        let data: Vec<u8> = if i % 2 == 0 {
            // A seed with a few bytes changed, inserted or cut.
            let mut d = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(6) {
                match rng.below(3) {
                    0 if !d.is_empty() => {
                        let at = rng.below(d.len());
                        d[at] = rng.byte();
                    }
                    1 => {
                        let at = rng.below(d.len() + 1);
                        let n = rng.below(24);
                        let extra = rng.bytes(n);
                        d.splice(at..at, extra);
                    }
                    _ => d.truncate(rng.below(d.len() + 1)),
                }
            }
            d
        } else {
            // Fresh bytes after a valid handshake prefix (most of the time).
            let n = rng.below(600);
            let mut d = rng.bytes(n);
            if rng.below(8) != 0 && d.len() >= 2 {
                d[0] = 5;
                d[1] = 2;
            }
            d
        };
        // Printed on failure (the harness panics), so a failing input can be replayed.
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let result = std::panic::catch_unwind(|| run(&data));
        let result = result.map(|_| ());
        if let Err(e) = result {
            panic!("input {i} failed: {e:?}\ninput (hex): {hex}");
        }
    }
    eprintln!("{ITERATIONS} conversations in {:?}", started.elapsed());
}
