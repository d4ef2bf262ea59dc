//! Stable-Rust "fuzz smoke" test: deterministic pseudo-random and mutated-valid inputs
//! through the entry point of the cargo-fuzz target `fuzz/fuzz_targets/mqtt_packet.rs`
//! (`pier_mqtt_wire::fuzzing::packets`). Nothing may panic, every error must map to a
//! server action, and whatever decodes must re-encode stably. Seeds are the golden packets
//! captured from RabbitMQ, paho and mosquitto; the harness is `pier-fuzz-smoke`'s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use pier_fuzz_smoke::{golden, run, Mutator};
use pier_mqtt_wire::fuzzing;

const ITERATIONS: usize = 200_000;

/// Remaining-length continuation bits, QoS/flag octets, property ids.
const MUTATOR: Mutator = Mutator {
    interesting: &[0x00, 0x7f, 0x80, 0xff, 0x01, 0x26, 0x0b, 0x23],
};

/// Golden packets, each with the selector octet of its version (0: 3.1, 1: 3.1.1, 2: 5.0),
/// and each capture's whole session.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for text in [
        include_str!("golden/rabbitmq-3.10.8.txt"),
        include_str!("golden/paho-mosquitto-v5.txt"),
    ] {
        let mut session: Vec<u8> = Vec::new();
        let mut sel = 1u8;
        // Lines: `DIR VERSION LABEL HEX`.
        for g in golden(text).into_iter().filter(|g| g.fields.len() == 2) {
            sel = match g.fields[0] {
                "3.1" => 0,
                "5" => 2,
                _ => 1,
            };
            out.push([&[sel][..], &g.bytes].concat());
            session.extend_from_slice(&g.bytes);
        }
        out.push([&[sel][..], &session].concat());
    }
    out
}

#[test]
fn seeds_decode() {
    let decoded: usize = seeds().iter().map(|s| fuzzing::packets(s)).sum();
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn mutated_and_random_inputs() {
    let seeds = seeds();
    let out = run(
        0x5EED_4D17,
        ITERATIONS,
        |rng, i| {
            if i % 8 == 0 {
                rng.noise(64)
            } else {
                MUTATOR.mutated(rng, &seeds)
            }
        },
        |_, input| fuzzing::packets(input),
    );
    assert!(out.units > ITERATIONS / 4, "{out:?}");
    out.assert_both("mqtt", 20);
}
