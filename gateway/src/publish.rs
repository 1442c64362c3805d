//! Where verified events go: [`KafkaPublisher`] encodes the record through the schema registry and
//! produces it with the idempotent `acks=all` producer, returning only once the broker's delivery
//! report says it is durable. The [`Publisher`] trait lets the HTTP tests run without a broker.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    config::KafkaSettings,
    health::Health,
    kafka,
    ops::{Check, check},
    producer::{Producer, SendError},
};
use futures::future::BoxFuture;
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode as Code},
    message::{Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use schemas::{Codec, CodecError, StripeEvent};
use tracing::Instrument;

use crate::event::VerifiedEvent;

pub use common::producer::Written;

/// Why an event was not written. Every variant means "not known to be durable": answer 503 so
/// Stripe retries, except [`PublishError::TooLarge`], which a retry cannot fix (413).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
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
    /// The encoded record is over the producer's `message.max.bytes` (checked before producing)
    /// or the broker refused it as too large. The same record will be refused again: 413.
    #[error("the record is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The write task ended without a result (it panicked or was cancelled).
    #[error("the write ended without a result: {0}")]
    Aborted(String),
}

impl PublishError {
    /// The dependency that failed, for the `dependency` metric label.
    pub fn dependency(&self) -> &'static str {
        match self {
            PublishError::Registry(_) | PublishError::RegistryTimeout => "schema_registry",
            PublishError::Kafka(_)
            | PublishError::KafkaTimeout
            | PublishError::ProducerGone
            | PublishError::TooLarge { .. } => "kafka",
            PublishError::Aborted(_) => "internal",
        }
    }
}

/// A durable destination for verified events.
pub trait Publisher: Send + Sync + 'static {
    /// Writes `event` and resolves once it is durable, or fails within `budget`.
    fn write<'a>(
        &'a self,
        event: &'a VerifiedEvent,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Written, PublishError>>;

    /// The `/readyz` checks for this publisher's dependencies.
    fn checks(&self) -> Vec<(&'static str, Check)>;

    /// Registers the publisher's own metrics (names get the `gateway_` prefix).
    fn register_metrics(&self, _registry: &mut Registry) {}
}

/// Writes to a Kafka topic in the Confluent wire format. Cheap to clone; clones share the
/// producer.
///
/// The producer is `common`'s [`Producer`], which replaces its client after a delivery timeout
/// or a refused producer state (see its module for why): records the old client still held are
/// purged and their requests answered 503, so Stripe delivers them again.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Producer,
    codec: Codec,
    topic: String,
    /// The producer's `message.max.bytes`: a record over it is refused before producing.
    max_record: usize,
    /// Where the producer reports a replacement it cannot make; read by the `kafka` check.
    health: Health,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.inner.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Creates the producer (idempotent, `acks=all`, delivery timeout `delivery_timeout`) off the
    /// async workers, since creating a client blocks briefly.
    pub async fn connect(
        kafka: &KafkaSettings,
        delivery_timeout: Duration,
        codec: Codec,
        topic: impl Into<String>,
    ) -> Result<Self, KafkaError> {
        let health = Health::new();
        let producer = Producer::connect(kafka, CLIENT_ID, delivery_timeout, health.clone()).await?;
        Ok(KafkaPublisher {
            inner: Arc::new(Inner {
                producer,
                codec,
                topic: topic.into(),
                max_record: max_record(kafka),
                health,
            }),
        })
    }

    /// The producer client now in use.
    pub fn producer(&self) -> FutureProducer {
        self.inner.producer.client()
    }

    /// Registers (or looks up) the record schema now, so the first request does not pay for it.
    pub async fn prepare(&self) -> Result<u32, CodecError> {
        self.inner.codec.prepare::<StripeEvent>(&self.inner.topic).await
    }

    /// Waits up to `timeout` for every record handed to the producer to be delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.producer.flush(timeout).await
    }

    /// Writes `event` and returns once it is durable, or fails within `budget` (what
    /// [`Publisher::write`] does; `backfill` calls it directly).
    pub async fn write_event(
        &self,
        event: &VerifiedEvent,
        budget: Duration,
    ) -> Result<Written, PublishError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + budget;
        let payload = tokio::time::timeout_at(deadline, inner.codec.encode(&inner.topic, event.record()))
            .await
            .map_err(|_| PublishError::RegistryTimeout)?
            .map_err(PublishError::Registry)?;
        // The produce is a child of the request's span; the record carries the produce span's
        // context, so the enricher's span is its child in the same trace.
        let span = kafka::send_span(&tracing::Span::current(), &inner.topic, event.key());
        let headers = kafka::send_headers(&span, &kafka::current_context());
        let size = record_size(event.key(), &payload, &headers);
        if size > inner.max_record {
            let refused = Err(PublishError::TooLarge {
                size,
                limit: inner.max_record,
            });
            kafka::sent(&span, &refused);
            return refused;
        }
        let record = FutureRecord::to(&inner.topic)
            .key(event.key())
            .payload(&payload)
            .headers(headers);
        // The producer's own delivery timeout is the write budget, and it waits a little past it
        // for librdkafka's definite answer, so a 503 here rarely hides a late success.
        let result = match inner.producer.enqueue(record) {
            Ok(pending) => pending.wait().instrument(span.clone()).await,
            Err(e) => Err(e),
        };
        kafka::sent(&span, &result);
        result.map_err(|e| publish_error(e, size, inner.max_record))
    }

    /// How many times the producer was replaced (`gateway_producer_resets_total`).
    pub fn resets(&self) -> Counter {
        self.inner.producer.resets()
    }
}

