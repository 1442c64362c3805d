//! The per-batch work of the enricher, run by [`common::consume::ConsumerLoop`] for one partition
//! at a time, in offset order: decode each `stripe.events` record, normalise it, and produce the
//! customer change; dead-letter what can never succeed; retry what can.
//!
//! A batch returns only when every record in it is finished: its output acknowledged by the
//! broker, or its bytes on the dead-letter topic with the reason, or skipped. Only then does the
//! loop let its offsets be committed, which makes delivery at-least-once.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use common::{
    consume::{Abandoned, BatchHandler, Record},
    dlq::{DeadLetters, Failure},
    kafka::{context_from_headers, trace_headers},
};
use opentelemetry::trace::TraceContextExt;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
};
use schemas::{Codec, CodecError, Customer, StripeEvent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{config::BackoffConfig, metrics::Metrics, normalize};

/// Error class on dead letters of records whose output the broker refused for good.
pub const CLASS_OUTPUT_REJECTED: &str = "output_rejected";

/// What the enricher needs to process batches; shared by every partition's worker.
pub struct Enricher {
    codec: Codec,
    producer: Arc<FutureProducer>,
    dead_letters: DeadLetters,
    metrics: Metrics,
    output_topic: String,
    dlq_topic: String,
    /// Event types turned into customer changes; others are skipped.
    event_types: BTreeSet<String>,
    backoff: BackoffConfig,
    /// librdkafka reports every delivery within `message.timeout.ms`; this is the guard if it
    /// does not.
    delivery_guard: Duration,
}

/// Construction parameters of an [`Enricher`].
#[derive(Clone)]
pub struct EnricherParts {
    pub codec: Codec,
    pub producer: Arc<FutureProducer>,
    pub metrics: Metrics,
    pub output_topic: String,
    pub dlq_topic: String,
    pub event_types: BTreeSet<String>,
    pub backoff: BackoffConfig,
    pub produce_timeout: Duration,
}

impl Enricher {
    pub fn new(parts: EnricherParts) -> Self {
        let dead_letters = DeadLetters::new(parts.producer.clone(), crate::STAGE, parts.produce_timeout);
        Enricher {
            codec: parts.codec,
            producer: parts.producer,
            dead_letters,
            metrics: parts.metrics,
            output_topic: parts.output_topic,
            dlq_topic: parts.dlq_topic,
            event_types: parts.event_types,
            backoff: parts.backoff,
            delivery_guard: parts.produce_timeout + Duration::from_secs(5),
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
        let parent = context_from_headers(record.headers.as_ref());
        let span = tracing::info_span!(
            "enrich",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            customer_id = tracing::field::Empty,
        );
        // Fails only when the span is disabled or already started; neither loses a record.
        let _ = span.set_parent(parent.clone());
        let prepared = self
            .prepare_in_span(record, cancel, &span)
            .instrument(span.clone())
            .await?;
        Ok(match prepared {
            Step::Produce { key, payload } => {
                // With spans exported the child span's context is passed on; without, the
                // incoming context is, so the trace id still follows the record downstream.
                let cx = span.context();
                let cx = if cx.span().span_context().is_valid() {
                    cx
                } else {
                    parent
                };
                Prepared::Produce(Output {
                    record,
                    key,
                    payload,
                    headers: trace_headers(&cx),
                    span,
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
        let mut backoff = self.backoff.backoff();
        loop {
            let outcome = tokio::select! {
                r = self.codec.decode::<StripeEvent>(payload) => r,
                () = cancel.cancelled() => return Err(Abandoned),
            };
            match outcome {
                Err(e) if e.is_transient() => {
                    self.metrics.retried("registry");
                    self.wait(&mut backoff, &e, cancel).await?;
                }
                other => return Ok((other, backoff.attempts() + 1)),
            }
        }
    }

    /// Encodes a `Customer`, retrying while the registry is unavailable or refuses the schema (a
    /// deployment problem an operator fixes; dead-lettering every record would not help).
    async fn encode(
        &self,
        customer: &Customer,
        cancel: &CancellationToken,
    ) -> Result<Result<Vec<u8>, CodecError>, Abandoned> {
        let mut backoff = self.backoff.backoff();
        loop {
            let outcome = tokio::select! {
                r = self.codec.encode(&self.output_topic, customer) => r,
                () = cancel.cancelled() => return Err(Abandoned),
            };
            match outcome {
                Err(e @ (CodecError::RegistryUnavailable(_) | CodecError::SchemaRejected { .. })) => {
                    self.metrics.retried("registry");
                    if matches!(e, CodecError::SchemaRejected { .. }) {
                        tracing::error!(error = %e, "the registry refuses the output schema; retrying until it is fixed");
                    }
                    self.wait(&mut backoff, &e, cancel).await?;
                }
                other => return Ok(other),
            }
        }
    }

    async fn wait(
        &self,
        backoff: &mut common::retry::Backoff,
        error: &(dyn std::fmt::Display + Sync),
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, attempt = backoff.attempts(), "transient failure; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = cancel.cancelled() => Err(Abandoned),
        }
    }

    /// Produces every output and waits for all acknowledgements. All records are enqueued at
    /// once (the idempotent producer keeps their order within a partition); when one fails, it
    /// and every record after it are produced again, in order, so a key's last record on the
    /// output topic is always its latest change (earlier ones may repeat).
    async fn produce_in_order(
        &self,
        outputs: &[Output<'_>],
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut from = 0;
        let mut backoff = self.backoff.backoff();
        while from < outputs.len() {
            let mut deliveries = Vec::with_capacity(outputs.len() - from);
            let mut stop: Option<KafkaError> = None;
            for out in &outputs[from..] {
                let record = FutureRecord::to(&self.output_topic)
                    .key(out.key.as_str())
                    .payload(out.payload.as_slice())
                    .headers(out.headers.clone());
                match self.producer.send_result(record) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err((e, _)) => {
                        stop = Some(e);
                        break;
                    }
                }
            }
            let enqueued = deliveries.len();
            let mut failed: Option<(usize, KafkaError)> = None;
            for (i, delivery) in deliveries.into_iter().enumerate() {
                let outcome = tokio::select! {
                    r = tokio::time::timeout(self.delivery_guard, delivery) => r,
                    () = cancel.cancelled() => return Err(Abandoned),
                };
                let error = match outcome {
                    Ok(Ok(Ok(_))) => None,
                    Ok(Ok(Err((e, _)))) => Some(e),
                    Ok(Err(_)) => Some(KafkaError::Canceled),
                    Err(_) => Some(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)),
                };
                if let Some(e) = error {
                    failed = Some((from + i, e));
                    break;
                }
                let out = &outputs[from + i];
                self.metrics.records_out.inc();
                out.span
                    .in_scope(|| tracing::debug!(key = %out.key, "customer change produced"));
            }
            match (failed, stop) {
                (None, None) => return Ok(()),
                (None, Some(e)) => {
                    // Enqueueing stopped (typically a local queue full of other partitions'
                    // records): what was enqueued is acknowledged; carry on from there, after a
                    // pause when nothing could be enqueued or the error was not a full queue.
                    from += enqueued;
                    let queue_full = matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                    if enqueued == 0 || !queue_full {
                        if !queue_full {
                            self.metrics.retried("broker");
                        }
                        self.wait(&mut backoff, &e, cancel).await?;
                    }
                }
                (Some((i, e)), _) if is_permanent(&e) => {
                    let out = &outputs[i];
                    let failure = Failure {
                        class: CLASS_OUTPUT_REJECTED.into(),
                        message: e.to_string(),
                        attempts: backoff.attempts() + 1,
                    };
                    out.span.in_scope(|| tracing::error!(error = %e, "the broker refuses the customer change; dead-lettering the event"));
                    self.dead_letters
                        .send(&self.dlq_topic, out.record, &failure, cancel)
                        .await?;
                    self.metrics.dead_lettered(CLASS_OUTPUT_REJECTED);
                    from = i + 1;
                }
                (Some((i, e)), _) => {
                    outputs[i]
                        .span
                        .in_scope(|| tracing::warn!(error = %e, "producing a customer change failed"));
                    self.metrics.retried("broker");
                    self.wait(&mut backoff, &e, cancel).await?;
                    from = i;
                }
            }
        }
        Ok(())
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

/// Produce errors no retry can fix: the record itself is refused.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}
