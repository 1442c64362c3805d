//! Dead-letter topics: where a stage puts a record that can never succeed, with the reason, so the
//! partition moves on and nothing is lost. The original key and bytes are kept unchanged; headers
//! say which stage gave up, why, where the record came from, after how many attempts, and when.

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use tokio_util::sync::CancellationToken;

use crate::{
    consume::{Abandoned, Record},
    health::Health,
    producer::{Producer, SendError},
    retry::{self, BackoffSettings, Retry, Stopped, Verdict},
};

/// Header names on dead-lettered records.
pub mod headers {
    pub const STAGE: &str = "dlq.stage";
    pub const ERROR_CLASS: &str = "dlq.error.class";
    pub const ERROR_MESSAGE: &str = "dlq.error.message";
    pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
    pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
    pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
    pub const ATTEMPTS: &str = "dlq.attempts";
    pub const FAILED_AT: &str = "dlq.failed.at";
    /// Set when the dead-letter topic refused the original bytes (too large): the record carries
    /// no value and says why; the original stays in its topic at the offset named above.
    pub const PAYLOAD_OMITTED: &str = "dlq.payload.omitted";
    /// On a record sent back by `dlq redrive`: `<dlq topic>/<partition>/<offset>` of the dead
    /// letter it came from. A `dlq.` header, so it is replaced, not repeated, on a later redrive.
    pub const REDRIVEN_FROM: &str = "dlq.redriven.from";
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Short, stable class (`undecodable`, `validation`, …): for alerting and metrics.
    pub class: String,
    /// Human-readable detail.
    pub message: String,
    pub attempts: u32,
}

/// Writes dead letters for one stage, retrying until the broker has them.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    stage: &'static str,
    backoff: BackoffSettings,
    health: Health,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(producer: Producer, stage: &'static str, backoff: BackoffSettings, health: Health) -> Self {
        DeadLetters {
            producer,
            stage,
            backoff,
            health,
        }
    }

    /// The headers a dead letter of `record` carries (the record's own headers first, so trace
    /// context stays).
    pub fn headers(&self, record: &Record, failure: &Failure) -> OwnedHeaders {
        let mut h = record.headers.clone().unwrap_or_default();
        let now = epoch_millis_now();
        for (key, value) in [
            (headers::STAGE, self.stage.to_string()),
            (headers::ERROR_CLASS, failure.class.clone()),
            (headers::ERROR_MESSAGE, failure.message.clone()),
            (headers::ORIGINAL_TOPIC, record.topic.clone()),
            (headers::ORIGINAL_PARTITION, record.partition.to_string()),
            (headers::ORIGINAL_OFFSET, record.offset.to_string()),
            (headers::ATTEMPTS, failure.attempts.to_string()),
            (headers::FAILED_AT, now),
        ] {
            h = h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        h
    }

    /// Writes `record` to `dlq_topic` and waits for the broker's acknowledgement, retrying
    /// transient failures until `cancel` fires. When the dead-letter topic refuses the record
    /// itself (its bytes are too large for it), the dead letter is written without its value and
    /// says so; the original stays where the headers point.
    pub async fn send(
        &self,
        dlq_topic: &str,
        record: &Record,
        failure: &Failure,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let headers = self.headers(record, failure);
        let what = format!("dead-lettering to {dlq_topic}");
        let mut omitted: Option<String> = None;
        loop {
            let written = retry::until_cancelled(
                Retry {
                    what: &what,
                    backoff: self.backoff.backoff(),
                    cancel,
                    health: Some(&self.health),
                },
                |_| {
                    let mut h = headers.clone();
                    if let Some(reason) = &omitted {
                        h = h.insert(Header {
                            key: headers::PAYLOAD_OMITTED,
                            value: Some(reason.as_bytes()),
                        });
                    }
                    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(h);
                    if let Some(key) = &record.key {
                        out = out.key(key.as_slice());
                    }
                    if let (Some(payload), None) = (&record.payload, &omitted) {
                        out = out.payload(payload.as_slice());
                    }
                    let sent = self.producer.enqueue(out);
                    async move {
                        match sent {
                            Ok(pending) => pending.wait().await,
                            Err(e) => Err(e),
                        }
                        .map_err(|e| match e {
                            SendError::Permanent(e) => Verdict::GiveUp(e),
                            SendError::Transient(e) => Verdict::Retry(e),
                        })
                    }
                },
            )
            .await;
            match written {
                Ok(_) => break,
                Err(Stopped::Cancelled) => return Err(Abandoned),
                Err(Stopped::GaveUp { error, .. }) if omitted.is_none() => {
                    tracing::error!(
                        dlq = dlq_topic,
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        error = %error,
                        "the dead-letter topic refuses the record; writing the dead letter without its value"
                    );
                    omitted = Some(error.to_string());
                }
                Err(Stopped::GaveUp { error, .. }) => {
                    // Even the headers alone are refused: nothing smaller can be written, and
                    // skipping would lose the record. Keep trying; readiness says why.
                    let _failing = self.health.failing(&what, &error);
                    tracing::error!(dlq = dlq_topic, error = %error, "the dead-letter topic refuses even an empty dead letter; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.backoff.max.into()) => {}
                        () = cancel.cancelled() => return Err(Abandoned),
                    }
                }
            }
        }
        tracing::warn!(
            stage = self.stage,
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            dlq = dlq_topic,
            class = %failure.class,
            error = %failure.message,
            payload_omitted = omitted.is_some(),
            "record dead-lettered"
        );
        Ok(())
    }
}

fn epoch_millis_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Milliseconds since the epoch, unambiguous and sortable without a date library.
    format!("{}", now.as_millis())
}
