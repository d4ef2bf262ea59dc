//! AMQP 1.0: the type system ([`Value`]) and the message format ([`Message`]).
//!
//! A stream stores each message as an AMQP 1.0 encoded message: the concatenated sections,
//! nothing else (`0x00 0x53 0x75 0xa0 0x05 hello` is a message with one `data` section).
//! Stream clients publish that encoding; a stream server stores the bytes as they came and
//! needs to decode them only to route, filter, or hand the message to another protocol.
//!
//! Decoding never panics, bounds nesting ([`value::MAX_DEPTH`]), checks every size and count
//! against the input before allocating (array elements that take no input of their own are
//! charged to [`value::MAX_EXPANSION`]), and keeps binaries (including `data` sections) as
//! zero-copy slices of the input.
//!
//! # AMQP 0-9-1 ↔ AMQP 1.0, as RabbitMQ maps them
//!
//! For the integrator who will convert between a stream message and Pier's protocol-neutral
//! message. This is RabbitMQ 4.x (`mc_amqpl.erl`: `convert_to(mc_amqp, …)` for
//! 0-9-1 → 1.0, `convert_from(mc_amqp, …)` for 1.0 → 0-9-1), which is what a 0-9-1
//! publisher into a stream produces for stream consumers, and what 0-9-1 consumers of a
//! stream receive for messages published over the stream protocol.
//!
//! **0-9-1 → 1.0** (a `basic.publish` into a stream):
//!
//! | 0-9-1 | AMQP 1.0 |
//! |---|---|
//! | `delivery-mode` | `header.durable` = (delivery-mode == 2) |
//! | `priority` | `header.priority` (ubyte) |
//! | `expiration` (string of ms) | `header.ttl` (uint) |
//! | `message-id` | `properties.message-id`: a uuid if it parses as `urn:uuid:…`, else a string |
//! | `user-id` | `properties.user-id` (binary) |
//! | `reply-to` | `properties.reply-to` = `/queues/` + percent-encoded reply-to (4.x address format) |
//! | `correlation-id` | `properties.correlation-id`: uuid if `urn:uuid:…`, else string |
//! | `content-type` | `properties.content-type` (symbol) |
//! | `content-encoding` | `properties.content-encoding` (symbol) |
//! | `timestamp` (seconds) | `properties.creation-time` (timestamp, × 1000) |
//! | `app-id` | `properties.group-id` (string) |
//! | `type` | message annotation `x-basic-type` (string) |
//! | `headers`: keys starting `x-` | message annotations, key as a symbol |
//! | `headers`: `CC` (an array) | message annotation `x-cc` |
//! | `headers`: other keys, non-table non-array values | application properties (string keys) |
//! | `headers`: other keys with table/array values | dropped |
//! | body | one `data` section; a body whose `type` is `amqp-1.0` is parsed as 1.0 sections |
//!
//! Header values: `longstr` → string if it is UTF-8 without NUL (else binary), `long` →
//! long, `signedint` → int, `unsignedint`/`unsignedshort`/`unsignedbyte` → uint/ushort/ubyte,
//! `short`/`byte` → short/byte, `bool` → boolean, `float`/`double` → float/double,
//! `timestamp` (s) → timestamp (ms), `void` → null, `array` → list, `table` → map with
//! symbol keys. (Legacy `x-amqp-1.0-properties`/`-app-properties`/`-message-annotations`/
//! `-footer` headers holding encoded sections replace the generated section.)
//!
//! **1.0 → 0-9-1** (a stream message delivered to a 0-9-1 consumer):
//!
//! | AMQP 1.0 | 0-9-1 |
//! |---|---|
//! | `header.durable` | `delivery-mode` 2 (true) / 1 (false); without a header, `x-basic-delivery-mode` annotation |
//! | `header.priority` | `priority`, else annotation `x-basic-priority` |
//! | `header.ttl` | `expiration` (decimal string), else annotation `x-basic-expiration` |
//! | `properties.message-id` | uuid → `urn:uuid:…`; ulong → decimal string; string ≤ 255 bytes → as is; binary or longer string → header `x-message-id` |
//! | `properties.correlation-id` | same rules, header `x-correlation-id` |
//! | `properties.user-id` | `user-id` if a valid shortstr, else dropped |
//! | `properties.reply-to` | `reply-to`, `/queues/Q` decoded to `Q` |
//! | `properties.content-type`/`-encoding` | `content-type`/`content-encoding` |
//! | `properties.creation-time` | `timestamp` (÷ 1000) |
//! | `properties.group-id` | `app-id` (if ≤ 255 bytes) |
//! | annotation `x-basic-type` (or a non-data body: `amqp-1.0`) | `type` |
//! | application properties (keys ≤ 255 bytes) | `headers` |
//! | `x-` message annotations | `headers` (except internal `x-basic-*`); `x-cc` → `CC`; `x-opt-rabbitmq-received-time` → `timestamp_in_ms`; `x-opt-deaths` → `x-death` |
//! | `data` sections | body (concatenated) |
//! | `amqp-value` / `amqp-sequence` body | the encoded sections as the body, `type` = `amqp-1.0` |
//! | delivery annotations, footer | dropped |
//!
//! Values to 0-9-1: string/symbol/binary → `longstr`, long/ulong → `long`, int → `signedint`,
//! uint → `unsignedint`, ushort → `unsignedshort`, ubyte → `unsignedbyte`, short/byte as
//! is, boolean → `bool`, float/double as is, timestamp (ms) → `timestamp` (÷ 1000), null →
//! `void`, list/array → `array`, map → `table`.
//!
//! **RabbitMQ 3.10–3.12** (the local reference broker is 3.10.8) converted through
//! `rabbit_msg_record` instead. What 3.10.8 wrote for a `basic.publish` with every property
//! set (`tests/golden.rs`, `amqp091_message_converted_by_rabbitmq_3_10_8`): no header
//! section; message annotations `x-routing-key`, `x-exchange`, and `x-basic-priority`,
//! `x-basic-delivery-mode` (ubytes) and `x-basic-expiration` (string) in place of header
//! fields; properties as above except that `reply-to` is copied as is and `app-id` is not
//! mapped to `group-id`; and application properties holding `x-basic-type`,
//! `x-basic-app-id` and every header, `x-` ones included.

pub mod message;
pub mod value;

pub use message::{Annotations, Body, Header, Message, Properties};
pub use value::{decode_value, decode_value_exact, AmqpError, Value, MAX_DEPTH, MAX_EXPANSION};
