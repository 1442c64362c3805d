//! sink-dataverse: consumes `customers.normalized` and writes every customer change to a
//! Dataverse contact exactly once in effect, committing offsets only after the write (or the
//! dead letter) is done.
//!
//! From the consumer inwards:
//! * `common::consume::ConsumerLoop` — ordered per partition, concurrent across partitions,
//!   commits never pass an unfinished record. This crate only supplies its handler.
//! * [`handler`] — decodes records, applies one customer's changes in partition order and
//!   different customers concurrently, dead-letters refusals with Dataverse's code and message.
//! * [`apply`] — the write loop (known row or read → decide → conditional write → on 412 read and
//!   decide again) and
//!   the retry policy (transient failures retried, never skipped).
//! * [`cache`] — what the sink last read or wrote of each contact (bounded), so known contacts
//!   are written without a read and new ones are created without one.
//! * [`guard`] — the staleness guard: which conditional write, if any, applies a change. Pure.
//! * [`mapping`] — `Customer` → contact columns, the tombstone. Pure.
//! * [`client`] — HTTP: tokens, the shared rate limiter, `$batch` coalescing (`Batcher`, whose
//!   tasks end the stage if they die), contacts by key.
//! * [`rate`] — the throttling policy (Retry-After pauses, halving, ramp-up, dop hint). Pure core.
//! * [`auth`] — OAuth 2.0 client credentials, cached and renewed.
//! * [`batch`], [`odata`], [`error`] — wire formats and the error classification. Pure.
//! * [`provision`] — `sink-dataverse provision`: the columns and alternate key the configuration
//!   needs, created through the metadata API, and the same check at start-up.
//! * [`config`], [`metrics`] — settings and the stage's Prometheus metrics (the loop's own, lag
//!   included, come from `common`).
//!
//! [`run`] builds the handler and hands it to `common::stage::run_consuming`, which wires the ops
//! endpoints, producer, topics, consumer loop and lag; `main.rs` only parses the command line.

pub mod apply;
pub mod auth;
pub mod batch;
pub mod cache;
pub mod client;
pub mod config;
pub mod error;
pub mod guard;
pub mod handler;
pub mod mapping;
pub mod metrics;
pub mod odata;
pub mod provision;
pub mod rate;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    ops::{self, Check},
    stage::{self, StartError},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::SinkConfig;

use crate::{
    auth::{Credentials, TokenSource},
    client::{Batcher, ContactStore, ProbeError, ThrottlePolicy, Transport},
    handler::SinkHandler,
    mapping::Columns,
    metrics::Metrics,
    rate::{Controller, Limiter},
};

/// Runs the sink until `shutdown` is cancelled (see [`common::stage::run_consuming`] for the
/// wiring): checks the Dataverse configuration, then consumes. On shutdown, in-flight writes get
/// `consumer.shutdown_grace` to finish, exactly what is finished is committed, and the call
/// returns. Fails at start-up when Dataverse or the token endpoint definitely refuses the
/// configuration (wrong table, credentials) or the table lacks a column or the alternate key the
/// configuration needs (naming it, and pointing to `sink-dataverse provision`); while Dataverse is
/// unreachable or the key's index is still building, start-up waits and retries.
pub async fn run(
    config: SinkConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Connection {
        metrics,
        registry,
        tokens,
        transport,
    } = connect(&config)?;
    let dv = &config.dataverse;
    let columns = Columns::from_config(&config);
    let checks = readiness_checks(&tokens, &transport, &columns);
    tracing::info!(environment = %dv.environment(), table = %columns.table, "sink-dataverse starting");

    let config = &config;
    stage::run_consuming(config, registry, checks, ops_listener, shutdown, move |startup| async move {
        startup
            .retry("checking the Dataverse columns and alternate key", |_| {
                provision::startup_check(&transport, config)
            })
            .await?;
        check_dataverse(&transport, &columns).await?;
        let codec = schemas::Codec::new(&config.registry.codec_config()).context("schema registry settings")?;
        let dataverse = Batcher::start(transport, config.batch_size, config.linger.into(), startup.fatal.clone());
        tracing::info!(group = %config.group, topic = %config.input_topic, dlq = %config.dlq_topic(), "sink-dataverse started");
        Ok::<_, StartError>(SinkHandler {
            codec,
            contacts: Arc::new(ContactStore::new(dataverse, columns.clone())),
            known: cache::KnownRows::new(config.contact_cache_entries),
            columns,
            dead_letters: startup.dead_letters,
            dlq_topic: config.dlq_topic(),
            group: config.group.clone(),
            metrics,
            health: startup.health,
            backoff: config.backoff.clone(),
        })
    })
    .await
}

