//! The write loop of one customer change: find out what the contact holds, let the
//! [`guard`](crate::guard) decide, write conditionally; on a lost race read and decide again.
//! What the contact holds comes from the sink's own last read or write of it when it remembers
//! one ([`KnownRows`]), and is otherwise read, or, for a customer presumed new, taken to be
//! nothing (the write is then create-only). Around it, the retry policy: transient failures are
//! retried with capped, jittered backoff until they succeed or the work is cancelled (revoke,
//! shutdown deadline), never skipped; refusals are handed back for the dead-letter topic.

use std::future::Future;

use common::{
    consume::Abandoned,
    retry::{self, Retry, Stopped, Verdict},
};
use schemas::Customer;

use crate::{
    cache::KnownRows,
    error::WriteError,
    guard::{Decision, Outcome, StoredRow, Write, decide},
    mapping::Columns,
    metrics::{Lookup, Metrics},
};

/// How many lost races in a row before backing off like any transient failure.
const MAX_RACES: u32 = 10;

/// Contacts as the write loop sees them.
pub trait Contacts: Send + Sync {
    /// The contact with this customer id, if any.
    fn read(&self, customer_id: &str) -> impl Future<Output = Result<Option<StoredRow>, WriteError>> + Send;
    /// Applies a conditional write; `WriteError::Conflict` when the precondition failed. Returns
    /// the row as Dataverse answered it after the write, when it did (`None` after a delete, or
    /// when the answer carried no row).
    fn write(
        &self,
        customer_id: &str,
        write: &Write,
    ) -> impl Future<Output = Result<Option<StoredRow>, WriteError>> + Send;
}

/// Where a pass's view of the contact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Read from Dataverse just now.
    Read,
    /// The sink's own last read or write.
    Known,
    /// Not known; presumed not to exist.
    Presumed,
}

/// One pass: decide on what the sink knows of the contact (or read it), write; on a lost race,
/// read and decide again. A conflict whose re-read leads to exactly the write that was refused
/// was not a race (Dataverse refused for another reason, e.g. a duplicate on another key): it is
/// returned as a refusal.
pub async fn apply_once<C: Contacts>(
    contacts: &C,
    known: &KnownRows,
    columns: &Columns,
    change: &Customer,
    metrics: &Metrics,
) -> Result<Outcome, WriteError> {
    let id = change.customer_id.as_str();
    let (mut view, lookup) = match known.get(id) {
        Some(row) => (Some((Some(row), Source::Known)), Lookup::Hit),
        None if known.presume_new() => (Some((None, Source::Presumed)), Lookup::PresumedNew),
        None => (None, Lookup::Read),
    };
    metrics.lookup(lookup, known.len());
    let mut last: Option<(Write, WriteError)> = None;
    for _ in 0..MAX_RACES {
        let (stored, source) = match view.take() {
            Some(view) => view,
            None => {
                metrics.read();
                let stored = contacts.read(id).await?;
                if lookup != Lookup::Hit && last.is_none() {
                    known.learned(stored.is_some());
                }
                match &stored {
                    Some(row) => known.put(id, row.clone()),
                    None => known.forget(id),
                }
                (stored, Source::Read)
            }
        };
        let write = match decide(columns, change, stored.as_ref()) {
            // Only a row read says there is nothing to do for a contact that may exist.
            Decision::Skip(_) if source == Source::Presumed => continue,
            Decision::Skip(outcome) => return Ok(outcome),
            Decision::Write(write) => write,
        };
        if source == Source::Read
            && let Some((
                previous,
                WriteError::Conflict {
                    status,
                    code,
                    message,
                },
            )) = &last
            && *previous == write
        {
            return Err(WriteError::Rejected {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            });
        }
        match contacts.write(id, &write).await {
            Ok(after) => {
                if source == Source::Presumed {
                    known.learned(false);
                }
                match after {
                    Some(row) => known.put(id, row),
                    None => known.forget(id),
                }
                if write.tie {
                    metrics.same_second_tie();
                    tracing::warn!(
                        customer_id = %change.customer_id,
                        event_id = %change.source_event_id,
                        created = change.source_event_created,
                        "two customer.updated events of the same second: applied in partition order; check this contact against Stripe if they disagree"
                    );
                }
                return Ok(write.outcome);
            }
            Err(conflict @ WriteError::Conflict { .. }) => {
                known.forget(id);
                if source == Source::Presumed {
                    known.learned(true);
                }
                match source {
                    Source::Read => {
                        metrics.conflict();
                        tracing::debug!(error = %conflict, "lost a race for the contact; reading it again");
                    }
                    Source::Known => {
                        metrics.conflict();
                        tracing::debug!(error = %conflict, "the contact changed since the sink last saw it; reading it");
                    }
                    Source::Presumed => {
                        tracing::debug!(error = %conflict, "the customer presumed new has a contact; reading it");
                    }
                }
                last = Some((write, conflict));
            }
            // A 429 means the write did not happen: what the sink knows still holds.
            Err(e @ WriteError::Throttled { .. }) => return Err(e),
            // A timeout or a server error may have applied the write.
            Err(e) => {
                known.forget(id);
                return Err(e);
            }
        }
    }
    Err(WriteError::transient(
        "contended",
        format!("the contact changed under {MAX_RACES} writes in a row"),
    ))
}

