//! Presence on this node: how many connections and distinct users (`sub`) each topic has,
//! who they are where the topic's namespace lists members, and the joins and leaves since
//! the last interval, gathered into one event per topic.
//!
//! Presence must cost the same at ten subscribers and at a hundred thousand: a subscribe
//! or an unsubscribe changes its topic's counts in O(1) under one lock, occupancy is two
//! numbers kept up to date (never a count over the subscribers), and nothing here runs
//! per publish. Member lists are kept only where a namespace asks for them
//! ([`PresenceMode::Members`]); past the topic's member cap, presence answers with counts
//! and says the list is not complete, and a topic's joins and leaves of an interval past
//! the cap become one occupancy event. The table is a plain structure under the hub's
//! lock: tested without a thread or a clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::{PresenceMode, TopicOptions};
use crate::model::conn_id::ConnId;
use crate::model::presence::{Member, Occupancy, TopicReport, members_json};

/// Who subscribes or leaves: the connection (its worker and id) and its token's subject
/// and `info`, borrowed from the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) worker: usize,
    pub(crate) conn: ConnId,
    pub(crate) user: Option<&'a str>,
    pub(crate) info: Option<&'a Arc<str>>,
}

/// A topic's members, as far as they are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Members {
    pub(crate) occupancy: Occupancy,
    /// The members listed (at most the cap).
    pub(crate) list: Vec<Member>,
    /// Whether `list` holds every member.
    pub(crate) complete: bool,
}

/// What a topic's subscribers are told at the end of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The members that joined and left in the interval.
    Changes {
        joins: Vec<Member>,
        leaves: Vec<Member>,
    },
    /// More joined or left than the cap: the counts instead.
    Counts(Occupancy),
}

/// One topic's presence.
#[derive(Debug, Default)]
struct TopicPresence {
    connections: u64,
    /// Connections per user.
    users: HashMap<Arc<str>, u32>,
    /// Members by (worker, connection), where the topic lists members.
    members: HashMap<(usize, ConnId), Member>,
    /// Joins and leaves since the last interval, where the topic has presence events.
    joins: Vec<Member>,
    leaves: Vec<Member>,
    /// More changed in this interval than the cap, or the topic has more subscribers than
    /// the cap: the event is counts.
    overflowed: bool,
    /// The interval from which the topic's next push may go: a topic with more
    /// subscribers than the cap gets one at most every subscribers / cap intervals, so
    /// its pushes cost about `cap` deliveries an interval however large it grows.
    next_push: u64,
    /// Changed since the last report to the cluster.
    dirty: bool,
}

impl TopicPresence {
    fn occupancy(&self) -> Occupancy {
        Occupancy {
            connections: self.connections,
            users: self.users.len() as u64,
        }
    }

    /// Whether it holds nothing worth keeping: no subscriber, nothing to tell or report.
    fn is_idle(&self) -> bool {
        self.connections == 0
            && self.joins.is_empty()
            && self.leaves.is_empty()
            && !self.overflowed
            && !self.dirty
    }

    /// Notes a join or a leave for the interval's event: past the cap, counts only.
    fn note(&mut self, member: Option<Member>, joined: bool, cap: usize) {
        let Some(member) = member else {
            return;
        };
        if self.overflowed {
            return;
        }
        if self.connections > cap as u64 {
            // Too many to list: counts, paced by the topic's size.
            self.overflowed = true;
            self.joins.clear();
            self.leaves.clear();
            return;
        }
        // Joined and left (or left and joined again) within the interval: neither is news.
        let undone = match joined {
            true => &mut self.leaves,
            false => &mut self.joins,
        };
        if let Some(at) = undone.iter().position(|m| m.client == member.client) {
            undone.swap_remove(at);
            return;
        }
        if self.joins.len() + self.leaves.len() >= cap {
            self.overflowed = true;
            self.joins.clear();
            self.leaves.clear();
            return;
        }
        if joined {
            self.joins.push(member);
        } else {
            self.leaves.push(member);
        }
    }
}

