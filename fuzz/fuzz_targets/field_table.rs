//! Arbitrary bytes through `decode_field_table` (a `u32`-length-prefixed table). Nothing may
//! panic; a decoded table re-encodes to `encoded_size()` bytes and re-decodes to a table that
//! encodes identically.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pier_wire::{decode_field_table, encode_field_table};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(table) = decode_field_table(&bytes) {
        let mut out1 = BytesMut::new();
        encode_field_table(&mut out1, &table).expect("decoded table encodes");
        assert_eq!(out1.len(), table.encoded_size());
        let again = decode_field_table(&out1.clone().freeze()).expect("re-encoded table decodes");
        let mut out2 = BytesMut::new();
        encode_field_table(&mut out2, &again).expect("encodes");
        // compared as bytes: floats may be NaN
        assert_eq!(out1, out2);
    }
});
