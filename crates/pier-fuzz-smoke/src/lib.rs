//! # pier-fuzz-smoke: the fuzz smoke harness of Pier's wire crates
//!
//! Every codec crate (`pier-wire`, `pier-stream-wire`, `pier-mqtt-wire`, `pier-stomp-wire`)
//! has a cargo-fuzz target under `fuzz/` and, because cargo-fuzz needs nightly, a stable
//! "fuzz smoke" test that pushes a few hundred thousand deterministic inputs through the same
//! entry point on every `cargo test`. This crate is what those tests share: the generator
//! ([`Rng`]), the golden captures' text format ([`golden`]), one [`Mutator`] and the loop
//! that counts outcomes ([`run`]). What differs per codec — its seeds, its interesting
//! octets, its frame-shaped noise and what "decoded" means — stays in the crate's test.
//!
//! ```text
//!  seeds (golden captures, API-built frames) ──► Mutator ──┐
//!  frame-shaped or raw noise ───────────────────────────────┴─► target(input) -> units decoded
//!                                       Outcomes { ok, failed, units } ─► the test's bounds
//! ```
//!
//! Test-only (a dev-dependency): it panics on malformed golden files, which are the
//! repository's own.
#![allow(clippy::indexing_slicing)]

/// xorshift64*: tiny, deterministic, no dependencies; the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (zero is replaced, xorshift would stay at zero).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x5EED } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// `n` random octets.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// Up to `max - 1` random octets.
    pub fn noise(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// Hex text to octets.
///
/// # Panics
/// On anything but pairs of hex digits (golden files are the repository's own).
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| match u8::from_str_radix(&s[i..i + 2], 16) {
            Ok(b) => b,
            Err(e) => panic!("bad hex {s}: {e}"),
        })
        .collect()
}

/// One captured frame of a golden file.
#[derive(Debug, Clone)]
pub struct Golden<'a> {
    /// `C` (client to server) or `S` (server to client).
    pub dir: char,
    /// The fields between the direction and the hex (a version, a label, …).
    pub fields: Vec<&'a str>,
    pub bytes: Vec<u8>,
}

/// Parses a golden capture: one frame a line, `DIR FIELD… HEX`, where DIR is `C` or `S`;
/// blank lines, `#` comments and other lines are skipped.
pub fn golden(text: &str) -> Vec<Golden<'_>> {
    text.lines()
        .filter_map(|l| {
            let mut p: Vec<&str> = l.split(' ').collect();
            if p.len() < 2 || !(p[0] == "C" || p[0] == "S") {
                return None;
            }
            let hex_text = p.pop()?;
            let dir = p.remove(0).chars().next()?;
            Some(Golden {
                dir,
                fields: p,
                bytes: hex(hex_text),
            })
        })
        .collect()
}

/// Structure-aware enough byte mutations: each round flips a bit, writes an interesting
/// octet, writes a 16- or 32-bit big-endian length (small, huge, exactly the rest, random),
/// truncates, inserts noise, deletes a run, splices in part of a donor, or doubles the input
/// (frames back to back).
pub struct Mutator {
    /// Octets the codec treats specially (markers, type codes, separators).
    pub interesting: &'static [u8],
}

impl Mutator {
    /// A mutated copy of one of `seeds` (which also serve as donors); `seeds` must not be
    /// empty.
    pub fn mutated(&self, rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut v = rng.pick(seeds).clone();
        self.mutate(rng, &mut v, seeds);
        v
    }

