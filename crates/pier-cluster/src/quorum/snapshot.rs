//! A quorum queue's snapshot on disk and on the wire: the engine's state as plain data
//! ([`SnapshotParts`]) in a hand-written, length-checked binary format, the same habits as
//! the log entry's (`entry.rs`, whose helpers it uses): bodies are one length-prefixed copy,
//! every count is checked against what is left before anything is built.
//!
//! ```text
//!  u8 version (5; 1 to 4 are still read) · u64 next_offset · u64 round_robin ·
//!  u8 flags (1 had_consumers, 2 deleted) · u64 last_used · u64 next_expiry ·
//!  u64 next_timeout_check · 4 × u64 counters
//!  u32 levels × { u32 n × entry · u32 n × (entry u32 returns) }
//!  u32 n × checked out { u8 has_consumer u64 consumer · entry · u32 returns · u8 level ·
//!                        u64 delivered_at }
//!  u32 n × consumer { u64 id · settings (as a checkout's) · u32 unacked · u32 credit · u8 drain }
//!  u32 n × publisher { u64 id · u64 sequence }
//!  version 2 adds: u64 policy version · policy settings (as a reconfigure op's) ·
//!                  u32 n × kept dead letter { entry · u8 reason (0 rejected, 1 expired,
//!                  2 maxlen, 3 delivery_limit) }
//!  version 3 adds: u8 dequeues (the 2:1 turn between the high and normal priority levels)
//!  version 4: a consumer's `drain` octet is flags (1 drain, 2 suspected: its node is out of
//!             the leader's reach)
//!  version 5: each `u32 returns` (requeued and checked out) is followed by `u32 failed`
//!             (the failed deliveries among them; 0 when read from older versions)
//!  entry: u64 offset · u64 expires_at · u8 redelivered · u32 enqueued_at · message
//!
//!  message: str8 exchange · str8 routing key · bytes32 properties · bytes32 body
//! ```

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pier_broker::deadletter::DeathReason;
use pier_broker::queue::engine::{
    CheckedOutParts, ConsumerParts, EngineCounters, EntryParts, LevelParts, Returns, SnapshotParts,
};

use pier_broker::args::PolicySettings;

use super::entry::{put_message, put_policy, put_settings, EntryError, Reader};

/// Version 2 carries the settings policies gave the queue and the kept (at-least-once) dead
/// letters (version 1, written before either existed, did not: a member restoring one keeps
/// the settings it built from the declaration, and no dead letters). Version 3 carries the
/// turn between the two priority levels (older ones had one level: the turn starts at 0).
/// Version 4 marks suspected consumers (none were before). Version 5 counts failed
/// deliveries apart (RabbitMQ 4.3's delivery count; none were counted before).
const VERSION: u8 = 5;

/// The settings policy changes gave the queue, and the version of the last change applied
/// (see `QueueOp::Reconfigure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub version: u64,
    pub settings: PolicySettings,
}

fn reason_code(r: DeathReason) -> u8 {
    match r {
        DeathReason::Rejected => 0,
        DeathReason::Expired => 1,
        DeathReason::MaxLen => 2,
        DeathReason::DeliveryLimit => 3,
    }
}

fn reason_of(code: u8) -> Result<DeathReason, EntryError> {
    Ok(match code {
        0 => DeathReason::Rejected,
        1 => DeathReason::Expired,
        2 => DeathReason::MaxLen,
        3 => DeathReason::DeliveryLimit,
        _ => return Err(EntryError::Invalid("dead letter reason")),
    })
}

fn put_count(out: &mut BytesMut, n: usize, what: &'static str) -> Result<(), EntryError> {
    out.put_u32_le(u32::try_from(n).map_err(|_| EntryError::TooLong(what))?);
    Ok(())
}

fn put_entry(out: &mut BytesMut, e: &EntryParts) -> Result<(), EntryError> {
    out.put_u64_le(e.offset);
    out.put_u64_le(e.expires_at);
    out.put_u8(u8::from(e.redelivered));
    out.put_u32_le(e.enqueued_at);
    put_message(out, &e.message)
}

