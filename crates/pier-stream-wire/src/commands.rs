//! The commands of the stream protocol, one struct per command, grouped by direction into
//! [`ClientCommand`] (what a server decodes) and [`ServerCommand`] (what a server encodes).
//!
//! Wire layouts follow RabbitMQ's own codec (`rabbit_stream_core.erl`) where it and
//! PROTOCOL.adoc differ; each such place says so.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::Reader;
use crate::entry::Entry;
use crate::error::{DecodeError, EncodeError};
use crate::frame::{
    finish, frame_len, framed, key, put_count, put_map, put_opt_raw_string, put_optional_map,
    put_string, put_strings, read_bytes, read_count, read_header, read_map, read_opt_raw_string,
    read_optional_map, read_string, read_strings, Header, FRAME_SIZE_PREFIX, RESPONSE_FLAG,
};
use crate::response_code::ResponseCode;

/// `[Key Value]` string maps (peer/connection properties, subscription properties, stream
/// arguments), in wire order.
pub type Properties = Vec<(String, String)>;

/// Where a subscription starts (`OffsetSpecification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// 1: the first offset still in the stream.
    First,
    /// 2: the first offset of the last chunk.
    Last,
    /// 3: the next offset to be written.
    Next,
    /// 4: an absolute offset.
    Offset(u64),
    /// 5: the first chunk written at or after this time (Erlang system time, ms since epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    pub fn type_code(self) -> u16 {
        match self {
            OffsetSpec::First => 1,
            OffsetSpec::Last => 2,
            OffsetSpec::Next => 3,
            OffsetSpec::Offset(_) => 4,
            OffsetSpec::Timestamp(_) => 5,
        }
    }

    /// Reads the offset type and, for 4 and 5, the 8-octet value. Type 0 (*none*) is only
    /// valid in a `ConsumerUpdate` response and is handled there.
    fn decode(r: &mut Reader<'_>) -> Result<OffsetSpec, DecodeError> {
        let t = r.u16("offset type")?;
        Self::decode_typed(t, r)
    }

    fn decode_typed(t: u16, r: &mut Reader<'_>) -> Result<OffsetSpec, DecodeError> {
        Ok(match t {
            1 => OffsetSpec::First,
            2 => OffsetSpec::Last,
            3 => OffsetSpec::Next,
            4 => OffsetSpec::Offset(r.u64("offset")?),
            5 => OffsetSpec::Timestamp(r.i64("offset timestamp")?),
            other => {
                return Err(DecodeError::InvalidValue {
                    context: "offset type",
                    value: i64::from(other),
                })
            }
        })
    }

    fn encode(self, out: &mut BytesMut) {
        out.put_u16(self.type_code());
        match self {
            OffsetSpec::Offset(o) => out.put_u64(o),
            OffsetSpec::Timestamp(t) => out.put_i64(t),
            OffsetSpec::First | OffsetSpec::Last | OffsetSpec::Next => {}
        }
    }
}

// ---- client → server ---------------------------------------------------------------------

/// `DeclarePublisher` (0x0001) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarePublisher {
    pub correlation_id: u32,
    pub publisher_id: u8,
    /// Empty: no reference (no deduplication).
    pub reference: String,
    pub stream: String,
}

/// Which `Publish` layout a frame uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishVersion {
    /// `PublishingId Message`.
    V1,
    /// `PublishingId FilterValue Message` (RabbitMQ ≥ 3.13, stream filtering).
    V2,
}

/// One message of a `Publish` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedMessage {
    pub publishing_id: u64,
    /// Version 2 only; `None` is the null string (-1).
    pub filter_value: Option<Bytes>,
    /// A simple entry (one AMQP 1.0 message, a zero-copy slice of the frame) or, in version
    /// 1 only, a sub-entry batch (RabbitMQ accepts batches in version 1 only).
    pub entry: Entry,
}

/// `Publish` (0x0002), versions 1 and 2. No response; confirms come as `PublishConfirm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub version: PublishVersion,
    pub publisher_id: u8,
    pub messages: Vec<PublishedMessage>,
}

/// `QueryPublisherSequence` (0x0005) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPublisherSequence {
    pub correlation_id: u32,
    pub reference: String,
    pub stream: String,
}

/// `DeletePublisher` (0x0006) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletePublisher {
    pub correlation_id: u32,
    pub publisher_id: u8,
}

/// `Subscribe` (0x0007) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub correlation_id: u32,
    pub subscription_id: u8,
    pub stream: String,
    pub offset: OffsetSpec,
    /// Initial credit, in chunks.
    pub credit: u16,
    /// `single-active-consumer`, `name`, `super-stream`, `filter.N`, `match-unfiltered`, ...
    /// (omitted on the wire when empty, as RabbitMQ does).
    pub properties: Properties,
}

/// `Credit` (0x0009): more chunks for a subscription. No response unless it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub subscription_id: u8,
    pub credit: u16,
}

/// `StoreOffset` (0x000a). No response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOffset {
    pub reference: String,
    pub stream: String,
    pub offset: u64,
}

/// `QueryOffset` (0x000b) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOffset {
    pub correlation_id: u32,
    pub reference: String,
    pub stream: String,
}

/// `Unsubscribe` (0x000c) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    pub correlation_id: u32,
    pub subscription_id: u8,
}

/// `Create` (0x000d) request: create a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub correlation_id: u32,
    pub stream: String,
    /// `max-length-bytes`, `max-age`, `stream-max-segment-size-bytes`,
    /// `queue-leader-locator`, `initial-cluster-size`, ...
    pub arguments: Properties,
}

/// `Delete` (0x000e) request: delete a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub correlation_id: u32,
    pub stream: String,
}

/// `Metadata` (0x000f) query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub correlation_id: u32,
    pub streams: Vec<String>,
}

/// `PeerProperties` (0x0011) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProperties {
    pub correlation_id: u32,
    pub properties: Properties,
}

/// `SaslHandshake` (0x0012) request. (PROTOCOL.adoc shows a `Mechanism` field; neither
/// RabbitMQ nor the clients send one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslHandshake {
    pub correlation_id: u32,
}

/// `SaslAuthenticate` (0x0013) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslAuthenticate {
    pub correlation_id: u32,
    pub mechanism: String,
    /// The SASL response (`\0user\0password` for PLAIN). Null (-1) decodes as empty; empty
    /// encodes as null, as RabbitMQ's codec does.
    pub data: Bytes,
}

/// `Tune` (0x0014): sent by the server, echoed (possibly lowered) by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tune {
    /// Bytes; 0 means no limit.
    pub frame_max: u32,
    /// Seconds; 0 means no heartbeat.
    pub heartbeat: u32,
}

/// `Open` (0x0015) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub correlation_id: u32,
    pub virtual_host: String,
}

/// `Close` (0x0016) request, sent by either peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub reason: String,
}

/// `Route` (0x0018) query: the partitions of a super stream a routing key goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub correlation_id: u32,
    pub routing_key: String,
    pub super_stream: String,
}

