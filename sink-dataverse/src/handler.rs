//! The sink's `BatchHandler` for the shared consumer loop: decode each record, then apply the
//! changes of one partition's batch — one customer's changes strictly in partition order,
//! different customers concurrently — and dead-letter what Dataverse refuses. Returns only when
//! every record is finished (written, skipped by the guard, or dead-lettered), which is what lets
//! the loop commit.

use std::{collections::HashMap, sync::Arc};

use common::{
    consume::{Abandoned, BatchHandler, Record},
    dlq::{DeadLetters, Failure},
    health::Health,
    retry::{self, BackoffSettings, Retry, Stopped, Verdict},
};
use rdkafka::message::Header;
use schemas::{Codec, Customer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    apply::{Contacts, Finished, apply},
    cache::KnownRows,
    error::WriteError,
    guard::Outcome,
    mapping::Columns,
    metrics::Metrics,
};

/// Headers a dead letter from this stage carries besides `common::dlq`'s.
pub mod headers {
    /// The HTTP status Dataverse answered.
    pub const DATAVERSE_STATUS: &str = "dlq.dataverse.status";
    /// Dataverse's error code, e.g. `0x80044331`.
    pub const DATAVERSE_CODE: &str = "dlq.dataverse.code";
    /// Dataverse's error message.
    pub const DATAVERSE_MESSAGE: &str = "dlq.dataverse.message";
}

/// Everything a batch needs, shared by every partition's worker.
pub struct SinkHandler<C> {
    pub codec: Codec,
    pub contacts: Arc<C>,
    /// What the sink last read or wrote of each contact.
    pub known: KnownRows,
    pub columns: Columns,
    pub dead_letters: DeadLetters,
    pub dlq_topic: String,
    /// The consumer group, for the spans' `messaging.consumer.group.name`.
    pub group: String,
    pub metrics: Metrics,
    /// Where lasting failures are reported, for `/readyz`.
    pub health: Health,
    /// Delays between retries of a transient failure.
    pub backoff: BackoffSettings,
}

/// A dead letter's reason.
struct Reason {
    class: &'static str,
    message: String,
    attempts: u32,
    dataverse: Option<(u16, String, String)>,
}

impl<C: Contacts + 'static> BatchHandler for SinkHandler<C> {
    async fn handle(&self, batch: Vec<Record>, cancel: &CancellationToken) -> Result<(), Abandoned> {
        // Decode in offset order; undecodable records are dead-lettered on the way.
        let mut decoded = Vec::with_capacity(batch.len());
        for record in batch {
            if let Some(change) = self.decode(&record, cancel).await? {
                decoded.push((record, change));
            }
        }
        let groups = by_customer(decoded, |(_, change): &(Record, Customer)| &change.customer_id);
        let results = futures::future::join_all(groups.iter().map(|changes| async move {
            for (record, change) in changes {
                self.process(record, change, cancel).await?;
            }
            Ok::<_, Abandoned>(())
        }))
        .await;
        results.into_iter().collect()
    }
}

/// Splits a partition's changes into one group per customer, each in the order given (offset
/// order), groups in order of first appearance. Different groups may then run concurrently; a
/// group runs strictly in order. Dataverse compares text keys without regard to case, so ids that
/// differ only in case are one contact and one group.
pub fn by_customer<T>(items: Vec<T>, customer_id: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        let key = customer_id(&item).to_lowercase();
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(item);
    }
    groups
}

