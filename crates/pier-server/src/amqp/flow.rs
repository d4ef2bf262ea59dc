//! Publisher blocking while a resource alarm is set (alarms.rs), as RabbitMQ does it: a
//! connection that publishes while an alarm is set is sent `connection.blocked` (if the client
//! announced the `connection.blocked` capability) and its socket is no longer read, until the
//! alarm clears and `connection.unblocked` follows. Connections that only consume are not
//! blocked, so consumers keep draining queues; the writer task of a blocked connection keeps
//! delivering too. Heartbeats from a blocked client are not checked (they wait, unread).
//!
//! ```text
//!  reader loop: batch handled ─► published in it and an alarm set? ─yes─► blocked (no reads)
//!                                                                        └─ alarm clears ─► read again
//! ```

use pier_wire::{ConnectionBlocked, ConnectionUnblocked, Method, ShortString};
use tokio_util::sync::CancellationToken;

use super::connection::Connection;
use crate::registry::ConnectionState;

/// What the blocking logic remembers about one connection.
#[derive(Debug, Default)]
pub(crate) struct FlowState {
    /// The connection's publish count when it was last looked at.
    seen_publishes: u64,
}

impl Connection {
    /// Whether this connection published since the last call while an alarm is set.
    pub(crate) fn must_block_publisher(&mut self) -> bool {
        let published = self.registered.published();
        let new_publishes = published != self.flow.seen_publishes;
        self.flow.seen_publishes = published;
        new_publishes && self.registered.alarms.state().any()
    }

    /// Stays blocked until every alarm has cleared; true if the server began shutting down
    /// (or management closed the connection) meanwhile.
    pub(crate) async fn wait_while_blocked(&mut self, shutdown: &CancellationToken) -> bool {
        let mut alarms = self.registered.alarms.subscribe();
        let state = *alarms.borrow_and_update();
        if !state.any() {
            return false;
        }
        tracing::warn!(peer = %self.peer, user = %self.user.name, "connection blocked: {}", state.reason());
        let notify = self.capabilities.connection_blocked;
        if notify {
            self.outbound.send_method(
                0,
                &Method::ConnectionBlocked(ConnectionBlocked {
                    reason: ShortString::from(state.reason()),
                }),
            );
        }
        self.registered.set_state(ConnectionState::Blocked);
        let forced = tokio::select! {
            r = alarms.wait_for(|s| !s.any()) => r.is_err(),
            () = shutdown.cancelled() => true,
        };
        self.registered.set_state(ConnectionState::Running);
        if notify {
            self.outbound
                .send_method(0, &Method::ConnectionUnblocked(ConnectionUnblocked {}));
        }
        if !forced {
            tracing::info!(peer = %self.peer, user = %self.user.name, "connection unblocked");
        }
        forced
    }

    /// Per-connection credit (credit.rs): no reads until this connection's persistent
    /// publishes in flight to the disk fall below the low-water mark. Shown as "flow" in
    /// management. True if the server began shutting down (or management closed the
    /// connection) meanwhile. Unlike an alarm block, nothing is sent to the client.
    pub(crate) async fn wait_for_credit(&mut self, shutdown: &CancellationToken) -> bool {
        tracing::debug!(peer = %self.peer, "connection throttled: persistent publishes waiting for the disk");
        self.registered.set_state(ConnectionState::Flow);
        let credit = std::sync::Arc::clone(&self.credit);
        let forced = tokio::select! {
            () = credit.replenished() => false,
            () = shutdown.cancelled() => true,
        };
        self.registered.set_state(ConnectionState::Running);
        forced
    }
}