/// `Partitions` (0x0019) query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    pub correlation_id: u32,
    pub super_stream: String,
}

/// `ConsumerUpdate` response (0x801a), sent by the client: where an activated single
/// active consumer resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerUpdateResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    /// `None` is offset type 0 (*none*: keep the subscription's own offset).
    pub offset: Option<OffsetSpec>,
}

/// One `Key MinVersion MaxVersion` triple of `ExchangeCommandVersions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandVersion {
    pub key: u16,
    pub min_version: u16,
    pub max_version: u16,
}

/// `ExchangeCommandVersions` (0x001b) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeCommandVersions {
    pub correlation_id: u32,
    pub versions: Vec<CommandVersion>,
}

/// `StreamStats` (0x001c) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub correlation_id: u32,
    pub stream: String,
}

/// `CreateSuperStream` (0x001d) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSuperStream {
    pub correlation_id: u32,
    pub name: String,
    pub partitions: Vec<String>,
    pub binding_keys: Vec<String>,
    pub arguments: Properties,
}

/// `DeleteSuperStream` (0x001e) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteSuperStream {
    pub correlation_id: u32,
    pub name: String,
}

/// `ResolveOffsetSpec` (0x001f) request (RabbitMQ ≥ 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOffsetSpec {
    pub correlation_id: u32,
    pub stream: String,
    pub offset: OffsetSpec,
    /// `filter.N`, `match-unfiltered`, `chunk_selector` (omitted on the wire when empty).
    pub properties: Properties,
}

// ---- server → client ---------------------------------------------------------------------

/// A response that carries only a code (`DeclarePublisher`, `DeletePublisher`, `Subscribe`,
/// `Unsubscribe`, `Create`, `Delete`, `Close`, `CreateSuperStream`, `DeleteSuperStream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub correlation_id: u32,
    pub code: ResponseCode,
}

/// `PublishConfirm` (0x0003).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfirm {
    pub publisher_id: u8,
    pub publishing_ids: Vec<u64>,
}

/// One rejected message of a `PublishError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishingError {
    pub publishing_id: u64,
    pub code: ResponseCode,
}

/// `PublishError` (0x0004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    pub publisher_id: u8,
    pub errors: Vec<PublishingError>,
}

/// `QueryPublisherSequence` response (0x8005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPublisherSequenceResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub sequence: u64,
}

/// `Deliver` (0x0008), versions 1 and 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    pub subscription_id: u8,
    /// `Some` makes it a version 2 frame (`CommittedChunkId`, sent to clients that
    /// advertised `Deliver` v2 in `ExchangeCommandVersions`).
    pub committed_chunk_id: Option<u64>,
    /// The Osiris chunk as the stream plugin sends it: the 48-octet header, then the data
    /// entries (and the trailer, for non-user chunks), without the bloom filter. Parse it with
    /// [`crate::chunk::Chunk::parse_delivered`]. A zero-copy slice of the frame.
    pub chunk: Bytes,
}

impl Deliver {
    /// The frame up to the chunk: size prefix, key, version, subscription id and committed
    /// chunk id. Followed by [`Deliver::chunk`] it is the frame [`ServerCommand::encode`]
    /// writes, so a server can send the chunk from where it is instead of copying it.
    pub fn encode_head(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let ids = 1 + if self.committed_chunk_id.is_some() {
            8
        } else {
            0
        };
        let size = 2 + 2 + ids + self.chunk.len();
        let size32 = u32::try_from(size).map_err(|_| EncodeError::TooLong(size))?;
        out.put_u32(size32);
        out.put_u16(key::DELIVER);
        out.put_u16(self.version());
        self.encode_ids(out);
        Ok(())
    }

    /// 2 with a committed chunk id, else 1.
    fn version(&self) -> u16 {
        if self.committed_chunk_id.is_some() {
            2
        } else {
            1
        }
    }

    /// What the body has before the chunk.
    fn encode_ids(&self, out: &mut BytesMut) {
        out.put_u8(self.subscription_id);
        if let Some(id) = self.committed_chunk_id {
            out.put_u64(id);
        }
    }
}

/// `Credit` response (0x8009), sent only when crediting fails (e.g. an unknown
/// subscription). It has no correlation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditResponse {
    pub code: ResponseCode,
    pub subscription_id: u8,
}

/// `QueryOffset` response (0x800b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryOffsetResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub offset: u64,
}

/// A broker of a `Metadata` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub reference: u16,
    pub host: String,
    pub port: u32,
}

/// The metadata of one stream in a `Metadata` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMetadata {
    pub stream: String,
    pub code: ResponseCode,
    /// A broker reference; 0xFFFF (RabbitMQ writes -1) when there is none, e.g. with an
    /// error code.
    pub leader: u16,
    pub replicas: Vec<u16>,
}

/// `Metadata` response (0x800f). It has no response code of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    pub correlation_id: u32,
    pub brokers: Vec<Broker>,
    pub streams: Vec<StreamMetadata>,
}

/// `MetadataUpdate` (0x0010), e.g. `StreamNotAvailable` when a stream is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataUpdate {
    pub code: ResponseCode,
    pub stream: String,
}

/// `PeerProperties` response (0x8011).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPropertiesResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub properties: Properties,
}

/// `SaslHandshake` response (0x8012).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslHandshakeResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub mechanisms: Vec<String>,
}

/// `SaslAuthenticate` response (0x8013).
///
/// The challenge is left out when empty. When present RabbitMQ's codec writes it with an
/// int16 length (PROTOCOL.adoc says `bytes`, int32); this crate follows RabbitMQ. No
/// mechanism RabbitMQ ships sends a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslAuthenticateResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub challenge: Bytes,
}

/// `Open` response (0x8015). The properties (`advertised_host`, `advertised_port`) are
/// left out on the wire when empty, as RabbitMQ does for failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub properties: Properties,
}

/// `Route` (0x8018) and `Partitions` (0x8019) responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub streams: Vec<String>,
}

/// `ConsumerUpdate` (0x001a), sent by the server to a single active consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerUpdate {
    pub correlation_id: u32,
    pub subscription_id: u8,
    pub active: bool,
}

/// `ExchangeCommandVersions` response (0x801b).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeCommandVersionsResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub versions: Vec<CommandVersion>,
}

/// `StreamStats` response (0x801c): `first_chunk_id`, `committed_chunk_id`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatsResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub stats: Vec<(String, i64)>,
}

/// `ResolveOffsetSpec` response (0x801f). `offset_type` is 4 (*offset*) today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolveOffsetSpecResponse {
    pub correlation_id: u32,
    pub code: ResponseCode,
    pub offset_type: u16,
    pub offset: u64,
}

// ---- the two directions --------------------------------------------------------------------