    /// Applies one to four mutations to `input`; `donors` must not be empty.
    pub fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, donors: &[Vec<u8>]) {
        for _ in 0..1 + rng.below(4) {
            match rng.below(8) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                1 if !input.is_empty() && !self.interesting.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = *rng.pick(self.interesting);
                }
                2 if input.len() >= 4 => {
                    let i = rng.below(input.len() - 3);
                    let v: u32 = match rng.below(4) {
                        0 => rng.below(64) as u32,
                        1 => u32::MAX - rng.below(16) as u32,
                        2 => (input.len() - i) as u32,
                        _ => rng.next_u64() as u32,
                    };
                    if rng.chance(2) {
                        input[i..i + 4].copy_from_slice(&v.to_be_bytes());
                    } else {
                        input[i..i + 2].copy_from_slice(&(v as u16).to_be_bytes());
                    }
                }
                3 => {
                    let n = rng.below(input.len() + 1);
                    input.truncate(n);
                }
                4 => {
                    let at = rng.below(input.len() + 1);
                    let n = 1 + rng.below(8);
                    let noise = rng.bytes(n);
                    input.splice(at..at, noise);
                }
                5 if !input.is_empty() => {
                    let at = rng.below(input.len());
                    let n = 1 + rng.below((input.len() - at).min(16));
                    input.drain(at..at + n);
                }
                6 if !donors.is_empty() => {
                    let other = rng.pick(donors);
                    let from = rng.below(other.len());
                    let n = rng.below(other.len() - from + 1);
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, other[from..from + n].iter().copied());
                }
                _ => {
                    let copy = input.clone();
                    input.extend_from_slice(&copy);
                }
            }
        }
    }
}

/// What the inputs of a [`run`] came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Inputs from which the target decoded something.
    pub ok: usize,
    /// Inputs from which it decoded nothing (an error, or incomplete).
    pub failed: usize,
    /// Everything the target decoded, summed (frames, packets, messages).
    pub units: usize,
}

impl Outcomes {
    /// Both outcomes must be reached substantially (each at least `1/divisor` of the inputs),
    /// or the test proves little.
    ///
    /// # Panics
    /// When one of them is not.
    pub fn assert_both(&self, name: &str, divisor: usize) {
        let n = self.ok + self.failed;
        assert!(
            self.ok > n / divisor,
            "{name}: only {} inputs decoded",
            self.ok
        );
        assert!(
            self.failed > n / divisor,
            "{name}: only {} inputs failed",
            self.failed
        );
    }
}

/// Runs `iterations` inputs, the i-th made by `input(rng, i)`, through `target`, which
/// returns how many units it decoded (and panics on anything that must never happen).
pub fn run(
    seed: u64,
    iterations: usize,
    mut input: impl FnMut(&mut Rng, usize) -> Vec<u8>,
    mut target: impl FnMut(&mut Rng, &[u8]) -> usize,
) -> Outcomes {
    let mut rng = Rng::new(seed);
    let mut out = Outcomes::default();
    for i in 0..iterations {
        let data = input(&mut rng, i);
        let n = target(&mut rng, &data);
        out.units += n;
        if n > 0 {
            out.ok += 1;
        } else {
            out.failed += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(Rng::new(0).next_u64(), Rng::new(0x5EED).next_u64());
    }

    #[test]
    fn golden_lines_parse() {
        let g = golden("# comment\nC 3.1.1 connect 1002\n\nS 2000\nnoise line\n");
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].dir, g[0].fields.clone()),
            ('C', vec!["3.1.1", "connect"])
        );
        assert_eq!(g[0].bytes, vec![0x10, 0x02]);
        assert_eq!(
            (g[1].dir, g[1].fields.len(), g[1].bytes.clone()),
            ('S', 0, vec![0x20, 0])
        );
    }

    #[test]
    fn mutations_change_inputs_and_stay_in_bounds() {
        let m = Mutator {
            interesting: &[0, 0xff],
        };
        let donors = vec![b"donor".to_vec()];
        let mut rng = Rng::new(1);
        let mut changed = 0;
        for _ in 0..10_000 {
            let mut v = b"hello world".to_vec();
            m.mutate(&mut rng, &mut v, &donors);
            changed += usize::from(v != b"hello world");
            // empty inputs must be mutable too
            let mut e = Vec::new();
            m.mutate(&mut rng, &mut e, &donors);
        }
        assert!(changed > 9_000, "{changed}");
    }

    #[test]
    fn run_counts_outcomes() {
        let out = run(3, 100, |_, i| vec![0; i % 2], |_, d| d.len());
        assert_eq!(
            out,
            Outcomes {
                ok: 50,
                failed: 50,
                units: 50
            }
        );
        out.assert_both("t", 4);
    }
}
