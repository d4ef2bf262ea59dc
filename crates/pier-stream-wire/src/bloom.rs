//! The bloom filter of stream filtering (RabbitMQ ≥ 3.13, `osiris_bloom.erl`).
//!
//! Each chunk carries a filter over the filter values of its entries (the `FilterValue` of
//! `Publish` v2); a subscription with `filter.N` properties skips chunks whose filter cannot
//! contain any of its values. Bit-exact with Osiris, so chunks and subscriptions mix freely
//! between Pier and RabbitMQ-written data:
//!
//! * the filter is `size` bytes, 16..=255 (default 16), i.e. `8 × size` bits numbered from the
//!   most significant bit of the first byte;
//! * a value `v` sets two bits, `phash2(v, bits - 1) + 1` and `phash2([v], bits - 1) + 1`
//!   (Erlang's `erlang:phash2/2` of the binary and of a one-element list holding it), so
//!   bits 1.. are value bits;
//! * an entry without a filter value sets bit 0, "this chunk has unfiltered entries";
//! * a chunk whose entries have no filter values at all (or only unfiltered ones) carries an
//!   empty filter (bloom size 0 in the header);
//! * a subscription matches a chunk when one of its values has both bits set, or when it
//!   asked for `match-unfiltered` and bit 0 is set; an empty chunk filter matches only
//!   `match-unfiltered` subscriptions. A filter of another size than the subscription
//!   assumed is matched by recomputing the hashes for that size.

/// Smallest filter size in bytes.
pub const MIN_FILTER_SIZE: u8 = 16;
/// Largest filter size in bytes (the chunk header's `BloomSize` is one octet).
pub const MAX_FILTER_SIZE: u8 = 255;
/// Osiris's default filter size in bytes.
pub const DEFAULT_FILTER_SIZE: u8 = 16;

// ---- erlang:phash2/2 ----------------------------------------------------------------------
// A port of the parts of ERTS `make_hash2` that binaries and a one-element list of a binary
// go through (Bob Jenkins' lookup2 over the bytes, then the list's `[]` tail mixed in).

const HCONST: u32 = 0x9e37_79b9;
const HCONST_2: u32 = 0x3c6e_f372;
const HCONST_13: u32 = 0x08d1_2e65;
/// ERTS's type tag for `[]` in `make_hash2`.
const NIL_DEF: u32 = 2;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

fn le32(chunk: &[u8]) -> u32 {
    chunk
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (8 * i)))
}

fn block_hash(data: &[u8], initval: u32) -> u32 {
    let (mut a, mut b, mut c) = (HCONST, HCONST, initval);
    let mut blocks = data.chunks_exact(12);
    for block in &mut blocks {
        let (x, rest) = block.split_at(4);
        let (y, z) = rest.split_at(4);
        a = a.wrapping_add(le32(x));
        b = b.wrapping_add(le32(y));
        c = c.wrapping_add(le32(z));
        mix(&mut a, &mut b, &mut c);
    }
    let tail = blocks.remainder();
    c = c.wrapping_add(data.len() as u32);
    // The tail's bytes 8..11 go to c shifted up one byte: c's low byte holds the length.
    let (x, rest) = tail.split_at(tail.len().min(4));
    let (y, z) = rest.split_at(rest.len().min(4));
    a = a.wrapping_add(le32(x));
    b = b.wrapping_add(le32(y));
    c = c.wrapping_add(le32(z) << 8);
    mix(&mut a, &mut b, &mut c);
    c
}

/// `make_hash2(Binary)`.
fn hash_binary(value: &[u8]) -> u32 {
    if value.is_empty() {
        HCONST_13
    } else {
        block_hash(value, HCONST_13)
    }
}

/// `make_hash2([Binary])`: the head, then the `[]` tail.
fn hash_list_of_binary(value: &[u8]) -> u32 {
    let mut hash = hash_binary(value);
    if hash == 0 {
        return 3_468_870_702;
    }
    let mut a = HCONST_2.wrapping_add(NIL_DEF);
    let mut b = HCONST_2;
    mix(&mut a, &mut b, &mut hash);
    hash
}