/// Everything a client sends: what a stream server decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    DeclarePublisher(DeclarePublisher),
    Publish(Publish),
    QueryPublisherSequence(QueryPublisherSequence),
    DeletePublisher(DeletePublisher),
    Subscribe(Subscribe),
    Credit(Credit),
    StoreOffset(StoreOffset),
    QueryOffset(QueryOffset),
    Unsubscribe(Unsubscribe),
    Create(Create),
    Delete(Delete),
    Metadata(Metadata),
    PeerProperties(PeerProperties),
    SaslHandshake(SaslHandshake),
    SaslAuthenticate(SaslAuthenticate),
    /// The client's answer to the server's `Tune`. Accepted with the request key (0x0014,
    /// what the clients send) or the response key (0x8014); encoded with 0x0014.
    Tune(Tune),
    Open(Open),
    /// Client-initiated close.
    Close(Close),
    /// The client's answer to a server-initiated `Close` (0x8016).
    CloseResponse(Response),
    Heartbeat,
    Route(Route),
    Partitions(Partitions),
    ConsumerUpdateResponse(ConsumerUpdateResponse),
    ExchangeCommandVersions(ExchangeCommandVersions),
    StreamStats(StreamStats),
    CreateSuperStream(CreateSuperStream),
    DeleteSuperStream(DeleteSuperStream),
    ResolveOffsetSpec(ResolveOffsetSpec),
}

/// Everything a server sends: what a stream server encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    DeclarePublisherResponse(Response),
    PublishConfirm(PublishConfirm),
    PublishError(PublishError),
    QueryPublisherSequenceResponse(QueryPublisherSequenceResponse),
    DeletePublisherResponse(Response),
    SubscribeResponse(Response),
    Deliver(Deliver),
    CreditResponse(CreditResponse),
    QueryOffsetResponse(QueryOffsetResponse),
    UnsubscribeResponse(Response),
    CreateResponse(Response),
    DeleteResponse(Response),
    MetadataResponse(MetadataResponse),
    MetadataUpdate(MetadataUpdate),
    PeerPropertiesResponse(PeerPropertiesResponse),
    SaslHandshakeResponse(SaslHandshakeResponse),
    SaslAuthenticateResponse(SaslAuthenticateResponse),
    Tune(Tune),
    OpenResponse(OpenResponse),
    /// Server-initiated close (e.g. after [`DecodeError`]: code 13 or 14).
    Close(Close),
    /// The server's answer to a client-initiated `Close` (0x8016).
    CloseResponse(Response),
    Heartbeat,
    RouteResponse(StreamsResponse),
    PartitionsResponse(StreamsResponse),
    ConsumerUpdate(ConsumerUpdate),
    ExchangeCommandVersionsResponse(ExchangeCommandVersionsResponse),
    StreamStatsResponse(StreamStatsResponse),
    CreateSuperStreamResponse(Response),
    DeleteSuperStreamResponse(Response),
    ResolveOffsetSpecResponse(ResolveOffsetSpecResponse),
}

/// Splits one frame off `buf` (once it is complete) and returns its body (after the size
/// prefix), zero-copy.
fn split_frame(buf: &Bytes, max_frame_size: u32) -> Result<Option<(Bytes, usize)>, DecodeError> {
    Ok(frame_len(buf, max_frame_size)?.map(|total| (buf.slice(FRAME_SIZE_PREFIX..total), total)))
}

fn split_frame_mut(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Bytes>, DecodeError> {
    match frame_len(buf, max_frame_size)? {
        None => Ok(None),
        Some(total) => {
            let mut frame = buf.split_to(total).freeze();
            Ok(Some(frame.split_off(FRAME_SIZE_PREFIX)))
        }
    }
}

fn check_version(h: &Header, max: u16) -> Result<(), DecodeError> {
    if h.version == 0 || h.version > max {
        Err(DecodeError::UnsupportedVersion {
            key: h.key,
            version: h.version,
        })
    } else {
        Ok(())
    }
}

fn code(r: &mut Reader<'_>) -> Result<ResponseCode, DecodeError> {
    Ok(ResponseCode::from_u16(r.u16("response code")?))
}

fn publisher_messages(
    r: &mut Reader<'_>,
    version: PublishVersion,
) -> Result<Vec<PublishedMessage>, DecodeError> {
    let min = match version {
        PublishVersion::V1 => 12,
        PublishVersion::V2 => 14,
    };
    let n = read_count(r, "published messages", min)?;
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        let publishing_id = r.u64("publishing id")?;
        let filter_value = match version {
            PublishVersion::V1 => None,
            PublishVersion::V2 => read_opt_raw_string(r, "filter value")?,
        };
        let entry = Entry::decode(r)?;
        if version == PublishVersion::V2 && matches!(entry, Entry::SubBatch(_)) {
            // RabbitMQ's writer has no clause for it: the connection fails.
            return Err(DecodeError::InvalidValue {
                context: "sub-entry batch in publish v2",
                value: 1,
            });
        }
        messages.push(PublishedMessage {
            publishing_id,
            filter_value,
            entry,
        });
    }
    Ok(messages)
}

fn command_versions(r: &mut Reader<'_>) -> Result<Vec<CommandVersion>, DecodeError> {
    let n = read_count(r, "command versions", 6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(CommandVersion {
            key: r.u16("command versions")?,
            min_version: r.u16("command versions")?,
            max_version: r.u16("command versions")?,
        });
    }
    Ok(out)
}

fn put_command_versions(out: &mut BytesMut, v: &[CommandVersion]) -> Result<(), EncodeError> {
    put_count(out, v.len(), "command versions")?;
    for c in v {
        out.put_u16(c.key);
        out.put_u16(c.min_version);
        out.put_u16(c.max_version);
    }
    Ok(())
}

impl ClientCommand {
    /// Decodes the first frame of `buf` if it is complete: `Ok(None)` asks for more input,
    /// `Ok(Some((command, n)))` consumed `n` octets. Blobs in the command are zero-copy
    /// slices of `buf`. `max_frame_size` (0: no limit) is checked before the body is
    /// awaited.
    pub fn decode(
        buf: &Bytes,
        max_frame_size: u32,
    ) -> Result<Option<(ClientCommand, usize)>, DecodeError> {
        match split_frame(buf, max_frame_size)? {
            None => Ok(None),
            Some((body, n)) => Ok(Some((ClientCommand::decode_body(&body)?, n))),
        }
    }

    /// Like [`ClientCommand::decode`], splitting the frame off a receive buffer.
    pub fn decode_from(
        buf: &mut BytesMut,
        max_frame_size: u32,
    ) -> Result<Option<ClientCommand>, DecodeError> {
        match split_frame_mut(buf, max_frame_size)? {
            None => Ok(None),
            Some(body) => ClientCommand::decode_body(&body).map(Some),
        }
    }

