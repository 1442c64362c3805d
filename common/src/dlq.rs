//! Dead-letter topics: where a stage puts a record that can never succeed, with the reason, so the
//! partition moves on and nothing is lost. The original key and bytes are kept unchanged; headers
//! say which stage gave up, why, where the record came from, after how many attempts, and when.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

use crate::{
    consume::{Abandoned, Record},
    retry::Backoff,
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
    producer: Arc<FutureProducer>,
    stage: &'static str,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(producer: Arc<FutureProducer>, stage: &'static str, delivery_timeout: Duration) -> Self {
        DeadLetters {
            producer,
            stage,
            delivery_timeout,
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
    /// transient failures until `cancel` fires.
    pub async fn send(
        &self,
        dlq_topic: &str,
        record: &Record,
        failure: &Failure,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let headers = self.headers(record, failure);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers.clone());
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                out = out.payload(payload.as_slice());
            }
            let outcome = match self.producer.send_result(out) {
                Ok(delivery) => tokio::select! {
                    r = delivery => match r {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("producer dropped the delivery".to_string()),
                    },
                    () = tokio::time::sleep(self.delivery_timeout) => Err("no acknowledgement in time".to_string()),
                    () = cancel.cancelled() => return Err(Abandoned),
                },
                Err((e, _)) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    tracing::warn!(
                        stage = self.stage,
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        dlq = dlq_topic,
                        class = %failure.class,
                        error = %failure.message,
                        "record dead-lettered"
                    );
                    return Ok(());
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(dlq = dlq_topic, error = %e, retry_in = ?delay, "dead-letter write failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return Err(Abandoned),
                    }
                }
            }
        }
    }
}

fn epoch_millis_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Milliseconds since the epoch, unambiguous and sortable without a date library.
    format!("{}", now.as_millis())
}