/// Presence for every topic with subscribers on the node (and topics whose last
/// subscriber left since the last interval).
#[derive(Debug)]
pub(crate) struct PresenceTable {
    node: Arc<str>,
    topics: HashMap<Arc<str>, TopicPresence>,
    /// Changes are reported to the cluster (with a broker): a changed topic is kept until
    /// the next report takes it.
    reports: bool,
    /// Topics changed since the last report, and topics with joins or leaves since the
    /// last interval: what the interval's work looks at, instead of every topic.
    changed: HashSet<Arc<str>>,
    eventful: HashSet<Arc<str>>,
}

impl PresenceTable {
    /// An empty table for node `node` (whose name starts every client id), whose changes
    /// are reported to the cluster if `reports`.
    pub(crate) fn new(node: Arc<str>, reports: bool) -> Self {
        Self {
            node,
            topics: HashMap::new(),
            reports,
            changed: HashSet::new(),
            eventful: HashSet::new(),
        }
    }

    /// The client id of `who`: `<node>.<worker>.<connection>`, unique in the cluster.
    pub(crate) fn client_id(&self, who: &Who<'_>) -> Arc<str> {
        Arc::from(format!("{}.{}.{}", self.node, who.worker, who.conn))
    }

    fn member(&self, who: &Who<'_>) -> Member {
        Member {
            client: self.client_id(who),
            user: who.user.map(Arc::from),
            info: who.info.cloned(),
        }
    }

    /// `who` has subscribed to `topic`, whose options are `options`.
    pub(crate) fn join(&mut self, topic: &Arc<str>, who: &Who<'_>, options: &TopicOptions) {
        if options.presence == PresenceMode::Off {
            return;
        }
        let lists = options.presence == PresenceMode::Members;
        let member = (lists || options.presence_events).then(|| self.member(who));
        let reports = self.reports;
        let state = self.topics.entry(topic.clone()).or_default();
        state.connections += 1;
        state.dirty = reports;
        if let Some(user) = who.user {
            match state.users.get_mut(user) {
                Some(n) => *n += 1,
                None => {
                    state.users.insert(Arc::from(user), 1);
                }
            }
        }
        if lists && let Some(member) = &member {
            state.members.insert((who.worker, who.conn), member.clone());
        }
        if options.presence_events {
            state.note(member, true, options.presence_max_members);
            self.eventful.insert(topic.clone());
        }
        if reports {
            self.changed.insert(topic.clone());
        }
    }

    /// `who` has left `topic` (unsubscribed, or its connection ended).
    pub(crate) fn leave(&mut self, topic: &str, who: &Who<'_>, options: &TopicOptions) {
        if options.presence == PresenceMode::Off {
            return;
        }
        let Some(name) = self.topics.get_key_value(topic).map(|(k, _)| k.clone()) else {
            return;
        };
        // Unlisted members (counts only) are made for the event.
        let unlisted = options.presence_events.then(|| self.member(who));
        let reports = self.reports;
        if reports {
            self.changed.insert(name.clone());
        }
        if options.presence_events {
            self.eventful.insert(name);
        }
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.connections = state.connections.saturating_sub(1);
        state.dirty = reports;
        if let Some(user) = who.user
            && let Some(n) = state.users.get_mut(user)
        {
            *n -= 1;
            if *n == 0 {
                state.users.remove(user);
            }
        }
        let listed = state.members.remove(&(who.worker, who.conn));
        if options.presence_events {
            state.note(listed.or(unlisted), false, options.presence_max_members);
        }
        if state.is_idle() {
            self.topics.remove(topic);
        }
    }

