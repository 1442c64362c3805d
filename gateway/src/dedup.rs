//! Recently accepted event ids, so a redelivery is answered 200 without being produced again, and
//! single-flight for the same id arriving twice at once. Used by [`http`](crate::http) around the
//! write to the [`publish`](crate::publish).
//!
//! Bounded in count and in time: the oldest id goes first when full, and ids expire after the TTL.
//! It is an optimisation, not the guarantee: downstream stays idempotent for every duplicate this
//! cannot see (after a restart, across instances, after expiry).

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// What to do with an event id.
#[derive(Debug)]
pub enum Admission {
    /// Accepted recently: answer 200 without writing.
    Duplicate,
    /// Nobody is writing this id: write it, then call [`Leader::accepted`].
    Leader(Leader),
    /// Another request is writing this id right now: wait for it (see [`Follower::wait`]), then
    /// ask again.
    Follower(Follower),
}

/// The cache. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Dedup {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Most ids remembered; 0 turns the memory off (single-flight still applies).
    capacity: usize,
    /// How long an id is remembered.
    ttl: Duration,
    /// id → when it was accepted.
    accepted: HashMap<String, Instant>,
    /// Acceptance order, for eviction. An entry whose time differs from the map's is stale (the id
    /// expired and was accepted again) and is skipped.
    order: VecDeque<(String, Instant)>,
    /// Ids being written now; dropping the sender wakes the followers.
    in_flight: HashMap<String, watch::Sender<()>>,
}

impl Dedup {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Dedup {
            inner: Arc::new(Mutex::new(Inner {
                capacity,
                ttl,
                accepted: HashMap::new(),
                order: VecDeque::new(),
                in_flight: HashMap::new(),
            })),
        }
    }

    /// Decides what a request for `id` does, at time `now`.
    pub fn admit(&self, id: &str, now: Instant) -> Admission {
        let mut inner = self.lock();
        inner.expire(now);
        if inner.accepted.contains_key(id) {
            return Admission::Duplicate;
        }
        match inner.in_flight.entry(id.to_string()) {
            Entry::Occupied(writer) => Admission::Follower(Follower {
                done: writer.get().subscribe(),
            }),
            Entry::Vacant(slot) => {
                let (tx, _) = watch::channel(());
                slot.insert(tx);
                Admission::Leader(Leader {
                    dedup: self.clone(),
                    id: id.to_string(),
                    accepted: false,
                })
            }
        }
    }

    /// How many ids are remembered now (expired ones included until the next call).
    pub fn len(&self) -> usize {
        self.lock().accepted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain collections that every method leaves consistent before it can
        // panic, so a poisoned lock still holds usable data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            if self.accepted.get(id) == Some(at) {
                self.accepted.remove(id);
            }
            self.order.pop_front();
        }
    }

    fn remember(&mut self, id: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.expire(now);
        while self.accepted.len() >= self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.accepted.get(&old) == Some(&at) {
                self.accepted.remove(&old);
            }
        }
        self.accepted.insert(id.to_string(), now);
        self.order.push_back((id.to_string(), now));
    }
}

/// The one request writing an id. Dropping it without [`Leader::accepted`] (failure, timeout,
/// cancellation) lets a waiting duplicate take over.
#[derive(Debug)]
pub struct Leader {
    dedup: Dedup,
    id: String,
    accepted: bool,
}

impl Leader {
    /// Records that the write was acknowledged; later deliveries of the id are duplicates.
    pub fn accepted(mut self, now: Instant) {
        self.accepted = true;
        let mut inner = self.dedup.lock();
        inner.remember(&self.id, now);
        // Drop (below) removes the in-flight entry and wakes followers, who then see the id.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut inner = self.dedup.lock();
        inner.in_flight.remove(&self.id);
    }
}

/// A request waiting for another one writing the same id.
#[derive(Debug)]
pub struct Follower {
    done: watch::Receiver<()>,
}

impl Follower {
    /// Resolves when the leader finished, either way.
    pub async fn wait(mut self) {
        // The leader never sends; `changed` returns an error exactly when its sender is dropped.
        while self.done.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(a: Admission) -> Leader {
        match a {
            Admission::Leader(l) => l,
            other => panic!("expected to lead, got {other:?}"),
        }
    }

    #[test]
    fn accepted_ids_are_duplicates_until_they_expire() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        leader(d.admit("evt_1", t0)).accepted(t0);
        assert!(matches!(d.admit("evt_1", t0), Admission::Duplicate));
        assert!(matches!(
            d.admit("evt_1", t0 + Duration::from_secs(59)),
            Admission::Duplicate
        ));
        let later = t0 + Duration::from_secs(60);
        let l = leader(d.admit("evt_1", later));
        assert!(d.is_empty());
        l.accepted(later);
        assert!(matches!(d.admit("evt_1", later), Admission::Duplicate));
        // The stale order entry from t0 must not evict the re-accepted id.
        assert!(matches!(
            d.admit("evt_1", later + Duration::from_secs(30)),
            Admission::Duplicate
        ));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn failed_writes_are_not_remembered() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        drop(leader(d.admit("evt_1", t0)));
        leader(d.admit("evt_1", t0));
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let d = Dedup::new(3, Duration::from_secs(600));
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            let t = t0 + Duration::from_secs(i as u64);
            leader(d.admit(id, t)).accepted(t);
        }
        assert_eq!(d.len(), 3);
        let t = t0 + Duration::from_secs(10);
        assert!(matches!(d.admit("a", t), Admission::Leader(_)));
        for id in ["b", "c", "d"] {
            assert!(matches!(d.admit(id, t), Admission::Duplicate), "{id}");
        }
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let d = Dedup::new(0, Duration::from_secs(600));
        let t0 = Instant::now();
        leader(d.admit("a", t0)).accepted(t0);
        assert!(matches!(d.admit("a", t0), Admission::Leader(_)));
    }

    #[test]
    fn memory_stays_bounded_under_churn() {
        let d = Dedup::new(100, Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_millis(i);
            leader(d.admit(&format!("evt_{i}"), t)).accepted(t);
            let inner = d.lock();
            assert!(inner.accepted.len() <= 100);
            assert!(inner.order.len() <= 101);
        }
    }

    #[tokio::test]
    async fn concurrent_duplicates_wait_for_the_writer() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let first = leader(d.admit("evt_1", t0));
        let Admission::Follower(second) = d.admit("evt_1", t0) else {
            panic!("a concurrent duplicate must wait");
        };
        let Admission::Follower(third) = d.admit("evt_1", t0) else {
            panic!("a concurrent duplicate must wait");
        };
        let waiting = tokio::spawn(async move {
            second.wait().await;
        });
        first.accepted(t0);
        waiting.await.unwrap();
        third.wait().await;
        assert!(matches!(d.admit("evt_1", t0), Admission::Duplicate));
    }

    #[tokio::test]
    async fn a_failed_writer_hands_over_to_a_waiter() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let first = leader(d.admit("evt_1", t0));
        let Admission::Follower(second) = d.admit("evt_1", t0) else {
            panic!("a concurrent duplicate must wait");
        };
        drop(first);
        second.wait().await;
        leader(d.admit("evt_1", t0));
    }
}
