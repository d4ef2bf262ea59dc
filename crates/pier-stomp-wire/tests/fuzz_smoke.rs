//! Stable-Rust "fuzz smoke" test: deterministic pseudo-random and mutated-valid inputs
//! through the entry point of the cargo-fuzz target `fuzz/fuzz_targets/stomp_frame.rs`
//! (`pier_stomp_wire::fuzzing::frames`). Nothing may panic, the one-shot and incremental
//! decoders must agree, every error must have an ERROR frame, and whatever decodes must
//! re-encode stably. Seeds are the golden frames captured from RabbitMQ; the harness is
//! `pier-fuzz-smoke`'s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use pier_fuzz_smoke::{golden, run, Mutator};
use pier_stomp_wire::fuzzing;

const ITERATIONS: usize = 120_000;

/// NUL terminators, line ends, header separators, escapes, digits of content-length.
const MUTATOR: Mutator = Mutator {
    interesting: &[0x00, b'\n', b'\r', b':', b'\\', 0xff, b'0', b'9'],
};

/// Golden frames, each with a selector octet for its version (0: 1.0, 1: 1.1, 2: 1.2),
/// and each version's whole client and server streams.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut streams: Vec<(u8, Vec<u8>)> = Vec::new();
    // Lines: `DIR VERSION LABEL HEX`.
    for g in golden(include_str!("golden/rabbitmq-3.10.8.txt")) {
        if g.fields.len() != 2 {
            continue;
        }
        let sel = match g.fields[0] {
            "1.0" => 0u8,
            "1.1" => 1,
            _ => 2,
        };
        out.push([&[sel][..], &g.bytes].concat());
        let key = sel * 2 + u8::from(g.dir == 'S');
        match streams.iter_mut().find(|(k, _)| *k == key) {
            Some((_, s)) => s.extend_from_slice(&g.bytes),
            None => streams.push((key, [&[sel][..], &g.bytes].concat())),
        }
    }
    out.extend(streams.into_iter().map(|(_, s)| s));
    out
}

#[test]
fn seeds_decode() {
    let decoded: usize = seeds().iter().map(|s| fuzzing::frames(s)).sum();
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn mutated_and_random_inputs() {
    let seeds = seeds();
    let out = run(
        0x5EED_5707,
        ITERATIONS,
        |rng, i| {
            if i % 8 == 0 {
                rng.noise(64)
            } else {
                let mut v = MUTATOR.mutated(rng, &seeds);
                // Vary the selector (version, limits, chunking) too.
                if let Some(first) = v.first_mut() {
                    *first = first.wrapping_add((rng.below(64) * 3) as u8);
                }
                v
            }
        },
        |_, input| fuzzing::frames(input),
    );
    assert!(out.units > ITERATIONS / 8, "{out:?}");
    out.assert_both("stomp", 20);
}
