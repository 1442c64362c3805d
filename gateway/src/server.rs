//! Running the gateway: build the producer, codec and state, serve HTTP (or HTTPS) until the
//! shutdown token is cancelled, then drain within `limits.shutdown_timeout`: stop accepting,
//! let in-flight requests finish (each is acknowledged or answered 503), wait for their writes,
//! flush the producer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
    serve::Listener,
};
use common::{
    health::Health,
    kafka::TopicError,
    ops::check,
    retry::{self, Retry, Stopped, Verdict},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use schemas::Codec;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;

use crate::{
    config::GatewayConfig,
    http::{AppState, PeerAddr, app},
    publish::KafkaPublisher,
    tls::{self, TlsListener},
};

/// Runs the gateway on `listener` until `shutdown` is cancelled, then shuts down within
/// `limits.shutdown_timeout`. Fails only on a configuration it cannot start with (TLS files, the
/// producer's settings); an unreachable broker or registry is reported by `/readyz` and answered
/// with 503 until it recovers.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match config.tls.enabled() {
        true => Some(tls::acceptor(&config.tls)?),
        false => None,
    };
    let publisher = connect_publisher(&config).await?;

    // Cancelled (used as a set-once flag) once the topic and schema are prepared.
    let prepared = CancellationToken::new();
    // Why preparing has not worked yet, for `/readyz`.
    let startup_health = Health::new();
    let state = AppState::new(&config, Arc::new(publisher.clone()))
        .with_check("startup", startup_check(prepared.clone(), startup_health.clone()));
    // Serving stops on shutdown, or when preparing fails for good.
    let stop = shutdown.child_token();
    let startup = tokio::spawn({
        let (config, publisher, stop) = (config.clone(), publisher.clone(), stop.clone());
        async move {
            let result = prepare(&config, &publisher, &startup_health, &stop).await;
            match &result {
                Ok(()) => prepared.cancel(),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot prepare the topic and schema; stopping");
                    stop.cancel();
                }
            }
            result
        }
    });
    let router = app(state.clone());

    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), topic = %config.topic, "gateway listening");
    let limits = ConnectionLimits {
        header_read_timeout: config.limits.header_read_timeout.into(),
        grace: config.limits.shutdown_timeout.into(),
    };
    let deadline = serve(listener, tls, router, &stop, limits).await?;
    // Serving stopped on shutdown, or because preparing failed for good: then the start-up task
    // has cancelled `stop` and is returning its error, which must not be lost to the race.
    let failed = match startup.is_finished() || !shutdown.is_cancelled() {
        true => startup.await.ok().and_then(Result::err),
        false => {
            startup.abort();
            None
        }
    };

    // Writes whose client hung up still run; their records are awaited here.
    let writes = state.writes();
    writes.close();
    if tokio::time::timeout_at(deadline, writes.wait()).await.is_err() {
        tracing::warn!(
            remaining = writes.len(),
            "writes still running at the shutdown deadline"
        );
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    match publisher.flush(remaining).await {
        Ok(()) => tracing::info!("producer flushed; gateway stopped"),
        Err(e) => tracing::warn!(error = %e, "producer not fully flushed at the shutdown deadline"),
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `/readyz` `startup`: the topic and schema are prepared; until then, what keeps failing.
fn startup_check(prepared: CancellationToken, health: Health) -> common::ops::Check {
    check(move || {
        let verdict = match prepared.is_cancelled() {
            true => Ok(()),
            false => Err(match health.verdict(Duration::ZERO) {
                Ok(()) => "topic and schema not prepared yet".to_string(),
                Err(problems) => format!("topic and schema not prepared yet: {problems}"),
            }),
        };
        async move { verdict }
    })
}

/// Serves until `shutdown`, then drains connections until `grace` has passed. Returns the
/// shutdown deadline.
async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: &CancellationToken,
    limits: ConnectionLimits,
) -> anyhow::Result<Instant> {
    match tls {
        None => serve_connections(listener, router, shutdown, limits).await,
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor)?;
            serve_connections(listener, router, shutdown, limits).await
        }
    }
}

/// How connections are bounded, from `limits`.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// A client must send a request's headers within this (`limits.header_read_timeout`), so a
    /// connection that trickles headers is closed instead of held.
    header_read_timeout: Duration,
    /// How long open connections get to finish after shutdown starts.
    grace: Duration,
}

