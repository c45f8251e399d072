//! Occupied and vacated events: when a topic gets its first subscriber, and when it has
//! had none for a grace window. The application hears of them through a webhook and reads
//! them back by offset (`GET /events`).
//!
//! Here, without a clock of their own (time is passed in): the event ([`OccupancyEvent`])
//! and its JSON, the node-local machine that decides them without a broker
//! ([`LocalOccupancy`]), and the node's bounded log of them ([`EventLog`]) with offsets
//! shaped like Redis stream ids, so a reader's `since` works the same with and without a
//! broker. With Redis the same decisions are made by Lua scripts on the cluster's state
//! (`events::scripts`), which this machine mirrors for one node.
//!
//! Why a grace window: a client that reconnects (a flapping network, a rolling restart
//! that moves every client to another node) leaves its topics for a moment. A vacated
//! event for that, and an occupied one a second later, would storm the application's
//! backend exactly when the cluster is busiest; a topic that comes back within the grace
//! fires nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::offset::Offset;

/// What happened to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// Its first subscriber anywhere (and it was not occupied already).
    Occupied,
    /// It has had no subscriber anywhere for the grace window.
    Vacated,
}

impl EventKind {
    /// The name in the event's JSON and in the Redis stream.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Occupied => "occupied",
            Self::Vacated => "vacated",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "occupied" => Some(Self::Occupied),
            "vacated" => Some(Self::Vacated),
            _ => None,
        }
    }
}

/// One event, as posted to the webhook and read from `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OccupancyEvent {
    pub(crate) kind: EventKind,
    pub(crate) topic: Arc<str>,
    /// Where it sits in the event stream (`<ms>-<seq>`).
    pub(crate) offset: Offset,
    /// When it was decided, in milliseconds since the Unix epoch (Redis's clock with a
    /// broker).
    pub(crate) time_ms: u64,
}

impl OccupancyEvent {
    /// `{"event":"occupied","topic":"chat:1","offset":"1732000000000-0","time":1732000000000}`
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "event": self.kind.as_str(),
            "topic": &*self.topic,
            "offset": self.offset.to_string(),
            "time": self.time_ms,
        })
    }
}

/// Without a broker: which topics are occupied on this node, and which are waiting out
/// their grace before they are vacated. Input through [`LocalOccupancy::handle_present`]
/// (whether the node has subscribers of a topic now), output through
/// [`LocalOccupancy::poll_vacated`] once [`LocalOccupancy::poll_timeout`] has passed.
pub(crate) struct LocalOccupancy {
    grace: Duration,
    /// Occupied topics; with the deadline of their vacate while they have no subscriber.
    occupied: HashMap<Arc<str>, Option<Instant>>,
    /// Vacates in deadline order (the grace is fixed, so in the order they were
    /// scheduled); an entry whose topic came back, or was scheduled again, is skipped.
    vacating: VecDeque<(Instant, Arc<str>)>,
}

impl LocalOccupancy {
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            occupied: HashMap::new(),
            vacating: VecDeque::new(),
        }
    }

    /// The node has (`present`) or no longer has subscribers of `topic`, as of `now`:
    /// [`EventKind::Occupied`] if that makes the topic occupied. A topic that lost its
    /// last subscriber is vacated after the grace, unless it comes back first.
    pub(crate) fn handle_present(
        &mut self,
        topic: &Arc<str>,
        present: bool,
        now: Instant,
    ) -> Option<EventKind> {
        match (self.occupied.get_mut(topic), present) {
            (None, true) => {
                self.occupied.insert(topic.clone(), None);
                Some(EventKind::Occupied)
            }
            (Some(vacate), true) => {
                *vacate = None;
                None
            }
            (Some(vacate), false) if vacate.is_none() => {
                let deadline = now + self.grace;
                *vacate = Some(deadline);
                self.vacating.push_back((deadline, topic.clone()));
                None
            }
            (Some(_), false) | (None, false) => None,
        }
    }

    /// The next topic whose grace has run out by `now` with no subscriber back: it is
    /// vacated (no longer occupied).
    pub(crate) fn poll_vacated(&mut self, now: Instant) -> Option<Arc<str>> {
        while let Some((deadline, _)) = self.vacating.front() {
            if *deadline > now {
                return None;
            }
            let (deadline, topic) = self.vacating.pop_front()?;
            if self.occupied.get(&topic) == Some(&Some(deadline)) {
                self.occupied.remove(&topic);
                return Some(topic);
            }
        }
        None
    }

    /// When [`LocalOccupancy::poll_vacated`] may next have something.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.vacating.front().map(|(deadline, _)| *deadline)
    }

    /// Topics occupied now (vacating ones included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.occupied.len()
    }
}

/// The node's own log of events (without a broker): the newest `cap`, with offsets that
/// grow like a Redis stream's (`<ms>-<seq>`), so `GET /events?since=` reads it the same
/// way it reads the Redis stream.
pub(crate) struct EventLog {
    cap: usize,
    entries: VecDeque<OccupancyEvent>,
    last: Offset,
}

