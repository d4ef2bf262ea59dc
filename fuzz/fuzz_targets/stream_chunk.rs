//! Arbitrary bytes as an Osiris chunk, stored (with bloom filter and trailer) and delivered
//! (as `Deliver` carries it): header, entries, sub-batch records, CRC. Nothing may panic; a
//! parsed chunk re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_stream_wire::fuzzing::chunk(data);
});