/// What talking to Dataverse takes: the HTTP client with its tokens, limiter and metrics.
pub struct Connection {
    pub metrics: Metrics,
    pub registry: prometheus_client::registry::Registry,
    pub tokens: Arc<TokenSource>,
    pub transport: Arc<Transport>,
}

/// Builds the HTTP client, token source, limiter and transport of a configuration.
pub fn connect(config: &SinkConfig) -> anyhow::Result<Connection> {
    let (metrics, registry) = Metrics::new();
    let request_timeout: Duration = config.request_timeout.into();
    let http = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .build()
        .context("building the HTTP client")?;
    let dv = &config.dataverse;
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        Credentials {
            token_url: dv.token_endpoint(),
            client_id: dv.client_id.trim().to_string(),
            client_secret: dv.client_secret.clone(),
            scope: dv.scope(),
        },
        metrics.clone(),
    ));
    let limiter = Limiter::new(
        Controller::new(config.max_concurrency, config.throttle.ramp_up_after)
            .with_window(config.throttle.window.into()),
    );
    metrics.concurrency_limit(limiter.limit());
    let transport = Arc::new(Transport::new(
        http,
        dv.api_base(),
        tokens.clone(),
        limiter,
        metrics.clone(),
        ThrottlePolicy {
            default_retry_after: config.throttle.default_retry_after.into(),
            max_retry_after: config.throttle.max_retry_after.into(),
        },
    ));
    Ok(Connection {
        metrics,
        registry,
        tokens,
        transport,
    })
}

/// The probe path: one row of the table, only the given columns.
fn probe_path(columns: &Columns, select: &[&str]) -> String {
    format!("{}{}&$top=1", columns.table, odata::select_query(select))
}

/// Fails when Dataverse definitely refuses the configured table, columns or credentials; an
/// outage is only logged (writes wait for it to end).
async fn check_dataverse(transport: &Transport, columns: &Columns) -> anyhow::Result<()> {
    let mut select = vec![columns.alternate_key.as_str()];
    select.extend(columns.select());
    match transport.probe(&probe_path(columns, &select)).await {
        Ok(()) => {
            tracing::info!("Dataverse accepts the configured table and columns");
            Ok(())
        }
        Err(ProbeError::Refused(message)) => anyhow::bail!(
            "Dataverse refused the configuration (check dataverse.environment_url, dataverse.table, dataverse.alternate_key, dataverse.created_column, dataverse.deleted_column, dataverse.rank_column, dataverse.event_ids_column, mapping.*, and the app's credentials and privileges): {message}"
        ),
        Err(ProbeError::Unavailable(message)) => {
            tracing::warn!(error = %message, "Dataverse is not reachable at start-up; writes will wait for it");
            Ok(())
        }
    }
}

fn readiness_checks(
    tokens: &Arc<TokenSource>,
    transport: &Arc<Transport>,
    columns: &Columns,
) -> Vec<(&'static str, Check)> {
    let tokens = tokens.clone();
    let transport = transport.clone();
    let path = probe_path(columns, &[columns.alternate_key.as_str()]);
    vec![
        (
            "dataverse_token",
            ops::check(move || {
                let tokens = tokens.clone();
                async move { tokens.token().await.map(|_| ()).map_err(|e| e.to_string()) }
            }),
        ),
        (
            "dataverse",
            ops::check(move || {
                let (transport, path) = (transport.clone(), path.clone());
                async move { transport.probe(&path).await.map_err(|e| e.to_string()) }
            }),
        ),
    ]
}
