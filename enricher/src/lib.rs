//! The enricher stage: consumes `stripe.events`, turns customer events into normalised
//! [`schemas::Customer`] changes and produces them to `customers.normalized`, at least once and
//! in order per partition. It runs as a consumer group: start more instances to scale out.
//!
//! Modules:
//! * [`normalize`]: the normalisation rules as pure functions (documented for users in
//!   `NORMALIZATION.md`).
//! * [`config`]: [`EnricherConfig`], every setting with its default, validated at start-up.
//! * [`handler`]: the per-batch work (decode, normalise, produce, dead-letter, retry) that
//!   [`common::consume::ConsumerLoop`] runs per partition.
//! * [`metrics`]: the Prometheus metrics and the consumer-lag sampler.
//!
//! [`run`] wires them together with the ops endpoints; `main.rs` only parses the command line.

pub mod config;
pub mod handler;
pub mod metrics;
pub mod normalize;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    consume::ConsumerLoop,
    kafka::{self, TopicSpec},
    ops,
};
use prometheus_client::registry::Registry;
use schemas::{Codec, CodecError, Customer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::EnricherConfig;

/// The stage's name: the `dlq.stage` header, the Kafka client id and the default service name.
pub const STAGE: &str = "enricher";

/// Runs the enricher until `shutdown` is cancelled: serves the ops endpoints on `ops_listener`,
/// creates the topics if configured, joins the consumer group and processes records. On shutdown
/// it finishes (or, after the grace period, abandons) the batches in hand, commits exactly what is
/// finished and leaves the group.
pub async fn run(
    config: EnricherConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dlq_topic = config.dlq_topic();
    let mut registry = Registry::with_prefix(STAGE);
    let metrics = metrics::Metrics::new(&mut registry);
    let codec =
        Codec::new(&config.registry.codec_config()).context("setting up the schema registry client")?;

    // Ops first, so /healthz answers and /readyz explains while dependencies are awaited.
    let ops_stop = CancellationToken::new();
    let checks = readiness_checks(&config, &codec);
    let ops_task = tokio::spawn(ops::serve(
        ops_listener,
        ops::router(Arc::new(registry), checks),
        ops_stop.clone(),
    ));
    let result = run_consumer(&config, &dlq_topic, codec, metrics, &shutdown).await;
    ops_stop.cancel();
    match ops_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops server failed"),
        Err(e) => tracing::warn!(error = %e, "ops server task failed"),
    }
    result
}

async fn run_consumer(
    config: &EnricherConfig,
    dlq_topic: &str,
    codec: Codec,
    metrics: metrics::Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if config.create_topics {
        let topics = [
            config.input_topic.as_str(),
            config.output_topic.as_str(),
            dlq_topic,
        ]
        .map(|t| TopicSpec::new(t, config.topic_partitions));
        let created = retry_until_shutdown(config, shutdown, "creating topics", || {
            kafka::ensure_topics(&config.kafka, &topics)
        })
        .await;
        if created.is_none() {
            return Ok(());
        }
    }
    // Register (or look up) the output schema now, so a refused schema fails start-up rather than
    // the first record.
    let mut backoff = config.backoff.backoff();
    loop {
        let prepared = tokio::select! {
            r = codec.prepare::<Customer>(&config.output_topic) => r,
            () = shutdown.cancelled() => return Ok(()),
        };
        match prepared {
            Ok(id) => {
                tracing::info!(topic = %config.output_topic, schema_id = id, "output schema ready");
                break;
            }
            Err(e @ CodecError::RegistryUnavailable(_)) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "schema registry unavailable at start-up; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(e).context(format!("preparing the schema of {}", config.output_topic)),
        }
    }

    let produce_timeout: Duration = config.produce_timeout.into();
    let producer = {
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || kafka::producer(&kafka, STAGE, produce_timeout))
            .await
            .context("creating the producer")?
            .context("creating the producer")?
    };
    let consumer_loop = {
        let mut kafka = config.kafka.clone();
        if let Some(id) = &config.instance_id {
            kafka.properties.insert("group.instance.id".into(), id.clone());
        }
        let (group, input) = (config.group.clone(), config.input_topic.clone());
        let settings = config.consumer.loop_settings();
        tokio::task::spawn_blocking(move || {
            ConsumerLoop::new(&kafka, STAGE, &group, &[input.as_str()], settings)
        })
        .await
        .context("creating the consumer")?
        .context("creating the consumer")?
    };

    let lag_client = {
        let (kafka, group) = (config.kafka.clone(), config.group.clone());
        tokio::task::spawn_blocking(move || metrics::lag_client(&kafka, &group))
            .await
            .context("creating the lag client")?
            .context("creating the lag client")?
    };
    let lag_stop = CancellationToken::new();
    let lag_task = tokio::spawn(metrics::lag_sampler(
        consumer_loop.consumer(),
        lag_client,
        metrics.clone(),
        config.consumer.lag_interval.into(),
        lag_stop.clone(),
    ));

    let handler = Arc::new(handler::Enricher::new(handler::EnricherParts {
        codec,
        producer: Arc::new(producer),
        metrics,
        output_topic: config.output_topic.clone(),
        dlq_topic: dlq_topic.to_string(),
        event_types: config.event_types.clone(),
        backoff: config.backoff.clone(),
        produce_timeout,
    }));
    tracing::info!(
        group = %config.group,
        input = %config.input_topic,
        output = %config.output_topic,
        dlq = %dlq_topic,
        "enricher started"
    );
    let result = consumer_loop.run(handler, shutdown.clone()).await;
    lag_stop.cancel();
    let _ = lag_task.await;
    result.context("consumer loop failed")?;
    tracing::info!("enricher stopped");
    Ok(())
}

/// Retries `op` with backoff until it succeeds (`Some`) or shutdown begins (`None`).
async fn retry_until_shutdown<T, E, F, Fut>(
    config: &EnricherConfig,
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = config.backoff.backoff();
    loop {
        let outcome = tokio::select! {
            r = op() => r,
            () = shutdown.cancelled() => return None,
        };
        match outcome {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// `/readyz`: the broker serves metadata and the registry answers.
fn readiness_checks(config: &EnricherConfig, codec: &Codec) -> Vec<(&'static str, ops::Check)> {
    let kafka_settings = config.kafka.clone();
    let kafka_check = ops::check(move || {
        let settings = kafka_settings.clone();
        async move { kafka::check_broker(&settings, Duration::from_secs(2)).await }
    });
    let codec = codec.clone();
    let registry_check = ops::check(move || {
        let codec = codec.clone();
        async move { codec.check_registry().await.map_err(|e| e.to_string()) }
    });
    vec![("kafka", kafka_check), ("schema_registry", registry_check)]
}
