//! The per-batch work of the enricher, run by [`common::consume::ConsumerLoop`] for one partition
//! at a time, in offset order: decode each `stripe.events` record, normalise it, and produce the
//! customer change; dead-letter what can never succeed; retry what can.
//!
//! A batch returns only when every record in it is finished: its output acknowledged by the
//! broker, or its bytes on the dead-letter topic with the reason, or skipped. Only then does the
//! loop let its offsets be committed, which makes delivery at-least-once.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicUsize, Ordering},
};

use common::{
    consume::{Abandoned, BatchHandler, Record},
    dlq::{DeadLetters, Failure},
    health::Health,
    kafka::{self, context_from_headers, send_headers, send_span},
    producer::{Pending, Producer, SendError},
    retry::{self, BackoffSettings, Retry, Stopped, Verdict},
};
use rdkafka::{message::OwnedHeaders, producer::FutureRecord};
use schemas::{Codec, CodecError, Customer, StripeEvent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{metrics::Metrics, normalize};

/// Error class on dead letters of records whose output the broker refused for good.
pub const CLASS_OUTPUT_REJECTED: &str = "output_rejected";

/// What the enricher needs to process batches; shared by every partition's worker.
pub struct Enricher {
    codec: Codec,
    producer: Producer,
    dead_letters: DeadLetters,
    health: Health,
    metrics: Metrics,
    output_topic: String,
    dlq_topic: String,
    /// The consumer group, for the spans' `messaging.consumer.group.name`.
    group: String,
    /// Event types turned into customer changes; others are skipped.
    event_types: BTreeSet<String>,
    backoff: BackoffSettings,
}

/// Construction parameters of an [`Enricher`].
#[derive(Clone)]
pub struct EnricherParts {
    pub codec: Codec,
    pub producer: Producer,
    pub dead_letters: DeadLetters,
    pub health: Health,
    pub metrics: Metrics,
    pub output_topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub event_types: BTreeSet<String>,
    pub backoff: BackoffSettings,
}

impl Enricher {
    pub fn new(parts: EnricherParts) -> Self {
        Enricher {
            codec: parts.codec,
            producer: parts.producer,
            dead_letters: parts.dead_letters,
            health: parts.health,
            metrics: parts.metrics,
            output_topic: parts.output_topic,
            dlq_topic: parts.dlq_topic,
            group: parts.group,
            event_types: parts.event_types,
            backoff: parts.backoff,
        }
    }

    fn retry<'a>(&'a self, what: &'a str, cancel: &'a CancellationToken) -> Retry<'a> {
        Retry {
            what,
            backoff: self.backoff.backoff(),
            cancel,
            health: Some(&self.health),
        }
    }
}

/// A record's customer change, ready to produce.
struct Output<'a> {
    record: &'a Record,
    key: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    /// The record's span, kept open until its output is acknowledged.
    span: tracing::Span,
    /// The produce's span, a child of `span`; `headers` carry its context.
    send: tracing::Span,
}

/// What became of one input record before producing.
enum Prepared<'a> {
    Produce(Output<'a>),
    Skip,
    DeadLetter(Failure),
}

impl BatchHandler for Enricher {
    async fn handle(&self, batch: Vec<Record>, cancel: &CancellationToken) -> Result<(), Abandoned> {
        let started = std::time::Instant::now();
        self.metrics.records_in.inc_by(batch.len() as u64);
        let mut outputs = Vec::with_capacity(batch.len());
        for record in &batch {
            match self.prepare(record, cancel).await? {
                Prepared::Produce(out) => outputs.push(out),
                Prepared::Skip => {
                    self.metrics.records_skipped.inc();
                }
                Prepared::DeadLetter(failure) => {
                    self.dead_letters
                        .send(&self.dlq_topic, record, &failure, cancel)
                        .await?;
                    self.metrics.dead_lettered(&failure.class);
                }
            }
        }
        self.produce_in_order(&outputs, cancel).await?;
        self.metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Enricher {
    /// Decodes and normalises one record, retrying registry outages until `cancel`.
    async fn prepare<'a>(
        &self,
        record: &'a Record,
        cancel: &CancellationToken,
    ) -> Result<Prepared<'a>, Abandoned> {
        let span = common::process_span!(
            "enrich",
            record,
            self.group,
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            customer_id = tracing::field::Empty,
        );
        let prepared = self
            .prepare_in_span(record, cancel, &span)
            .instrument(span.clone())
            .await?;
        Ok(match prepared {
            Step::Produce { key, payload } => {
                // With spans exported the produce span's context is passed on; without, the
                // incoming context is, so the trace id still follows the record downstream.
                let send = send_span(&span, &self.output_topic, &key);
                let headers = send_headers(&send, &context_from_headers(record.headers.as_ref()));
                Prepared::Produce(Output {
                    record,
                    key,
                    payload,
                    headers,
                    span,
                    send,
                })
            }
            Step::Skip => Prepared::Skip,
            Step::DeadLetter(f) => Prepared::DeadLetter(f),
        })
    }

