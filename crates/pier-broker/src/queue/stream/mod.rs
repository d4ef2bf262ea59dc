//! The stream backend of a [`Queue`]: an append-only log (`pier_store::stream`) that AMQP
//! 0-9-1 publishers append to through `VHost::publish` and that AMQP 0-9-1 consumers read
//! from any position, and the same log the stream protocol server reads and writes.
//!
//! ```text
//!  VHost::publish ─► StreamQueue::publish ─► AMQP 1.0 form (convert.rs) ─► Stream::append
//!                                                  confirm once fsync'd ◄─ writer thread
//!  writer commit ─► listener ─► Queue::dispatch ─► each AMQP consumer: its own reader,
//!                               deliveries while its prefetch (credit) and its sink allow
//!  basic.ack/nack/reject ─► Queue::settle ─► credit back (nothing leaves the log)
//! ```

pub mod convert;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use pier_store::stream::{AppendMessage, StartAt, Stream, StreamConfig, StreamError, StreamReader};
use pier_stream_wire::{BloomMatcher, Chunk, Entry, Record};
use pier_wire::FieldValue;

use crate::args::{parse_max_age, QueueConfig};
use crate::consumer::{ConsumerId, ConsumerSpec, Delivery};
use crate::counters::QueueCounters;
use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::persist::PublishDurability;
use crate::queue::{Published, Queue, QueueStats};

/// The stream settings a queue's arguments (and policies) give.
pub fn stream_config(config: &QueueConfig, sync: bool) -> StreamConfig {
    StreamConfig {
        max_segment_size_bytes: config
            .stream_max_segment_size_bytes
            .unwrap_or(pier_store::stream::DEFAULT_MAX_SEGMENT_SIZE),
        max_length_bytes: config.max_length_bytes,
        max_age_ms: config.max_age_ms,
        filter_size: config
            .stream_filter_size_bytes
            .unwrap_or(pier_stream_wire::bloom::DEFAULT_FILTER_SIZE),
        sync,
    }
}

/// Where an AMQP consumer starts (`x-stream-offset`).
pub fn parse_offset_spec(v: Option<&FieldValue>, now_ms: i64) -> Option<StartAt> {
    Some(match v {
        None => StartAt::Next,
        Some(FieldValue::Timestamp(secs)) => {
            StartAt::Timestamp(i64::try_from(*secs).ok()?.saturating_mul(1000))
        }
        Some(v) => {
            if let Some(n) = v.as_i64() {
                StartAt::Offset(u64::try_from(n).ok()?)
            } else {
                match v.as_str()? {
                    "first" => StartAt::First,
                    "last" => StartAt::Last,
                    "next" => StartAt::Next,
                    interval => StartAt::Timestamp(
                        now_ms.saturating_sub(i64::try_from(parse_max_age(interval)?).ok()?),
                    ),
                }
            }
        }
    })
}

/// A consumer's chunk filter (`x-stream-filter`, `x-stream-match-unfiltered`).
fn parse_filter(spec: &ConsumerSpec) -> Option<BloomMatcher> {
    let values: Vec<String> = match spec.arguments.get("x-stream-filter")? {
        FieldValue::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        v => vec![v.as_str()?.to_owned()],
    };
    let unfiltered = spec
        .arguments
        .get("x-stream-match-unfiltered")
        .and_then(FieldValue::as_bool)
        .unwrap_or(false);
    Some(BloomMatcher::new(
        values.iter().map(String::as_bytes),
        unfiltered,
    ))
}

struct AmqpConsumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    reader: StreamReader,
    /// Records below this offset are skipped (a numeric `x-stream-offset` inside a chunk).
    skip_below: u64,
    filter: Option<BloomMatcher>,
    /// Records of the chunk being delivered: offset, AMQP 1.0 bytes.
    pending: VecDeque<(u64, Bytes)>,
    /// Offsets delivered and not yet acknowledged, in delivery order.
    in_flight: VecDeque<u64>,
}

/// A stream queue's runtime.
pub struct StreamQueue {
    stream: Arc<Stream>,
    consumers: Mutex<Vec<AmqpConsumer>>,
    counters: QueueCounters,
    listener: Mutex<Option<u64>>,
}

