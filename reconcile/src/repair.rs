//! `--repair`: the corrective records go to `customers.normalized` exactly as the enricher
//! produces its output (the `Customer` schema in the Confluent wire format through the registry,
//! keyed by customer id, trace context in the headers), so the sink applies them through its
//! normal staleness guard: each is stamped with the time Stripe was read, and a real event from
//! then on still wins.

use std::time::Duration;

use common::{
    config::KafkaSettings,
    health::Health,
    kafka,
    producer::{Producer, SendError},
    retry::BackoffSettings,
};
use rdkafka::producer::FutureRecord;
use schemas::{Codec, CodecError, Customer};

use crate::config::ReconcileConfig;

/// The Kafka client id of the reconciliation's producer.
pub const CLIENT_ID: &str = "reconcile";

/// Why the corrective records were not all written.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("connecting to Kafka: {0}")]
    Connect(String),
    #[error("the schema of {topic}: {error}")]
    Schema { topic: String, error: CodecError },
    #[error("the corrective record of {customer_id} was refused: {error}")]
    Refused { customer_id: String, error: String },
    #[error("the corrective record of {customer_id} was not acknowledged after {attempts} attempts: {error}")]
    Unavailable {
        customer_id: String,
        attempts: u32,
        error: String,
    },
}

/// Produces corrective records to the sink's input topic.
pub struct Repairer {
    producer: Producer,
    codec: Codec,
    topic: String,
    backoff: BackoffSettings,
    max_attempts: u32,
}

impl std::fmt::Debug for Repairer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repairer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Repairer {
    /// Connects the producer and prepares the output schema (registered or looked up as the
    /// enricher does, per `registry.schema_mode`).
    pub async fn connect(config: &ReconcileConfig) -> Result<Self, RepairError> {
        Self::connect_to(
            &config.kafka,
            config,
            config.produce_timeout.into(),
            &config.output_topic,
        )
        .await
    }

    async fn connect_to(
        kafka: &KafkaSettings,
        config: &ReconcileConfig,
        delivery_timeout: Duration,
        topic: &str,
    ) -> Result<Self, RepairError> {
        let producer = Producer::connect(kafka, CLIENT_ID, delivery_timeout, Health::new())
            .await
            .map_err(|e| RepairError::Connect(e.to_string()))?;
        let codec = Codec::new(&config.registry.codec_config()).map_err(|error| RepairError::Schema {
            topic: topic.to_string(),
            error,
        })?;
        let repairer = Repairer {
            producer,
            codec,
            topic: topic.to_string(),
            backoff: config.backoff.clone(),
            max_attempts: config.max_attempts,
        };
        repairer
            .retry("preparing the schema", |r| async move {
                r.codec
                    .prepare::<Customer>(&r.topic)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        let transient = e.is_transient();
                        (
                            transient,
                            RepairError::Schema {
                                topic: r.topic.clone(),
                                error: e,
                            },
                        )
                    })
            })
            .await?;
        Ok(repairer)
    }

    /// Produces each record and waits for its acknowledgement, in order. Returns how many
    /// were written.
    pub async fn write(&self, records: &[Customer]) -> Result<usize, RepairError> {
        for customer in records {
            let span = tracing::info_span!("reconcile_repair", customer_id = %customer.customer_id);
            let payload = self
                .retry("encoding a corrective record", |r| async move {
                    r.codec.encode(&r.topic, customer).await.map_err(|e| {
                        let transient = e.is_transient();
                        (
                            transient,
                            RepairError::Schema {
                                topic: r.topic.clone(),
                                error: e,
                            },
                        )
                    })
                })
                .await?;
            let send = kafka::send_span(&span, &self.topic, &customer.customer_id);
            let headers = kafka::send_headers(&send, &kafka::current_context());
            let mut backoff = self.backoff.backoff();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let record = FutureRecord::to(&self.topic)
                    .key(customer.customer_id.as_str())
                    .payload(payload.as_slice())
                    .headers(headers.clone());
                let sent = self.producer.send(record).await;
                kafka::sent(&send, &sent);
                match sent {
                    Ok(written) => {
                        tracing::info!(
                            customer_id = %customer.customer_id,
                            op = ?customer.op,
                            partition = written.partition,
                            offset = written.offset,
                            "corrective record written"
                        );
                        break;
                    }
                    Err(SendError::Permanent(e)) => {
                        return Err(RepairError::Refused {
                            customer_id: customer.customer_id.clone(),
                            error: e.to_string(),
                        });
                    }
                    Err(SendError::Transient(e)) if attempt >= self.max_attempts => {
                        return Err(RepairError::Unavailable {
                            customer_id: customer.customer_id.clone(),
                            attempts: attempt,
                            error: e.to_string(),
                        });
                    }
                    Err(SendError::Transient(e)) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(attempt, error = %e, retry_in = ?delay, "producing a corrective record failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(10))
            .await
            .map_err(|e| RepairError::Connect(e.to_string()))?;
        Ok(records.len())
    }

    /// Runs `op` until it succeeds, fails for good (`(false, e)`), or has failed
    /// `max_attempts` times.
    async fn retry<'a, T, F, Fut>(&'a self, what: &str, op: F) -> Result<T, RepairError>
    where
        F: Fn(&'a Self) -> Fut,
        Fut: Future<Output = Result<T, (bool, RepairError)>>,
    {
        let mut backoff = self.backoff.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(self).await {
                Ok(value) => return Ok(value),
                Err((true, e)) if attempt < self.max_attempts => {
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt, error = %e, retry_in = ?delay, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }
}
