//! The enricher's Prometheus metrics (served at `/metrics` by [`common::ops`]) and the periodic
//! consumer-lag measurement. Labels are bounded: error classes and retry causes come from fixed
//! vocabularies, partitions from the topic's partition count; never ids or messages.

use std::{sync::Arc, time::Duration};

use common::{config::KafkaSettings, consume::LoopContext};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use rdkafka::{
    Offset,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: String,
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
    /// Records in the partition not yet committed by the group (high watermark minus committed
    /// offset), for the partitions this instance owns.
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Partitions of the input topic this instance owns.
    pub assigned_partitions: Gauge,
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
            consumer_lag: Family::default(),
            assigned_partitions: Gauge::default(),
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
        registry.register(
            "consumer_lag",
            "Records not yet committed by the group, per owned partition",
            m.consumer_lag.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Input partitions this instance owns",
            m.assigned_partitions.clone(),
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

/// One partition's lag as measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// A client of its own for lag queries: on the loop consumer's connection they would queue
/// behind long-polling fetches. It carries the group id only to read the group's committed
/// offsets; it never joins the group.
pub fn lag_client(kafka: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut config = common::kafka::client_config(kafka, "enricher-lag");
    config.set("group.id", group).set("enable.auto.commit", "false");
    config.create()
}

/// Measures the lag of every partition the loop consumer owns: high watermark minus the
/// group's committed offset (what a restart would re-read), or minus the low watermark when
/// nothing is committed yet. Blocks on broker round trips: call from a blocking thread.
pub fn measure_lag(
    consumer: &StreamConsumer<LoopContext>,
    client: &BaseConsumer,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, KafkaError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = client.committed_offsets(assignment.clone(), timeout)?;
    let mut out = Vec::new();
    for elem in assignment.elements() {
        let (topic, partition) = (elem.topic(), elem.partition());
        let (low, high) = client.fetch_watermarks(topic, partition, timeout)?;
        let done = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        out.push(PartitionLag {
            topic: topic.to_string(),
            partition,
            lag: (high - done).max(0),
        });
    }
    Ok(out)
}

/// Updates the lag gauges every `interval` until `stop`; partitions no longer owned lose their
/// series. `assigned_partitions` is updated on every tick, even when the broker queries fail.
pub async fn lag_sampler(
    consumer: Arc<StreamConsumer<LoopContext>>,
    client: BaseConsumer,
    metrics: Metrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let client = Arc::new(client);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: Vec<PartitionLabel> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(assignment) = consumer.assignment() {
            metrics.assigned_partitions.set(assignment.count() as i64);
        }
        let (c, client) = (consumer.clone(), client.clone());
        let measured = match tokio::task::spawn_blocking(move || measure_lag(&c, &client, LAG_TIMEOUT)).await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "measuring consumer lag failed");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "lag measurement task failed");
                continue;
            }
        };
        let now: Vec<PartitionLabel> = measured
            .iter()
            .map(|m| PartitionLabel {
                topic: m.topic.clone(),
                partition: m.partition.to_string(),
            })
            .collect();
        for old in shown.iter().filter(|l| !now.contains(l)) {
            metrics.consumer_lag.remove(old);
        }
        for (label, m) in now.iter().zip(&measured) {
            metrics.consumer_lag.get_or_create(label).set(m.lag);
        }
        shown = now;
    }
}

/// Bound on each lag query.
const LAG_TIMEOUT: Duration = Duration::from_secs(5);
