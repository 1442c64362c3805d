//! The write loop of one customer change: read the contact, let the [`guard`](crate::guard)
//! decide, write conditionally; on a lost race read and decide again. Around it, the retry
//! policy: transient failures are retried with capped, jittered backoff until they succeed or the
//! work is cancelled (revoke, shutdown deadline), never skipped; refusals are handed back for the
//! dead-letter topic.

use std::future::Future;

use common::{
    consume::Abandoned,
    retry::{self, Retry, Stopped, Verdict},
};
use schemas::Customer;

use crate::{
    error::WriteError,
    guard::{Decision, Outcome, StoredRow, Write, decide},
    mapping::Columns,
    metrics::Metrics,
};

/// How many lost races in a row before backing off like any transient failure.
const MAX_RACES: u32 = 10;

/// Contacts as the write loop sees them.
pub trait Contacts: Send + Sync {
    /// The contact with this customer id, if any.
    fn read(&self, customer_id: &str) -> impl Future<Output = Result<Option<StoredRow>, WriteError>> + Send;
    /// Applies a conditional write; `WriteError::Conflict` when the precondition failed.
    fn write(&self, customer_id: &str, write: &Write) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// One pass: read, decide, write; on a lost race, read and decide again. A conflict whose
/// re-read shows the row exactly as before was not a race (Dataverse refused for another reason,
/// e.g. a duplicate on another key): it is returned as a refusal.
pub async fn apply_once<C: Contacts>(
    contacts: &C,
    columns: &Columns,
    change: &Customer,
    metrics: &Metrics,
) -> Result<Outcome, WriteError> {
    let mut last: Option<(Write, WriteError)> = None;
    for _ in 0..MAX_RACES {
        let stored = contacts.read(&change.customer_id).await?;
        let write = match decide(columns, change, stored.as_ref()) {
            Decision::Skip(outcome) => return Ok(outcome),
            Decision::Write(write) => write,
        };
        if let Some((
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
        match contacts.write(&change.customer_id, &write).await {
            Ok(()) => {
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
                metrics.conflict();
                tracing::debug!(error = %conflict, "lost a race for the contact; reading it again");
                last = Some((write, conflict));
            }
            Err(e) => return Err(e),
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
    columns: &Columns,
    change: &Customer,
    metrics: &Metrics,
    retry: Retry<'_>,
) -> Result<Finished, Abandoned> {
    let result = retry::until_cancelled(retry, |_| async {
        apply_once(contacts, columns, change, metrics)
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
    use crate::guard::tests::{Model, columns, delete, upsert};
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
    }

    impl Contacts for Fake {
        async fn read(&self, id: &str) -> Result<Option<StoredRow>, WriteError> {
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

        async fn write(&self, id: &str, write: &Write) -> Result<(), WriteError> {
            *self.writes.lock().unwrap() += 1;
            let conflict = WriteError::Conflict {
                status: 412,
                code: "0x80060892".into(),
                message: "duplicate".into(),
            };
            if self.always_412 || !self.model.lock().unwrap().write(id, write) {
                return Err(conflict);
            }
            Ok(())
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
        let done = apply(&store, &cols, &upsert("cus_1", 10, "A"), &metrics, quick(&never))
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
        let done = apply(&store, &cols, &upsert("cus_1", 20, "B"), &metrics, quick(&never))
            .await
            .unwrap();
        assert_eq!(done, Finished::Done(Outcome::Stale));
        let row = store.model.lock().unwrap().read(&cols, "cus_1").unwrap();
        assert_eq!(row.created, Some(30));

        // An older change slips in instead: ours still applies on the second try.
        *store.interloper.lock().unwrap() = Some(upsert("cus_1", 35, "D"));
        let done = apply(&store, &cols, &delete("cus_1", 40), &metrics, quick(&never))
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
        let done = apply(&store, &cols, &upsert("cus_1", 10, "A"), &metrics, quick(&never))
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
        let done = apply(&store, &cols, &upsert("cus_1", 1, "A"), &metrics, quick(&never))
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
        let result = apply(&store, &cols, &upsert("cus_1", 2, "B"), &metrics, quick(&cancel)).await;
        assert_eq!(result, Err(Abandoned));
        canceller.await.unwrap();
    }
}
