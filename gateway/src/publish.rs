//! Where verified events go: [`KafkaPublisher`] encodes the record through the schema registry and
//! produces it with the idempotent `acks=all` producer, returning only once the broker's delivery
//! report says it is durable. The [`Publisher`] trait lets the HTTP tests run without a broker.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    config::KafkaSettings,
    ops::{Check, check},
};
use futures::future::BoxFuture;
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode as Code},
    message::{Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use schemas::{Codec, CodecError, StripeEvent};

use crate::event::VerifiedEvent;

/// How long past the write budget to wait for the producer's delivery report.
const REPORT_GRACE: Duration = Duration::from_millis(250);

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// Why an event was not written. Every variant means "not known to be durable": answer 503 so
/// Stripe retries.
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
/// The producer is replaced after a write it could not deliver in time or whose producer state
/// the broker refused (see [`refuses_producer_state`]). After a timeout librdkafka would recover
/// on its own by bumping the idempotent producer's epoch locally (KIP-360); not every
/// Kafka-compatible broker accepts that (the local development broker's storage fails on it), and
/// a fresh producer, which starts a new idempotent session with `InitProducerId`, is accepted by
/// all. Records the old producer still held are purged: their requests were, or will be,
/// answered 503, so Stripe delivers them again.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The current producer and its generation (which replacement it is).
    producer: RwLock<(u64, FutureProducer)>,
    kafka: KafkaSettings,
    delivery_timeout: Duration,
    codec: Codec,
    topic: String,
    /// The producer's `message.max.bytes`: a record over it is refused before producing.
    max_record: usize,
    /// A replacement is being made; others wait for it instead of starting their own.
    replacing: AtomicBool,
    /// When the producer was last replaced; replacements after refusals are spaced by
    /// [`RESET_INTERVAL`].
    last_reset: Mutex<Option<Instant>>,
    resets: Counter,
}

