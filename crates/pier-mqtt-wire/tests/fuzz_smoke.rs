//! Stable-Rust "fuzz smoke" test: deterministic pseudo-random and mutated-valid inputs
//! through the entry point of the cargo-fuzz target `fuzz/fuzz_targets/mqtt_packet.rs`
//! (`pier_mqtt_wire::fuzzing::packets`). Nothing may panic, every error must map to a
//! server action, and whatever decodes must re-encode stably. Seeds are the golden packets
//! captured from RabbitMQ, paho and mosquitto.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use pier_mqtt_wire::fuzzing;

const ITERATIONS: usize = 200_000;

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

/// Golden packets, each with the selector octet of its version (0: 3.1, 1: 3.1.1, 2: 5.0).
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for text in [
        include_str!("golden/rabbitmq-3.10.8.txt"),
        include_str!("golden/paho-mosquitto-v5.txt"),
    ] {
        let mut session: Vec<u8> = Vec::new();
        let mut sel = 1u8;
        for l in text.lines() {
            let p: Vec<&str> = l.split(' ').collect();
            if p.len() != 4 || !(p[0] == "C" || p[0] == "S") {
                continue;
            }
            sel = match p[1] {
                "3.1" => 0,
                "5" => 2,
                _ => 1,
            };
            let bytes = hex(p[3]);
            let mut one = vec![sel];
            one.extend_from_slice(&bytes);
            out.push(one);
            session.extend_from_slice(&bytes);
        }
        let mut all = vec![sel];
        all.extend(session);
        out.push(all);
    }
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
                    v[i] = [0x00, 0x7f, 0x80, 0xff, 0x01, 0x26, 0x0b, 0x23][rng.below(8)];
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
        decoded += fuzzing::packets(&s);
    }
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn mutated_and_random_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x5EED_4D17);
    let mut decoded = 0;
    for i in 0..ITERATIONS {
        let input = if i % 8 == 0 {
            let n = rng.below(64);
            (0..n).map(|_| rng.byte()).collect()
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s)
        };
        decoded += fuzzing::packets(&input);
    }
    assert!(decoded > ITERATIONS / 4, "{decoded}");
}
