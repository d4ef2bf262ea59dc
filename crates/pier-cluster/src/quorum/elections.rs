//! When a member of a quorum queue's group starts an election.
//!
//! Quorum queue groups send no heartbeats and never time out into elections on their own
//! (`raft/queue_group.rs`): with 1,000 queues, per-group heartbeats kept every node busy
//! while nothing happened. As RabbitMQ's Ra relies on its node-level failure detector (aten),
//! a Pier node pings its peers (`node.rs`) and, every round, [`ElectionTimers::decide`] looks
//! at each of its groups: a member whose leader's node stopped answering starts an election;
//! members take turns so that they do not split the vote; a member that knows no leader
//! waits a while first (one may yet tell it, as a leader does for a member whose node comes
//! back); nobody elects without a majority of the voters' nodes answering (an election that
//! cannot win only raises the term, and a higher term would depose the leader once the
//! partition heals). A leader heartbeats its groups only now and then, and when a member's
//! node comes back. Pure: the caller passes what it sees and the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the node looks at its groups' leaders.
pub(crate) const ELECTION_CHECK: Duration = Duration::from_millis(200);
/// A peer that has not answered a ping this long is taken as down (pings go every 250 ms).
pub(crate) const PEER_DOWN_AFTER: Duration = Duration::from_millis(1250);
/// A leader heartbeats its groups this long after a member's node came back, so that the
/// member learns who leads as soon as its group runs again (instead of electing itself).
pub(crate) const BACK_FOR: Duration = Duration::from_secs(3);
/// A leader heartbeats each group it leads this often even when all is quiet: a member
/// that restarted learns the commit index (and replays its log up to it), a deposed leader
/// that was paused or cut off learns of the newer term. Far fewer than openraft's default
/// heartbeats (several a second per group).
const IDLE_HEARTBEAT: Duration = Duration::from_secs(5);
/// A member that knows no leader waits this long before electing.
const NO_LEADER_GRACE: Duration = Duration::from_secs(2);
/// Each member in turn waits this much longer than the one before it.
const ELECT_STAGGER: Duration = Duration::from_millis(400);
/// Between two elections a member starts in one group (plus its turn).
const ELECT_RETRY: Duration = Duration::from_secs(1);

/// What a member of a group does this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Wait,
    /// Start an election.
    Elect,
    /// Send the followers a heartbeat now (a member's node came back).
    Heartbeat,
}

/// A member's role as openraft reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    /// Follower or candidate.
    Voter,
    /// Learner, or shutting down: never elects.
    Other,
}

/// One group as this member sees it.
#[derive(Debug)]
pub(crate) struct GroupView<'a> {
    pub group: u64,
    pub role: Role,
    /// The leader of this member's committed vote.
    pub leader: Option<u64>,
    pub voters: &'a [u64],
}

/// Per group: since when it has no live leader, and when this member last elected; for the
/// groups it leads, when it last heartbeat.
#[derive(Debug, Default)]
pub(crate) struct ElectionTimers {
    waiting: HashMap<u64, (Instant, Option<Instant>)>,
    beat: HashMap<u64, Instant>,
}