    /// Decodes one frame body (the frame without its size prefix).
    pub fn decode_body(body: &Bytes) -> Result<ClientCommand, DecodeError> {
        let mut r = Reader::new(body);
        let h = read_header(&mut r)?;
        let r = &mut r;
        let cmd = match h.key {
            key::PUBLISH => {
                check_version(&h, 2)?;
                let version = if h.version == 1 {
                    PublishVersion::V1
                } else {
                    PublishVersion::V2
                };
                let publisher_id = r.u8("publisher id")?;
                let messages = publisher_messages(r, version)?;
                ClientCommand::Publish(Publish {
                    version,
                    publisher_id,
                    messages,
                })
            }
            key::CREDIT => {
                check_version(&h, 1)?;
                ClientCommand::Credit(Credit {
                    subscription_id: r.u8("subscription id")?,
                    credit: r.u16("credit")?,
                })
            }
            key::STORE_OFFSET => {
                check_version(&h, 1)?;
                ClientCommand::StoreOffset(StoreOffset {
                    reference: read_string(r, "reference")?,
                    stream: read_string(r, "stream")?,
                    offset: r.u64("offset")?,
                })
            }
            key::HEARTBEAT => {
                check_version(&h, 1)?;
                ClientCommand::Heartbeat
            }
            key::TUNE | 0x8014 => {
                check_version(&h, 1)?;
                ClientCommand::Tune(Tune {
                    frame_max: r.u32("frame max")?,
                    heartbeat: r.u32("heartbeat")?,
                })
            }
            0x8016 => {
                check_version(&h, 1)?;
                ClientCommand::CloseResponse(Response {
                    correlation_id: r.u32("correlation id")?,
                    code: code(r)?,
                })
            }
            0x801a => {
                check_version(&h, 1)?;
                let correlation_id = r.u32("correlation id")?;
                let code = code(r)?;
                let t = r.u16("offset type")?;
                let offset = if t == 0 {
                    None
                } else {
                    Some(OffsetSpec::decode_typed(t, r)?)
                };
                if matches!(t, 0..=3) && r.remaining() == 8 {
                    // An offset value with a type that has none: RabbitMQ reads the type and
                    // ignores what follows, and rstream (before 0.21) sends 8 bytes there
                    // for `first`, `last` and `next` too.
                    let _ = r.rest();
                }
                ClientCommand::ConsumerUpdateResponse(ConsumerUpdateResponse {
                    correlation_id,
                    code,
                    offset,
                })
            }
            k => {
                if k & RESPONSE_FLAG != 0 || !is_client_request(k) {
                    return Err(DecodeError::UnknownCommand { key: k });
                }
                check_version(&h, 1)?;
                let correlation_id = r.u32("correlation id")?;
                client_request(k, correlation_id, r)?
            }
        };
        finish(r, "command")?;
        Ok(cmd)
    }

    /// The frame key.
    pub fn key(&self) -> u16 {
        match self {
            ClientCommand::DeclarePublisher(_) => key::DECLARE_PUBLISHER,
            ClientCommand::Publish(_) => key::PUBLISH,
            ClientCommand::QueryPublisherSequence(_) => key::QUERY_PUBLISHER_SEQUENCE,
            ClientCommand::DeletePublisher(_) => key::DELETE_PUBLISHER,
            ClientCommand::Subscribe(_) => key::SUBSCRIBE,
            ClientCommand::Credit(_) => key::CREDIT,
            ClientCommand::StoreOffset(_) => key::STORE_OFFSET,
            ClientCommand::QueryOffset(_) => key::QUERY_OFFSET,
            ClientCommand::Unsubscribe(_) => key::UNSUBSCRIBE,
            ClientCommand::Create(_) => key::CREATE,
            ClientCommand::Delete(_) => key::DELETE,
            ClientCommand::Metadata(_) => key::METADATA,
            ClientCommand::PeerProperties(_) => key::PEER_PROPERTIES,
            ClientCommand::SaslHandshake(_) => key::SASL_HANDSHAKE,
            ClientCommand::SaslAuthenticate(_) => key::SASL_AUTHENTICATE,
            ClientCommand::Tune(_) => key::TUNE,
            ClientCommand::Open(_) => key::OPEN,
            ClientCommand::Close(_) => key::CLOSE,
            ClientCommand::CloseResponse(_) => key::CLOSE | RESPONSE_FLAG,
            ClientCommand::Heartbeat => key::HEARTBEAT,
            ClientCommand::Route(_) => key::ROUTE,
            ClientCommand::Partitions(_) => key::PARTITIONS,
            ClientCommand::ConsumerUpdateResponse(_) => key::CONSUMER_UPDATE | RESPONSE_FLAG,
            ClientCommand::ExchangeCommandVersions(_) => key::EXCHANGE_COMMAND_VERSIONS,
            ClientCommand::StreamStats(_) => key::STREAM_STATS,
            ClientCommand::CreateSuperStream(_) => key::CREATE_SUPER_STREAM,
            ClientCommand::DeleteSuperStream(_) => key::DELETE_SUPER_STREAM,
            ClientCommand::ResolveOffsetSpec(_) => key::RESOLVE_OFFSET_SPEC,
        }
    }

    /// The frame version.
    pub fn version(&self) -> u16 {
        match self {
            ClientCommand::Publish(Publish {
                version: PublishVersion::V2,
                ..
            }) => 2,
            _ => 1,
        }
    }

    /// The correlation id of a request (or of a response the client sends), which the
    /// server's answer must carry.
    pub fn correlation_id(&self) -> Option<u32> {
        Some(match self {
            ClientCommand::DeclarePublisher(c) => c.correlation_id,
            ClientCommand::QueryPublisherSequence(c) => c.correlation_id,
            ClientCommand::DeletePublisher(c) => c.correlation_id,
            ClientCommand::Subscribe(c) => c.correlation_id,
            ClientCommand::QueryOffset(c) => c.correlation_id,
            ClientCommand::Unsubscribe(c) => c.correlation_id,
            ClientCommand::Create(c) => c.correlation_id,
            ClientCommand::Delete(c) => c.correlation_id,
            ClientCommand::Metadata(c) => c.correlation_id,
            ClientCommand::PeerProperties(c) => c.correlation_id,
            ClientCommand::SaslHandshake(c) => c.correlation_id,
            ClientCommand::SaslAuthenticate(c) => c.correlation_id,
            ClientCommand::Open(c) => c.correlation_id,
            ClientCommand::Close(c) => c.correlation_id,
            ClientCommand::CloseResponse(c) => c.correlation_id,
            ClientCommand::Route(c) => c.correlation_id,
            ClientCommand::Partitions(c) => c.correlation_id,
            ClientCommand::ConsumerUpdateResponse(c) => c.correlation_id,
            ClientCommand::ExchangeCommandVersions(c) => c.correlation_id,
            ClientCommand::StreamStats(c) => c.correlation_id,
            ClientCommand::CreateSuperStream(c) => c.correlation_id,
            ClientCommand::DeleteSuperStream(c) => c.correlation_id,
            ClientCommand::ResolveOffsetSpec(c) => c.correlation_id,
            ClientCommand::Publish(_)
            | ClientCommand::Credit(_)
            | ClientCommand::StoreOffset(_)
            | ClientCommand::Tune(_)
            | ClientCommand::Heartbeat => return None,
        })
    }

