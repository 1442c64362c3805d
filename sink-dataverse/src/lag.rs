//! Consumer lag for `/metrics`: for each partition this member owns, the records after the
//! group's committed offset. Measured on an interval off the async threads (the calls block).

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::consume::LoopContext;
use rdkafka::{
    Offset,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Reports lag every `interval` until `stop` is cancelled.
pub async fn report(
    consumer: Arc<StreamConsumer<LoopContext>>,
    metrics: Metrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut reported: HashSet<(String, i32)> = HashSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let consumer = consumer.clone();
        let measured = tokio::task::spawn_blocking(move || measure(&consumer)).await;
        let lags = match measured {
            Ok(Ok(lags)) => lags,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "measuring consumer lag failed");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "lag measurement task failed");
                continue;
            }
        };
        let owned: HashSet<(String, i32)> = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        for (topic, partition) in reported.difference(&owned) {
            metrics.forget_lag(topic, *partition);
        }
        for (topic, partition, lag) in &lags {
            metrics.lag(topic, *partition, *lag);
        }
        reported = owned;
    }
}

/// `(topic, partition, high watermark − committed offset)` for every assigned partition.
fn measure(consumer: &StreamConsumer<LoopContext>) -> Result<Vec<(String, i32, i64)>, KafkaError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(assignment, TIMEOUT)?;
    let mut out = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        let position = match element.offset() {
            Offset::Offset(o) => o,
            // Nothing committed yet: everything still held is lag.
            _ => low,
        };
        out.push((topic.to_string(), partition, (high - position).max(0)));
    }
    Ok(out)
}
