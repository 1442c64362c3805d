//! Which offset a consumer may commit when records finish out of order.
//!
//! Records of a partition start in offset order but may finish in any order (concurrent writes,
//! retries). A committed offset says "everything before this is done", so it may never pass a
//! record that is still in flight: the committable offset of a partition is its lowest unfinished
//! offset, or one past the highest started offset when nothing is in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Per-partition bookkeeping of started and finished offsets. Pure: no Kafka calls.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Debug, Default, Clone)]
struct Partition {
    /// Started and not yet finished.
    in_flight: BTreeSet<i64>,
    /// The highest offset ever started; everything at or below it was handed out.
    highest_started: Option<i64>,
    /// The last offset returned by `take_committable`, to report only changes.
    last_taken: Option<i64>,
}

impl Partition {
    fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(lowest) => Some(*lowest),
            None => self.highest_started.map(|h| h + 1),
        }
    }
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record was handed to processing. The consumer delivers a partition's offsets in
    /// increasing order; an offset at or below one already started means its position moved back
    /// (an out-of-range reset to earliest, a seek). The tracker then follows the position: what
    /// was started at or after it will be delivered again and counts only then, so the commit
    /// point never stays at the old high mark past records not yet re-read.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self.partitions.entry((topic.to_string(), partition)).or_default();
        if p.highest_started.is_some_and(|h| offset <= h) {
            p.in_flight.retain(|o| *o < offset);
        }
        p.in_flight.insert(offset);
        p.highest_started = Some(offset);
    }

    /// A record is finished: written downstream, or dead-lettered with its reason.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            p.in_flight.remove(&offset);
        }
    }

    /// The offset to commit for a partition (the next one to read), if any record was started.
    pub fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .and_then(Partition::committable)
    }

    /// Records of one partition started and not finished.
    pub fn in_flight_in(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map_or(0, |p| p.in_flight.len())
    }

    /// Records started and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Committable offsets that changed since the last call, ordered by topic and partition.
    pub fn take_committable(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = BTreeMap::new();
        for ((topic, partition), p) in &mut self.partitions {
            if let Some(offset) = p.committable()
                && p.last_taken != Some(offset)
            {
                p.last_taken = Some(offset);
                out.insert((topic.clone(), *partition), offset);
            }
        }
        out.into_iter().map(|((t, p), o)| (t, p, o)).collect()
    }

    /// Forgets a partition that was revoked; records of it still in flight no longer count.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_stop_at_the_first_gap() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.start("a", 0, o);
        }
        assert_eq!(t.committable("a", 0), Some(10));
        t.finish("a", 0, 11);
        t.finish("a", 0, 12);
        assert_eq!(
            t.committable("a", 0),
            Some(10),
            "11 and 12 are done but 10 is not"
        );
        t.finish("a", 0, 10);
        assert_eq!(t.committable("a", 0), Some(13));
        t.finish("a", 0, 14);
        t.finish("a", 0, 13);
        assert_eq!(t.committable("a", 0), Some(15), "all done: commit past the last");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_changes_reported_once() {
        let mut t = OffsetTracker::new();
        t.start("a", 0, 0);
        t.start("a", 1, 5);
        t.finish("a", 1, 5);
        assert_eq!(t.take_committable(), vec![("a".into(), 0, 0), ("a".into(), 1, 6)]);
        assert!(t.take_committable().is_empty());
        t.finish("a", 0, 0);
        assert_eq!(t.take_committable(), vec![("a".into(), 0, 1)]);
        t.revoke("a", 0);
        assert_eq!(t.committable("a", 0), None);
        assert_eq!(t.committable("b", 0), None);
    }

    #[test]
    fn a_position_moved_back_is_followed_not_committed_past() {
        let mut t = OffsetTracker::new();
        for o in 0..10 {
            t.start("a", 0, o);
            t.finish("a", 0, o);
        }
        assert_eq!(t.committable("a", 0), Some(10));
        // The consumer's position is reset to the earliest offset (say the log was truncated and
        // refilled): records are read again from 0.
        t.start("a", 0, 0);
        assert_eq!(t.committable("a", 0), Some(0));
        t.finish("a", 0, 0);
        assert_eq!(
            t.committable("a", 0),
            Some(1),
            "the commit follows the re-read records, not the old high mark"
        );
        t.start("a", 0, 1);
        t.start("a", 0, 2);
        t.finish("a", 0, 2);
        assert_eq!(t.committable("a", 0), Some(1));
        t.finish("a", 0, 1);
        assert_eq!(t.committable("a", 0), Some(3));
    }

    #[test]
    fn moving_back_drops_in_flight_records_at_or_after_the_new_position() {
        let mut t = OffsetTracker::new();
        for o in 0..6 {
            t.start("a", 0, o);
        }
        t.finish("a", 0, 0);
        // Seek back to 3 while 1..=5 are in hand: 3..=5 will be delivered again.
        t.start("a", 0, 3);
        assert_eq!(t.in_flight(), 3, "1, 2 and the new 3");
        t.finish("a", 0, 1);
        t.finish("a", 0, 2);
        assert_eq!(t.committable("a", 0), Some(3));
        t.finish("a", 0, 3);
        assert_eq!(
            t.committable("a", 0),
            Some(4),
            "not 6: 4 and 5 are not re-read yet"
        );
    }

    proptest! {
        /// Whatever order records finish in, the committable offset never passes an unfinished
        /// record, and once all are finished it is one past the last.
        #[test]
        fn never_commits_past_a_gap(n in 1usize..60, order in proptest::collection::vec(any::<proptest::sample::Index>(), 60), base in 0i64..1000) {
            let mut t = OffsetTracker::new();
            let mut unfinished: Vec<i64> = (0..n as i64).map(|i| base + i).collect();
            for o in &unfinished {
                t.start("t", 3, *o);
            }
            for idx in order.iter().take(n) {
                let pick = idx.index(unfinished.len());
                let done = unfinished.swap_remove(pick);
                t.finish("t", 3, done);
                let c = t.committable("t", 3).unwrap();
                if let Some(lowest) = unfinished.iter().min() {
                    prop_assert!(c <= *lowest, "committable {c} passes unfinished {lowest}");
                    prop_assert_eq!(c, *lowest);
                } else {
                    prop_assert_eq!(c, base + n as i64);
                }
            }
        }
    }
}
