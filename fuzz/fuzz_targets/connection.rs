//! The connection state machine fed arbitrary conversations: the input is read structurally
//! by `pier_server::fuzzing::script` (a handshake, then mostly well-formed frames with fuzzed
//! arguments, content, heartbeats, pauses, and some garbage), played against the real
//! connection code over an in-memory stream, and `pier_server::fuzzing::run` panics if the
//! server panics, does not finish after the client hangs up, or leaves consumers, exclusive
//! queues or unacked messages behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pier_server::fuzzing::run(data);
});
