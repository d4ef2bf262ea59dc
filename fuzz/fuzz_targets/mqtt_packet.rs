//! Arbitrary bytes through the MQTT decoder (`pier_mqtt_wire::fuzzing::packets`): the first
//! octet picks the protocol version and maximum packet size, the rest is decoded as a
//! CONNECT and as a stream of packets. Nothing may panic, `decode` and `decode_from` must
//! agree, every error maps to a server action, and whatever decodes re-encodes to bytes that
//! decode to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pier_mqtt_wire::fuzzing::packets(data);
});