/// Replacing the producer more often than this would only churn connections.
const RESET_INTERVAL: Duration = Duration::from_secs(1);

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
        let producer = create_producer(kafka.clone(), delivery_timeout).await?;
        Ok(KafkaPublisher {
            inner: Arc::new(Inner {
                producer: RwLock::new((0, producer)),
                kafka: kafka.clone(),
                delivery_timeout,
                codec,
                topic: topic.into(),
                max_record: max_record(kafka),
                replacing: AtomicBool::new(false),
                last_reset: Mutex::new(None),
                resets: Counter::default(),
            }),
        })
    }

    /// The producer now in use.
    pub fn producer(&self) -> FutureProducer {
        self.current().1
    }

    fn current(&self) -> (u64, FutureProducer) {
        // Writers leave a valid producer behind even if they panicked, so poisoning is moot.
        let guard = self.inner.producer.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Registers (or looks up) the record schema now, so the first request does not pay for it.
    pub async fn prepare(&self) -> Result<u32, CodecError> {
        self.inner.codec.prepare::<StripeEvent>(&self.inner.topic).await
    }

    /// Waits up to `timeout` for every record handed to the producer to be delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    async fn write_event(&self, event: &VerifiedEvent, budget: Duration) -> Result<Written, PublishError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + budget;
        let payload = tokio::time::timeout_at(deadline, inner.codec.encode(&inner.topic, event.record()))
            .await
            .map_err(|_| PublishError::RegistryTimeout)?
            .map_err(PublishError::Registry)?;
        let headers = common::kafka::trace_headers(&common::kafka::current_context());
        let size = record_size(event.key(), &payload, &headers);
        if size > inner.max_record {
            return Err(PublishError::TooLarge {
                size,
                limit: inner.max_record,
            });
        }
        let record = FutureRecord::to(&inner.topic)
            .key(event.key())
            .payload(&payload)
            .headers(headers);
        let (generation, producer) = self.current();
        // `send_result` enqueues now and hands back the delivery future (`send` would enqueue
        // only when first polled, serialising concurrent requests behind `linger.ms`).
        let sent = producer.send_result(record);
        // Only the publisher keeps producers alive, so a replaced one is dropped off the async workers.
        let fatal = producer.client().fatal_error().is_some();
        drop(producer);
        let delivery = sent.map_err(|(e, _)| {
            if fatal || refuses_producer_state(&e) {
                self.replace_producer(generation, &e.to_string(), true);
            }
            too_large(e, size, inner.max_record)
        })?;
        // The producer's own delivery timeout is `budget` from now; waiting a little longer
        // lets its definite answer arrive first, so a 503 here rarely hides a late success.
        match tokio::time::timeout_at(deadline + REPORT_GRACE, delivery).await {
            Err(_) => {
                self.replace_producer(generation, "no delivery report within the write budget", false);
                Err(PublishError::KafkaTimeout)
            }
            Ok(Err(_canceled)) => Err(PublishError::ProducerGone),
            Ok(Ok(Err((e, _message)))) => {
                let timed_out = matches!(e, KafkaError::MessageProduction(Code::MessageTimedOut));
                if timed_out || refuses_producer_state(&e) {
                    self.replace_producer(generation, &e.to_string(), !timed_out);
                }
                Err(too_large(e, size, inner.max_record))
            }
            Ok(Ok(Ok(delivery))) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
        }
    }

    /// Starts replacing producer `generation` unless it was replaced already or a replacement is
    /// under way. After a timeout the swap is immediate, before the old producer can send anything
    /// under its bumped epoch; after a refusal it is spaced [`RESET_INTERVAL`] from the last one,
    /// so a broker that refuses every producer does not cause a storm of new clients.
    fn replace_producer(&self, generation: u64, reason: &str, spaced: bool) {
        if self.current().0 != generation || self.inner.replacing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(reason, "replacing the Kafka producer");
        let publisher = self.clone();
        tokio::spawn(async move {
            publisher.swap_producer(generation, spaced).await;
            publisher.inner.replacing.store(false, Ordering::SeqCst);
        });
    }

    async fn swap_producer(&self, generation: u64, spaced: bool) {
        let inner = &self.inner;
        let since_last = inner
            .last_reset
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed());
        if let (true, Some(elapsed)) = (spaced, since_last) {
            tokio::time::sleep(RESET_INTERVAL.saturating_sub(elapsed)).await;
        }
        let fresh = match create_producer(inner.kafka.clone(), inner.delivery_timeout).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a replacement Kafka producer");
                return;
            }
        };
        let old = {
            let mut current = inner.producer.write().unwrap_or_else(|p| p.into_inner());
            if current.0 != generation {
                return;
            }
            std::mem::replace(&mut *current, (generation + 1, fresh)).1
        };
        *inner.last_reset.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        inner.resets.inc();
        // Dropping purges what the old producer still holds (so it never sends it under a bumped
        // epoch) and waits briefly for those reports: blocking work.
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// How many times the producer was replaced (`gateway_producer_resets_total`).
    pub fn resets(&self) -> Counter {
        self.inner.resets.clone()
    }
}

async fn create_producer(
    kafka: KafkaSettings,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    tokio::task::spawn_blocking(move || common::kafka::producer(&kafka, CLIENT_ID, delivery_timeout))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
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

/// Broker answers that mean the producer's idempotence state is refused; the same producer will
/// keep failing.
fn refuses_producer_state(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            Code::Unknown
                | Code::Fatal
                | Code::OutOfOrderSequenceNumber
                | Code::InvalidProducerEpoch
                | Code::InvalidProducerIdMapping
                | Code::UnknownProducerId
                | Code::ProducerFenced
        )
    )
}

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
            async move {
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
            "Times the Kafka producer was replaced after the broker refused its idempotence state",
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
        let refused = KafkaError::MessageProduction(Code::MessageSizeTooLarge);
        assert!(matches!(
            too_large(refused, 10, 5),
            PublishError::TooLarge { size: 10, limit: 5 }
        ));
        let down = KafkaError::MessageProduction(Code::BrokerTransportFailure);
        assert!(matches!(too_large(down, 10, 5), PublishError::Kafka(_)));
    }
}