impl std::fmt::Debug for StreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamQueue")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl StreamQueue {
    pub(crate) fn new(stream: Arc<Stream>) -> StreamQueue {
        StreamQueue {
            stream,
            consumers: Mutex::new(Vec::new()),
            counters: QueueCounters::default(),
            listener: Mutex::new(None),
        }
    }

    /// A policy changed retention or segment size: the log's writer takes them (retention
    /// runs on its next pass). The fsync setting stays the node's.
    pub(crate) fn reconfigure(&self, config: &QueueConfig) {
        let sc = stream_config(config, self.stream.config().sync);
        if let Err(e) = self.stream.set_config(sc) {
            tracing::warn!(dir = %self.stream.dir().display(), "stream settings not changed: {e}");
        }
    }

    /// Wakes the queue's AMQP consumers after each commit of the log.
    pub(crate) fn listen(&self, queue: Weak<Queue>) {
        let id = self.stream.shared().listen(Arc::new(move || {
            if let Some(q) = queue.upgrade() {
                q.dispatch();
            }
        }));
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    pub(crate) fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AmqpConsumer>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let view = self.stream.shared().view();
        let consumers = self.lock();
        QueueStats {
            ready: view.committed_next.saturating_sub(view.first_offset()),
            unacked: consumers.iter().map(|c| c.in_flight.len() as u64).sum(),
            consumers: consumers.len() as u32,
            ready_bytes: view.total_size(),
            memory_bytes: 0,
            paged_out: 0,
            dead_letters: 0,
            dead_letter_bytes: 0,
        }
    }

    /// An AMQP 0-9-1 publish: appended in AMQP 1.0 form; `durability` learns when it is on
    /// disk (the publisher's confirm).
    pub(crate) fn publish(
        &self,
        message: &Message,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        let filter = message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-stream-filter-value"))
            .and_then(FieldValue::as_str)
            .map(|s| Bytes::copy_from_slice(s.as_bytes()));
        let m = AppendMessage {
            publishing_id: 0,
            entry: Entry::Simple(convert::to_amqp_1_0(message)),
            filter,
        };
        let done = durability.map(|d| d.add_flag());
        let r = self.stream.append(
            None,
            vec![m],
            Box::new(move |r| {
                if let Some(done) = done {
                    // A deleted queue's pending publishes are confirmed, as RabbitMQ's
                    // channel does at a queue's end of life; any other failure is a nack.
                    done(match r {
                        Ok(_) => true,
                        Err(e) => matches!(*e, StreamError::Deleted),
                    });
                }
            }),
        );
        match r {
            Ok(()) => {
                self.counters
                    .published
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Published::Accepted
            }
            Err(e) => {
                tracing::error!(dir = %self.stream.dir().display(), "stream append: {e}");
                Published::Rejected
            }
        }
    }

    /// basic.consume on a stream: RabbitMQ's checks, then a reader from `x-stream-offset`.
    pub(crate) fn add_consumer(
        &self,
        queue: &Arc<Queue>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId> {
        let rs = format!("queue '{}' in vhost '{}'", queue.name(), queue.vhost());
        if spec.prefetch == 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "consumer prefetch count is not set for '{rs}'"
            )));
        }
        if !spec.ack_required {
            return Err(BrokerError::NotImplemented(format!(
                "automatic acknowledgement not supported by stream queues {rs}"
            )));
        }
        let arg = spec.arguments.get("x-stream-offset");
        let start = parse_offset_spec(arg, now_ms()).ok_or_else(|| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg 'x-stream-offset' for {rs}: {}",
                arg.map(|v| format!("{v:?}")).unwrap_or_default()
            ))
        })?;
        let reader = self
            .stream
            .reader(start)
            .map_err(|e| BrokerError::Storage {
                what: rs.clone(),
                reason: e.to_string(),
            })?;
        let skip_below = match start {
            StartAt::Offset(o) => o,
            _ => 0,
        };
        let id = crate::consumer::next_consumer_id();
        let filter = parse_filter(&spec);
        {
            let mut consumers = self.lock();
            consumers.push(AmqpConsumer {
                id,
                spec,
                reader,
                skip_below,
                filter,
                pending: VecDeque::new(),
                in_flight: VecDeque::new(),
            });
            on_added();
        }
        self.dispatch(queue);
        Ok(id)
    }

    pub(crate) fn remove_consumer(&self, id: ConsumerId) -> bool {
        let mut consumers = self.lock();
        let before = consumers.len();
        consumers.retain(|c| c.id != id);
        before != consumers.len()
    }

    /// Acks, nacks and rejects all just give the consumer its credit back.
    pub(crate) fn settle(&self, queue: &Arc<Queue>, offsets: &[u64]) {
        {
            let mut consumers = self.lock();
            for o in offsets {
                for c in consumers.iter_mut() {
                    if c.in_flight.front() == Some(o) {
                        c.in_flight.pop_front();
                        break;
                    }
                    if let Some(i) = c.in_flight.iter().position(|x| x == o) {
                        c.in_flight.remove(i);
                        break;
                    }
                }
            }
            self.counters
                .acked
                .fetch_add(offsets.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.dispatch(queue);
    }

    /// Delivers to every consumer as far as its credit and its channel allow.
    pub(crate) fn dispatch(&self, queue: &Arc<Queue>) {
        let mut consumers = self.lock();
        for c in consumers.iter_mut() {
            loop {
                if c.in_flight.len() >= c.spec.prefetch as usize {
                    break;
                }
                if !c.spec.sink.ready() {
                    c.spec.sink.notify_when_ready(Arc::downgrade(queue));
                    break;
                }
                if c.pending.is_empty() && !fill(c) {
                    break;
                }
                if !c.spec.channel_credit.try_acquire() {
                    break;
                }
                let Some((offset, bytes)) = c.pending.pop_front() else {
                    break;
                };
                let message = convert::from_amqp_1_0(&bytes, offset, 0);
                c.in_flight.push_back(offset);
                self.counters
                    .delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                c.spec.sink.deliver(Delivery {
                    queue: Arc::clone(queue),
                    consumer: Some(c.id),
                    consumer_tag: c.spec.tag.clone(),
                    offset,
                    message: Arc::new(message),
                    redelivered: false,
                    ack_required: true,
                    enqueued_at: 0,
                });
            }
        }
    }

    /// Its AMQP consumers are cancelled and it stops listening to the log.
    fn detach(&self) {
        let consumers: Vec<AmqpConsumer> = std::mem::take(&mut *self.lock());
        for c in consumers {
            c.spec.sink.cancelled(&c.spec.tag);
        }
        if let Some(id) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.stream.shared().unlisten(id);
        }
    }

    /// This node stops leading the stream (its leader moved): consumers are cancelled,
    /// pending confirms fail, the writer stops; the files stay (a replica takes them over).
    pub(crate) fn retire(&self) {
        self.detach();
        self.stream.retire();
    }

    /// The queue goes: its consumers are cancelled and its files removed.
    pub(crate) fn delete(&self) -> u64 {
        let ready = self.stats().ready;
        self.detach();
        if let Err(e) = self.stream.delete() {
            tracing::error!("deleting stream files: {e}");
        }
        ready
    }

    /// Tags and settings of the AMQP consumers, for listings.
    pub(crate) fn consumers(&self) -> Vec<(ConsumerId, ConsumerSpec)> {
        self.lock().iter().map(|c| (c.id, c.spec.clone())).collect()
    }
}

/// Reads the consumer's next matching chunk into `pending`; false at the end of the log.
fn fill(c: &mut AmqpConsumer) -> bool {
    loop {
        let chunk = match c.reader.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(consumer = %c.spec.tag, "stream read: {e}");
                return false;
            }
        };
        if let Some(f) = &c.filter {
            if !f.matches(&chunk.bloom) {
                continue;
            }
        }
        let Ok(parsed) = Chunk::parse_delivered(&chunk.delivered) else {
            continue;
        };
        for r in parsed.records() {
            if let Ok(Record::Message { offset, body }) = r {
                if offset >= c.skip_below {
                    c.pending.push_back((offset, body));
                }
            }
        }
        if !c.pending.is_empty() {
            return true;
        }
    }
}
