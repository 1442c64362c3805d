//! The HTTP surface: `POST /webhooks/stripe` plus the ops routes. The handler is a thin adapter:
//! admission (source address, content type, body size, body read time), then the pure steps
//! ([`signature`](crate::signature), [`event`](crate::event)), then the in-flight cap, dedup and
//! the write to the
//! [`Publisher`]. It answers 200 only after the publisher reports the event durable (or it was already).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::{Bytes, BytesMut};
use common::ops::Check;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field::Empty};

use crate::{
    config::{GatewayConfig, IpList},
    dedup::{Admission, Dedup},
    error::GatewayError,
    event::VerifiedEvent,
    metrics::{Metrics, Outcome},
    publish::{PublishError, Publisher},
    signature::{SignatureError, Verifier},
};

/// The webhook path Stripe is configured with.
pub const WEBHOOK_PATH: &str = "/webhooks/stripe";

/// The peer address of a connection, plain or TLS (see `server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Everything a request needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    verifier: Verifier,
    filter: EventFilter,
    /// Empty: any source.
    allow_ips: IpList,
    trusted_proxies: IpList,
    dedup: Dedup,
    publisher: Arc<dyn Publisher>,
    metrics: Metrics,
    registry: Arc<Registry>,
    max_body: usize,
    request_timeout: std::time::Duration,
    body_read_timeout: std::time::Duration,
    produce_timeout: std::time::Duration,
    /// `limits.max_in_flight` permits, taken once the event is verified; a verified request that
    /// finds none is answered 503 at once.
    permits: Arc<Semaphore>,
    /// The writes, which outlive a client that hangs up, so shutdown can wait for them.
    writes: TaskTracker,
    extra_checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("verifier", &self.shared.verifier)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(config: &GatewayConfig, publisher: Arc<dyn Publisher>) -> Self {
        let (metrics, mut registry) = Metrics::new();
        publisher.register_metrics(&mut registry);
        let webhook = &config.webhook;
        AppState {
            shared: Arc::new(Shared {
                verifier: Verifier::new(
                    webhook.secrets.iter().map(|s| s.expose()),
                    webhook.tolerance.into(),
                    webhook.future_tolerance.into(),
                ),
                filter: EventFilter(config.event_types.0.clone()),
                allow_ips: config.allow_ips.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                dedup: Dedup::new(config.dedup.capacity, config.dedup.ttl.into()),
                publisher,
                metrics,
                registry: Arc::new(registry),
                max_body: config.limits.max_body,
                request_timeout: config.limits.request_timeout.into(),
                body_read_timeout: config.limits.body_read_timeout.into(),
                produce_timeout: config.limits.produce_timeout.into(),
                permits: Arc::new(Semaphore::new(config.limits.max_in_flight)),
                writes: TaskTracker::new(),
                extra_checks: Vec::new(),
            }),
        }
    }

    /// Adds a `/readyz` check beside the publisher's own (must be called before [`app`]).
    pub fn with_check(mut self, name: &'static str, check: Check) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.extra_checks.push((name, check)),
            None => tracing::error!(name, "readiness check added after the state was shared; ignored"),
        }
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The writes still running; [`crate::run`] waits for them on shutdown.
    pub fn writes(&self) -> &TaskTracker {
        &self.shared.writes
    }
}

/// The router: the webhook route plus `/healthz`, `/readyz` and `/metrics`.
pub fn app(state: AppState) -> Router {
    let mut checks = state.shared.publisher.checks();
    checks.extend(state.shared.extra_checks.iter().cloned());
    let ops = common::ops::router(state.shared.registry.clone(), checks);
    Router::new()
        .route(WEBHOOK_PATH, post(webhook).fallback(method_not_allowed))
        .with_state(state)
        .merge(ops)
}

async fn method_not_allowed(State(state): State<AppState>) -> Response {
    state.shared.metrics.request(Outcome::MethodNotAllowed, 0.0);
    GatewayError::MethodNotAllowed.into_response()
}

