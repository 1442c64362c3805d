//! The one Kafka producer every stage writes through: idempotent, `acks=all`, and able to replace
//! itself when it breaks, with every failure sorted into what the caller should do next.
//!
//! A producer can break for good: a fatal idempotence error, or a broker that refuses the
//! producer's state. After a delivery timeout librdkafka recovers on its own by bumping the
//! idempotent producer's epoch locally (KIP-360); not every Kafka-compatible broker accepts that
//! (the local development broker, Tansu 0.6.0, panics in its storage on it and stops answering).
//! A fresh producer, which starts a new idempotent session with `InitProducerId`, is accepted by
//! all. So [`Producer`] replaces its client after a timeout (at once, before the old one sends
//! anything under a bumped epoch) or a refused producer state (spaced by [`RESET_INTERVAL`], so a
//! broker that refuses every producer does not cause a storm of new clients). Records the old
//! client still held are purged and reported to their callers as failed, so they are sent again.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode as Code},
    message::ToBytes,
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _},
};

use crate::{config::KafkaSettings, health::Health};

/// Replacing the producer after refusals more often than this would only churn connections.
pub const RESET_INTERVAL: Duration = Duration::from_secs(1);

/// How long past the delivery timeout to wait for librdkafka's own report before giving up on it.
const REPORT_GRACE: Duration = Duration::from_millis(250);

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not written, sorted by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The record may be written later: retry it (after the queue drains, the broker returns, or
    /// the replaced producer is ready). Never drop it.
    #[error("{0}")]
    Transient(KafkaError),
    /// The broker or the client refuses this record itself (too large, invalid): retrying cannot
    /// help. Dead-letter it with this reason.
    #[error("the record is refused: {0}")]
    Permanent(KafkaError),
}

impl SendError {
    pub fn kafka_error(&self) -> &KafkaError {
        match self {
            SendError::Transient(e) | SendError::Permanent(e) => e,
        }
    }

    /// The local queue is full: wait for outstanding deliveries before enqueueing more.
    pub fn is_queue_full(&self) -> bool {
        matches!(
            self,
            SendError::Transient(KafkaError::MessageProduction(Code::QueueFull))
        )
    }
}

/// The producer of one stage. Cheap to clone; clones share the client.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    /// The current client and its generation (which replacement it is).
    current: RwLock<(u64, FutureProducer)>,
    kafka: KafkaSettings,
    client_id: String,
    delivery_timeout: Duration,
    /// A replacement is being made; others wait for it instead of starting their own.
    replacing: AtomicBool,
    /// When the client was last replaced, to space replacements after refusals.
    last_reset: Mutex<Option<Instant>>,
    resets: Counter,
    health: Health,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("client_id", &self.inner.client_id)
            .field("generation", &self.current().0)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates the client (idempotent, `acks=all`, `message.timeout.ms` = `delivery_timeout`) off
    /// the async workers, since creating a client blocks briefly. `health` hears about a
    /// replacement that cannot be made.
    pub async fn connect(
        kafka: &KafkaSettings,
        client_id: &str,
        delivery_timeout: Duration,
        health: Health,
    ) -> Result<Self, KafkaError> {
        let client = create(kafka.clone(), client_id.to_string(), delivery_timeout).await?;
        Ok(Producer {
            inner: Arc::new(Inner {
                current: RwLock::new((0, client)),
                kafka: kafka.clone(),
                client_id: client_id.to_string(),
                delivery_timeout,
                replacing: AtomicBool::new(false),
                last_reset: Mutex::new(None),
                resets: Counter::default(),
                health,
            }),
        })
    }

    /// The client now in use (for readiness probes and flushing).
    pub fn client(&self) -> FutureProducer {
        self.current().1
    }

    fn current(&self) -> (u64, FutureProducer) {
        // Writers leave a valid client behind even if they panicked, so poisoning is moot.
        let guard = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// How often the client was replaced (`<stage>_producer_resets_total`).
    pub fn resets(&self) -> Counter {
        self.inner.resets.clone()
    }

    /// The delivery timeout records are produced with.
    pub fn delivery_timeout(&self) -> Duration {
        self.inner.delivery_timeout
    }

    /// Enqueues `record` now and returns its pending delivery (records enqueued one after another
    /// keep their order within a partition). Fails at once when the client refuses it.
    pub fn enqueue<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Pending, SendError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (generation, client) = self.current();
        // `send_result` enqueues now and hands back the delivery future (`send` would enqueue
        // only when first polled, serialising concurrent writers behind `linger.ms`).
        let sent = client.send_result(record);
        let fatal = client.client().fatal_error();
        // Only this type keeps clients alive; a replaced one is dropped off the async workers.
        drop(client);
        match sent {
            Ok(delivery) => Ok(Pending {
                producer: self.clone(),
                generation,
                delivery,
                deadline: tokio::time::Instant::now() + self.inner.delivery_timeout + REPORT_GRACE,
            }),
            Err((e, _)) => {
                if let Some((code, reason)) = fatal {
                    self.replace(
                        generation,
                        &format!("fatal producer error {code:?}: {reason}"),
                        true,
                    );
                    return Err(SendError::Transient(e));
                }
                Err(self.classify(generation, e))
            }
        }
    }

    /// Enqueues `record` and waits for its delivery report.
    pub async fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Written, SendError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.enqueue(record)?.wait().await
    }

    /// Sorts a failure and starts a replacement when the client is broken.
    fn classify(&self, generation: u64, e: KafkaError) -> SendError {
        match e.rdkafka_error_code() {
            Some(code) if refuses_record(code) => SendError::Permanent(e),
            Some(Code::MessageTimedOut) => {
                self.replace(generation, &e.to_string(), false);
                SendError::Transient(e)
            }
            Some(code) if refuses_producer_state(code) => {
                self.replace(generation, &e.to_string(), true);
                SendError::Transient(e)
            }
            _ => SendError::Transient(e),
        }
    }

    /// Starts replacing client `generation` unless it was replaced already or a replacement is
    /// under way.
    fn replace(&self, generation: u64, reason: &str, spaced: bool) {
        if self.current().0 != generation || self.inner.replacing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(client_id = %self.inner.client_id, reason, "replacing the Kafka producer");
        let producer = self.clone();
        tokio::spawn(async move {
            producer.swap(generation, spaced).await;
            producer.inner.replacing.store(false, Ordering::SeqCst);
        });
    }

    async fn swap(&self, generation: u64, spaced: bool) {
        let inner = &self.inner;
        let since_last = inner
            .last_reset
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed());
        if let (true, Some(elapsed)) = (spaced, since_last) {
            tokio::time::sleep(RESET_INTERVAL.saturating_sub(elapsed)).await;
        }
        let fresh = match create(
            inner.kafka.clone(),
            inner.client_id.clone(),
            inner.delivery_timeout,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                // The next failure of the old client tries again; meanwhile readiness says why.
                tracing::error!(error = %e, "cannot create a replacement Kafka producer");
                let failing = inner
                    .health
                    .failing(format!("kafka producer {}", inner.client_id), e);
                tokio::time::sleep(RESET_INTERVAL).await;
                drop(failing);
                return;
            }
        };
        let old = {
            let mut current = inner.current.write().unwrap_or_else(|p| p.into_inner());
            if current.0 != generation {
                return;
            }
            std::mem::replace(&mut *current, (generation + 1, fresh)).1
        };
        *inner.last_reset.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        inner.resets.inc();
        // Dropping purges what the old client still holds (so it never sends it under a bumped
        // epoch) and waits briefly for those reports: blocking work.
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// Waits up to `timeout` for every record handed to the client to be delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let client = self.client();
        tokio::task::spawn_blocking(move || client.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// `Err` when the current client has failed fatally (it is replaced on the next write).
    pub fn fatal_error(&self) -> Option<String> {
        self.client()
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("producer failed fatally ({code:?}): {reason}"))
    }
}

