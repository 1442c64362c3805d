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
//! * [`metrics`]: the stage's Prometheus metrics (the loop's own, lag included, come from
//!   `common`).
//!
//! [`run`] builds the handler and hands it to [`common::stage::run_consuming`], which wires the
//! ops endpoints, producer, topics, consumer loop and lag; `main.rs` only parses the command line.

pub mod config;
pub mod handler;
pub mod metrics;
pub mod normalize;

use anyhow::Context as _;
use common::{
    ops,
    retry::Verdict,
    stage::{self, StartError},
};
use prometheus_client::registry::Registry;
use schemas::{Codec, CodecError, Customer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::EnricherConfig;

/// The stage's name: the `dlq.stage` header, the Kafka client id and the default service name.
pub const STAGE: &str = "enricher";

/// Runs the enricher until `shutdown` is cancelled (see [`common::stage::run_consuming`] for the
/// wiring): registers the output schema, then consumes. On shutdown it finishes (or, after the
/// grace period, abandons) the batches in hand, commits exactly what is finished and leaves the
/// group.
pub async fn run(
    config: EnricherConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix(STAGE);
    let metrics = metrics::Metrics::new(&mut registry);
    let codec =
        Codec::new(&config.registry.codec_config()).context("setting up the schema registry client")?;
    let checks = vec![("schema_registry", registry_check(&codec))];
    let config = &config;
    stage::run_consuming(
        config,
        registry,
        checks,
        ops_listener,
        shutdown,
        move |startup| async move {
            // Register (or look up) the output schema now, so a refused schema fails start-up rather
            // than the first record.
            let output = config.output_topic.as_str();
            let id = startup
                .retry(&format!("preparing the schema of {output}"), |_| async {
                    codec.prepare::<Customer>(output).await.map_err(|e| match e {
                        e @ CodecError::RegistryUnavailable(_) => Verdict::Retry(e),
                        e => Verdict::GiveUp(e),
                    })
                })
                .await?;
            tracing::info!(topic = %output, schema_id = id, "output schema ready");
            tracing::info!(
                group = %config.group,
                input = %config.input_topic,
                output = %output,
                dlq = %config.dlq_topic(),
                "enricher started"
            );
            Ok::<_, StartError>(handler::Enricher::new(handler::EnricherParts {
                codec,
                producer: startup.producer,
                dead_letters: startup.dead_letters,
                health: startup.health,
                metrics,
                output_topic: config.output_topic.clone(),
                dlq_topic: config.dlq_topic(),
                group: config.group.clone(),
                event_types: config.event_types.clone(),
                backoff: config.backoff.clone(),
            }))
        },
    )
    .await
}

/// `/readyz` `schema_registry`: the registry answers.
fn registry_check(codec: &Codec) -> ops::Check {
    let codec = codec.clone();
    ops::check(move || {
        let codec = codec.clone();
        async move { codec.check_registry().await.map_err(|e| e.to_string()) }
    })
}
