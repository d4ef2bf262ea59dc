//! The classic queue's runtime: the engine behind one `std::sync::Mutex`, and the side
//! effects it asks for carried out while the lock is held, in the order they were emitted.
//!
//! ```text
//!  caller ─► lock ─► engine.apply(command, context{now, gate}) ─► effects
//!                      ▲                                            │ read bodies on disk (one
//!                      └── PagedIn / Lost / SpillFailed ◄───────────┤ round trip per store)
//!                                                                   ├► sinks (deliveries, cancels)
//!                                                                   ├► durable store (append, ack,
//!                                                                   │  mark delivered)
//!                                                                   ├► paging store (spill, release)
//!                                                                   └► dead letters (routed by the
//!                                                                      vhost after the unlock)
//! ```
//!
//! Store commands are sent under the lock, so the store sees each queue's appends in offset
//! order and every append before any ack of it. Store threads never wait for a queue lock, so
//! the blocking read-backs (paged bodies) cannot deadlock. Sinks are called under the lock;
//! they must not block or call back into a queue (lock order: vhost topology, queue, then the
//! connection's outbound).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use pier_store::StoreHandle;
use pier_wire::ShortString;

use super::engine::{
    Command, Context, Delivered, Effect, EngineConfig, Gate, Published, QueueEngine, Refusal,
    Reply, StoreMode,
};
use super::Queue;
use crate::clock::{Clock, NEVER};
use crate::consumer::{
    next_consumer_id, ChannelCredit, ConsumerId, ConsumerSpec, Delivery, DeliverySink,
};
use crate::deadletter::DeadLetter;
use crate::message::Message;
use crate::persist::{
    append_durable, from_stored_expiring, to_stored, to_stored_expiring, PublishDurability,
    QueueStore,
};

/// After the paging store refused to register a queue, how long before it is asked again.
const PAGING_RETRY_MS: u64 = 5_000;
/// Paging-store queue names must be unique for the process (a queue name can be reused).
static PAGING_QUEUE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A queue's access to the paging store.
struct Pager {
    handle: StoreHandle,
    /// Paged-out messages whose write has not been confirmed (by offset). The entry goes when
    /// the write is done, and stays if it failed, so a failed paging write never loses the
    /// message: reads take it from here. Shares the body with the store command (no copy).
    /// A leaf lock: the store thread's callbacks take it, so it is never held while waiting on
    /// the store.
    in_flight: Arc<Mutex<HashMap<u64, Arc<Message>>>>,
}

impl Pager {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, Arc<Message>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Consumer ids are small sequential numbers: the identity is a perfect hash, and this map is
/// looked up for every delivery (SipHash showed in profiles).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Sinks = HashMap<ConsumerId, SinkSlot, BuildHasherDefault<IdHasher>>;

/// The channel side of one consumer.
struct SinkSlot {
    tag: ShortString,
    sink: Arc<dyn DeliverySink>,
    channel_credit: Arc<ChannelCredit>,
    ack_required: bool,
    /// The sink said it was full and will call `dispatch` when it drains.
    waiting: bool,
}

/// Everything behind the queue lock.
pub(crate) struct Core {
    engine: QueueEngine,
    sinks: Sinks,
    /// Reused effect buffers (no allocation per command on the hot paths).
    effects: Vec<Effect>,
    spare: Vec<Effect>,
    /// This queue's place in the paging store, registered on its first page-out.
    paging_id: Option<pier_store::QueueId>,
    /// Clock time before which a failed paging registration is not retried.
    paging_retry_at: u64,
}

/// The gate of a classic queue: the consumer's channel must be ready (outbound below its
/// bound, `channel.flow` active) and have channel-wide prefetch credit (basic.qos global).
struct SinkGate<'a> {
    sinks: &'a mut Sinks,
    queue: &'a Arc<Queue>,
}

impl Gate for SinkGate<'_> {
    fn admit(&mut self, consumer: ConsumerId) -> bool {
        let Some(slot) = self.sinks.get_mut(&consumer) else {
            return false;
        };
        if slot.waiting {
            return false;
        }
        if !slot.sink.ready() {
            slot.waiting = true;
            slot.sink.notify_when_ready(Arc::downgrade(self.queue));
            return false;
        }
        // Whoever releases channel credit re-dispatches the channel's queues.
        !slot.ack_required || slot.channel_credit.try_acquire()
    }
}

/// Effects carried out for one command, and what the caller needs from them.
#[derive(Default)]
struct Outcome {
    dead: Vec<DeadLetter>,
    expired: bool,
}