impl ElectionTimers {
    /// What member `me` does about `g` at `now`, given which nodes answer (`up`) and which
    /// came back within [`BACK_FOR`] (`back`).
    pub(crate) fn decide(
        &mut self,
        me: u64,
        g: &GroupView<'_>,
        up: impl Fn(u64) -> bool,
        back: impl Fn(u64) -> bool,
        now: Instant,
    ) -> Action {
        match g.role {
            Role::Leader => {
                self.waiting.remove(&g.group);
                // Leading just began: it told the followers (a blank entry).
                let last = self.beat.entry(g.group).or_insert(now);
                let returned = g.voters.iter().any(|v| *v != me && back(*v));
                return if returned || now.saturating_duration_since(*last) >= IDLE_HEARTBEAT {
                    *last = now;
                    Action::Heartbeat
                } else {
                    Action::Wait
                };
            }
            Role::Voter if g.voters.contains(&me) => {}
            Role::Voter | Role::Other => {
                self.waiting.remove(&g.group);
                self.beat.remove(&g.group);
                return Action::Wait;
            }
        }
        self.beat.remove(&g.group);
        let other_leader = g.leader.filter(|l| *l != me);
        if other_leader.is_some_and(|l| g.voters.contains(&l) && up(l)) {
            self.waiting.remove(&g.group);
            return Action::Wait;
        }
        let mut live: Vec<u64> = g
            .voters
            .iter()
            .copied()
            .filter(|v| *v == me || up(*v))
            .collect();
        if live.len() * 2 <= g.voters.len() {
            return Action::Wait;
        }
        live.sort_by_key(|v| turn_order(g.group, *v));
        let rank = live.iter().position(|v| *v == me).unwrap_or(0);
        let turn = ELECT_STAGGER * u32::try_from(rank).unwrap_or(u32::MAX);
        // A leader known and gone (its node is down, or it is no voter any more): go now.
        // None known, or this member's own from before a restart: one may yet show up.
        let grace = if other_leader.is_some() {
            Duration::ZERO
        } else {
            NO_LEADER_GRACE
        };
        let (since, tried) = self.waiting.entry(g.group).or_insert((now, None));
        let due = match tried {
            None => now.saturating_duration_since(*since) >= grace + turn,
            Some(t) => now.saturating_duration_since(*t) >= ELECT_RETRY + turn,
        };
        if due {
            *tried = Some(now);
            Action::Elect
        } else {
            Action::Wait
        }
    }

    /// Forgets groups this node no longer has.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.waiting.retain(|g, _| keep(*g));
        self.beat.retain(|g, _| keep(*g));
    }
}

