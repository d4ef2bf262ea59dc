//! Stable-Rust "fuzz smoke" test: deterministic pseudo-random and mutated-valid inputs
//! through the entry point of the cargo-fuzz target `fuzz/fuzz_targets/stomp_frame.rs`
//! (`pier_stomp_wire::fuzzing::frames`). Nothing may panic, the one-shot and incremental
//! decoders must agree, every error must have an ERROR frame, and whatever decodes must
//! re-encode stably. Seeds are the golden frames captured from RabbitMQ.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use pier_stomp_wire::fuzzing;

const ITERATIONS: usize = 120_000;

/// xorshift64*: tiny, deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Golden frames, each with a selector octet for its version (0: 1.0, 1: 1.1, 2: 1.2),
/// and each version's whole client and server streams.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut streams: Vec<(u8, Vec<u8>)> = Vec::new();
    for l in include_str!("golden/rabbitmq-3.10.8.txt").lines() {
        let p: Vec<&str> = l.split(' ').collect();
        if p.len() != 4 || !(p[0] == "C" || p[0] == "S") {
            continue;
        }
        let sel = match p[1] {
            "1.0" => 0u8,
            "1.1" => 1,
            _ => 2,
        };
        let bytes = hex(p[3]);
        let mut one = vec![sel];
        one.extend_from_slice(&bytes);
        out.push(one);
        let key = sel * 2 + u8::from(p[0] == "S");
        match streams.iter_mut().find(|(k, _)| *k == key) {
            Some((_, s)) => s.extend_from_slice(&bytes),
            None => streams.push((key, [&[sel][..], &bytes].concat())),
        }
    }
    out.extend(streams.into_iter().map(|(_, s)| s));
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.byte();
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.byte());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            4 => {
                let i = rng.below(v.len() + 1);
                v.truncate(i);
            }
            _ => {
                // interesting values at a random place
                if !v.is_empty() {
                    let i = rng.below(v.len());
                    v[i] = [0x00, b'\n', b'\r', b':', b'\\', 0xff, b'0', b'9'][rng.below(8)];
                }
            }
        }
    }
    v
}

#[test]
fn seeds_decode() {
    let mut decoded = 0;
    for s in seeds() {
        decoded += fuzzing::frames(&s);
    }
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn mutated_and_random_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x5EED_5707);
    let mut decoded = 0;
    for i in 0..ITERATIONS {
        let input = if i % 8 == 0 {
            let n = rng.below(64);
            (0..n).map(|_| rng.byte()).collect()
        } else {
            let s = &seeds[rng.below(seeds.len())];
            let mut v = mutate(&mut rng, s);
            // Vary the selector (version, limits, chunking) too.
            if let Some(first) = v.first_mut() {
                *first = first.wrapping_add((rng.below(64) * 3) as u8);
            }
            v
        };
        decoded += fuzzing::frames(&input);
    }
    assert!(decoded > ITERATIONS / 8, "{decoded}");
}
