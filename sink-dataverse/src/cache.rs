//! What the sink knows of the contacts it wrote: for each customer, the row as Dataverse answered
//! the sink's last read or write of it (etag and the guard's columns), in a bounded LRU map.
//!
//! Dataverse's execution budget counts reads like writes, so a read before every write halves
//! what the sink can do. With this, an update of a known contact goes out as a write conditional
//! on the etag the sink last saw, and a customer the sink has never seen is created with
//! `If-None-Match: *`; a read happens only when such a write loses (412). The cache is never
//! trusted to be right, only to be usually right: every write it drives carries a precondition,
//! so a stale entry (another sink instance wrote the contact, or a person edited it) costs one
//! 412, a read and a second write, never a wrong row. An entry is forgotten whenever its row may
//! have changed without the sink seeing the answer (a 412, a timeout, a 5xx).
//!
//! Whether to presume that an unknown customer is new is learned: a replay or a restart meets
//! contacts that exist but are not cached, and there a create-only write is a wasted request.
//! The last 64 lookups of unknown customers are remembered (did the contact exist?); when most of
//! them did, unknown customers are read first instead.

use std::{
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;

use crate::guard::StoredRow;

/// The contacts the sink last read or wrote. Keys compare without regard to case, as Dataverse
/// compares text keys.
#[derive(Debug)]
pub struct KnownRows {
    rows: Option<Mutex<LruCache<String, StoredRow>>>,
    /// One bit per recent lookup of an unknown customer, newest lowest: 1 when the contact
    /// existed.
    existed: AtomicU64,
}

impl KnownRows {
    /// A cache of at most `capacity` contacts; 0 turns it off (every change reads first).
    pub fn new(capacity: usize) -> Self {
        KnownRows {
            rows: NonZeroUsize::new(capacity).map(|n| Mutex::new(LruCache::new(n))),
            existed: AtomicU64::new(0),
        }
    }

    fn rows(&self) -> Option<std::sync::MutexGuard<'_, LruCache<String, StoredRow>>> {
        self.rows
            .as_ref()
            .map(|rows| rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.rows.is_some()
    }

    /// The row as the sink last saw it, if it is remembered.
    pub fn get(&self, customer_id: &str) -> Option<StoredRow> {
        self.rows()?.get(&customer_id.to_lowercase()).cloned()
    }

    /// Remembers the row as Dataverse just answered it. The mapped values are dropped from rows
    /// that record event ids: the guard needs them only for contacts stored before ids were
    /// recorded.
    pub fn put(&self, customer_id: &str, mut row: StoredRow) {
        if let Some(mut rows) = self.rows() {
            if !row.event_ids.is_empty() {
                row.values = Default::default();
            }
            rows.put(customer_id.to_lowercase(), row);
        }
    }

    /// Forgets the row: it may have changed without the sink seeing how.
    pub fn forget(&self, customer_id: &str) {
        if let Some(mut rows) = self.rows() {
            rows.pop(&customer_id.to_lowercase());
        }
    }

    /// Contacts remembered now.
    pub fn len(&self) -> usize {
        self.rows().map_or(0, |rows| rows.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an unknown customer should be presumed new (written create-only, no read first).
    pub fn presume_new(&self) -> bool {
        self.enabled() && self.existed.load(Ordering::Relaxed).count_ones() < 32
    }

    /// Records whether an unknown customer's contact turned out to exist.
    pub fn learned(&self, existed: bool) {
        // Lost updates between racing callers only blur a heuristic.
        let bits = self.existed.load(Ordering::Relaxed);
        self.existed
            .store((bits << 1) | u64::from(existed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    fn row(etag: &str, ids: &[&str]) -> StoredRow {
        let mut values = Map::new();
        values.insert("firstname".into(), Value::String("Ada".into()));
        StoredRow {
            etag: etag.into(),
            created: Some(10),
            rank: Some(1),
            event_ids: ids.iter().map(|s| s.to_string()).collect(),
            deleted: false,
            values,
        }
    }

    #[test]
    fn remembers_forgets_and_ignores_case() {
        let known = KnownRows::new(10);
        assert_eq!(known.get("cus_A"), None);
        known.put("cus_A", row("W/\"1\"", &["evt_1"]));
        let got = known.get("CUS_a").expect("one contact whatever the case");
        assert_eq!(got.etag, "W/\"1\"");
        assert!(got.values.is_empty(), "values are dropped when ids are recorded");
        known.put("cus_b", row("W/\"2\"", &[]));
        assert_eq!(
            known.get("cus_b").unwrap().values.len(),
            1,
            "a contact without recorded ids keeps its values for the guard"
        );
        known.forget("CUS_A");
        assert_eq!(known.get("cus_a"), None);
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn is_bounded_by_its_capacity_least_recently_used_first() {
        let known = KnownRows::new(2);
        known.put("a", row("1", &["e"]));
        known.put("b", row("2", &["e"]));
        assert!(known.get("a").is_some(), "a is now the most recently used");
        known.put("c", row("3", &["e"]));
        assert_eq!(known.len(), 2);
        assert!(known.get("b").is_none(), "b was evicted");
        assert!(known.get("a").is_some() && known.get("c").is_some());
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let known = KnownRows::new(0);
        known.put("a", row("1", &["e"]));
        assert_eq!(known.get("a"), None);
        assert!(!known.presume_new(), "without a cache every change reads first");
    }

    #[test]
    fn presumes_new_customers_until_most_unknown_ones_existed() {
        let known = KnownRows::new(10);
        assert!(known.presume_new(), "a fresh sink presumes new customers");
        for _ in 0..40 {
            known.learned(true);
        }
        assert!(!known.presume_new(), "a replay: unknown customers are read first");
        for _ in 0..33 {
            known.learned(false);
        }
        assert!(known.presume_new(), "new customers again");
    }
}