    /// Topics held, and members listed over them (what the table holds).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let members = self.topics.values().map(|s| s.members.len()).sum();
        (self.topics.len(), members)
    }

    /// `topic`'s occupancy on the node.
    pub(crate) fn occupancy(&self, topic: &str) -> Occupancy {
        self.topics
            .get(topic)
            .map_or_else(Occupancy::default, TopicPresence::occupancy)
    }

    /// `topic`'s members on the node, at most `cap` of them.
    pub(crate) fn members(&self, topic: &str, cap: usize) -> Members {
        let Some(state) = self.topics.get(topic) else {
            return Members {
                occupancy: Occupancy::default(),
                list: Vec::new(),
                complete: true,
            };
        };
        let listed = state.members.len() as u64 == state.connections;
        let list: Vec<Member> = state.members.values().take(cap).cloned().collect();
        Members {
            occupancy: state.occupancy(),
            complete: listed && list.len() as u64 == state.connections,
            list,
        }
    }

    /// The topics with the most connections on the node, most first: at most `limit`.
    pub(crate) fn busiest(&self, limit: usize) -> Vec<(Arc<str>, Occupancy)> {
        let mut all: Vec<(Arc<str>, Occupancy)> = self
            .topics
            .iter()
            .filter(|(_, s)| s.connections > 0)
            .map(|(t, s)| (t.clone(), s.occupancy()))
            .collect();
        all.sort_unstable_by(|a, b| {
            b.1.connections
                .cmp(&a.1.connections)
                .then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(limit);
        all
    }

    /// The interval is over: each topic's event (joins and leaves, or counts past the
    /// cap), and the topics left with nothing are forgotten.
    pub(crate) fn take_events(
        &mut self,
        tick: u64,
        cap: impl Fn(&str) -> usize,
    ) -> Vec<(Arc<str>, Event)> {
        let mut events = Vec::new();
        let mut later = Vec::new();
        for topic in std::mem::take(&mut self.eventful) {
            let Some(state) = self.topics.get_mut(&topic) else {
                continue;
            };
            if state.overflowed && tick < state.next_push {
                // Counts for a large topic, not due yet: they wait (and stay current).
                later.push(topic);
                continue;
            }
            if state.overflowed {
                state.overflowed = false;
                let cap = cap(&topic).max(1) as u64;
                state.next_push = tick + state.connections.div_ceil(cap).max(1);
                events.push((topic.clone(), Event::Counts(state.occupancy())));
            } else if !state.joins.is_empty() || !state.leaves.is_empty() {
                let joins = std::mem::take(&mut state.joins);
                let leaves = std::mem::take(&mut state.leaves);
                events.push((topic.clone(), Event::Changes { joins, leaves }));
            }
            if state.is_idle() {
                self.topics.remove(&topic);
            }
        }
        self.eventful.extend(later);
        events
    }

    /// The topics changed since the last report (with `all`, every topic with
    /// subscribers), each with its occupancy and, where `listed` gives the topic's member
    /// cap (it lists members) and it has no more, its members; a topic with no subscriber
    /// left is reported with zero, then forgotten.
    pub(crate) fn report(
        &mut self,
        all: bool,
        listed: impl Fn(&str) -> Option<usize>,
    ) -> Vec<TopicReport> {
        let changed = std::mem::take(&mut self.changed);
        let topics: Vec<Arc<str>> = match all {
            true => self.topics.keys().cloned().collect(),
            false => changed.into_iter().collect(),
        };
        let mut report = Vec::new();
        for topic in topics {
            let Some(state) = self.topics.get_mut(&topic) else {
                continue;
            };
            if !(state.dirty || all && state.connections > 0) {
                continue;
            }
            state.dirty = false;
            let members = listed(&topic)
                .filter(|&cap| state.members.len() <= cap)
                .map(|_| state.members.values().cloned().collect());
            report.push(TopicReport {
                topic: topic.clone(),
                occupancy: state.occupancy(),
                members,
            });
            if state.is_idle() {
                self.topics.remove(&topic);
            }
        }
        report
    }
}

/// A presence event as its v1 push: `{"type":"presence","topic":..,"joins":[..],
/// "leaves":[..]}`, or `{"type":"occupancy","topic":..,"connections":..,"users":..}`.
pub(crate) fn event_json(topic: &str, event: &Event) -> String {
    match event {
        Event::Changes { joins, leaves } => {
            let mut out = String::with_capacity(64 + 96 * (joins.len() + leaves.len()));
            out.push_str("{\"type\":\"presence\",\"topic\":");
            out.push_str(&serde_json::to_string(topic).unwrap_or_default());
            out.push_str(",\"joins\":");
            members_json(joins, &mut out);
            out.push_str(",\"leaves\":");
            members_json(leaves, &mut out);
            out.push('}');
            out
        }
        Event::Counts(occupancy) => occupancy.push(topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn options(mode: PresenceMode, events: bool, cap: usize) -> TopicOptions {
        let config = Config {
            presence: mode,
            presence_events: events,
            presence_max_members: cap,
            ..Config::default()
        };
        config.options("t")
    }

    fn who(conn: usize, user: Option<&str>) -> Who<'_> {
        Who {
            worker: 0,
            conn: ConnId::new(conn, 1),
            user,
            info: None,
        }
    }

    #[test]
    fn occupancy_counts_connections_and_distinct_users() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Counts, false, 10);
        table.join(&t, &who(1, Some("alice")), &o);
        table.join(&t, &who(2, Some("alice")), &o);
        table.join(&t, &who(3, Some("bob")), &o);
        table.join(&t, &who(4, None), &o);
        assert_eq!(
            table.occupancy("t"),
            Occupancy {
                connections: 4,
                users: 2
            }
        );
        table.leave("t", &who(1, Some("alice")), &o);
        assert_eq!(
            table.occupancy("t").users,
            2,
            "alice still has a connection"
        );
        table.leave("t", &who(2, Some("alice")), &o);
        assert_eq!(
            table.occupancy("t"),
            Occupancy {
                connections: 2,
                users: 1
            }
        );
        // Counts only: no member list.
        let members = table.members("t", 10);
        assert!(members.list.is_empty());
        assert!(!members.complete);
    }

    #[test]
    fn presence_off_tracks_nothing() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Off, true, 10);
        table.join(&t, &who(1, Some("a")), &o);
        assert_eq!(table.occupancy("t"), Occupancy::default());
        assert!(table.take_events(1, |_| 3).is_empty());
        assert!(table.report(true, |_| None).is_empty());
    }

    #[test]
    fn members_are_listed_up_to_the_cap_and_say_when_the_list_is_not_all() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Members, false, 2);
        let info: Arc<str> = Arc::from(r#"{"name":"Al"}"#);
        let with_info = Who {
            info: Some(&info),
            ..who(1, Some("al"))
        };
        table.join(&t, &with_info, &o);
        let members = table.members("t", 2);
        assert!(members.complete);
        assert_eq!(members.list[0].client.as_ref(), "n.0.4294967297");
        let mut json = String::new();
        members_json(&members.list, &mut json);
        assert_eq!(
            json,
            r#"[{"client":"n.0.4294967297","user":"al","info":{"name":"Al"}}]"#
        );
        table.join(&t, &who(2, Some("b")), &o);
        table.join(&t, &who(3, Some("c")), &o);
        let members = table.members("t", 2);
        assert_eq!(members.list.len(), 2);
        assert!(!members.complete, "three members, two listed");
        assert_eq!(members.occupancy.connections, 3);
    }

    #[test]
    fn joins_and_leaves_of_an_interval_become_one_event_and_past_the_cap_counts() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Members, true, 3);
        table.join(&t, &who(1, Some("a")), &o);
        table.join(&t, &who(2, Some("b")), &o);
        table.join(&t, &who(3, Some("c")), &o);
        table.leave("t", &who(3, Some("c")), &o);
        let events = table.take_events(1, |_| 3);
        assert_eq!(events.len(), 1);
        let Event::Changes { joins, leaves } = &events[0].1 else {
            panic!("changes");
        };
        let users: Vec<_> = joins.iter().filter_map(|m| m.user.as_deref()).collect();
        assert_eq!(
            users.len(),
            2,
            "c joined and left within the interval: {users:?}"
        );
        assert!(leaves.is_empty());
        assert!(table.take_events(1, |_| 3).is_empty(), "nothing new");
        table.leave("t", &who(1, Some("a")), &o);
        let events = table.take_events(1, |_| 3);
        let Event::Changes { leaves, .. } = &events[0].1 else {
            panic!("changes");
        };
        assert_eq!(leaves[0].user.as_deref(), Some("a"));
        // Past the cap in one interval: counts instead.
        for c in 10..20 {
            table.join(&t, &who(c, Some("x")), &o);
        }
        let events = table.take_events(1, |_| 3);
        assert_eq!(
            events,
            vec![(
                t.clone(),
                Event::Counts(Occupancy {
                    connections: 11,
                    users: 2
                })
            )]
        );
        assert_eq!(
            event_json("t", &events[0].1),
            r#"{"connections":11,"topic":"t","type":"occupancy","users":2}"#
        );
    }

    #[test]
    fn a_topic_larger_than_the_cap_gets_counts_paced_by_its_size() {
        let mut table = PresenceTable::new(Arc::from("n"), false);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Members, true, 2);
        for c in 0..10 {
            table.join(&t, &who(c, None), &o);
        }
        let counts = |events: Vec<(Arc<str>, Event)>| -> Vec<u64> {
            events
                .into_iter()
                .map(|(_, e)| match e {
                    Event::Counts(o) => o.connections,
                    Event::Changes { .. } => panic!("no lists past the cap: {e:?}"),
                })
                .collect()
        };
        assert_eq!(counts(table.take_events(1, |_| 2)), [10]);
        // Ten subscribers, two a push: the next one five intervals later, current then.
        table.leave("t", &who(0, None), &o);
        for tick in 2..6 {
            assert!(table.take_events(tick, |_| 2).is_empty(), "tick {tick}");
        }
        table.leave("t", &who(1, None), &o);
        assert_eq!(counts(table.take_events(6, |_| 2)), [8]);
    }

    #[test]
    fn leaving_and_joining_again_within_an_interval_is_no_news() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Members, true, 10);
        table.join(&t, &who(1, Some("a")), &o);
        assert_eq!(table.take_events(1, |_| 3).len(), 1);
        table.leave("t", &who(1, Some("a")), &o);
        table.join(&t, &who(1, Some("a")), &o);
        assert!(
            table.take_events(1, |_| 3).is_empty(),
            "left and back: nothing to tell"
        );
        assert_eq!(table.occupancy("t").connections, 1);
    }

    #[test]
    fn a_topic_left_by_all_is_reported_once_with_zero_then_forgotten() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let t: Arc<str> = Arc::from("t");
        let o = options(PresenceMode::Counts, false, 10);
        table.join(&t, &who(1, Some("a")), &o);
        assert_eq!(table.report(false, |_| None).len(), 1);
        assert!(table.report(false, |_| None).is_empty(), "unchanged");
        assert_eq!(table.report(true, |_| None).len(), 1, "all: still there");
        table.leave("t", &who(1, Some("a")), &o);
        let report = table.report(false, |_| None);
        assert_eq!(report[0].occupancy, Occupancy::default());
        assert!(table.topics.is_empty(), "forgotten");
        assert!(table.busiest(10).is_empty());
    }

    #[test]
    fn the_busiest_topics_come_first() {
        let mut table = PresenceTable::new(Arc::from("n"), true);
        let o = options(PresenceMode::Counts, false, 10);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        table.join(&a, &who(1, None), &o);
        table.join(&b, &who(2, None), &o);
        table.join(&b, &who(3, None), &o);
        let busiest = table.busiest(1);
        assert_eq!(busiest.len(), 1);
        assert_eq!((busiest[0].0.as_ref(), busiest[0].1.connections), ("b", 2));
    }
}