    /// Encodes the whole frame (size prefix included). On error nothing is written.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        framed(out, self.key(), self.version(), |out| self.encode_body(out))
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            ClientCommand::DeclarePublisher(c) => {
                out.put_u32(c.correlation_id);
                out.put_u8(c.publisher_id);
                put_string(out, &c.reference)?;
                put_string(out, &c.stream)?;
            }
            ClientCommand::Publish(c) => {
                out.put_u8(c.publisher_id);
                put_count(out, c.messages.len(), "published messages")?;
                for m in &c.messages {
                    out.put_u64(m.publishing_id);
                    match c.version {
                        PublishVersion::V1 => {
                            if m.filter_value.is_some() {
                                return Err(EncodeError::Invalid("a filter value in publish v1"));
                            }
                        }
                        PublishVersion::V2 => {
                            if matches!(m.entry, Entry::SubBatch(_)) {
                                return Err(EncodeError::Invalid(
                                    "a sub-entry batch in publish v2",
                                ));
                            }
                            put_opt_raw_string(out, m.filter_value.as_deref())?;
                        }
                    }
                    m.entry
                        .encode(out)
                        .map_err(|_| EncodeError::TooLong(m.entry.encoded_len()))?;
                }
            }
            ClientCommand::QueryPublisherSequence(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.reference)?;
                put_string(out, &c.stream)?;
            }
            ClientCommand::DeletePublisher(c) => {
                out.put_u32(c.correlation_id);
                out.put_u8(c.publisher_id);
            }
            ClientCommand::Subscribe(c) => {
                out.put_u32(c.correlation_id);
                out.put_u8(c.subscription_id);
                put_string(out, &c.stream)?;
                c.offset.encode(out);
                out.put_u16(c.credit);
                put_optional_map(out, &c.properties, "subscribe properties")?;
            }
            ClientCommand::Credit(c) => {
                out.put_u8(c.subscription_id);
                out.put_u16(c.credit);
            }
            ClientCommand::StoreOffset(c) => {
                put_string(out, &c.reference)?;
                put_string(out, &c.stream)?;
                out.put_u64(c.offset);
            }
            ClientCommand::QueryOffset(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.reference)?;
                put_string(out, &c.stream)?;
            }
            ClientCommand::Unsubscribe(c) => {
                out.put_u32(c.correlation_id);
                out.put_u8(c.subscription_id);
            }
            ClientCommand::Create(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.stream)?;
                put_map(out, &c.arguments, "create arguments")?;
            }
            ClientCommand::Delete(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.stream)?;
            }
            ClientCommand::Metadata(c) => {
                out.put_u32(c.correlation_id);
                put_strings(out, &c.streams, "metadata streams")?;
            }
            ClientCommand::PeerProperties(c) => {
                out.put_u32(c.correlation_id);
                put_map(out, &c.properties, "peer properties")?;
            }
            ClientCommand::SaslHandshake(c) => out.put_u32(c.correlation_id),
            ClientCommand::SaslAuthenticate(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.mechanism)?;
                if c.data.is_empty() {
                    out.put_i32(-1);
                } else {
                    let len = i32::try_from(c.data.len())
                        .map_err(|_| EncodeError::TooLong(c.data.len()))?;
                    out.put_i32(len);
                    out.put_slice(&c.data);
                }
            }
            ClientCommand::Tune(c) => {
                out.put_u32(c.frame_max);
                out.put_u32(c.heartbeat);
            }
            ClientCommand::Open(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.virtual_host)?;
            }
            ClientCommand::Close(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_string(out, &c.reason)?;
            }
            ClientCommand::CloseResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
            }
            ClientCommand::Heartbeat => {}
            ClientCommand::Route(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.routing_key)?;
                put_string(out, &c.super_stream)?;
            }
            ClientCommand::Partitions(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.super_stream)?;
            }
            ClientCommand::ConsumerUpdateResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                match c.offset {
                    None => out.put_u16(0),
                    Some(o) => o.encode(out),
                }
            }
            ClientCommand::ExchangeCommandVersions(c) => {
                out.put_u32(c.correlation_id);
                put_command_versions(out, &c.versions)?;
            }
            ClientCommand::StreamStats(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.stream)?;
            }
            ClientCommand::CreateSuperStream(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.name)?;
                put_strings(out, &c.partitions, "partitions")?;
                put_strings(out, &c.binding_keys, "binding keys")?;
                put_map(out, &c.arguments, "super stream arguments")?;
            }
            ClientCommand::DeleteSuperStream(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.name)?;
            }
            ClientCommand::ResolveOffsetSpec(c) => {
                out.put_u32(c.correlation_id);
                put_string(out, &c.stream)?;
                c.offset.encode(out);
                put_optional_map(out, &c.properties, "resolve offset spec properties")?;
            }
        }
        Ok(())
    }
}

/// Keys of the client requests that carry a correlation id right after the header.
fn is_client_request(k: u16) -> bool {
    matches!(
        k,
        key::DECLARE_PUBLISHER
            | key::QUERY_PUBLISHER_SEQUENCE
            | key::DELETE_PUBLISHER
            | key::SUBSCRIBE
            | key::QUERY_OFFSET
            | key::UNSUBSCRIBE
            | key::CREATE
            | key::DELETE
            | key::METADATA
            | key::PEER_PROPERTIES
            | key::SASL_HANDSHAKE
            | key::SASL_AUTHENTICATE
            | key::OPEN
            | key::CLOSE
            | key::ROUTE
            | key::PARTITIONS
            | key::EXCHANGE_COMMAND_VERSIONS
            | key::STREAM_STATS
            | key::CREATE_SUPER_STREAM
            | key::DELETE_SUPER_STREAM
            | key::RESOLVE_OFFSET_SPEC
    )
}

