//! AMQP 0-9-1, as RabbitMQ speaks it: the handshake, one connection's reader loop, channels
//! (one file per AMQP class), and the outbound frame queue with its writer task.
//!
//! ```text
//!  lib.rs accept ─► handshake.rs ─► connection.rs reader loop ─► channel/ (Channel::handle)
//!                                        │                          │ VHost::publish, queues
//!                                        ▼                          ▼
//!                                   outbound.rs (Session per channel, frames) ─► writer task
//! ```
//!
//! `access.rs` caches the user's permissions, `flow.rs` blocks publishers under resource
//! alarms, `direct_reply.rs` is RabbitMQ's direct reply-to, `error.rs` maps broker errors to
//! AMQP reply codes and scopes them (soft: the channel closes; hard: the connection does).

pub(crate) mod access;
pub(crate) mod channel;
pub(crate) mod connection;
pub(crate) mod direct_reply;
pub mod error;
pub(crate) mod flow;
pub(crate) mod handshake;
pub(crate) mod outbound;