/// A record handed to the client, awaiting its delivery report.
pub struct Pending {
    producer: Producer,
    generation: u64,
    delivery: DeliveryFuture,
    /// librdkafka reports every delivery within `message.timeout.ms`; this guards against a
    /// report that never comes.
    deadline: tokio::time::Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The broker's verdict on the record.
    pub async fn wait(self) -> Result<Written, SendError> {
        let Pending {
            producer,
            generation,
            delivery,
            deadline,
        } = self;
        match tokio::time::timeout_at(deadline, delivery).await {
            Err(_) => {
                producer.replace(
                    generation,
                    "no delivery report within the delivery timeout",
                    false,
                );
                Err(SendError::Transient(KafkaError::MessageProduction(
                    Code::MessageTimedOut,
                )))
            }
            // The client was dropped (replaced) with the record still in it: purged, not sent.
            Ok(Err(_canceled)) => Err(SendError::Transient(KafkaError::Canceled)),
            Ok(Ok(Err((e, _message)))) => Err(producer.classify(generation, e)),
            Ok(Ok(Ok(delivery))) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
        }
    }
}

async fn create(
    kafka: KafkaSettings,
    client_id: String,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    tokio::task::spawn_blocking(move || crate::kafka::producer(&kafka, &client_id, delivery_timeout))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Answers about the record itself: the same record will be refused again.
pub fn refuses_record(code: Code) -> bool {
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::InvalidRecord
            | Code::InvalidTimestamp
            | Code::MessageBatchTooLarge
    )
}

/// Answers that mean the producer's idempotence state is refused; the same client will keep
/// failing.
pub fn refuses_producer_state(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::Fatal
            | Code::OutOfOrderSequenceNumber
            | Code::InvalidProducerEpoch
            | Code::InvalidProducerIdMapping
            | Code::UnknownProducerId
            | Code::ProducerFenced
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_sorted_by_what_helps() {
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidMessage,
            Code::InvalidRecord,
        ] {
            assert!(refuses_record(code), "{code:?}");
            assert!(!refuses_producer_state(code), "{code:?}");
        }
        for code in [
            Code::Fatal,
            Code::OutOfOrderSequenceNumber,
            Code::InvalidProducerEpoch,
            Code::UnknownProducerId,
        ] {
            assert!(refuses_producer_state(code), "{code:?}");
            assert!(!refuses_record(code), "{code:?}");
        }
        for code in [
            Code::QueueFull,
            Code::BrokerTransportFailure,
            Code::MessageTimedOut,
        ] {
            assert!(!refuses_record(code) && !refuses_producer_state(code), "{code:?}");
        }
        let full = SendError::Transient(KafkaError::MessageProduction(Code::QueueFull));
        assert!(full.is_queue_full());
    }
}