/// `erlang:phash2(Value, Range)` for a binary `Value`.
pub fn phash2_binary(value: &[u8], range: u32) -> u32 {
    if range == 0 {
        hash_binary(value) & ((1 << 27) - 1)
    } else {
        hash_binary(value) % range
    }
}

/// `erlang:phash2([Value], Range)` for a binary `Value`.
pub fn phash2_list_of_binary(value: &[u8], range: u32) -> u32 {
    if range == 0 {
        hash_list_of_binary(value) & ((1 << 27) - 1)
    } else {
        hash_list_of_binary(value) % range
    }
}

/// The two bits a filter value sets in a filter of `bits` bits (`osiris_bloom:make_hash/2`);
/// `(0, 0)` for the empty value, which marks unfiltered entries.
pub fn filter_bits(value: &[u8], bits: u32) -> (u32, u32) {
    if value.is_empty() || bits < 2 {
        return (0, 0);
    }
    (
        phash2_binary(value, bits - 1) + 1,
        phash2_list_of_binary(value, bits - 1) + 1,
    )
}

fn bit_is_set(filter: &[u8], bit: u32) -> bool {
    filter
        .get((bit / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (bit % 8)) != 0)
}

fn set_bit(filter: &mut [u8], bit: u32) {
    if let Some(b) = filter.get_mut((bit / 8) as usize) {
        *b |= 0x80 >> (bit % 8);
    }
}

/// Builds the filter of one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    size: u8,
    bits: Vec<u8>,
    filtered: bool,
}

impl BloomFilter {
    /// A filter of `size` bytes, clamped to 16..=255.
    pub fn new(size: u8) -> BloomFilter {
        let size = size.max(MIN_FILTER_SIZE);
        BloomFilter {
            size,
            bits: vec![0; usize::from(size)],
            filtered: false,
        }
    }

    /// Adds the filter value of an entry; `None` (or an empty value) marks an unfiltered
    /// entry.
    pub fn insert(&mut self, value: Option<&[u8]>) {
        let value = value.unwrap_or_default();
        if !value.is_empty() {
            self.filtered = true;
        }
        let (h1, h2) = filter_bits(value, u32::from(self.size) * 8);
        set_bit(&mut self.bits, h1);
        set_bit(&mut self.bits, h2);
    }

    /// The filter bytes for the chunk: empty when no entry had a filter value.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.filtered {
            self.bits.clone()
        } else {
            Vec::new()
        }
    }
}

/// A subscription's filter (`filter.N` properties and `match-unfiltered`), matched against
/// chunk filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomMatcher {
    values: Vec<Vec<u8>>,
    match_unfiltered: bool,
}