/// The order in which a group's members take their turns: a different one per group, so
/// that one node does not lead every queue after a failure.
fn turn_order(group: u64, member: u64) -> u64 {
    (member ^ group).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const VOTERS: [u64; 3] = [11, 22, 33];

    fn view(role: Role, leader: Option<u64>) -> GroupView<'static> {
        GroupView {
            group: 7,
            role,
            leader,
            voters: &VOTERS,
        }
    }

    /// The members in the order they take their turns in group 7.
    fn turns() -> Vec<u64> {
        let mut v = VOTERS.to_vec();
        v.sort_by_key(|m| turn_order(7, *m));
        v
    }

    #[test]
    fn a_follower_whose_leader_answers_never_elects() {
        let mut t = ElectionTimers::default();
        let t0 = Instant::now();
        for s in 0..100 {
            let now = t0 + Duration::from_secs(s);
            let a = t.decide(22, &view(Role::Voter, Some(11)), |_| true, |_| false, now);
            assert_eq!(a, Action::Wait);
        }
    }

    #[test]
    fn members_take_turns_when_the_leaders_node_is_down() {
        let order: Vec<u64> = turns().into_iter().filter(|m| *m != 11).collect();
        let up = |n: u64| n != 11;
        let t0 = Instant::now();
        let (first, second) = (order[0], order[1]);
        let mut a = ElectionTimers::default();
        let mut b = ElectionTimers::default();
        let g = view(Role::Voter, Some(11));
        assert_eq!(a.decide(first, &g, up, |_| false, t0), Action::Elect);
        assert_eq!(b.decide(second, &g, up, |_| false, t0), Action::Wait);
        let later = t0 + ELECT_STAGGER;
        assert_eq!(b.decide(second, &g, up, |_| false, later), Action::Elect);
        // The first tries again after ELECT_RETRY while there is still no leader.
        assert_eq!(a.decide(first, &g, up, |_| false, later), Action::Wait);
        let retry = t0 + ELECT_RETRY;
        assert_eq!(a.decide(first, &g, up, |_| false, retry), Action::Elect);
        // Once a live leader is known, nothing more.
        let won = view(Role::Voter, Some(first));
        assert_eq!(
            b.decide(second, &won, up, |_| false, retry + ELECT_RETRY * 5),
            Action::Wait
        );
    }

    #[test]
    fn without_a_known_leader_a_member_waits_first() {
        let mut t = ElectionTimers::default();
        let t0 = Instant::now();
        let me = turns()[0];
        let g = view(Role::Voter, None);
        assert_eq!(t.decide(me, &g, |_| true, |_| false, t0), Action::Wait);
        let before = t0 + NO_LEADER_GRACE - Duration::from_millis(1);
        assert_eq!(t.decide(me, &g, |_| true, |_| false, before), Action::Wait);
        let after = t0 + NO_LEADER_GRACE;
        assert_eq!(t.decide(me, &g, |_| true, |_| false, after), Action::Elect);
        // Its own leadership from before a restart counts as none.
        let mut t = ElectionTimers::default();
        let stale = view(Role::Voter, Some(me));
        assert_eq!(t.decide(me, &stale, |_| true, |_| false, t0), Action::Wait);
        assert_eq!(
            t.decide(me, &stale, |_| true, |_| false, after),
            Action::Elect
        );
    }

    #[test]
    fn a_leader_that_is_no_voter_any_more_is_replaced_at_once() {
        let mut t = ElectionTimers::default();
        let voters = [22, 33];
        let g = GroupView {
            group: 7,
            role: Role::Voter,
            leader: Some(11),
            voters: &voters,
        };
        let mut order = voters.to_vec();
        order.sort_by_key(|m| turn_order(7, *m));
        let a = t.decide(order[0], &g, |_| true, |_| false, Instant::now());
        assert_eq!(a, Action::Elect);
    }

    #[test]
    fn a_minority_never_elects() {
        let mut t = ElectionTimers::default();
        let t0 = Instant::now();
        for s in 0..60 {
            let now = t0 + Duration::from_secs(s);
            let a = t.decide(
                22,
                &view(Role::Voter, Some(11)),
                |n| n == 22,
                |_| false,
                now,
            );
            assert_eq!(a, Action::Wait);
        }
        // The partition heals, the leader is still gone: now it may.
        let later = t0 + Duration::from_secs(61);
        let order: Vec<u64> = turns().into_iter().filter(|m| *m != 11).collect();
        let mut t = ElectionTimers::default();
        let a = t.decide(
            order[0],
            &view(Role::Voter, Some(11)),
            |n| n != 11,
            |_| false,
            later,
        );
        assert_eq!(a, Action::Elect);
    }

    #[test]
    fn a_leader_heartbeats_when_a_members_node_is_back_and_now_and_then() {
        let mut t = ElectionTimers::default();
        let now = Instant::now();
        let g = view(Role::Leader, Some(11));
        assert_eq!(
            t.decide(11, &g, |_| true, |n| n == 33, now),
            Action::Heartbeat
        );
        assert_eq!(t.decide(11, &g, |_| true, |_| false, now), Action::Wait);
        // Only its own node came back (it restarted): nothing to tell.
        assert_eq!(t.decide(11, &g, |_| true, |n| n == 11, now), Action::Wait);
        // Quiet: one heartbeat per IDLE_HEARTBEAT.
        let mut beats = 0;
        for ms in (200..=20_000).step_by(200) {
            let at = now + Duration::from_millis(ms);
            if t.decide(11, &g, |_| true, |_| false, at) == Action::Heartbeat {
                beats += 1;
            }
        }
        assert_eq!(beats, 4);
    }

    #[test]
    fn learners_and_non_voters_never_elect() {
        let mut t = ElectionTimers::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        for now in [t0, later] {
            let a = t.decide(44, &view(Role::Voter, None), |_| true, |_| false, now);
            assert_eq!(a, Action::Wait);
            let a = t.decide(22, &view(Role::Other, None), |_| true, |_| false, now);
            assert_eq!(a, Action::Wait);
        }
    }

    #[test]
    fn decisions_depend_only_on_what_is_seen() {
        let run = || {
            let mut t = ElectionTimers::default();
            let t0 = Instant::now();
            (0..40)
                .map(|i| {
                    let now = t0 + Duration::from_millis(200 * i);
                    let leader = if i < 10 { Some(11) } else { None };
                    t.decide(33, &view(Role::Voter, leader), |n| n != 11, |_| false, now)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