/// What a successful request answers.
#[derive(Debug)]
struct Accepted {
    outcome: Outcome,
    event_id: String,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "received": true, "id": self.event_id });
        match self.outcome {
            Outcome::Duplicate => body["duplicate"] = true.into(),
            Outcome::Ignored => body["ignored"] = true.into(),
            _ => {}
        }
        (StatusCode::OK, Json(body)).into_response()
    }
}

async fn webhook(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "webhook",
        otel.name = "POST /webhooks/stripe",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = WEBHOOK_PATH,
        http.response.status_code = Empty,
        event_id = Empty,
        event_type = Empty,
    );
    let shared = &state.shared;
    let result = async {
        tokio::time::timeout(shared.request_timeout, state.handle(request))
            .await
            .unwrap_or(Err(GatewayError::Timeout(shared.request_timeout)))
    }
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    let (outcome, response) = match result {
        Ok(accepted) => {
            tracing::debug!(outcome = accepted.outcome.as_str(), "webhook answered 200");
            (accepted.outcome, accepted.into_response())
        }
        Err(e) => {
            if let GatewayError::Signature(reason) = &e {
                shared.metrics.verification_failure(reason.reason());
            }
            (e.outcome(), e.into_response())
        }
    };
    shared.metrics.request(outcome, started.elapsed().as_secs_f64());
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

