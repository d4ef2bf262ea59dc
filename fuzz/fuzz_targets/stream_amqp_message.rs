//! Arbitrary bytes as an AMQP 1.0 message (`Message::decode`) and as one AMQP 1.0 value.
//! Nothing may panic or allocate without bound; whatever decodes re-encodes to bytes that
//! decode and encode to the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_stream_wire::fuzzing::amqp(data);
});