pub(crate) struct ClassicQueue {
    clock: Arc<Clock>,
    /// Where dead letters are routed (the owning vhost).
    router: Weak<crate::vhost::VHost>,
    /// `engine.next_tick()` as of the last command, read lock-free by `tick_due`.
    next_tick: AtomicU64,
    /// New arrivals page out (the engine has a paged tail), as of the last command: a
    /// publisher then takes connection credit for transient messages too (`pages_out`).
    paging: AtomicBool,
    /// Arrivals, deliveries and acks, copied from the engine after each command (read
    /// lock-free by management).
    counters: crate::counters::QueueCounters,
    /// Set for durable queues of a vhost with storage: persistent messages are stored here.
    store: OnceLock<QueueStore>,
    /// Set when the broker has a data directory: other messages page out here.
    pager: OnceLock<Pager>,
    /// At-least-once dead letters on their way to their targets, and their outcomes.
    dead_letters: Mutex<DeadLetters>,
    /// When a tick has dead-letter work (outcomes to apply, a retry): read lock-free by
    /// `tick_due`.
    dead_letters_due: AtomicU64,
    core: Mutex<Core>,
}

/// At-least-once dead letters on their way and when those not taken go again, and those
/// their targets confirmed (applied by the next tick: outcomes arrive on store threads,
/// which must not run queue commands).
#[derive(Default)]
struct DeadLetters {
    flight: crate::deadletter::DeadLettersInFlight,
    confirmed: Vec<u64>,
}

impl ClassicQueue {
    pub(crate) fn new(
        config: EngineConfig,
        clock: Arc<Clock>,
        router: Weak<crate::vhost::VHost>,
    ) -> Self {
        let now = clock.now_ms();
        let engine = QueueEngine::new(config, now);
        ClassicQueue {
            next_tick: AtomicU64::new(engine.next_tick()),
            paging: AtomicBool::new(false),
            clock,
            router,
            counters: crate::counters::QueueCounters::default(),
            store: OnceLock::new(),
            pager: OnceLock::new(),
            dead_letters: Mutex::new(DeadLetters::default()),
            dead_letters_due: AtomicU64::new(NEVER),
            core: Mutex::new(Core {
                engine,
                sinks: Sinks::default(),
                effects: Vec::new(),
                spare: Vec::new(),
                paging_id: None,
                paging_retry_at: 0,
            }),
        }
    }