impl EventLog {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: VecDeque::new(),
            last: Offset::ZERO,
        }
    }

    /// Logs an event decided at `time_ms` (its offset follows the last one's even if the
    /// clock went back), dropping the oldest past the cap.
    pub(crate) fn append(
        &mut self,
        kind: EventKind,
        topic: Arc<str>,
        time_ms: u64,
    ) -> OccupancyEvent {
        self.last = if time_ms > self.last.0 {
            Offset(time_ms, 0)
        } else {
            Offset(self.last.0, self.last.1 + 1)
        };
        let event = OccupancyEvent {
            kind,
            topic,
            offset: self.last,
            time_ms,
        };
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(event.clone());
        event
    }

    /// At most `limit` events after `since`, oldest first.
    pub(crate) fn read(&self, since: Offset, limit: usize) -> Vec<OccupancyEvent> {
        let start = self.entries.partition_point(|e| e.offset <= since);
        self.entries.range(start..).take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    fn topic(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_topic_is_occupied_once_and_vacated_after_the_grace() {
        let t0 = Instant::now();
        let mut occupancy = LocalOccupancy::new(GRACE);
        let t = topic("t");
        assert_eq!(
            occupancy.handle_present(&t, true, t0),
            Some(EventKind::Occupied)
        );
        assert_eq!(occupancy.handle_present(&t, true, t0), None, "already");
        assert_eq!(occupancy.handle_present(&t, false, t0), None);
        assert_eq!(occupancy.poll_timeout(), Some(t0 + GRACE));
        let almost = t0 + GRACE - Duration::from_millis(1);
        assert_eq!(occupancy.poll_vacated(almost), None, "within the grace");
        assert_eq!(occupancy.poll_vacated(t0 + GRACE), Some(t.clone()));
        assert_eq!(occupancy.poll_vacated(t0 + GRACE * 2), None, "once");
        assert_eq!(occupancy.len(), 0);
        assert_eq!(
            occupancy.handle_present(&t, true, t0 + GRACE * 2),
            Some(EventKind::Occupied),
            "occupied again after it was vacated"
        );
    }

    #[test]
    fn a_topic_back_within_the_grace_fires_nothing() {
        let t0 = Instant::now();
        let mut occupancy = LocalOccupancy::new(GRACE);
        let t = topic("t");
        let _ = occupancy.handle_present(&t, true, t0);
        // A flapping client: gone, back, gone again, back again, each within the grace.
        let mut now = t0;
        for _ in 0..10 {
            assert_eq!(occupancy.handle_present(&t, false, now), None);
            now += Duration::from_secs(1);
            assert_eq!(occupancy.handle_present(&t, true, now), None);
        }
        assert_eq!(occupancy.poll_vacated(now + GRACE * 10), None);
        // The last leave counts from its own time, not the first one's.
        let _ = occupancy.handle_present(&t, false, now);
        assert_eq!(
            occupancy.poll_vacated(now + GRACE - Duration::from_millis(1)),
            None
        );
        assert_eq!(occupancy.poll_vacated(now + GRACE), Some(t));
    }

    #[test]
    fn a_leave_of_a_topic_never_occupied_fires_nothing() {
        let t0 = Instant::now();
        let mut occupancy = LocalOccupancy::new(GRACE);
        assert_eq!(occupancy.handle_present(&topic("t"), false, t0), None);
        assert_eq!(occupancy.poll_timeout(), None);
        assert_eq!(occupancy.poll_vacated(t0 + GRACE), None);
    }

    #[test]
    fn vacates_come_in_deadline_order_over_many_topics() {
        let t0 = Instant::now();
        let mut occupancy = LocalOccupancy::new(GRACE);
        let topics: Vec<Arc<str>> = (0..5).map(|i| topic(&format!("t{i}"))).collect();
        for (i, t) in topics.iter().enumerate() {
            let _ = occupancy.handle_present(t, true, t0);
            let _ = occupancy.handle_present(t, false, t0 + Duration::from_secs(i as u64));
        }
        // t2 comes back.
        let _ = occupancy.handle_present(&topics[2], true, t0 + Duration::from_secs(5));
        let mut vacated = Vec::new();
        while let Some(t) = occupancy.poll_vacated(t0 + Duration::from_secs(60)) {
            vacated.push(t);
        }
        let names: Vec<&str> = vacated.iter().map(|t| &**t).collect();
        assert_eq!(names, ["t0", "t1", "t3", "t4"]);
        assert_eq!(occupancy.len(), 1);
    }

    #[test]
    fn the_log_keeps_the_newest_with_growing_offsets_and_reads_after_an_offset() {
        let mut log = EventLog::new(3);
        let a = log.append(EventKind::Occupied, topic("a"), 1000);
        let b = log.append(EventKind::Occupied, topic("b"), 1000);
        let c = log.append(EventKind::Vacated, topic("a"), 999);
        let d = log.append(EventKind::Occupied, topic("c"), 2000);
        assert_eq!(a.offset, Offset(1000, 0));
        assert_eq!(b.offset, Offset(1000, 1));
        assert_eq!(c.offset, Offset(1000, 2), "a clock that went back");
        assert_eq!(d.offset, Offset(2000, 0));
        let all = log.read(Offset::ZERO, 10);
        assert_eq!(
            all,
            vec![b.clone(), c.clone(), d.clone()],
            "the oldest dropped"
        );
        assert_eq!(log.read(b.offset, 1), vec![c]);
        assert_eq!(log.read(d.offset, 10), vec![]);
        assert_eq!(
            d.to_json(),
            serde_json::json!({"event":"occupied","topic":"c","offset":"2000-0","time":2000})
        );
    }
}