/// Encodes a snapshot.
pub fn encode(p: &SnapshotParts, policy: &PolicyState) -> Result<Bytes, EntryError> {
    // Sized for the bodies up front (with room for each entry's fields): a queue of a few
    // thousand messages would otherwise regrow (and copy) the buffer a dozen times.
    let entries = p
        .levels
        .iter()
        .flat_map(|l| l.ready.iter().chain(l.requeued.iter().map(|(e, _)| e)))
        .chain(p.checked_out.iter().map(|c| &c.entry))
        .chain(p.dead_letters.iter().map(|(e, _)| e));
    let hint: usize = entries.map(|e| e.message.body.len() + 256).sum();
    let mut out = BytesMut::with_capacity(hint + 4096);
    out.put_u8(VERSION);
    out.put_u64_le(p.next_offset);
    out.put_u64_le(p.round_robin);
    out.put_u8(u8::from(p.had_consumers) | u8::from(p.deleted) << 1);
    out.put_u64_le(p.last_used);
    out.put_u64_le(p.next_expiry);
    out.put_u64_le(p.next_timeout_check);
    let c = &p.counters;
    for v in [c.published, c.delivered, c.delivered_no_ack, c.acked] {
        out.put_u64_le(v);
    }
    put_count(&mut out, p.levels.len(), "levels")?;
    for l in &p.levels {
        put_count(&mut out, l.ready.len(), "ready")?;
        for e in &l.ready {
            put_entry(&mut out, e)?;
        }
        put_count(&mut out, l.requeued.len(), "requeued")?;
        for (e, returns) in &l.requeued {
            put_entry(&mut out, e)?;
            out.put_u32_le(returns.count);
            out.put_u32_le(returns.failed);
        }
    }
    put_count(&mut out, p.checked_out.len(), "checked out")?;
    for c in &p.checked_out {
        match c.consumer {
            Some(id) => {
                out.put_u8(1);
                out.put_u64_le(id);
            }
            None => {
                out.put_u8(0);
                out.put_u64_le(0);
            }
        }
        put_entry(&mut out, &c.entry)?;
        out.put_u32_le(c.returns.count);
        out.put_u32_le(c.returns.failed);
        out.put_u8(c.level);
        out.put_u64_le(c.delivered_at);
    }
    put_count(&mut out, p.consumers.len(), "consumers")?;
    for c in &p.consumers {
        out.put_u64_le(c.id);
        put_settings(&mut out, &c.settings)?;
        out.put_u32_le(c.unacked);
        out.put_u32_le(c.credit);
        out.put_u8(u8::from(c.drain) | u8::from(c.suspected) << 1);
    }
    put_count(&mut out, p.publishers.len(), "publishers")?;
    for (id, seq) in &p.publishers {
        out.put_u64_le(*id);
        out.put_u64_le(*seq);
    }
    out.put_u64_le(policy.version);
    put_policy(&mut out, &policy.settings);
    put_count(&mut out, p.dead_letters.len(), "dead letters")?;
    for (e, reason) in &p.dead_letters {
        put_entry(&mut out, e)?;
        out.put_u8(reason_code(*reason));
    }
    out.put_u8(p.dequeues);
    Ok(out.freeze())
}

impl Reader<'_> {
    /// A return count, with its failed deliveries from version 5 on.
    fn returns(&mut self, version: u8) -> Result<Returns, EntryError> {
        let count = self.u32("returns")?;
        let failed = if version >= 5 { self.u32("failed")? } else { 0 };
        Ok(Returns { count, failed })
    }

    fn entry(&mut self) -> Result<EntryParts, EntryError> {
        Ok(EntryParts {
            offset: self.u64("offset")?,
            expires_at: self.u64("expires at")?,
            redelivered: self.bool("redelivered")?,
            enqueued_at: self.u32("enqueued at")?,
            message: Arc::new(self.message()?),
        })
    }

    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize, what: &'static str) -> Result<usize, EntryError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min) > self.buf.len().saturating_sub(self.pos) {
            return Err(EntryError::Truncated(what));
        }
        Ok(n)
    }
}