    /// A poisoned lock means a panic elsewhere mid-command; the state is still consistent
    /// enough to serve, so keep going.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn attach_store(&self, store: QueueStore) {
        if self.store.set(store).is_ok() {
            self.lock().engine.set_stores_persistent(true);
        }
    }

    pub(crate) fn store(&self) -> Option<&QueueStore> {
        self.store.get()
    }

    pub(crate) fn attach_paging(&self, paging: StoreHandle) {
        let _ = self.pager.set(Pager {
            handle: paging,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        });
    }

    pub(crate) fn counters(&self) -> &crate::counters::QueueCounters {
        &self.counters
    }

    pub(crate) fn tick_due(&self, now: u64) -> bool {
        self.next_tick.load(Ordering::Relaxed) <= now
            || self.dead_letters_due.load(Ordering::Relaxed) <= now
    }

    fn dead_letter_state(&self) -> MutexGuard<'_, DeadLetters> {
        self.dead_letters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What became of an at-least-once dead letter: confirmed by every target queue (it
    /// leaves this queue at the next tick), or not (routed again later).
    pub(crate) fn dead_letter_settled(&self, offset: u64, ok: bool) {
        let mut dl = self.dead_letter_state();
        dl.flight.answered(offset, ok, self.clock.now_ms());
        if ok {
            dl.confirmed.push(offset);
            self.dead_letters_due.store(0, Ordering::Relaxed);
        } else {
            self.dead_letters_due
                .fetch_min(dl.flight.retry_at().unwrap_or(NEVER), Ordering::Relaxed);
        }
    }

    /// A tick's dead-letter work: confirmed ones leave the queue, those not taken are
    /// routed again once their retry time has come.
    fn dead_letter_work(&self, q: &Arc<Queue>) {
        let now = self.clock.now_ms();
        if self.dead_letters_due.load(Ordering::Relaxed) > now {
            return;
        }
        let mut out = Outcome::default();
        {
            let mut core = self.lock();
            let (confirmed, retry) = {
                let mut dl = self.dead_letter_state();
                let retry = dl.flight.take_retry(now);
                (std::mem::take(&mut dl.confirmed), retry)
            };
            if !confirmed.is_empty() {
                let _ = self.run(
                    q,
                    &mut core,
                    Command::DeadLettered {
                        offsets: &confirmed,
                    },
                    None,
                    &mut out,
                );
            }
            if retry {
                let offsets: Vec<u64> = {
                    let dl = self.dead_letter_state();
                    core.engine
                        .dead_letters_kept()
                        .map(|(o, ..)| o)
                        .filter(|o| !dl.flight.on_its_way(*o))
                        .collect()
                };
                if !offsets.is_empty() {
                    let _ = self.run(
                        q,
                        &mut core,
                        Command::RetryDeadLetters { offsets: &offsets },
                        None,
                        &mut out,
                    );
                }
            }
            let dl = self.dead_letter_state();
            let due = if dl.confirmed.is_empty() {
                dl.flight.retry_at().unwrap_or(NEVER)
            } else {
                0
            };
            self.dead_letters_due.store(due, Ordering::Relaxed);
        }
        self.route_dead_letters(q, out.dead);
    }

    /// Whether messages arriving now are written to the paging store (as of the last
    /// command; a hint for credit, never for correctness).
    pub(crate) fn pages_out(&self) -> bool {
        self.paging.load(Ordering::Relaxed)
    }

    // ---- running commands ----

    /// Applies a command and carries out its effects (and the follow-up commands they cause).
    /// `durability` learns when a stored append of this command is on disk; `got` is a
    /// basic.get delivery whose body must be read back.
    fn run(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        command: Command<'_>,
        durability: Option<&Arc<PublishDurability>>,
        out: &mut Outcome,
    ) -> Result<Reply, Refusal> {
        let reply = self.apply(q, core, command)?;
        self.execute(q, core, durability, out, None);
        Ok(reply)
    }

    /// Applies a command without carrying out its effects yet (fan-out holds them back until
    /// the shared append is sent).
    pub(crate) fn apply(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        command: Command<'_>,
    ) -> Result<Reply, Refusal> {
        let now = self.clock.now_ms();
        let can_spill =
            self.pager.get().is_some() && (core.paging_id.is_some() || now >= core.paging_retry_at);
        let mut gate = SinkGate {
            sinks: &mut core.sinks,
            queue: q,
        };
        let mut cx = Context {
            now,
            unix_now: self.clock.unix_ms_at(now),
            can_spill,
            reads_back: true,
            gate: &mut gate,
        };
        core.engine.apply(command, &mut cx, &mut core.effects)
    }

    /// Carries out the pending effects, then the commands they lead to, until none are left.
    fn execute(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        durability: Option<&Arc<PublishDurability>>,
        out: &mut Outcome,
        mut got: Option<&mut Delivered>,
    ) {
        // Bounded: each round answers the reads the previous one asked for.
        for _ in 0..64 {
            if core.effects.is_empty() && got.as_ref().is_none_or(|d| d.message.is_some()) {
                break;
            }
            let mut effects = std::mem::replace(&mut core.effects, std::mem::take(&mut core.spare));
            let bodies = self.read_bodies(core, &effects, got.as_deref());
            if let (Some(d), Some(bodies)) = (got.as_deref_mut(), bodies.as_ref()) {
                if d.message.is_none() {
                    d.message = bodies.get(&d.offset).cloned().flatten();
                }
            }
            got = None;
            let follow = self.carry_out(q, core, &mut effects, bodies.as_ref(), durability, out);
            effects.clear();
            core.spare = effects;
            if let Some(bodies) = bodies {
                let r = self.apply(q, core, Command::PagedIn { bodies });
                if let Ok(Reply::Lost(n)) = r {
                    if n > 0 {
                        tracing::error!(queue = %q.name(), count = n, "paged-out messages could not be read back and are dropped");
                    }
                }
            }
            for (offset, message) in follow.spill_failed {
                let _ = self.apply(q, core, Command::SpillFailed { offset, message });
            }
            if !follow.lost.is_empty() {
                tracing::error!(queue = %q.name(), count = follow.lost.len(), "messages could not be read back for delivery and are dropped");
                let _ = self.apply(
                    q,
                    core,
                    Command::Lost {
                        offsets: &follow.lost,
                    },
                );
            }
        }
        self.publish_figures(core);
    }

    /// Reads back every body the effects need that is not in memory: deliveries and dead
    /// letters without a body, and `PageIn` requests. One round trip per store; None when
    /// nothing is needed (the common case costs one pass over the effects).
    fn read_bodies(
        &self,
        core: &Core,
        effects: &[Effect],
        got: Option<&Delivered>,
    ) -> Option<BTreeMap<u64, Option<Arc<Message>>>> {
        let mut stored: Vec<u64> = Vec::new();
        let mut spilled: Vec<u64> = Vec::new();
        let want = |offset: u64, in_paging: bool, stored: &mut Vec<u64>, spilled: &mut Vec<u64>| {
            if in_paging {
                spilled.push(offset);
            } else {
                stored.push(offset);
            }
        };
        let mut any = false;
        if let Some(d) = got.filter(|d| d.message.is_none()) {
            want(d.offset, d.in_paging, &mut stored, &mut spilled);
            any = true;
        }
        for e in effects {
            match e {
                Effect::Deliver(d) if d.message.is_none() => {
                    want(d.offset, d.in_paging, &mut stored, &mut spilled);
                    any = true;
                }
                Effect::DeadLetter {
                    offset,
                    message: None,
                    in_paging,
                    ..
                } => {
                    want(*offset, *in_paging, &mut stored, &mut spilled);
                    any = true;
                }
                Effect::PageIn {
                    stored: s,
                    spilled: p,
                } => {
                    stored.extend_from_slice(s);
                    spilled.extend_from_slice(p);
                    any = true;
                }
                _ => {}
            }
        }
        if !any {
            return None;
        }
        let mut bodies: BTreeMap<u64, Option<Arc<Message>>> = BTreeMap::new();
        // Written in this same batch (the read would reach the store before the write): the
        // body is right there.
        let wanted: std::collections::BTreeSet<u64> =
            stored.iter().chain(spilled.iter()).copied().collect();
        for e in effects {
            if let Effect::PageOut { offset, message }
            | Effect::StoreAppend {
                offset, message, ..
            } = e
            {
                if wanted.contains(offset) {
                    bodies.insert(*offset, Some(Arc::clone(message)));
                }
            }
        }
        stored.retain(|o| !bodies.contains_key(o));
        if !spilled.is_empty() {
            // Not yet confirmed by the paging thread: from memory.
            if let Some(pager) = self.pager.get() {
                let in_flight = pager.in_flight();
                for o in &spilled {
                    if !bodies.contains_key(o) {
                        if let Some(m) = in_flight.get(o) {
                            bodies.insert(*o, Some(Arc::clone(m)));
                        }
                    }
                }
            }
            spilled.retain(|o| !bodies.contains_key(o));
            match (self.pager.get(), core.paging_id) {
                (Some(pager), Some(id)) if !spilled.is_empty() => {
                    read_into(&pager.handle, id, spilled, &mut bodies);
                }
                _ => {
                    for o in spilled {
                        bodies.insert(o, None);
                    }
                }
            }
        }
        if !stored.is_empty() {
            match self.store.get() {
                Some(s) => read_into(&s.handle, s.id, stored, &mut bodies),
                None => {
                    for o in stored {
                        bodies.insert(o, None);
                    }
                }
            }
        }
        Some(bodies)
    }

    /// Carries out one batch of effects in order.
    fn carry_out(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        effects: &mut Vec<Effect>,
        bodies: Option<&BTreeMap<u64, Option<Arc<Message>>>>,
        durability: Option<&Arc<PublishDurability>>,
        out: &mut Outcome,
    ) -> FollowUp {
        let mut follow = FollowUp::default();
        let mut acks: Vec<u64> = Vec::new();
        let mut releases: Vec<u64> = Vec::new();
        let mut delivered_upto: Option<u64> = None;
        let body_of = |offset: u64, message: Option<Arc<Message>>| {
            message.or_else(|| bodies.and_then(|b| b.get(&offset).cloned().flatten()))
        };
        for effect in effects.drain(..) {
            match effect {
                Effect::Deliver(d) => {
                    let consumer = d.consumer;
                    let Some(message) = body_of(d.offset, d.message) else {
                        if let Some(slot) = consumer.and_then(|c| core.sinks.get(&c)) {
                            if d.ack_required {
                                slot.channel_credit.release(1);
                            }
                        }
                        if d.ack_required {
                            follow.lost.push(d.offset);
                        }
                        continue;
                    };
                    let Some(slot) = consumer.and_then(|c| core.sinks.get(&c)) else {
                        continue;
                    };
                    slot.sink.deliver(Delivery {
                        queue: Arc::clone(q),
                        consumer,
                        consumer_tag: slot.tag.clone(),
                        offset: d.offset,
                        message: q.as_delivered(message, d.returns),
                        redelivered: d.redelivered,
                        ack_required: d.ack_required,
                        enqueued_at: d.enqueued_at,
                    });
                }
                Effect::StoreAppend {
                    offset,
                    message,
                    deadline,
                } => {
                    if let Some(s) = self.store.get() {
                        let refs = vec![pier_store::QueueRef {
                            queue: s.id,
                            offset,
                        }];
                        let copy = to_stored_expiring(&message, deadline);
                        if let Err(e) = append_durable(&s.handle, refs, copy, durability) {
                            tracing::error!(queue = %q.name(), vhost = %q.vhost(), "store append failed: {e}");
                        }
                    }
                }
                Effect::StoreAck { offset } => acks.push(offset),
                Effect::StoreDelivered { offset } => {
                    delivered_upto = Some(delivered_upto.map_or(offset, |d| d.max(offset)));
                }
                Effect::StoreReturned { offset, returns } => {
                    if let Some(s) = self.store.get() {
                        if let Err(e) = s.handle.mark_returned(s.id, offset, returns) {
                            tracing::error!(queue = %q.name(), "store mark_returned failed: {e}");
                        }
                    }
                }
                Effect::StoreDeadLetter { offset, reason } => {
                    if let Some(s) = self.store.get() {
                        if let Err(e) = s.handle.mark_dead_letter(s.id, offset, reason.code()) {
                            tracing::error!(queue = %q.name(), "store mark_dead_letter failed: {e}");
                        }
                    }
                }
                Effect::PageOut { offset, message } => {
                    if let Err(message) = self.page_out(q, core, offset, message, durability) {
                        follow.spill_failed.push((offset, message));
                    }
                }
                Effect::PageIn { .. } => {}
                Effect::PagingRelease { offset } => releases.push(offset),
                Effect::PagingDropAll => self.paging_drop_all(q, core),
                Effect::DeadLetter {
                    offset,
                    message,
                    reason,
                    kept,
                    ..
                } => match body_of(offset, message) {
                    Some(message) => {
                        if kept {
                            self.dead_letter_state().flight.route(offset);
                        }
                        out.dead.push(DeadLetter {
                            message,
                            reason,
                            kept: kept.then_some(offset),
                        });
                    }
                    None if kept => {
                        // Kept: tried again later.
                        tracing::warn!(queue = %q.name(), offset, "a dead letter's body could not be read back; will retry");
                        self.dead_letter_settled(offset, false);
                    }
                    None => {
                        tracing::error!(queue = %q.name(), offset, "a dead letter's body could not be read back; dropped");
                    }
                },
                Effect::ConsumerCancelled { consumer, tag, .. } => {
                    if let Some(slot) = core.sinks.remove(&consumer) {
                        slot.sink.cancelled(&tag);
                    }
                }
                Effect::Drained { consumer, credit } => {
                    if let Some(slot) = core.sinks.get(&consumer) {
                        slot.sink.drained(&slot.tag, credit);
                    }
                }
                Effect::Expired => out.expired = true,
            }
        }
        if let Some(s) = self.store.get() {
            if !acks.is_empty() {
                if let Err(e) = s.handle.ack(s.id, acks) {
                    tracing::error!(queue = %q.name(), vhost = %q.vhost(), "store ack failed: {e}");
                }
            }
            if let Some(upto) = delivered_upto {
                if let Err(e) = s.handle.mark_delivered(s.id, upto) {
                    tracing::error!(queue = %q.name(), "store mark_delivered failed: {e}");
                }
            }
        }
        self.paging_release(q, core, releases);
        follow
    }

    /// Makes the engine's figures readable without the lock.
    fn publish_figures(&self, core: &Core) {
        self.next_tick
            .store(core.engine.next_tick(), Ordering::Relaxed);
        self.paging
            .store(core.engine.has_paged_tail(), Ordering::Relaxed);
        self.counters.set(core.engine.counters());
    }

    // ---- paging store ----

    /// Writes a body to the paging store; gives it back if that is not possible now. The
    /// publish's durability token, when it has one, waits for the write: that holds its
    /// connection's credit (credit flow covers transient publishes that page, as RabbitMQ's
    /// covers every publish) and a transient message's confirm until the write is done. A
    /// failed write keeps the body in memory, so it never fails the publish.
    fn page_out(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        offset: u64,
        message: Arc<Message>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Result<(), Arc<Message>> {
        let Some(pager) = self.pager.get() else {
            return Err(message);
        };
        let Some(id) = self.paging_queue(q, core, pager) else {
            return Err(message);
        };
        pager.in_flight().insert(offset, Arc::clone(&message));
        let in_flight = Arc::clone(&pager.in_flight);
        let refs = vec![pier_store::QueueRef { queue: id, offset }];
        let name = q.name().clone();
        let written = durability.map(|d| d.add_flag());
        // Never blocks on our lock (the store thread takes only `in_flight`); blocks here
        // while the paging thread is behind, which holds publishers back.
        let sent = pager
            .handle
            .append(refs, to_stored(&message), move |r| {
                match r {
                    Ok(_) => {
                        in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&offset);
                    }
                    // The body stays in `in_flight`, where reads find it.
                    Err(e) => tracing::warn!(queue = %name, offset, "paging write failed, message kept in memory: {e}"),
                }
                if let Some(written) = written {
                    written(true);
                }
            });
        if let Err(e) = sent {
            if let Some(d) = durability {
                // The refused command took its callback with it: give back what it held.
                d.complete(true);
            }
            pager.in_flight().remove(&offset);
            tracing::warn!(queue = %q.name(), "paging store unavailable, message kept in memory: {e}");
            return Err(message);
        }
        Ok(())
    }

    /// This queue's id in the paging store, registering it on first use (one blocking round
    /// trip to the paging thread, once per queue).
    fn paging_queue(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        pager: &Pager,
    ) -> Option<pier_store::QueueId> {
        if let Some(id) = core.paging_id {
            return Some(id);
        }
        let now = self.clock.now_ms();
        if now < core.paging_retry_at {
            return None;
        }
        let seq = PAGING_QUEUE_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{seq}:{}:{}", q.vhost(), q.name());
        match pager.handle.call(move |s| s.open_queue(&name)) {
            Ok(Ok(id)) => {
                core.paging_id = Some(id);
                Some(id)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::error!(queue = %q.name(), vhost = %q.vhost(), "paging store refused the queue, bodies stay in memory: {e}");
                core.paging_retry_at = now.saturating_add(PAGING_RETRY_MS);
                None
            }
        }
    }

    /// Releases paging records of messages that left the queue or were read back.
    fn paging_release(&self, q: &Arc<Queue>, core: &Core, offsets: Vec<u64>) {
        if offsets.is_empty() {
            return;
        }
        let Some(pager) = self.pager.get() else {
            return;
        };
        {
            let mut in_flight = pager.in_flight();
            if !in_flight.is_empty() {
                for o in &offsets {
                    in_flight.remove(o);
                }
            }
        }
        if let Some(id) = core.paging_id {
            if let Err(e) = pager.handle.ack(id, offsets) {
                tracing::error!(queue = %q.name(), "paging store ack failed: {e}");
            }
        }
    }

    /// Drops every paging record of this queue at once (purge, delete): the paging queue is
    /// deleted (O(1) on disk) and a new one is registered if the queue pages again.
    fn paging_drop_all(&self, q: &Arc<Queue>, core: &mut Core) {
        let Some(pager) = self.pager.get() else {
            return;
        };
        pager.in_flight().clear();
        if let Some(id) = core.paging_id.take() {
            let sent = pager
                .handle
                .send(pier_store::Command::Run(Box::new(move |s| {
                    if let Err(e) = s.delete_queue(id) {
                        tracing::error!("deleting a queue's paging records: {e}");
                    }
                })));
            if let Err(e) = sent {
                tracing::error!(queue = %q.name(), "paging store delete failed: {e}");
            }
        }
    }

    // ---- the queue's operations ----

    /// Routes dead letters to the vhost, outside the queue lock.
    pub(crate) fn route_dead_letters(&self, q: &Arc<Queue>, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        if let Some(vh) = self.router.upgrade() {
            vh.route_dead_letters(q, dead);
        }
    }

    pub(crate) fn publish_collect(
        &self,
        q: &Arc<Queue>,
        message: Arc<Message>,
        dead: &mut Vec<DeadLetter>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        let mut out = Outcome::default();
        let reply = {
            let mut core = self.lock();
            self.run(
                q,
                &mut core,
                Command::Enqueue {
                    message,
                    publisher: None,
                    store: StoreMode::Own,
                },
                durability,
                &mut out,
            )
        };
        dead.append(&mut out.dead);
        match reply {
            Ok(Reply::Enqueued { result, .. }) => result,
            _ => Published::Gone,
        }
    }

    /// Enqueues into a queue whose lock the fan-out publisher holds, without carrying out the
    /// effects: `finish_shared` does, once the shared record's append is sent.
    pub(crate) fn enqueue_shared(
        &self,
        q: &Arc<Queue>,
        core: &mut Core,
        message: Arc<Message>,
    ) -> (Published, Option<u64>) {
        match self.apply(
            q,
            core,
            Command::Enqueue {
                message,
                publisher: None,
                store: StoreMode::Shared,
            },
        ) {
            Ok(Reply::Enqueued { result, offset }) => (result, offset),
            _ => (Published::Gone, None),
        }
    }

    /// The effects held back by `enqueue_shared`.
    pub(crate) fn finish_shared(&self, q: &Arc<Queue>, core: &mut Core) -> Vec<DeadLetter> {
        let mut out = Outcome::default();
        self.execute(q, core, None, &mut out, None);
        out.dead
    }

    pub(crate) fn restore(
        &self,
        q: &Arc<Queue>,
        messages: Vec<super::engine::Recovered>,
        next_offset: u64,
    ) {
        let mut out = Outcome::default();
        let mut core = self.lock();
        let _ = self.run(
            q,
            &mut core,
            Command::Recover {
                messages,
                next_offset,
            },
            None,
            &mut out,
        );
        if core.engine.dead_letters_kept().next().is_some() {
            // Kept dead letters recovered: the next tick routes them again.
            self.dead_letter_state().flight.restart();
            self.dead_letters_due.store(0, Ordering::Relaxed);
        }
    }

    /// Runs a command that cannot be refused, routes its dead letters, and reports whether
    /// `x-expires` ran out.
    fn simple(&self, q: &Arc<Queue>, command: Command<'_>) -> (Reply, bool) {
        let mut out = Outcome::default();
        let reply = {
            let mut core = self.lock();
            self.run(q, &mut core, command, None, &mut out)
                .unwrap_or(Reply::Done)
        };
        self.route_dead_letters(q, out.dead);
        (reply, out.expired)
    }

    /// A policy changed: the engine takes the settings it can change (and drops, dead-
    /// lettering, what a lower length limit leaves over).
    pub(crate) fn reconfigure(
        &self,
        q: &Arc<Queue>,
        settings: crate::args::PolicySettings,
        delivery_limit: Option<u32>,
    ) {
        self.simple(
            q,
            Command::Reconfigure {
                settings: Box::new(settings),
                delivery_limit,
            },
        );
    }

    pub(crate) fn touch(&self, q: &Arc<Queue>) {
        self.simple(q, Command::Touch);
    }

    /// Removes expired heads (dead-lettering them); true when `x-expires` ran out.
    pub(crate) fn tick(&self, q: &Arc<Queue>) -> bool {
        self.dead_letter_work(q);
        self.simple(q, Command::Tick).1
    }

    pub(crate) fn dispatch(&self, q: &Arc<Queue>) {
        let mut out = Outcome::default();
        {
            let mut core = self.lock();
            for slot in core.sinks.values_mut() {
                slot.waiting = false;
            }
            let _ = self.run(q, &mut core, Command::Dispatch, None, &mut out);
        }
        self.route_dead_letters(q, out.dead);
    }

    pub(crate) fn get(&self, q: &Arc<Queue>, ack_required: bool) -> Option<(Delivery, u32)> {
        let mut out = Outcome::default();
        let result = {
            let mut core = self.lock();
            let reply = self.apply(q, &mut core, Command::Get { ack_required });
            let Ok(Reply::Got {
                delivery: Some(mut d),
                remaining,
            }) = reply
            else {
                self.execute(q, &mut core, None, &mut out, None);
                drop(core);
                self.route_dead_letters(q, out.dead);
                return None;
            };
            self.execute(q, &mut core, None, &mut out, Some(&mut d));
            match d.message.take() {
                Some(message) => Some((
                    Delivery {
                        queue: Arc::clone(q),
                        consumer: None,
                        consumer_tag: ShortString::default(),
                        offset: d.offset,
                        message: q.as_delivered(message, d.returns),
                        redelivered: d.redelivered,
                        ack_required,
                        enqueued_at: d.enqueued_at,
                    },
                    u32::try_from(remaining).unwrap_or(u32::MAX),
                )),
                None => {
                    tracing::error!(queue = %q.name(), offset = d.offset, "message could not be read back for basic.get; dropped");
                    if ack_required {
                        let offsets = [d.offset];
                        let _ = self.run(
                            q,
                            &mut core,
                            Command::Lost { offsets: &offsets },
                            None,
                            &mut out,
                        );
                    }
                    None
                }
            }
        };
        self.route_dead_letters(q, out.dead);
        result
    }

    pub(crate) fn add_consumer(
        &self,
        q: &Arc<Queue>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId, Refusal> {
        let mut out = Outcome::default();
        let id = next_consumer_id();
        {
            let mut core = self.lock();
            core.sinks.insert(
                id,
                SinkSlot {
                    tag: spec.tag.clone(),
                    sink: Arc::clone(&spec.sink),
                    channel_credit: Arc::clone(&spec.channel_credit),
                    ack_required: spec.ack_required,
                    waiting: false,
                },
            );
            let settings = super::engine::ConsumerSettings {
                tag: spec.tag,
                connection: spec.connection,
                ack_required: spec.ack_required,
                exclusive: spec.exclusive,
                prefetch: spec.prefetch,
                priority: spec.priority,
                arguments: spec.arguments,
                credit: None,
            };
            if let Err(refusal) = self.apply(
                q,
                &mut core,
                Command::Checkout {
                    consumer: id,
                    settings,
                },
            ) {
                core.sinks.remove(&id);
                core.effects.clear();
                return Err(refusal);
            }
            // Before any delivery: the place to send basic.consume-ok.
            on_added();
            self.execute(q, &mut core, None, &mut out, None);
        }
        self.route_dead_letters(q, out.dead);
        Ok(id)
    }

    pub(crate) fn remove_consumer(&self, q: &Arc<Queue>, id: ConsumerId) -> (bool, bool) {
        let mut out = Outcome::default();
        let reply = {
            let mut core = self.lock();
            let r = self.run(
                q,
                &mut core,
                Command::Cancel { consumer: id },
                None,
                &mut out,
            );
            core.sinks.remove(&id);
            r
        };
        self.route_dead_letters(q, out.dead);
        match reply {
            Ok(Reply::Cancelled {
                existed,
                auto_delete_now,
            }) => (existed, auto_delete_now),
            _ => (false, false),
        }
    }

    pub(crate) fn settle(&self, q: &Arc<Queue>, offsets: &[u64]) {
        self.simple(q, Command::Settle { offsets });
    }

    pub(crate) fn discard(&self, q: &Arc<Queue>, offsets: &[u64]) {
        self.simple(q, Command::Discard { offsets });
    }

    pub(crate) fn requeue(&self, q: &Arc<Queue>, offsets: &[u64], failed: bool) {
        self.simple(q, Command::Return { offsets, failed });
    }

    pub(crate) fn release(&self, q: &Arc<Queue>, offsets: &[u64]) {
        self.simple(q, Command::Release { offsets });
    }

    pub(crate) fn purge(&self, q: &Arc<Queue>) -> u64 {
        match self.simple(q, Command::Purge).0 {
            Reply::Dropped(n) => n,
            _ => 0,
        }
    }

    /// Marks the queue deleted, drops its messages and tells its consumers.
    pub(crate) fn delete(&self, q: &Arc<Queue>) -> u64 {
        let n = match self.simple(q, Command::Delete).0 {
            Reply::Dropped(n) => n,
            _ => 0,
        };
        self.next_tick.store(NEVER, Ordering::Relaxed);
        n
    }

    /// Runs `f` on the engine (read-only views for management and tests).
    pub(crate) fn with_engine<R>(&self, f: impl FnOnce(&QueueEngine) -> R) -> R {
        f(&self.lock().engine)
    }

    /// The channel number each consumer delivers on (management listings).
    pub(crate) fn consumer_channels(&self) -> HashMap<ConsumerId, Option<u16>> {
        self.lock()
            .sinks
            .iter()
            .map(|(id, s)| (*id, s.sink.channel_number()))
            .collect()
    }

    /// Time-in-queue samples of the window, merged into `into`.
    pub(crate) fn time_in_queue_into(&self, into: &mut crate::waits::WaitHistogram) {
        let now = self.clock.now_ms();
        let mut core = self.lock();
        core.engine.release_stale_waits(now);
        if let Some(w) = core.engine.waits() {
            w.merge_into(now, into);
        }
    }
}

/// What carrying out effects asks of the engine next.
#[derive(Default)]
struct FollowUp {
    /// Deliveries whose bodies could not be read back.
    lost: Vec<u64>,
    /// Page-outs that could not be written.
    spill_failed: Vec<(u64, Arc<Message>)>,
}

/// Reads bodies back from a store thread (one round trip), in the order asked; `None` for one
/// that is gone or whose properties no longer decode.
fn read_into(
    handle: &StoreHandle,
    id: pier_store::QueueId,
    offsets: Vec<u64>,
    into: &mut BTreeMap<u64, Option<Arc<Message>>>,
) {
    let asked = offsets.clone();
    let read = handle.call(move |s| {
        offsets
            .iter()
            .map(|&o| {
                s.read(id, o)
                    .ok()
                    .and_then(from_stored_expiring)
                    .map(|(m, _)| Arc::new(m))
            })
            .collect::<Vec<_>>()
    });
    match read {
        Ok(v) => into.extend(asked.into_iter().zip(v)),
        Err(e) => {
            tracing::error!("reading messages back failed: {e}");
            into.extend(asked.into_iter().map(|o| (o, None)));
        }
    }
}
