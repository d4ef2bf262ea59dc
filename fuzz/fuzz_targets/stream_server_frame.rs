//! Arbitrary bytes through the stream protocol's client-side decoder
//! (`ServerCommand::decode`), including the Osiris chunk of every `Deliver` and the AMQP 1.0
//! messages in it. Nothing may panic; whatever decodes re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_stream_wire::fuzzing::server_frames(data);
});
