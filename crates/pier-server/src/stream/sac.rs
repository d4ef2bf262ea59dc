//! Single active consumer for streams: subscriptions with `single-active-consumer=true` and
//! the same `name` on the same stream form a group; one member is active. For a super
//! stream's partitions (`super-stream` property) the active member of partition `i` is member
//! `i mod n`, so a consumer group spreads over the partitions, as in RabbitMQ; otherwise the
//! earliest member is active. Changes reach connections as events; each connection tells its
//! client with `ConsumerUpdate`.
//!
//! When the active member changes while the former one is still subscribed (a partition's
//! group grew or shrank), the former one is told first and the new one is activated only once
//! the former one's client has answered its `ConsumerUpdate` (it may store its offset in that
//! answer's handler, which the new one then reads), as RabbitMQ's coordinator does. A client
//! that never answers holds its group until it leaves, or until an operator forces the group
//! on (`activate`: `pier ctl activate_stream_consumer`, RabbitMQ 4.2's verb).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

/// What a connection is told about one of its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SacEvent {
    Activate(u8),
    Deactivate(u8),
}

/// Identifies a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub vhost: String,
    pub stream: String,
    pub name: String,
}

#[derive(Debug)]
struct Member {
    connection: u64,
    subscription: u8,
    events: mpsc::Sender<SacEvent>,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Member>,
    /// Index of the stream among its super stream's partitions.
    partition: Option<usize>,
    active: Option<(u64, u8)>,
    /// The former active member, told to step down, whose client has not answered yet: no
    /// member is activated until it has (or has left).
    stepping_down: Option<(u64, u8)>,
}

/// Every group of a node.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<GroupKey, Group>>,
}

impl Group {
    fn rebalance(&mut self) {
        let n = self.members.len();
        let target = if n == 0 {
            None
        } else {
            let i = self.partition.map_or(0, |p| p % n);
            self.members.get(i).map(|m| (m.connection, m.subscription))
        };
        if target == self.active || self.stepping_down.is_some() {
            return;
        }
        if let Some((c, s)) = self.active {
            if let Some(m) = self
                .members
                .iter()
                .find(|m| m.connection == c && m.subscription == s)
            {
                // Still subscribed: it steps down first, the new one waits for its answer.
                let _ = m.events.try_send(SacEvent::Deactivate(s));
                self.stepping_down = Some((c, s));
                self.active = None;
                return;
            }
        }
        if let Some((c, s)) = target {
            if let Some(m) = self
                .members
                .iter()
                .find(|m| m.connection == c && m.subscription == s)
            {
                let _ = m.events.try_send(SacEvent::Activate(s));
            }
        }
        self.active = target;
    }
}

