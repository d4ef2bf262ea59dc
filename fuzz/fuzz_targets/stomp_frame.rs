//! Arbitrary bytes through the STOMP decoder (`pier_stomp_wire::fuzzing::frames`): the
//! first octet picks the version, the limits and how the input is chunked for the
//! incremental decoder. Nothing may panic, the one-shot and incremental decoders must
//! agree, every error has an ERROR frame, and whatever decodes re-encodes to bytes that
//! decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_stomp_wire::fuzzing::frames(data);
});