    async fn prepare_in_span(
        &self,
        record: &Record,
        cancel: &CancellationToken,
        span: &tracing::Span,
    ) -> Result<Step, Abandoned> {
        let payload = record.payload.as_deref().unwrap_or_default();
        let (event, attempts) = match self.decode(payload, cancel).await? {
            (Ok(event), attempts) => (event, attempts),
            (Err(e), attempts) => return Ok(Step::dead_letter(e.class(), e.to_string(), attempts)),
        };
        span.record("event_id", event.event_id.as_str());
        span.record("event_type", event.event_type.as_str());
        if !self.event_types.contains(&event.event_type) {
            tracing::debug!("event type not normalised; skipped");
            return Ok(Step::Skip);
        }
        let customer = match normalize::customer_from_stripe_event(&event) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Step::Skip),
            Err(e) => return Ok(Step::dead_letter(e.class(), e.to_string(), attempts)),
        };
        span.record("customer_id", customer.customer_id.as_str());
        match self.encode(&customer, cancel).await? {
            Ok(payload) => Ok(Step::Produce {
                key: customer.customer_id,
                payload,
            }),
            Err(e) => Ok(Step::dead_letter(e.class(), e.to_string(), attempts)),
        }
    }

    /// Decodes a `StripeEvent`, retrying while the registry is unavailable. Returns the outcome
    /// and the number of attempts it took.
    async fn decode(
        &self,
        payload: &[u8],
        cancel: &CancellationToken,
    ) -> Result<(Result<StripeEvent, CodecError>, u32), Abandoned> {
        let decoded = retry::until_cancelled(
            self.retry("decoding with the schema registry", cancel),
            |attempt| async move {
                match self.codec.decode::<StripeEvent>(payload).await {
                    Ok(event) => Ok((event, attempt)),
                    Err(e) if e.is_transient() => {
                        self.metrics.retried("registry");
                        Err(Verdict::Retry(e))
                    }
                    Err(e) => Err(Verdict::GiveUp(e)),
                }
            },
        )
        .await;
        match decoded {
            Ok((event, attempts)) => Ok((Ok(event), attempts)),
            Err(Stopped::GaveUp { error, attempts }) => Ok((Err(error), attempts)),
            Err(Stopped::Cancelled) => Err(Abandoned),
        }
    }

    /// Encodes a `Customer`, retrying while the registry is unavailable or refuses the schema (a
    /// deployment problem an operator fixes; dead-lettering every record would not help).
    async fn encode(
        &self,
        customer: &Customer,
        cancel: &CancellationToken,
    ) -> Result<Result<Vec<u8>, CodecError>, Abandoned> {
        let what = format!("encoding for {}", self.output_topic);
        let encoded = retry::until_cancelled(self.retry(&what, cancel), |_| async {
            match self.codec.encode(&self.output_topic, customer).await {
                Ok(payload) => Ok(payload),
                Err(e @ (CodecError::RegistryUnavailable(_) | CodecError::SchemaRejected { .. })) => {
                    self.metrics.retried("registry");
                    if matches!(e, CodecError::SchemaRejected { .. }) {
                        tracing::error!(error = %e, "the registry refuses the output schema; retrying until it is fixed");
                    }
                    Err(Verdict::Retry(e))
                }
                Err(e) => Err(Verdict::GiveUp(e)),
            }
        })
        .await;
        match encoded {
            Ok(payload) => Ok(Ok(payload)),
            Err(Stopped::GaveUp { error, .. }) => Ok(Err(error)),
            Err(Stopped::Cancelled) => Err(Abandoned),
        }
    }

    /// Produces every output and waits for all acknowledgements. All records are enqueued at
    /// once (the idempotent producer keeps their order within a partition); when one fails, it
    /// and every record after it are produced again, in order, so a key's last record on the
    /// output topic is always its latest change (earlier ones may repeat). A record the broker
    /// refuses for good is dead-lettered and the rest go on.
    async fn produce_in_order(
        &self,
        outputs: &[Output<'_>],
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        // The first output not yet acknowledged; attempts start there.
        let acked = AtomicUsize::new(0);
        let what = format!("producing to {}", self.output_topic);
        while acked.load(Ordering::SeqCst) < outputs.len() {
            let step = retry::until_cancelled(self.retry(&what, cancel), |_| {
                let start = acked.load(Ordering::SeqCst);
                let acked = &acked;
                async move {
                    let (pending, stop) = self.enqueue_from(&outputs[start..]);
                    let enqueued = pending.len();
                    for (i, delivery) in pending.into_iter().enumerate() {
                        let out = &outputs[start + i];
                        let delivered = delivery.wait().instrument(out.send.clone()).await;
                        kafka::sent(&out.send, &delivered);
                        match delivered {
                            Ok(_) => {
                                self.metrics.records_out.inc();
                                out.span
                                    .in_scope(|| tracing::debug!(key = %out.key, "customer change produced"));
                                acked.store(start + i + 1, Ordering::SeqCst);
                            }
                            Err(SendError::Permanent(e)) => {
                                return Err(Verdict::GiveUp(ProduceFailure::Refused(start + i, e)));
                            }
                            Err(e) => {
                                out.span.in_scope(
                                    || tracing::warn!(error = %e, "producing a customer change failed"),
                                );
                                self.metrics.retried("broker");
                                return Err(Verdict::Retry(ProduceFailure::Transient(e)));
                            }
                        }
                    }
                    match stop {
                        None => Ok(()),
                        Some(SendError::Permanent(e)) => {
                            Err(Verdict::GiveUp(ProduceFailure::Refused(start + enqueued, e)))
                        }
                        // A local queue full of other partitions' records: what was enqueued is
                        // acknowledged now, so go on at once when that was something.
                        Some(e) if e.is_queue_full() && enqueued > 0 => {
                            Err(Verdict::RetryNow(ProduceFailure::Transient(e)))
                        }
                        Some(e) => {
                            if !e.is_queue_full() {
                                self.metrics.retried("broker");
                            }
                            Err(Verdict::Retry(ProduceFailure::Transient(e)))
                        }
                    }
                }
            })
            .await;
            match step {
                Ok(()) => return Ok(()),
                Err(Stopped::Cancelled) => return Err(Abandoned),
                Err(Stopped::GaveUp {
                    error: ProduceFailure::Refused(i, e),
                    attempts,
                }) => {
                    let out = &outputs[i];
                    let failure = Failure {
                        class: CLASS_OUTPUT_REJECTED.into(),
                        message: e.to_string(),
                        attempts,
                    };
                    out.span.in_scope(|| tracing::error!(error = %e, "the broker refuses the customer change; dead-lettering the event"));
                    self.dead_letters
                        .send(&self.dlq_topic, out.record, &failure, cancel)
                        .await?;
                    self.metrics.dead_lettered(CLASS_OUTPUT_REJECTED);
                    acked.store(i + 1, Ordering::SeqCst);
                }
                Err(Stopped::GaveUp {
                    error: ProduceFailure::Transient(e),
                    ..
                }) => {
                    // Not produced by the attempt above; retried like any transient failure.
                    tracing::warn!(error = %e, "producing failed; retrying");
                }
            }
        }
        Ok(())
    }

    /// Enqueues outputs in order until one is refused; returns the pending deliveries and the
    /// refusal, if any.
    fn enqueue_from(&self, outputs: &[Output<'_>]) -> (Vec<Pending>, Option<SendError>) {
        let mut pending = Vec::with_capacity(outputs.len());
        for out in outputs {
            let record = FutureRecord::to(&self.output_topic)
                .key(out.key.as_str())
                .payload(out.payload.as_slice())
                .headers(out.headers.clone());
            match self.producer.enqueue(record) {
                Ok(p) => pending.push(p),
                Err(e) => return (pending, Some(e)),
            }
        }
        (pending, None)
    }
}

/// Why one attempt at producing a batch's outputs stopped.
#[derive(Debug)]
enum ProduceFailure {
    /// Retry from the first output not acknowledged.
    Transient(SendError),
    /// The broker refuses output `0` itself: dead-letter its input record.
    Refused(usize, rdkafka::error::KafkaError),
}

impl std::fmt::Display for ProduceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProduceFailure::Transient(e) => write!(f, "{e}"),
            ProduceFailure::Refused(_, e) => write!(f, "refused: {e}"),
        }
    }
}

/// The intermediate result of one record, inside its span.
enum Step {
    Produce { key: String, payload: Vec<u8> },
    Skip,
    DeadLetter(Failure),
}

impl Step {
    fn dead_letter(class: &str, message: String, attempts: u32) -> Step {
        Step::DeadLetter(Failure {
            class: class.to_string(),
            message,
            attempts,
        })
    }
}