/// How a change finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Applied or skipped by the guard.
    Done(Outcome),
    /// Refused by Dataverse (`WriteError::Rejected`): dead-letter it. `attempts` counts passes.
    Refused { error: WriteError, attempts: u32 },
}

/// Applies `change` until it is finished, retrying transient failures; `Err(Abandoned)` when
/// `retry.cancel` fires first. Throttling already paused every writer for `Retry-After`, so a
/// throttled attempt is tried again at once (the next request waits for the pause).
pub async fn apply<C: Contacts>(
    contacts: &C,
    known: &KnownRows,
    columns: &Columns,
    change: &Customer,
    metrics: &Metrics,
    retry: Retry<'_>,
) -> Result<Finished, Abandoned> {
    let result = retry::until_cancelled(retry, |_| async {
        apply_once(contacts, known, columns, change, metrics)
            .await
            .map_err(|error| match error {
                e @ WriteError::Rejected { .. } => Verdict::GiveUp(e),
                e @ WriteError::Throttled { .. } => {
                    metrics.retried(e.class());
                    Verdict::RetryNow(e)
                }
                e => {
                    metrics.retried(e.class());
                    Verdict::Retry(e)
                }
            })
    })
    .await;
    match result {
        Ok(outcome) => Ok(Finished::Done(outcome)),
        Err(Stopped::GaveUp { error, attempts }) => Ok(Finished::Refused { error, attempts }),
        Err(Stopped::Cancelled) => Err(Abandoned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeleteMode;
    use crate::guard::tests::{self as guard_tests, Model, columns, delete, upsert};
    use crate::mapping;
    use proptest::prelude::{Strategy, any};
    use schemas::CustomerOp;
    use std::{collections::VecDeque, sync::Mutex, time::Duration};
    use tokio_util::sync::CancellationToken;

    /// The table model behind the `Contacts` interface, with scripted failures and an optional
    /// competing writer that slips in between a read and the write.
    #[derive(Default)]
    struct Fake {
        model: Mutex<Model>,
        columns: Option<Columns>,
        failures: Mutex<VecDeque<WriteError>>,
        /// Applied to the model right after the next read (a race).
        interloper: Mutex<Option<Customer>>,
        /// Refuse every write with this 412, whatever the precondition.
        always_412: bool,
        writes: Mutex<u32>,
        reads: Mutex<u32>,
        /// Yields before each operation (taken in turn), so racing writers interleave.
        yields: Mutex<VecDeque<u8>>,
    }

    impl Fake {
        async fn pause(&self) {
            let n = self.yields.lock().unwrap().pop_front().unwrap_or(0);
            for _ in 0..n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl Contacts for Fake {
        async fn read(&self, id: &str) -> Result<Option<StoredRow>, WriteError> {
            self.pause().await;
            *self.reads.lock().unwrap() += 1;
            if let Some(e) = self.failures.lock().unwrap().pop_front() {
                return Err(e);
            }
            let columns = self.columns.as_ref().unwrap();
            let row = self.model.lock().unwrap().read(columns, id);
            if let Some(change) = self.interloper.lock().unwrap().take() {
                self.model.lock().unwrap().apply(columns, &change);
            }
            Ok(row)
        }

        async fn write(&self, id: &str, write: &Write) -> Result<Option<StoredRow>, WriteError> {
            self.pause().await;
            *self.writes.lock().unwrap() += 1;
            {
                let mut failures = self.failures.lock().unwrap();
                if let Some(WriteError::Throttled { .. }) = failures.front()
                    && let Some(e) = failures.pop_front()
                {
                    return Err(e);
                }
            }
            let conflict = WriteError::Conflict {
                status: 412,
                code: "0x80060892".into(),
                message: "duplicate".into(),
            };
            if self.always_412 || !self.model.lock().unwrap().write(id, write) {
                return Err(conflict);
            }
            Ok(self
                .model
                .lock()
                .unwrap()
                .read(self.columns.as_ref().unwrap(), id))
        }
    }

    fn fake() -> Fake {
        Fake {
            columns: Some(columns(DeleteMode::Deactivate)),
            ..Fake::default()
        }
    }

    fn quick(cancel: &CancellationToken) -> Retry<'_> {
        Retry {
            what: "writing",
            backoff: common::retry::Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            cancel,
            health: None,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_written() {
        let never = CancellationToken::new();
        let store = fake();
        store.failures.lock().unwrap().extend([
            WriteError::transient("server_error", "503"),
            WriteError::transient("timeout", "timed out"),
            WriteError::Throttled { detail: "429".into() },
        ]);
        let (metrics, _) = Metrics::new();
        let cols = store.columns.clone().unwrap();
        let done = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &upsert("cus_1", 10, "A"),
            &metrics,
            quick(&never),
        )
        .await
        .unwrap();
        assert_eq!(done, Finished::Done(Outcome::Created));
    }

    #[tokio::test]
    async fn a_lost_race_is_decided_again_not_dead_lettered() {
        let never = CancellationToken::new();
        let store = fake();
        let (metrics, _) = Metrics::new();
        let cols = store.columns.clone().unwrap();
        store
            .model
            .lock()
            .unwrap()
            .apply(&cols, &upsert("cus_1", 10, "A"));
        // Between our read and our write, a newer change lands: ours is then stale.
        *store.interloper.lock().unwrap() = Some(upsert("cus_1", 30, "C"));
        let done = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &upsert("cus_1", 20, "B"),
            &metrics,
            quick(&never),
        )
        .await
        .unwrap();
        assert_eq!(done, Finished::Done(Outcome::Stale));
        let row = store.model.lock().unwrap().read(&cols, "cus_1").unwrap();
        assert_eq!(row.created, Some(30));

        // An older change slips in instead: ours still applies on the second try.
        *store.interloper.lock().unwrap() = Some(upsert("cus_1", 35, "D"));
        let done = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &delete("cus_1", 40),
            &metrics,
            quick(&never),
        )
        .await
        .unwrap();
        assert_eq!(done, Finished::Done(Outcome::Deactivated));
    }

    #[tokio::test]
    async fn a_412_that_is_not_a_race_is_a_refusal() {
        let never = CancellationToken::new();
        let store = Fake {
            always_412: true,
            ..fake()
        };
        let (metrics, _) = Metrics::new();
        let cols = store.columns.clone().unwrap();
        let done = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &upsert("cus_1", 10, "A"),
            &metrics,
            quick(&never),
        )
        .await
        .unwrap();
        let Finished::Refused { error, attempts } = done else {
            panic!("refused")
        };
        assert_eq!(error.class(), "precondition");
        assert_eq!(attempts, 1);
        assert_eq!(
            *store.writes.lock().unwrap(),
            1,
            "one write, then the re-read showed no race"
        );
    }

    #[tokio::test]
    async fn refusals_are_returned_and_cancellation_abandons() {
        let never = CancellationToken::new();
        let store = fake();
        store.failures.lock().unwrap().push_back(WriteError::Rejected {
            status: 403,
            code: "0x80040220".into(),
            message: "no privilege".into(),
        });
        let (metrics, _) = Metrics::new();
        let cols = store.columns.clone().unwrap();
        let done = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &upsert("cus_1", 1, "A"),
            &metrics,
            quick(&never),
        )
        .await
        .unwrap();
        assert!(matches!(done, Finished::Refused { .. }), "{done:?}");

        // An outage that never ends: retried until cancelled, never skipped.
        store.failures.lock().unwrap().extend(std::iter::repeat_n(
            WriteError::transient("server_error", "503"),
            10_000,
        ));
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cancel.cancel();
            })
        };
        let result = apply(
            &store,
            &KnownRows::new(0),
            &cols,
            &upsert("cus_1", 2, "B"),
            &metrics,
            quick(&cancel),
        )
        .await;
        assert_eq!(result, Err(Abandoned));
        canceller.await.unwrap();
    }

    /// A write loop with the cache on, over a fake table.
    struct Rig {
        store: Fake,
        known: KnownRows,
        metrics: Metrics,
        cols: Columns,
        never: CancellationToken,
    }

    impl Rig {
        fn new(mode: DeleteMode) -> Self {
            let store = Fake {
                columns: Some(columns(mode)),
                ..Fake::default()
            };
            Rig {
                cols: store.columns.clone().unwrap(),
                store,
                known: KnownRows::new(1000),
                metrics: Metrics::new().0,
                never: CancellationToken::new(),
            }
        }

        async fn run(&self, change: &Customer) -> Finished {
            apply(
                &self.store,
                &self.known,
                &self.cols,
                change,
                &self.metrics,
                quick(&self.never),
            )
            .await
            .unwrap()
        }

        /// Another writer applies `change` behind the sink's back.
        fn elsewhere(&self, change: &Customer) {
            self.store.model.lock().unwrap().apply(&self.cols, change);
        }

        fn row(&self, id: &str) -> Option<StoredRow> {
            self.store.model.lock().unwrap().read(&self.cols, id)
        }

        /// (reads, writes) so far.
        fn counts(&self) -> (u32, u32) {
            (
                *self.store.reads.lock().unwrap(),
                *self.store.writes.lock().unwrap(),
            )
        }
    }

    #[tokio::test]
    async fn known_contacts_are_written_without_a_read_and_new_ones_created_at_once() {
        let rig = Rig::new(DeleteMode::Deactivate);
        assert_eq!(
            rig.run(&upsert("cus_1", 10, "A")).await,
            Finished::Done(Outcome::Created)
        );
        assert_eq!(
            rig.counts(),
            (0, 1),
            "a new customer: one create-only write, no read"
        );
        assert_eq!(
            rig.run(&upsert("cus_1", 20, "B")).await,
            Finished::Done(Outcome::Updated)
        );
        assert_eq!(
            rig.run(&upsert("cus_1", 15, "old")).await,
            Finished::Done(Outcome::Stale)
        );
        assert_eq!(
            rig.run(&upsert("cus_1", 20, "B")).await,
            Finished::Done(Outcome::Unchanged)
        );
        assert_eq!(
            rig.run(&delete("cus_1", 30)).await,
            Finished::Done(Outcome::Deactivated)
        );
        assert_eq!(
            rig.counts(),
            (0, 3),
            "updates, stale changes and redeliveries of a known contact need no read"
        );
        let row = rig.row("cus_1").unwrap();
        assert!(row.deleted);
        assert_eq!(
            rig.known.get("cus_1").unwrap().etag,
            row.etag,
            "the cache holds the row as written"
        );
    }

    #[tokio::test]
    async fn a_stale_cache_costs_a_412_and_a_read_never_a_wrong_row() {
        let rig = Rig::new(DeleteMode::Deactivate);
        rig.run(&upsert("cus_1", 10, "A")).await;
        rig.elsewhere(&upsert("cus_1", 30, "C"));
        let before = rig.counts();
        assert_eq!(
            rig.run(&upsert("cus_1", 20, "B")).await,
            Finished::Done(Outcome::Stale),
            "the newer change stays"
        );
        assert_eq!(
            rig.counts(),
            (before.0 + 1, before.1 + 1),
            "one refused write, one read"
        );
        let row = rig.row("cus_1").unwrap();
        assert_eq!(row.created, Some(30));
        assert_eq!(
            rig.known.get("cus_1").unwrap().etag,
            row.etag,
            "the read refreshed the cache"
        );

        // An unknown customer that exists: the create-only write loses, a read decides.
        rig.elsewhere(&upsert("cus_2", 50, "X"));
        assert_eq!(
            rig.run(&upsert("cus_2", 40, "Y")).await,
            Finished::Done(Outcome::Stale)
        );
        assert_eq!(rig.row("cus_2").unwrap().created, Some(50));
    }

    #[tokio::test]
    async fn a_throttled_write_is_retried_without_reading_again() {
        let rig = Rig::new(DeleteMode::Deactivate);
        rig.run(&upsert("cus_1", 10, "A")).await;
        rig.store.failures.lock().unwrap().extend([
            WriteError::Throttled { detail: "429".into() },
            WriteError::Throttled { detail: "429".into() },
        ]);
        assert_eq!(
            rig.run(&upsert("cus_1", 20, "B")).await,
            Finished::Done(Outcome::Updated)
        );
        assert_eq!(
            rig.counts(),
            (0, 4),
            "two throttled writes and the one that took; no read"
        );
    }

    #[tokio::test]
    async fn an_unknown_customers_delete_in_delete_mode_is_read_first() {
        let rig = Rig::new(DeleteMode::Delete);
        rig.elsewhere(&upsert("cus_1", 10, "A"));
        assert_eq!(
            rig.run(&delete("cus_1", 20)).await,
            Finished::Done(Outcome::Deleted),
            "a presumption of absence never justifies skipping a delete"
        );
        assert!(rig.row("cus_1").is_none());
    }

    #[tokio::test]
    async fn a_replay_of_existing_contacts_turns_to_reading_first() {
        let rig = Rig::new(DeleteMode::Deactivate);
        for i in 0..100 {
            rig.elsewhere(&upsert(&format!("cus_{i}"), 10, "A"));
        }
        for i in 0..100 {
            let done = rig.run(&upsert(&format!("cus_{i}"), 10, "A")).await;
            assert_eq!(done, Finished::Done(Outcome::Unchanged));
        }
        let (reads, writes) = rig.counts();
        assert_eq!(reads, 100);
        assert!(
            writes <= 33,
            "after most unknown contacts turned out to exist, reads come first ({writes} wasted writes)"
        );
    }

    /// Customers' lives as Stripe produces them: per customer maybe `created`, updates whose
    /// times never go back, maybe a final delete.
    fn lives() -> impl Strategy<Value = Vec<Customer>> {
        proptest::collection::vec(
            (
                any::<bool>(),
                proptest::collection::vec((0i64..2, 0u8..4), 0..5),
                proptest::option::of(0i64..2),
            )
                .prop_filter("at least one event", |(c, u, d)| {
                    *c || !u.is_empty() || d.is_some()
                }),
            1..4,
        )
        .prop_map(|customers| {
            let mut events = Vec::new();
            for (n, (with_created, updates, deleted)) in customers.into_iter().enumerate() {
                let id = format!("cus_{n}");
                let mut t = 0;
                if with_created {
                    events.push(guard_tests::change(
                        &id,
                        &format!("evt_{n}_c"),
                        "created",
                        t,
                        "v0",
                    ));
                }
                for (i, (step, value)) in updates.into_iter().enumerate() {
                    t += step;
                    events.push(guard_tests::change(
                        &id,
                        &format!("evt_{n}_u{i}"),
                        "updated",
                        t,
                        &format!("v{value}"),
                    ));
                }
                if let Some(step) = deleted {
                    let mut d = delete(&id, t + step);
                    d.source_event_id = format!("evt_{n}_d");
                    events.push(d);
                }
            }
            events
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Two sinks, each with its own cache, both receive every change (two consumer groups on
        /// one topic, or a partition's old and new owner), in any order and any number of times,
        /// and their reads and writes interleave arbitrarily. Whatever the caches believed,
        /// every contact ends as the model says: the tombstone once a delete arrived, otherwise
        /// the values of the greatest change by (time, rank), one of the same-second ones.
        #[test]
        fn two_sinks_with_their_own_caches_end_in_the_models_state(
            events in lives(),
            orders in proptest::collection::vec(proptest::collection::vec(any::<proptest::sample::Index>(), 0..12), 2),
            yields in proptest::collection::vec(0u8..4, 0..200),
        ) {
            let cols = columns(DeleteMode::Deactivate);
            let store = Fake { columns: Some(cols.clone()), ..Fake::default() };
            store.yields.lock().unwrap().extend(yields);
            let (metrics, _) = Metrics::new();
            let never = CancellationToken::new();
            let caches = [KnownRows::new(100), KnownRows::new(100)];
            let deliveries: Vec<Vec<&Customer>> = orders
                .iter()
                .map(|order| order.iter().map(|i| i.get(&events)).chain(events.iter()).collect())
                .collect();
            let sink = |w: usize| {
                let (store, caches, cols, metrics, never, deliveries) = (&store, &caches, &cols, &metrics, &never, &deliveries);
                async move {
                    for change in &deliveries[w] {
                        let done = apply(store, &caches[w], cols, change, metrics, quick(never)).await.unwrap();
                        assert!(matches!(done, Finished::Done(_)), "{done:?}");
                    }
                }
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(async { futures::join!(sink(0), sink(1)) });
            let model = store.model.lock().unwrap();
            let ids: std::collections::BTreeSet<&str> = events.iter().map(|c| c.customer_id.as_str()).collect();
            for id in ids {
                let mine: Vec<&Customer> = events.iter().filter(|c| c.customer_id == id).collect();
                let row = model.read(&cols, id).expect("every customer has a contact");
                if mine.iter().any(|c| c.op == CustomerOp::Delete) {
                    proptest::prop_assert!(row.deleted, "{id}: a delete is final");
                    continue;
                }
                proptest::prop_assert!(!row.deleted);
                let top = mine.iter().map(|c| (c.source_event_created, mapping::rank(c))).max().unwrap();
                let allowed: Vec<serde_json::Value> = mine
                    .iter()
                    .filter(|c| (c.source_event_created, mapping::rank(c)) == top)
                    .map(|c| serde_json::json!(c.last_name.clone().unwrap()))
                    .collect();
                proptest::prop_assert_eq!(row.created, Some(top.0));
                let got = model.rows[id].1["lastname"].clone();
                proptest::prop_assert!(allowed.contains(&got), "{}: {:?} not among {:?}", id, got, allowed);
            }
        }
    }
}
