//! Consumer lag for `/metrics`, measured the same way for every consuming stage: for each
//! partition the loop owns, the high watermark minus the group's committed offset (what a restart
//! would re-read). Measured on an interval, on a client of its own: on the loop consumer's
//! connection the queries would queue behind long-polling fetches. The client carries the group
//! id only to read the group's committed offsets; it never joins the group.

use std::{collections::HashSet, sync::Arc, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::KafkaSettings,
    consume::{LoopMetrics, LoopStatus, PartitionLabel},
};

/// Bound on each lag query.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's lag as measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// The lag client for `group`. Blocks briefly while it is created.
pub fn client(kafka: &KafkaSettings, client_id: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut config = crate::kafka::client_config(kafka, &format!("{client_id}-lag"));
    config.set("group.id", group).set("enable.auto.commit", "false");
    config.create()
}

/// Measures the lag of `partitions`: high watermark minus the committed offset, or minus the low
/// watermark when nothing is committed yet. Blocks on broker round trips.
pub fn measure(client: &BaseConsumer, partitions: &[(String, i32)]) -> Result<Vec<PartitionLag>, KafkaError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = client.committed_offsets(tpl, TIMEOUT)?;
    let mut out = Vec::new();
    for (topic, partition) in partitions {
        let (low, high) = client.fetch_watermarks(topic, *partition, TIMEOUT)?;
        let done = match committed.find_partition(topic, *partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        out.push(PartitionLag {
            topic: topic.clone(),
            partition: *partition,
            lag: (high - done).max(0),
        });
    }
    Ok(out)
}

/// Updates `metrics.consumer_lag` every `interval` until `stop`; partitions no longer owned lose
/// their series.
pub async fn sample(
    client: BaseConsumer,
    status: LoopStatus,
    metrics: LoopMetrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let client = Arc::new(client);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: HashSet<PartitionLabel> = HashSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let assigned = status.assigned();
        let c = client.clone();
        let measured = match tokio::task::spawn_blocking(move || measure(&c, &assigned)).await {
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
        let now: HashSet<PartitionLabel> = measured
            .iter()
            .map(|m| PartitionLabel {
                topic: m.topic.clone(),
                partition: m.partition.to_string(),
            })
            .collect();
        for old in shown.difference(&now) {
            metrics.consumer_lag.remove(old);
        }
        for m in &measured {
            let label = PartitionLabel {
                topic: m.topic.clone(),
                partition: m.partition.to_string(),
            };
            metrics.consumer_lag.get_or_create(&label).set(m.lag);
        }
        shown = now;
    }
}