/// What a failed send means for the answer: a size refusal (by the client or the broker's topic
/// limit) is [`PublishError::TooLarge`]; everything else is "not stored, retry later".
fn publish_error(e: SendError, size: usize, limit: usize) -> PublishError {
    match e {
        SendError::Permanent(e) => too_large(e, size, limit),
        SendError::Transient(KafkaError::Canceled) => PublishError::ProducerGone,
        SendError::Transient(KafkaError::MessageProduction(Code::MessageTimedOut)) => {
            PublishError::KafkaTimeout
        }
        SendError::Transient(e) => PublishError::Kafka(e),
    }
}

/// librdkafka's `message.max.bytes` when the settings do not name one.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest record the producer built from `kafka` takes.
fn max_record(kafka: &KafkaSettings) -> usize {
    kafka
        .properties
        .get(crate::config::MESSAGE_MAX_BYTES)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES)
}

/// librdkafka's bound on one message's framing beside key, value and headers: the v2 record
/// batch header (61 bytes) plus the largest per-record varints (36), rounded up.
const RECORD_FRAMING: usize = 128;

/// The size librdkafka compares with `message.max.bytes` when a record is enqueued, at most.
pub fn record_size(key: &str, payload: &[u8], headers: &OwnedHeaders) -> usize {
    let headers: usize = headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 10)
        .sum();
    RECORD_FRAMING + key.len() + payload.len() + headers
}

/// A refusal of the record's size (by the client or the broker's topic limit) is [`PublishError::TooLarge`].
fn too_large(e: KafkaError, size: usize, limit: usize) -> PublishError {
    match e.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::MessageBatchTooLarge) => {
            PublishError::TooLarge { size, limit }
        }
        _ => PublishError::Kafka(e),
    }
}

/// The producer's `client.id`.
const CLIENT_ID: &str = "gateway";

impl Publisher for KafkaPublisher {
    fn write<'a>(
        &'a self,
        event: &'a VerifiedEvent,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Written, PublishError>> {
        Box::pin(self.write_event(event, budget))
    }

    fn checks(&self) -> Vec<(&'static str, Check)> {
        let publisher = self.clone();
        let kafka = check(move || {
            let producer = publisher.producer();
            let topic = publisher.inner.topic.clone();
            let problems = publisher.inner.health.verdict(Duration::ZERO);
            async move {
                problems?;
                tokio::task::spawn_blocking(move || broker_ready(&producer, &topic))
                    .await
                    .map_err(|e| e.to_string())?
            }
        });
        let codec = self.inner.codec.clone();
        let registry = check(move || {
            let codec = codec.clone();
            async move { codec.check_registry().await.map_err(|e| e.to_string()) }
        });
        vec![("kafka", kafka), ("schema_registry", registry)]
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "producer_resets",
            "Times the Kafka producer was replaced after a timeout or a refused producer state",
            self.resets(),
        );
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
            t.error().map(Code::from)
        )),
        None => Err(format!(
            "topic {topic} not found (metadata in {:?})",
            started.elapsed()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_measured_as_librdkafka_measures_it_at_most() {
        let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "traceparent",
            value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        });
        let size = record_size("cus_1", &[0u8; 1000], &headers);
        assert_eq!(size, RECORD_FRAMING + 5 + 1000 + 11 + 55 + 10);
        let mut kafka = KafkaSettings::default();
        assert_eq!(max_record(&kafka), 1_000_000, "librdkafka's default");
        kafka
            .properties
            .insert("message.max.bytes".into(), "2000000".into());
        assert_eq!(max_record(&kafka), 2_000_000);
    }

    #[test]
    fn a_size_refusal_is_too_large_and_other_errors_stay_kafka_errors() {
        let refused = SendError::Permanent(KafkaError::MessageProduction(Code::MessageSizeTooLarge));
        assert!(matches!(
            publish_error(refused, 10, 5),
            PublishError::TooLarge { size: 10, limit: 5 }
        ));
        let down = SendError::Transient(KafkaError::MessageProduction(Code::BrokerTransportFailure));
        assert!(matches!(publish_error(down, 10, 5), PublishError::Kafka(_)));
        let late = SendError::Transient(KafkaError::MessageProduction(Code::MessageTimedOut));
        assert!(matches!(publish_error(late, 10, 5), PublishError::KafkaTimeout));
        let purged = SendError::Transient(KafkaError::Canceled);
        assert!(matches!(publish_error(purged, 10, 5), PublishError::ProducerGone));
    }
}