impl<C: Contacts> SinkHandler<C> {
    /// The record's change, or `None` when it was dead-lettered. Registry outages are retried.
    async fn decode(
        &self,
        record: &Record,
        cancel: &CancellationToken,
    ) -> Result<Option<Customer>, Abandoned> {
        let Some(payload) = &record.payload else {
            let reason = Reason {
                class: "missing_payload",
                message: "the record has no value".into(),
                attempts: 1,
                dataverse: None,
            };
            self.dead_letter(record, reason, cancel).await?;
            return Ok(None);
        };
        let decoded = retry::until_cancelled(
            Retry {
                what: "decoding with the schema registry",
                backoff: self.backoff.backoff(),
                cancel,
                health: Some(&self.health),
            },
            |_| async {
                match self.codec.decode::<Customer>(payload).await {
                    Ok(change) => Ok(change),
                    Err(e) if e.is_transient() => {
                        self.metrics.retried(e.class());
                        Err(Verdict::Retry(e))
                    }
                    Err(e) => Err(Verdict::GiveUp(e)),
                }
            },
        )
        .await;
        let reason = match decoded {
            Ok(change) if change.customer_id.trim().is_empty() => Reason {
                class: "invalid_record",
                message: "the change has an empty customer_id".into(),
                attempts: 1,
                dataverse: None,
            },
            Ok(change) => return Ok(Some(change)),
            Err(Stopped::Cancelled) => return Err(Abandoned),
            Err(Stopped::GaveUp { error, attempts }) => Reason {
                class: error.class(),
                message: error.to_string(),
                attempts,
                dataverse: None,
            },
        };
        self.dead_letter(record, reason, cancel).await?;
        Ok(None)
    }

    /// Applies one change until it is finished.
    async fn process(
        &self,
        record: &Record,
        change: &Customer,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        // A child of the enricher's produce span; the Dataverse operations are its children.
        let span = common::process_span!(
            "change",
            record,
            self.group,
            customer_id = %change.customer_id,
            event_id = %change.source_event_id,
            event_type = %change.source_event_type,
            outcome = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let finished = apply(
                &*self.contacts,
                &self.known,
                &self.columns,
                change,
                &self.metrics,
                Retry {
                    what: "writing to Dataverse",
                    backoff: self.backoff.backoff(),
                    cancel,
                    health: Some(&self.health),
                },
            )
            .await?;
            let outcome = match finished {
                Finished::Done(outcome) => outcome,
                Finished::Refused { error, attempts } => {
                    let (class, dataverse) = match &error {
                        WriteError::Rejected {
                            status,
                            code,
                            message,
                        } => (error.class(), Some((*status, code.clone(), message.clone()))),
                        other => (other.class(), None),
                    };
                    let reason = Reason {
                        class,
                        message: error.to_string(),
                        attempts,
                        dataverse,
                    };
                    self.dead_letter(record, reason, cancel).await?;
                    Outcome::DeadLettered
                }
            };
            tracing::Span::current().record("outcome", outcome.as_str());
            tracing::debug!("change finished");
            if outcome != Outcome::DeadLettered {
                self.metrics.finished(outcome, started.elapsed().as_secs_f64());
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn dead_letter(
        &self,
        record: &Record,
        reason: Reason,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut record = record.clone();
        if let Some((status, code, message)) = &reason.dataverse {
            let mut h = record.headers.take().unwrap_or_default();
            for (key, value) in [
                (headers::DATAVERSE_STATUS, status.to_string()),
                (headers::DATAVERSE_CODE, code.clone()),
                (headers::DATAVERSE_MESSAGE, message.clone()),
            ] {
                h = h.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            record.headers = Some(h);
        }
        let failure = Failure {
            class: reason.class.to_string(),
            message: reason.message,
            attempts: reason.attempts,
        };
        self.dead_letters
            .send(&self.dlq_topic, &record, &failure, cancel)
            .await?;
        self.metrics.dead_lettered(reason.class);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the mix of customers in a batch, each group holds one customer's changes in
        /// their original (offset) order, and every change is in exactly one group.
        #[test]
        fn groups_keep_each_customers_order(keys in proptest::collection::vec(0u8..6, 0..60)) {
            let items: Vec<(usize, String)> = keys
                .iter()
                .enumerate()
                .map(|(offset, k)| (offset, if k % 2 == 0 { format!("cus_{k}") } else { format!("CUS_{}", k - 1) }))
                .collect();
            let groups = by_customer(items.clone(), |(_, id): &(usize, String)| id.as_str());
            prop_assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), items.len());
            let mut seen = std::collections::HashSet::new();
            for group in &groups {
                let id = group[0].1.to_lowercase();
                prop_assert!(seen.insert(id.clone()), "one group per customer");
                prop_assert!(group.iter().all(|(_, c)| c.to_lowercase() == id));
                prop_assert!(group.windows(2).all(|w| w[0].0 < w[1].0), "offset order within a customer");
            }
        }
    }
}