fn client_request(
    k: u16,
    correlation_id: u32,
    r: &mut Reader<'_>,
) -> Result<ClientCommand, DecodeError> {
    Ok(match k {
        key::DECLARE_PUBLISHER => ClientCommand::DeclarePublisher(DeclarePublisher {
            correlation_id,
            publisher_id: r.u8("publisher id")?,
            reference: read_string(r, "publisher reference")?,
            stream: read_string(r, "stream")?,
        }),
        key::QUERY_PUBLISHER_SEQUENCE => {
            ClientCommand::QueryPublisherSequence(QueryPublisherSequence {
                correlation_id,
                reference: read_string(r, "publisher reference")?,
                stream: read_string(r, "stream")?,
            })
        }
        key::DELETE_PUBLISHER => ClientCommand::DeletePublisher(DeletePublisher {
            correlation_id,
            publisher_id: r.u8("publisher id")?,
        }),
        key::SUBSCRIBE => ClientCommand::Subscribe(Subscribe {
            correlation_id,
            subscription_id: r.u8("subscription id")?,
            stream: read_string(r, "stream")?,
            offset: OffsetSpec::decode(r)?,
            credit: r.u16("credit")?,
            properties: read_optional_map(r, "subscribe properties")?,
        }),
        key::QUERY_OFFSET => ClientCommand::QueryOffset(QueryOffset {
            correlation_id,
            reference: read_string(r, "reference")?,
            stream: read_string(r, "stream")?,
        }),
        key::UNSUBSCRIBE => ClientCommand::Unsubscribe(Unsubscribe {
            correlation_id,
            subscription_id: r.u8("subscription id")?,
        }),
        key::CREATE => ClientCommand::Create(Create {
            correlation_id,
            stream: read_string(r, "stream")?,
            arguments: read_map(r, "create arguments")?,
        }),
        key::DELETE => ClientCommand::Delete(Delete {
            correlation_id,
            stream: read_string(r, "stream")?,
        }),
        key::METADATA => ClientCommand::Metadata(Metadata {
            correlation_id,
            streams: read_strings(r, "metadata streams")?,
        }),
        key::PEER_PROPERTIES => ClientCommand::PeerProperties(PeerProperties {
            correlation_id,
            properties: read_map(r, "peer properties")?,
        }),
        key::SASL_HANDSHAKE => ClientCommand::SaslHandshake(SaslHandshake { correlation_id }),
        key::SASL_AUTHENTICATE => ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id,
            mechanism: read_string(r, "sasl mechanism")?,
            data: read_bytes(r, "sasl data")?,
        }),
        key::OPEN => ClientCommand::Open(Open {
            correlation_id,
            virtual_host: read_string(r, "virtual host")?,
        }),
        key::CLOSE => ClientCommand::Close(Close {
            correlation_id,
            code: code(r)?,
            reason: read_string(r, "close reason")?,
        }),
        key::ROUTE => ClientCommand::Route(Route {
            correlation_id,
            routing_key: read_string(r, "routing key")?,
            super_stream: read_string(r, "super stream")?,
        }),
        key::PARTITIONS => ClientCommand::Partitions(Partitions {
            correlation_id,
            super_stream: read_string(r, "super stream")?,
        }),
        key::EXCHANGE_COMMAND_VERSIONS => {
            ClientCommand::ExchangeCommandVersions(ExchangeCommandVersions {
                correlation_id,
                versions: command_versions(r)?,
            })
        }
        key::STREAM_STATS => ClientCommand::StreamStats(StreamStats {
            correlation_id,
            stream: read_string(r, "stream")?,
        }),
        key::CREATE_SUPER_STREAM => ClientCommand::CreateSuperStream(CreateSuperStream {
            correlation_id,
            name: read_string(r, "super stream")?,
            partitions: read_strings(r, "partitions")?,
            binding_keys: read_strings(r, "binding keys")?,
            arguments: read_map(r, "super stream arguments")?,
        }),
        key::DELETE_SUPER_STREAM => ClientCommand::DeleteSuperStream(DeleteSuperStream {
            correlation_id,
            name: read_string(r, "super stream")?,
        }),
        key::RESOLVE_OFFSET_SPEC => ClientCommand::ResolveOffsetSpec(ResolveOffsetSpec {
            correlation_id,
            stream: read_string(r, "stream")?,
            offset: OffsetSpec::decode(r)?,
            properties: read_optional_map(r, "resolve offset spec properties")?,
        }),
        other => return Err(DecodeError::UnknownCommand { key: other }),
    })
}

/// Keys of the responses made of a correlation id and a code only.
fn simple_response(k: u16, resp: Response) -> Option<ServerCommand> {
    Some(match k & !RESPONSE_FLAG {
        key::DECLARE_PUBLISHER => ServerCommand::DeclarePublisherResponse(resp),
        key::DELETE_PUBLISHER => ServerCommand::DeletePublisherResponse(resp),
        key::SUBSCRIBE => ServerCommand::SubscribeResponse(resp),
        key::UNSUBSCRIBE => ServerCommand::UnsubscribeResponse(resp),
        key::CREATE => ServerCommand::CreateResponse(resp),
        key::DELETE => ServerCommand::DeleteResponse(resp),
        key::CLOSE => ServerCommand::CloseResponse(resp),
        key::CREATE_SUPER_STREAM => ServerCommand::CreateSuperStreamResponse(resp),
        key::DELETE_SUPER_STREAM => ServerCommand::DeleteSuperStreamResponse(resp),
        _ => return None,
    })
}

impl ServerCommand {
    /// Decodes the first frame of `buf` if it is complete (see [`ClientCommand::decode`]).
    /// This is the client side of the protocol; Pier uses it in tests and tools.
    pub fn decode(
        buf: &Bytes,
        max_frame_size: u32,
    ) -> Result<Option<(ServerCommand, usize)>, DecodeError> {
        match split_frame(buf, max_frame_size)? {
            None => Ok(None),
            Some((body, n)) => Ok(Some((ServerCommand::decode_body(&body)?, n))),
        }
    }

    /// Like [`ServerCommand::decode`], splitting the frame off a receive buffer.
    pub fn decode_from(
        buf: &mut BytesMut,
        max_frame_size: u32,
    ) -> Result<Option<ServerCommand>, DecodeError> {
        match split_frame_mut(buf, max_frame_size)? {
            None => Ok(None),
            Some(body) => ServerCommand::decode_body(&body).map(Some),
        }
    }

