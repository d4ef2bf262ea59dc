//! Single active consumer for streams: subscriptions with `single-active-consumer=true` and
//! the same `name` on the same stream form a group; one member is active. For a super
//! stream's partitions (`super-stream` property) the active member of partition `i` is member
//! `i mod n`, so a consumer group spreads over the partitions, as in RabbitMQ; otherwise the
//! earliest member is active. Changes reach connections as events; each connection tells its
//! client with `ConsumerUpdate`.

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
        if target == self.active {
            return;
        }
        if let Some((c, s)) = self.active {
            if let Some(m) = self
                .members
                .iter()
                .find(|m| m.connection == c && m.subscription == s)
            {
                let _ = m.events.try_send(SacEvent::Deactivate(s));
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
        g.rebalance();
        if g.members.is_empty() {
            groups.remove(key);
        }
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

    #[test]
    fn partitions_spread_over_a_consumer_group() {
        let c = Coordinator::default();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        // Partition 1 of a super stream: with two members, the second one is active.
        c.join(key(), Some(1), 1, 0, tx1);
        assert_eq!(rx1.try_recv().unwrap(), SacEvent::Activate(0));
        c.join(key(), Some(1), 2, 0, tx2);
        assert_eq!(rx1.try_recv().unwrap(), SacEvent::Deactivate(0));
        assert_eq!(rx2.try_recv().unwrap(), SacEvent::Activate(0));
    }
}
