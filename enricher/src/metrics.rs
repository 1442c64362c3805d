//! The enricher's own Prometheus metrics (served at `/metrics` by [`common::ops`]; the consumer
//! loop's, lag included, are registered beside them by [`common::stage`]). Labels are bounded:
//! error classes and retry causes come from fixed vocabularies; never ids or messages.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// A `CodecError::class()` or `NormalizeError::class()` value.
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// `registry` or `broker`.
    pub cause: String,
}

/// Every metric the enricher exports, cheap to clone (each metric is a shared handle).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Records handed to the enricher (a record redelivered after a crash or rebalance counts
    /// again).
    pub records_in: Counter,
    /// Customer changes acknowledged by the broker on the output topic.
    pub records_out: Counter,
    /// Records whose event type is not one the enricher normalises.
    pub records_skipped: Counter,
    /// Records written to the dead-letter topic, by error class.
    pub dead_lettered: Family<ClassLabel, Counter>,
    /// Transient failures that were retried, by cause.
    pub retries: Family<CauseLabel, Counter>,
    /// Time from a batch being handed over until every record in it is finished.
    pub processing_seconds: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them under the `enricher_` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            records_in: Counter::default(),
            records_out: Counter::default(),
            records_skipped: Counter::default(),
            dead_lettered: Family::default(),
            retries: Family::default(),
            // 1 ms … ~33 s.
            processing_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register(
            "records_in",
            "Records consumed from the input topic",
            m.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Customer changes acknowledged on the output topic",
            m.records_out.clone(),
        );
        registry.register(
            "records_skipped",
            "Records of event types that are not normalised (their offsets still advance)",
            m.records_skipped.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter topic, by error class",
            m.dead_lettered.clone(),
        );
        registry.register(
            "retries",
            "Transient failures retried, by cause",
            m.retries.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from a batch being handed to the enricher until every record in it is finished",
            m.processing_seconds.clone(),
        );
        m
    }

    pub fn dead_lettered(&self, class: &str) {
        self.dead_lettered
            .get_or_create(&ClassLabel {
                class: class.to_string(),
            })
            .inc();
    }

    pub fn retried(&self, cause: &'static str) {
        self.retries
            .get_or_create(&CauseLabel {
                cause: cause.to_string(),
            })
            .inc();
    }
}