/// Accepts connections until `shutdown` and serves each on its own task with hyper, HTTP/1.1
/// headers bounded in time. axum's own `serve` sets no timer, so hyper's header timeout would not
/// apply. On shutdown it stops accepting, asks every connection to finish its request in hand,
/// and waits for them until the grace period has passed.
async fn serve_connections<L>(
    mut listener: L,
    router: Router,
    shutdown: &CancellationToken,
    limits: ConnectionLimits,
) -> anyhow::Result<Instant>
where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    loop {
        // `accept` retries failed accepts itself (after a pause), so it only ever yields one.
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(serve_connection(io, peer, router, shutdown, limits));
    }
    // Dropping the listener stops accepting (and aborts the TLS handshakes under way).
    drop(listener);
    let deadline = Instant::now() + limits.grace;
    tracing::info!(
        grace = ?limits.grace,
        "shutting down: no new connections; finishing in-flight requests"
    );
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open at the shutdown deadline; closing them"
        );
    }
    Ok(deadline)
}

async fn serve_connection<Io>(
    io: Io,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        router.clone().call(request)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    if let Err(e) = connection.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error during shutdown");
    }
}

/// Creates the topic (when configured) and registers the schema, retrying what may succeed later
/// with the `backoff` settings until both worked or `stop`. Until then `/readyz` says not ready
/// (and why, through `health`); requests still try on their own and get 503 while the broker or
/// registry is away. A broker that refuses the topic settings, or a registry that refuses the
/// schema, cannot be waited out: that is an error, and the gateway stops.
async fn prepare(
    config: &GatewayConfig,
    publisher: &KafkaPublisher,
    health: &Health,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let retry = |what: &'static str| Retry {
        what,
        backoff: config.backoff.backoff(),
        cancel: stop,
        health: Some(health),
    };
    if config.topics.create {
        let mut spec = config.topics.spec(&config.topic);
        // Kafka's default topic limit (1 MiB + 12) is below what the producer may send.
        spec.config.insert(
            "max.message.bytes".to_string(),
            config.message_max_bytes().to_string(),
        );
        let created = retry::until_cancelled(retry("creating the topic"), |_| {
            let spec = spec.clone();
            async move {
                common::kafka::ensure_topics(&config.kafka, &[spec], "topics")
                    .await
                    .map_err(|e| match e {
                        e @ TopicError::Refused(_) => Verdict::GiveUp(e),
                        e @ TopicError::Unavailable(_) => Verdict::Retry(e),
                    })
            }
        })
        .await;
        match created {
            Ok(()) => {}
            Err(Stopped::Cancelled) => return Ok(()),
            Err(Stopped::GaveUp { error, .. }) => {
                anyhow::bail!("creating topic {}: {error}", config.topic)
            }
        }
    }
    let registered = retry::until_cancelled(retry("registering the schema"), |_| async {
        publisher.prepare().await.map_err(|e| match e {
            e if e.is_transient() => Verdict::Retry(e),
            e => Verdict::GiveUp(e),
        })
    })
    .await;
    match registered {
        Ok(id) => {
            tracing::info!(topic = %config.topic, schema_id = id, "schema registered");
            Ok(())
        }
        Err(Stopped::Cancelled) => Ok(()),
        Err(Stopped::GaveUp { error, .. }) => {
            anyhow::bail!(
                "setting `registry`: registering the schema of {}: {error}",
                config.topic
            )
        }
    }
}

/// The address a `run` listening on `listener` is reachable at, for the start-up line.
pub fn url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// The webhook topic's publisher as the configuration sets it up (registry client and producer),
/// for the server and for `backfill`, which writes events exactly as webhooks are written.
pub(crate) async fn connect_publisher(config: &GatewayConfig) -> anyhow::Result<KafkaPublisher> {
    let codec = Codec::new(&config.registry.codec_config())
        .context("setting `registry`: cannot create the schema registry client")?;
    KafkaPublisher::connect(
        &config.producer_kafka(),
        config.produce_timeout(),
        codec,
        &config.topic,
    )
    .await
    .context("setting `kafka`: cannot create the Kafka producer")
}
