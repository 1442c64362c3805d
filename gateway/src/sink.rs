//! Where verified events go: [`KafkaSink`] encodes the record through the schema registry and
//! produces it with the idempotent `acks=all` producer, returning only once the broker's delivery
//! report says it is durable. The [`Sink`] trait lets the HTTP tests run without a broker.

use std::time::{Duration, Instant};

use common::ops::{Check, check};
use futures::future::BoxFuture;
use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
};
use schemas::{Codec, CodecError, StripeEvent};

use crate::event::VerifiedEvent;

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// Why an event was not written. Every variant means "not known to be durable": answer 503 so
/// Stripe retries.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("schema registry: {0}")]
    Registry(#[source] CodecError),
    #[error("schema registry did not answer within the write budget")]
    RegistryTimeout,
    #[error("kafka: {0}")]
    Kafka(#[source] KafkaError),
    #[error("kafka did not acknowledge within the write budget")]
    KafkaTimeout,
    #[error("the producer was shut down before the delivery report")]
    ProducerGone,
    /// The write task ended without a result (it panicked or was cancelled).
    #[error("the write ended without a result: {0}")]
    Aborted(String),
}

impl SinkError {
    /// The dependency that failed, for the `dependency` metric label.
    pub fn dependency(&self) -> &'static str {
        match self {
            SinkError::Registry(_) | SinkError::RegistryTimeout => "schema_registry",
            SinkError::Kafka(_) | SinkError::KafkaTimeout | SinkError::ProducerGone => "kafka",
            SinkError::Aborted(_) => "internal",
        }
    }
}

/// A durable destination for verified events.
pub trait Sink: Send + Sync + 'static {
    /// Writes `event` and resolves once it is durable, or fails within `budget`.
    fn write<'a>(
        &'a self,
        event: &'a VerifiedEvent,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Written, SinkError>>;

    /// The `/readyz` checks for this sink's dependencies.
    fn checks(&self) -> Vec<(&'static str, Check)>;
}

/// Writes to a Kafka topic in the Confluent wire format.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(producer: FutureProducer, codec: Codec, topic: impl Into<String>) -> Self {
        KafkaSink {
            producer,
            codec,
            topic: topic.into(),
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Registers (or looks up) the record schema now, so the first request does not pay for it.
    pub async fn prepare(&self) -> Result<u32, CodecError> {
        self.codec.prepare::<StripeEvent>(&self.topic).await
    }

    /// Waits up to `timeout` for every record handed to the producer to be delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    async fn write_event(&self, event: &VerifiedEvent, budget: Duration) -> Result<Written, SinkError> {
        let deadline = tokio::time::Instant::now() + budget;
        let payload = tokio::time::timeout_at(deadline, self.codec.encode(&self.topic, event.record()))
            .await
            .map_err(|_| SinkError::RegistryTimeout)?
            .map_err(SinkError::Registry)?;
        let headers = common::kafka::trace_headers(&common::kafka::current_context());
        let record = FutureRecord::to(&self.topic)
            .key(event.key())
            .payload(&payload)
            .headers(headers);
        // `send_result` enqueues now and hands back the delivery future (`send` would enqueue
        // only when first polled, serialising concurrent requests behind `linger.ms`).
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| SinkError::Kafka(e))?;
        match tokio::time::timeout_at(deadline, delivery).await {
            Err(_) => Err(SinkError::KafkaTimeout),
            Ok(Err(_canceled)) => Err(SinkError::ProducerGone),
            Ok(Ok(Err((e, _message)))) => Err(SinkError::Kafka(e)),
            Ok(Ok(Ok(delivery))) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
        }
    }
}

impl Sink for KafkaSink {
    fn write<'a>(
        &'a self,
        event: &'a VerifiedEvent,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(self.write_event(event, budget))
    }

    fn checks(&self) -> Vec<(&'static str, Check)> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let kafka = check(move || {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                tokio::task::spawn_blocking(move || broker_ready(&producer, &topic))
                    .await
                    .map_err(|e| e.to_string())?
            }
        });
        let codec = self.codec.clone();
        let registry = check(move || {
            let codec = codec.clone();
            async move { codec.check_registry().await.map_err(|e| e.to_string()) }
        });
        vec![("kafka", kafka), ("schema_registry", registry)]
    }
}

/// The producer is usable and the broker serves the topic's metadata. Blocking.
fn broker_ready(producer: &FutureProducer, topic: &str) -> Result<(), String> {
    let client = producer.client();
    if let Some((code, reason)) = client.fatal_error() {
        return Err(format!(
            "producer failed fatally ({code:?}): {reason}; restart the gateway"
        ));
    }
    let started = Instant::now();
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .map_err(|e| format!("broker metadata: {e}"))?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => Err(format!(
            "topic {topic} is not available ({:?})",
            t.error().map(rdkafka::error::RDKafkaErrorCode::from)
        )),
        None => Err(format!(
            "topic {topic} not found (metadata in {:?})",
            started.elapsed()
        )),
    }
}