    /// Decodes one frame body (the frame without its size prefix).
    pub fn decode_body(body: &Bytes) -> Result<ServerCommand, DecodeError> {
        let mut r = Reader::new(body);
        let h = read_header(&mut r)?;
        let r = &mut r;
        let is_response = h.key & RESPONSE_FLAG != 0;
        let k = h.key & !RESPONSE_FLAG;
        let cmd = if !is_response {
            match k {
                key::PUBLISH_CONFIRM => {
                    check_version(&h, 1)?;
                    let publisher_id = r.u8("publisher id")?;
                    let n = read_count(r, "publishing ids", 8)?;
                    let mut ids = Vec::with_capacity(n);
                    for _ in 0..n {
                        ids.push(r.u64("publishing ids")?);
                    }
                    ServerCommand::PublishConfirm(PublishConfirm {
                        publisher_id,
                        publishing_ids: ids,
                    })
                }
                key::PUBLISH_ERROR => {
                    check_version(&h, 1)?;
                    let publisher_id = r.u8("publisher id")?;
                    let n = read_count(r, "publishing errors", 10)?;
                    let mut errors = Vec::with_capacity(n);
                    for _ in 0..n {
                        errors.push(PublishingError {
                            publishing_id: r.u64("publishing errors")?,
                            code: code(r)?,
                        });
                    }
                    ServerCommand::PublishError(PublishError {
                        publisher_id,
                        errors,
                    })
                }
                key::DELIVER => {
                    check_version(&h, 2)?;
                    let subscription_id = r.u8("subscription id")?;
                    let committed_chunk_id = if h.version == 2 {
                        Some(r.u64("committed chunk id")?)
                    } else {
                        None
                    };
                    ServerCommand::Deliver(Deliver {
                        subscription_id,
                        committed_chunk_id,
                        chunk: r.rest(),
                    })
                }
                key::METADATA_UPDATE => {
                    check_version(&h, 1)?;
                    ServerCommand::MetadataUpdate(MetadataUpdate {
                        code: code(r)?,
                        stream: read_string(r, "stream")?,
                    })
                }
                key::TUNE => {
                    check_version(&h, 1)?;
                    ServerCommand::Tune(Tune {
                        frame_max: r.u32("frame max")?,
                        heartbeat: r.u32("heartbeat")?,
                    })
                }
                key::HEARTBEAT => {
                    check_version(&h, 1)?;
                    ServerCommand::Heartbeat
                }
                key::CLOSE => {
                    check_version(&h, 1)?;
                    ServerCommand::Close(Close {
                        correlation_id: r.u32("correlation id")?,
                        code: code(r)?,
                        reason: read_string(r, "close reason")?,
                    })
                }
                key::CONSUMER_UPDATE => {
                    check_version(&h, 1)?;
                    let correlation_id = r.u32("correlation id")?;
                    let subscription_id = r.u8("subscription id")?;
                    let active = match r.u8("active")? {
                        0 => false,
                        1 => true,
                        other => {
                            return Err(DecodeError::InvalidValue {
                                context: "active",
                                value: i64::from(other),
                            })
                        }
                    };
                    ServerCommand::ConsumerUpdate(ConsumerUpdate {
                        correlation_id,
                        subscription_id,
                        active,
                    })
                }
                key::ROUTE | key::PARTITIONS => {
                    // RabbitMQ 3.10 answered Route with the request key (no response bit);
                    // a server never sends these requests, so read them as the responses.
                    check_version(&h, 1)?;
                    let correlation_id = r.u32("correlation id")?;
                    server_response(k | RESPONSE_FLAG, correlation_id, r)?
                }
                other => return Err(DecodeError::UnknownCommand { key: other }),
            }
        } else {
            check_version(&h, 1)?;
            if k == key::CREDIT {
                // The one response without a correlation id.
                ServerCommand::CreditResponse(CreditResponse {
                    code: code(r)?,
                    subscription_id: r.u8("subscription id")?,
                })
            } else if k == key::TUNE {
                ServerCommand::Tune(Tune {
                    frame_max: r.u32("frame max")?,
                    heartbeat: r.u32("heartbeat")?,
                })
            } else {
                let correlation_id = r.u32("correlation id")?;
                server_response(h.key, correlation_id, r)?
            }
        };
        finish(r, "command")?;
        Ok(cmd)
    }

    /// The frame key.
    pub fn key(&self) -> u16 {
        let f = RESPONSE_FLAG;
        match self {
            ServerCommand::DeclarePublisherResponse(_) => key::DECLARE_PUBLISHER | f,
            ServerCommand::PublishConfirm(_) => key::PUBLISH_CONFIRM,
            ServerCommand::PublishError(_) => key::PUBLISH_ERROR,
            ServerCommand::QueryPublisherSequenceResponse(_) => key::QUERY_PUBLISHER_SEQUENCE | f,
            ServerCommand::DeletePublisherResponse(_) => key::DELETE_PUBLISHER | f,
            ServerCommand::SubscribeResponse(_) => key::SUBSCRIBE | f,
            ServerCommand::Deliver(_) => key::DELIVER,
            ServerCommand::CreditResponse(_) => key::CREDIT | f,
            ServerCommand::QueryOffsetResponse(_) => key::QUERY_OFFSET | f,
            ServerCommand::UnsubscribeResponse(_) => key::UNSUBSCRIBE | f,
            ServerCommand::CreateResponse(_) => key::CREATE | f,
            ServerCommand::DeleteResponse(_) => key::DELETE | f,
            ServerCommand::MetadataResponse(_) => key::METADATA | f,
            ServerCommand::MetadataUpdate(_) => key::METADATA_UPDATE,
            ServerCommand::PeerPropertiesResponse(_) => key::PEER_PROPERTIES | f,
            ServerCommand::SaslHandshakeResponse(_) => key::SASL_HANDSHAKE | f,
            ServerCommand::SaslAuthenticateResponse(_) => key::SASL_AUTHENTICATE | f,
            ServerCommand::Tune(_) => key::TUNE,
            ServerCommand::OpenResponse(_) => key::OPEN | f,
            ServerCommand::Close(_) => key::CLOSE,
            ServerCommand::CloseResponse(_) => key::CLOSE | f,
            ServerCommand::Heartbeat => key::HEARTBEAT,
            ServerCommand::RouteResponse(_) => key::ROUTE | f,
            ServerCommand::PartitionsResponse(_) => key::PARTITIONS | f,
            ServerCommand::ConsumerUpdate(_) => key::CONSUMER_UPDATE,
            ServerCommand::ExchangeCommandVersionsResponse(_) => key::EXCHANGE_COMMAND_VERSIONS | f,
            ServerCommand::StreamStatsResponse(_) => key::STREAM_STATS | f,
            ServerCommand::CreateSuperStreamResponse(_) => key::CREATE_SUPER_STREAM | f,
            ServerCommand::DeleteSuperStreamResponse(_) => key::DELETE_SUPER_STREAM | f,
            ServerCommand::ResolveOffsetSpecResponse(_) => key::RESOLVE_OFFSET_SPEC | f,
        }
    }

    /// The frame version.
    pub fn version(&self) -> u16 {
        match self {
            ServerCommand::Deliver(d) => d.version(),
            _ => 1,
        }
    }