impl AppState {
    async fn handle(&self, request: Request) -> Result<Accepted, GatewayError> {
        let shared = &self.shared;
        let received_at = SystemTime::now();
        let (parts, body) = request.into_parts();
        self.check_source(&parts)?;
        check_content_type(&parts.headers)?;
        // No permit is held while the body arrives: a slow or unsigned upload costs its own
        // connection and the bytes it sent, never a slot verified events need.
        let body = read_body(body, &parts.headers, shared.max_body, shared.body_read_timeout).await?;

        let mut signatures = parts.headers.get_all("stripe-signature").iter();
        let header = signatures.next().map(|v| v.as_bytes());
        if signatures.next().is_some() {
            // Two headers would make "which one was verified" ambiguous for the audit trail.
            return Err(SignatureError::MalformedHeader.into());
        }
        let verified = shared.verifier.verify(header, body, SystemTime::now())?;
        let event = VerifiedEvent::parse(verified, unix_millis(received_at))?;
        let span = tracing::Span::current();
        span.record("event_id", event.event_id());
        span.record("event_type", event.event_type());
        let event_id = event.event_id().to_string();

        if !shared.filter.accepts(event.event_type()) {
            tracing::info!("event type not configured; acknowledged without writing");
            return Ok(Accepted {
                outcome: Outcome::Ignored,
                event_id,
            });
        }

        let _permit = shared
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded)?;
        let _in_flight = shared.metrics.in_flight();
        loop {
            match shared.dedup.admit(&event_id, Instant::now()) {
                Admission::Duplicate => {
                    tracing::info!("duplicate delivery; already written");
                    return Ok(Accepted {
                        outcome: Outcome::Duplicate,
                        event_id,
                    });
                }
                // The same event is being written by another request: wait for its outcome
                // rather than write it twice (the request timeout bounds the wait).
                Admission::Follower(writer) => writer.wait().await,
                Admission::Leader(leader) => {
                    let publisher = shared.publisher.clone();
                    let metrics = shared.metrics.clone();
                    let budget = shared.produce_timeout;
                    // The write runs as its own task so it completes, and is remembered as
                    // accepted, even if the client hangs up; shutdown waits for it.
                    let write = shared.writes.spawn(
                        async move {
                            let started = Instant::now();
                            let result = publisher.write(&event, budget).await;
                            match &result {
                                Ok(written) => {
                                    metrics.produced(started.elapsed().as_secs_f64());
                                    leader.accepted(Instant::now());
                                    tracing::info!(
                                        partition = written.partition,
                                        offset = written.offset,
                                        "event written"
                                    );
                                }
                                Err(PublishError::TooLarge { .. }) => metrics.event_too_large(),
                                Err(e) => metrics.write_failure(e.dependency()),
                            }
                            result
                        }
                        .in_current_span(),
                    );
                    return match write.await {
                        Ok(Ok(_)) => Ok(Accepted {
                            outcome: Outcome::Accepted,
                            event_id,
                        }),
                        Ok(Err(e)) => Err(e.into()),
                        Err(join) => Err(PublishError::Aborted(join.to_string()).into()),
                    };
                }
            }
        }
    }

    fn check_source(&self, parts: &Parts) -> Result<(), GatewayError> {
        let shared = &self.shared;
        if shared.allow_ips.is_empty() {
            return Ok(());
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0.0.ip());
        match client_ip(peer, &parts.headers, &shared.trusted_proxies) {
            Some(ip) if shared.allow_ips.contains(ip) => Ok(()),
            Some(ip) => Err(GatewayError::Forbidden(ip.to_string())),
            None => Err(GatewayError::Forbidden("unknown".into())),
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the nearest
/// untrusted hop of `X-Forwarded-For` (read right to left). `None` when it cannot be told (no
/// peer, or a hop that is not an address): the caller refuses.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &IpList) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value.to_str().ok()?;
        hops.extend(value.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = parse_hop(hop)?;
        if !trusted.contains(client) {
            return Some(client);
        }
    }
    // Every hop is a trusted proxy: the leftmost one is the best knowledge there is.
    Some(client)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fn check_content_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

/// The most memory a body gets before its bytes arrive, whatever its `Content-Length` says;
/// beyond this the buffer grows only as bytes are received.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// How long a refused, oversized body is still read (and discarded) before the 413 goes out.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the whole body within `read_timeout` (else 408), refusing it once it passes `limit`.
///
/// A refused body is not simply dropped: closing a connection whose client is still sending
/// makes the kernel reset it, and the reset can destroy the 413 before the client reads it (the
/// client sees a broken connection and cannot tell "too large" from a network fault). So the
/// rest is read and discarded, up to `limit` more bytes and [`LINGER_TIME`], before answering. A
/// body declared larger than twice the limit is answered at once: reading it would cost more than
/// any honest request.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    read_timeout: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let too_large = if declared.is_some_and(|n| n > limit as u64) {
        0
    } else {
        let read = async {
            let mut buf = BytesMut::with_capacity(initial_capacity(declared));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| GatewayError::BodyRead(e.to_string()))?;
                if buf.len() + chunk.len() > limit {
                    return Ok(Err(buf.len() + chunk.len()));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Ok(buf.freeze()))
        };
        match tokio::time::timeout(read_timeout, read).await {
            Err(_) => return Err(GatewayError::BodyTimeout(read_timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Ok(body))) => return Ok(body),
            Ok(Ok(Err(received))) => received,
        }
    };
    let allowance = 2 * limit as u64;
    if declared.is_none_or(|n| n <= allowance) {
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut received = too_large as u64;
            while received <= allowance {
                match stream.next().await {
                    Some(Ok(chunk)) => received += chunk.len() as u64,
                    _ => break,
                }
            }
        })
        .await;
    }
    Err(GatewayError::TooLarge { limit })
}

/// A declared length is a claim, not bytes: at most [`INITIAL_BODY_CAPACITY`] is reserved for it.
fn initial_capacity(declared: Option<u64>) -> usize {
    declared.map_or(8 * 1024, |n| {
        usize::try_from(n).map_or(INITIAL_BODY_CAPACITY, |n| n.min(INITIAL_BODY_CAPACITY))
    })
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Which event types are written: exact names, `prefix.*`, or `*`; empty means all.
#[derive(Debug, Clone, Default)]
pub struct EventFilter(pub Vec<String>);

impl EventFilter {
    pub fn accepts(&self, event_type: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => pattern == event_type,
            })
    }
}

#[cfg(test)]
mod tests;