impl Coordinator {
    /// Adds a subscription to its group (the group may get a new active member).
    pub fn join(
        &self,
        key: GroupKey,
        partition: Option<usize>,
        connection: u64,
        subscription: u8,
        events: mpsc::Sender<SacEvent>,
    ) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let g = groups.entry(key).or_default();
        if partition.is_some() {
            g.partition = partition;
        }
        g.members.push(Member {
            connection,
            subscription,
            events,
        });
        g.rebalance();
    }

    /// Removes a subscription (unsubscribe, or its connection closed).
    pub fn leave(&self, key: &GroupKey, connection: u64, subscription: u8) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let Some(g) = groups.get_mut(key) else { return };
        g.members
            .retain(|m| !(m.connection == connection && m.subscription == subscription));
        if g.active == Some((connection, subscription)) {
            g.active = None;
        }
        if g.stepping_down == Some((connection, subscription)) {
            g.stepping_down = None;
        }
        g.rebalance();
        if g.members.is_empty() {
            groups.remove(key);
        }
    }

    /// The client of a subscription told to step down has answered: the group's next active
    /// member is activated.
    pub fn stepped_down(&self, key: &GroupKey, connection: u64, subscription: u8) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let Some(g) = groups.get_mut(key) else { return };
        if g.stepping_down == Some((connection, subscription)) {
            g.stepping_down = None;
            g.rebalance();
        }
    }

    /// Forces a group on (RabbitMQ 4.2's `activate_stream_consumer`): a member waiting for a
    /// former one to step down is activated without that answer. False when there is no
    /// such group.
    pub fn activate(&self, vhost: &str, stream: &str, name: &str) -> bool {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let key = GroupKey {
            vhost: vhost.to_owned(),
            stream: stream.to_owned(),
            name: name.to_owned(),
        };
        let Some(g) = groups.get_mut(&key) else {
            return false;
        };
        g.stepping_down = None;
        g.rebalance();
        true
    }

    /// Whether that subscription is its group's active one (management listings).
    pub fn is_active(&self, key: &GroupKey, connection: u64, subscription: u8) -> bool {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .get(key)
            .is_some_and(|g| g.active == Some((connection, subscription)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> GroupKey {
        GroupKey {
            vhost: "/".into(),
            stream: "s".into(),
            name: "app".into(),
        }
    }

    #[test]
    fn the_first_member_is_active_and_the_next_takes_over() {
        let c = Coordinator::default();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        c.join(key(), None, 1, 0, tx1);
        c.join(key(), None, 2, 0, tx2);
        assert_eq!(rx1.try_recv().unwrap(), SacEvent::Activate(0));
        assert!(rx2.try_recv().is_err());
        c.leave(&key(), 1, 0);
        assert_eq!(rx2.try_recv().unwrap(), SacEvent::Activate(0));
        assert!(c.is_active(&key(), 2, 0));
    }

    /// Two members of partition 1's group: the first was active and has just been told to
    /// step down for the second.
    fn stepping_down_pair() -> (
        Coordinator,
        mpsc::Receiver<SacEvent>,
        mpsc::Receiver<SacEvent>,
    ) {
        let c = Coordinator::default();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, rx2) = mpsc::channel(8);
        // Partition 1 of a super stream: with two members, the second one is active.
        c.join(key(), Some(1), 1, 0, tx1);
        assert_eq!(rx1.try_recv().unwrap(), SacEvent::Activate(0));
        c.join(key(), Some(1), 2, 0, tx2);
        assert_eq!(rx1.try_recv().unwrap(), SacEvent::Deactivate(0));
        (c, rx1, rx2)
    }

    #[test]
    fn partitions_spread_over_a_consumer_group() {
        let (c, mut rx1, mut rx2) = stepping_down_pair();
        // The new one waits until the former one's client has answered.
        assert!(rx2.try_recv().is_err());
        assert!(!c.is_active(&key(), 1, 0) && !c.is_active(&key(), 2, 0));
        c.stepped_down(&key(), 1, 0);
        assert_eq!(rx2.try_recv().unwrap(), SacEvent::Activate(0));
        assert!(c.is_active(&key(), 2, 0));
        // An answer for a member that is not stepping down changes nothing.
        c.stepped_down(&key(), 1, 0);
        assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
    }

    #[test]
    fn a_member_that_leaves_while_stepping_down_lets_the_next_one_on() {
        let (c, _rx1, mut rx2) = stepping_down_pair();
        c.leave(&key(), 1, 0);
        // Alone now: partition 1 of one member is member 0, the second subscription.
        assert_eq!(rx2.try_recv().unwrap(), SacEvent::Activate(0));
    }

    #[test]
    fn an_operator_forces_a_stuck_group_on() {
        let (c, mut rx1, mut rx2) = stepping_down_pair();
        // The former one never answers; the operator forces the group on.
        assert!(!c.activate("/", "s", "other"));
        assert!(c.activate("/", "s", "app"));
        assert_eq!(rx2.try_recv().unwrap(), SacEvent::Activate(0));
        assert!(c.is_active(&key(), 2, 0));
        // A late answer from the former one changes nothing.
        c.stepped_down(&key(), 1, 0);
        assert!(c.is_active(&key(), 2, 0));
        assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
    }
}