impl BloomMatcher {
    pub fn new<I, V>(values: I, match_unfiltered: bool) -> BloomMatcher
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        BloomMatcher {
            values: values.into_iter().map(|v| v.as_ref().to_vec()).collect(),
            match_unfiltered,
        }
    }

    /// Whether a chunk with this filter may hold entries the subscription wants (bloom
    /// filters give false positives, never false negatives: the consumer still filters each
    /// message itself).
    pub fn matches(&self, chunk_filter: &[u8]) -> bool {
        if chunk_filter.is_empty() {
            return self.match_unfiltered;
        }
        if self.match_unfiltered && bit_is_set(chunk_filter, 0) {
            return true;
        }
        let bits = (chunk_filter.len() as u32).saturating_mul(8);
        self.values.iter().any(|v| {
            let (h1, h2) = filter_bits(v, bits);
            // An empty value stands for "unfiltered" (bit 0), as in Osiris.
            bit_is_set(chunk_filter, h1) && bit_is_set(chunk_filter, h2)
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `erlang:phash2/2` values printed by Erlang/OTP 25 (erts 13.1.5, the VM of the local
    /// RabbitMQ 3.10.8): value, phash2(V,127), phash2([V],127), phash2(V,2039),
    /// phash2([V],2039).
    const PHASH2: &[(&str, u32, u32, u32, u32)] = &[
        ("61", 100, 93, 855, 1027),
        ("616263", 12, 8, 549, 201),
        ("6170706c65", 4, 84, 1478, 943),
        ("62616e616e61", 85, 22, 246, 1660),
        ("313233343536373839303132", 109, 53, 895, 1754),
        ("31323334353637383930313233", 54, 84, 164, 1409),
        (
            "66696c7465722d76616c75652d776974682d6d6f72652d7468616e2d32342d62797465732121",
            124,
            77,
            1930,
            878,
        ),
        ("00ff80", 118, 106, 341, 2025),
    ];

    #[test]
    fn phash2_matches_erlang() {
        for &(v, a, b, c, d) in PHASH2 {
            let v = hex(v);
            assert_eq!(phash2_binary(&v, 127), a, "{v:?}");
            assert_eq!(phash2_list_of_binary(&v, 127), b, "{v:?}");
            assert_eq!(phash2_binary(&v, 2039), c, "{v:?}");
            assert_eq!(phash2_list_of_binary(&v, 2039), d, "{v:?}");
        }
    }

    /// `osiris_bloom:to_binary/1` after inserting the values (osiris main, 2026-01), run on
    /// the same VM. An empty value is an unfiltered entry.
    #[test]
    fn filters_match_osiris() {
        let cases: &[(u8, &[&str], &str)] = &[
            (16, &["6170706c65"], "04000000000000000000040000000000"),
            (
                16,
                &["6170706c65", "62616e616e61"],
                "04000100000000000000060000000000",
            ),
            (16, &["6170706c65", ""], "84000000000000000000040000000000"),
            (16, &[""], ""),
            (
                32,
                &["61", "616263", "31323334353637383930313233"],
                "0400000000080000000000000000000000000000000000000000000020000044",
            ),
        ];
        for (size, values, expected) in cases {
            let mut f = BloomFilter::new(*size);
            for v in *values {
                f.insert(Some(&hex(v)));
            }
            assert_eq!(f.to_bytes(), hex(expected), "{values:?}");
        }
        let mut f = BloomFilter::new(255);
        for v in ["apple", "banana", ""] {
            f.insert(Some(v.as_bytes()));
        }
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), 255);
        let set: Vec<usize> = (0..255 * 8)
            .filter(|&i| bit_is_set(&bytes, i as u32))
            .collect();
        // From the 255-byte filter Osiris printed (bits counted from the MSB of byte 0).
        let expected_hex = "800000000000000000000000000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000008000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000100000000000000000000000000000000000000000000040000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(bytes, hex(expected_hex));
        assert_eq!(set.len(), 5);
    }

    #[test]
    fn matching() {
        let mut f = BloomFilter::new(16);
        f.insert(Some(b"apple"));
        let filter = f.to_bytes();
        assert!(BloomMatcher::new(["apple"], false).matches(&filter));
        assert!(BloomMatcher::new(["pear", "apple"], false).matches(&filter));
        assert!(!BloomMatcher::new(["banana"], false).matches(&filter));
        // no unfiltered entries in this chunk
        assert!(!BloomMatcher::new(["banana"], true).matches(&filter));
        f.insert(None);
        let filter = f.to_bytes();
        assert!(BloomMatcher::new(["banana"], true).matches(&filter));
        // chunks without any filter value
        assert!(BloomMatcher::new(["x"], true).matches(&[]));
        assert!(!BloomMatcher::new(["x"], false).matches(&[]));
        // a filter of another size is matched at its own size
        let mut big = BloomFilter::new(64);
        big.insert(Some(b"apple"));
        assert!(BloomMatcher::new(["apple"], false).matches(&big.to_bytes()));
    }
}