/// The smallest encoded entry: offset, expiry, flag, enqueued, two empty strings, two
/// empty byte strings.
const MIN_ENTRY: usize = 8 + 8 + 1 + 4 + 1 + 1 + 4 + 4;

/// Decodes a snapshot (with its policy state from version 2 on); never panics, whatever
/// the bytes.
pub fn decode(input: &Bytes) -> Result<(SnapshotParts, Option<PolicyState>), EntryError> {
    let mut r = Reader { buf: input, pos: 0 };
    let version = r.u8("version")?;
    if !(1..=VERSION).contains(&version) {
        return Err(EntryError::Version(version));
    }
    let next_offset = r.u64("next offset")?;
    let round_robin = r.u64("round robin")?;
    let flags = r.u8("flags")?;
    if flags & !0b11 != 0 {
        return Err(EntryError::Invalid("flags"));
    }
    let last_used = r.u64("last used")?;
    let next_expiry = r.u64("next expiry")?;
    let next_timeout_check = r.u64("next timeout check")?;
    let counters = EngineCounters {
        published: r.u64("counters")?,
        delivered: r.u64("counters")?,
        delivered_no_ack: r.u64("counters")?,
        acked: r.u64("counters")?,
    };
    let mut levels = Vec::new();
    for _ in 0..r.count(8, "levels")? {
        let mut level = LevelParts::default();
        for _ in 0..r.count(MIN_ENTRY, "ready")? {
            level.ready.push(r.entry()?);
        }
        for _ in 0..r.count(MIN_ENTRY + 4, "requeued")? {
            let e = r.entry()?;
            level.requeued.push((e, r.returns(version)?));
        }
        levels.push(level);
    }
    let mut checked_out = Vec::new();
    for _ in 0..r.count(9 + MIN_ENTRY + 13, "checked out")? {
        let has = r.bool("has consumer")?;
        let id = r.u64("consumer")?;
        let entry = r.entry()?;
        checked_out.push(CheckedOutParts {
            consumer: has.then_some(id),
            entry,
            returns: r.returns(version)?,
            level: r.u8("level")?,
            delivered_at: r.u64("delivered at")?,
        });
    }
    let mut consumers = Vec::new();
    for _ in 0..r.count(8 + 30, "consumers")? {
        let id = r.u64("consumer id")?;
        let settings = r.settings()?;
        let unacked = r.u32("unacked")?;
        let credit = r.u32("credit")?;
        let flags = r.u8("consumer flags")?;
        let known = if version >= 4 { 0b11 } else { 0b1 };
        if flags & !known != 0 {
            return Err(EntryError::Invalid("consumer flags"));
        }
        consumers.push(ConsumerParts {
            id,
            settings,
            unacked,
            credit,
            drain: flags & 1 != 0,
            suspected: flags & 2 != 0,
        });
    }
    let mut publishers = Vec::new();
    for _ in 0..r.count(16, "publishers")? {
        publishers.push((r.u64("publisher")?, r.u64("sequence")?));
    }
    let mut dead_letters = Vec::new();
    let policy = if version >= 2 {
        let policy = PolicyState {
            version: r.u64("policy version")?,
            settings: r.policy()?,
        };
        for _ in 0..r.count(MIN_ENTRY + 1, "dead letters")? {
            let e = r.entry()?;
            dead_letters.push((e, reason_of(r.u8("reason")?)?));
        }
        Some(policy)
    } else {
        None
    };
    let dequeues = if version >= 3 { r.u8("dequeues")? } else { 0 };
    if r.pos != input.len() {
        return Err(EntryError::Invalid("trailing bytes"));
    }
    let parts = SnapshotParts {
        next_offset,
        levels,
        dequeues,
        checked_out,
        consumers,
        round_robin,
        had_consumers: flags & 1 != 0,
        deleted: flags & 2 != 0,
        last_used,
        next_expiry,
        next_timeout_check,
        publishers,
        counters,
        dead_letters,
    };
    Ok((parts, policy))
}
