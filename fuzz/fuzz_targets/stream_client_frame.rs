//! Arbitrary bytes through the stream protocol's server-side decoder
//! (`ClientCommand::decode`, frame after frame, under a frame limit picked by the first
//! octet). Nothing may panic, every error maps to close code 13 or 14, and whatever decodes
//! re-encodes to a frame that decodes to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_stream_wire::fuzzing::client_frames(data);
});