    /// Encodes the whole frame (size prefix included). On error nothing is written.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        framed(out, self.key(), self.version(), |out| self.encode_body(out))
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            ServerCommand::DeclarePublisherResponse(c)
            | ServerCommand::DeletePublisherResponse(c)
            | ServerCommand::SubscribeResponse(c)
            | ServerCommand::UnsubscribeResponse(c)
            | ServerCommand::CreateResponse(c)
            | ServerCommand::DeleteResponse(c)
            | ServerCommand::CloseResponse(c)
            | ServerCommand::CreateSuperStreamResponse(c)
            | ServerCommand::DeleteSuperStreamResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
            }
            ServerCommand::PublishConfirm(c) => {
                out.put_u8(c.publisher_id);
                put_count(out, c.publishing_ids.len(), "publishing ids")?;
                for id in &c.publishing_ids {
                    out.put_u64(*id);
                }
            }
            ServerCommand::PublishError(c) => {
                out.put_u8(c.publisher_id);
                put_count(out, c.errors.len(), "publishing errors")?;
                for e in &c.errors {
                    out.put_u64(e.publishing_id);
                    out.put_u16(e.code.code());
                }
            }
            ServerCommand::QueryPublisherSequenceResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                out.put_u64(c.sequence);
            }
            ServerCommand::Deliver(c) => {
                c.encode_ids(out);
                out.put_slice(&c.chunk);
            }
            ServerCommand::CreditResponse(c) => {
                out.put_u16(c.code.code());
                out.put_u8(c.subscription_id);
            }
            ServerCommand::QueryOffsetResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                out.put_u64(c.offset);
            }
            ServerCommand::MetadataResponse(c) => {
                out.put_u32(c.correlation_id);
                put_count(out, c.brokers.len(), "brokers")?;
                for b in &c.brokers {
                    out.put_u16(b.reference);
                    put_string(out, &b.host)?;
                    out.put_u32(b.port);
                }
                put_count(out, c.streams.len(), "stream metadata")?;
                for s in &c.streams {
                    put_string(out, &s.stream)?;
                    out.put_u16(s.code.code());
                    out.put_u16(s.leader);
                    put_count(out, s.replicas.len(), "replicas")?;
                    for r in &s.replicas {
                        out.put_u16(*r);
                    }
                }
            }
            ServerCommand::MetadataUpdate(c) => {
                out.put_u16(c.code.code());
                put_string(out, &c.stream)?;
            }
            ServerCommand::PeerPropertiesResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_map(out, &c.properties, "peer properties")?;
            }
            ServerCommand::SaslHandshakeResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_strings(out, &c.mechanisms, "sasl mechanisms")?;
            }
            ServerCommand::SaslAuthenticateResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                if !c.challenge.is_empty() {
                    put_opt_raw_string(out, Some(&c.challenge))?;
                }
            }
            ServerCommand::Tune(c) => {
                out.put_u32(c.frame_max);
                out.put_u32(c.heartbeat);
            }
            ServerCommand::OpenResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_optional_map(out, &c.properties, "connection properties")?;
            }
            ServerCommand::Close(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_string(out, &c.reason)?;
            }
            ServerCommand::Heartbeat => {}
            ServerCommand::RouteResponse(c) | ServerCommand::PartitionsResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_strings(out, &c.streams, "streams")?;
            }
            ServerCommand::ConsumerUpdate(c) => {
                out.put_u32(c.correlation_id);
                out.put_u8(c.subscription_id);
                out.put_u8(u8::from(c.active));
            }
            ServerCommand::ExchangeCommandVersionsResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_command_versions(out, &c.versions)?;
            }
            ServerCommand::StreamStatsResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                put_count(out, c.stats.len(), "stream stats")?;
                for (k, v) in &c.stats {
                    put_string(out, k)?;
                    out.put_i64(*v);
                }
            }
            ServerCommand::ResolveOffsetSpecResponse(c) => {
                out.put_u32(c.correlation_id);
                out.put_u16(c.code.code());
                out.put_u16(c.offset_type);
                out.put_u64(c.offset);
            }
        }
        Ok(())
    }
}

fn server_response(
    raw_key: u16,
    correlation_id: u32,
    r: &mut Reader<'_>,
) -> Result<ServerCommand, DecodeError> {
    let k = raw_key & !RESPONSE_FLAG;
    if k == key::METADATA {
        // The metadata response has no response code.
        let nb = read_count(r, "brokers", 8)?;
        let mut brokers = Vec::with_capacity(nb);
        for _ in 0..nb {
            brokers.push(Broker {
                reference: r.u16("broker reference")?,
                host: read_string(r, "broker host")?,
                port: r.u32("broker port")?,
            });
        }
        let ns = read_count(r, "stream metadata", 10)?;
        let mut streams = Vec::with_capacity(ns);
        for _ in 0..ns {
            let stream = read_string(r, "stream")?;
            let code = code(r)?;
            let leader = r.u16("leader reference")?;
            let nr = read_count(r, "replicas", 2)?;
            let mut replicas = Vec::with_capacity(nr);
            for _ in 0..nr {
                replicas.push(r.u16("replicas")?);
            }
            streams.push(StreamMetadata {
                stream,
                code,
                leader,
                replicas,
            });
        }
        return Ok(ServerCommand::MetadataResponse(MetadataResponse {
            correlation_id,
            brokers,
            streams,
        }));
    }
    let code = code(r)?;
    if let Some(cmd) = simple_response(
        raw_key,
        Response {
            correlation_id,
            code,
        },
    ) {
        return Ok(cmd);
    }
    Ok(match k {
        key::QUERY_PUBLISHER_SEQUENCE => {
            ServerCommand::QueryPublisherSequenceResponse(QueryPublisherSequenceResponse {
                correlation_id,
                code,
                sequence: r.u64("sequence")?,
            })
        }
        key::QUERY_OFFSET => ServerCommand::QueryOffsetResponse(QueryOffsetResponse {
            correlation_id,
            code,
            offset: r.u64("offset")?,
        }),
        key::PEER_PROPERTIES => ServerCommand::PeerPropertiesResponse(PeerPropertiesResponse {
            correlation_id,
            code,
            properties: read_map(r, "peer properties")?,
        }),
        key::SASL_HANDSHAKE => ServerCommand::SaslHandshakeResponse(SaslHandshakeResponse {
            correlation_id,
            code,
            mechanisms: read_strings(r, "sasl mechanisms")?,
        }),
        key::SASL_AUTHENTICATE => {
            let challenge = if r.is_empty() {
                Bytes::new()
            } else {
                read_opt_raw_string(r, "sasl challenge")?.unwrap_or_default()
            };
            ServerCommand::SaslAuthenticateResponse(SaslAuthenticateResponse {
                correlation_id,
                code,
                challenge,
            })
        }
        key::OPEN => ServerCommand::OpenResponse(OpenResponse {
            correlation_id,
            code,
            properties: read_optional_map(r, "connection properties")?,
        }),
        key::ROUTE => ServerCommand::RouteResponse(StreamsResponse {
            correlation_id,
            code,
            streams: read_strings(r, "streams")?,
        }),
        key::PARTITIONS => ServerCommand::PartitionsResponse(StreamsResponse {
            correlation_id,
            code,
            streams: read_strings(r, "streams")?,
        }),
        key::EXCHANGE_COMMAND_VERSIONS => {
            ServerCommand::ExchangeCommandVersionsResponse(ExchangeCommandVersionsResponse {
                correlation_id,
                code,
                versions: command_versions(r)?,
            })
        }
        key::STREAM_STATS => {
            let n = read_count(r, "stream stats", 10)?;
            let mut stats = Vec::with_capacity(n);
            for _ in 0..n {
                let k = read_string(r, "stream stats")?;
                stats.push((k, r.i64("stream stats")?));
            }
            ServerCommand::StreamStatsResponse(StreamStatsResponse {
                correlation_id,
                code,
                stats,
            })
        }
        key::RESOLVE_OFFSET_SPEC => {
            ServerCommand::ResolveOffsetSpecResponse(ResolveOffsetSpecResponse {
                correlation_id,
                code,
                offset_type: r.u16("offset type")?,
                offset: r.u64("offset")?,
            })
        }
        _ => return Err(DecodeError::UnknownCommand { key: raw_key }),
    })
}
