//! The Web API pipeline: token check → throttling → faults → execution → latency → persistence, and
//! one request's execution against the store.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use tokio::time::Instant;

use super::batch_exec::run_batch;
use super::listener::Conn;
use super::state::{AppState, lock};
use crate::api::{self, Context, OpKind, Writes};
use crate::error::ApiError;
use crate::faults::Decision;
use crate::limits::{Admission, Throttle};
use crate::response::ApiResponse;

/// Marks the end of an admitted request for the limiter, however the request ends (answered, failed,
/// or abandoned by a client that hung up).
struct InFlight {
    state: Arc<AppState>,
    client: String,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.state.limiter).finish(&self.client, self.started, Instant::now());
    }
}

enum Answer {
    Respond(Response),
    Drop,
}

pub(super) async fn web_api(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
) -> Response {
    match handle_web_api(&state, request).await {
        Answer::Respond(response) => {
            lock(&state.stats).answered(response.status().as_u16());
            response
        }
        Answer::Drop => {
            lock(&state.stats).dropped_connections += 1;
            tracing::debug!(remote = %conn.remote, "dropping connection (fault injection)");
            conn.drop_connection();
            // Never written: the connection fails before the first byte of the answer.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn throttled(state: &AppState, throttle: Throttle) -> Answer {
    lock(&state.stats).throttled(throttle.kind);
    let message = lock(&state.limiter).message(throttle.kind);
    Answer::Respond(
        ApiError::Throttled {
            kind: throttle.kind,
            retry_after_secs: throttle.retry_after_secs,
            message,
        }
        .into_response(),
    )
}

fn base_url(headers: &HeaderMap, version: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/api/data/{version}/")
}

async fn handle_web_api(state: &Arc<AppState>, request: Request) -> Answer {
    let (parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let client = match lock(&state.tokens).validate(authorization) {
        Ok(client) => client,
        Err(e) => return Answer::Respond(e.into_response()),
    };
    let now = Instant::now();
    let forced = lock(&state.faults).forced_throttle(now);
    if let Some(throttle) = forced {
        return throttled(state, throttle);
    }
    let admitted = lock(&state.limiter).admit(&client, now);
    let admission = match admitted {
        Ok(admission) => admission,
        Err(throttle) => return throttled(state, throttle),
    };
    let _in_flight = InFlight {
        state: state.clone(),
        client,
        started: now,
    };

    let (decision, added_latency) = {
        let mut faults = lock(&state.faults);
        (faults.decide(), faults.added_latency())
    };
    if !added_latency.is_zero() {
        tokio::time::sleep(added_latency).await;
    }
    match decision {
        Decision::Proceed => {}
        Decision::Drop => return Answer::Drop,
        Decision::Fail(status) => {
            lock(&state.stats).faults_injected += 1;
            let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                "The service is temporarily unavailable (injected fault)."
            } else {
                "An unexpected error occurred (injected fault)."
            };
            return Answer::Respond(ApiError::InjectedFault { status, message }.into_response());
        }
    }

    let bytes = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Answer::Respond(ApiError::PayloadTooLarge(state.config.max_body_bytes).into_response());
        }
    };
    let Some((version, raw_path)) = crate::odata::split_service_path(parts.uri.path()) else {
        let segment = parts.uri.path().trim_start_matches("/api/data/").to_owned();
        return Answer::Respond(ApiError::ResourceNotFound(segment).into_response());
    };
    let base = base_url(&parts.headers, version);
    let mut response = match crate::odata::percent_decode(raw_path, false) {
        Err(e) => e.render(),
        Ok(path) if path == "$batch" => {
            if parts.method == Method::POST {
                run_batch(state, &base, &parts.headers, &bytes).await
            } else {
                ApiError::MethodNotAllowed(parts.method.to_string()).render()
            }
        }
        Ok(path) => {
            let request = api::Request {
                method: &parts.method,
                path: &path,
                query: parts.uri.query(),
                headers: &parts.headers,
                body: &bytes,
            };
            run_single(state, &base, request).await
        }
    };
    rate_limit_headers(&mut response, admission);
    let drop_after = lock(&state.faults).drop_after_apply();
    if drop_after {
        return Answer::Drop;
    }
    Answer::Respond(response.into_response())
}

fn rate_limit_headers(response: &mut ApiResponse, admission: Admission) {
    if admission.remaining_requests != u64::MAX {
        response.push(
            HeaderName::from_static("x-ms-ratelimit-burst-remaining-xrm-requests"),
            &admission.remaining_requests.to_string(),
        );
        response.push(
            HeaderName::from_static("x-ms-ratelimit-time-remaining-xrm-requests"),
            &format!("{:.2}", admission.remaining_execution_ms as f64),
        );
    }
}

async fn run_single(state: &Arc<AppState>, base: &str, request: api::Request<'_>) -> ApiResponse {
    let kind = OpKind::of(request.method, request.path);
    let ctx = Context {
        base_url: base,
        in_batch: false,
    };
    let (response, writes) = {
        let mut store = lock(&state.store);
        let mut undo = Vec::new();
        match api::execute(&mut store, &ctx, &request, &mut undo) {
            Ok(outcome) => (outcome.response, outcome.writes),
            Err(e) => {
                store.rollback(undo);
                (e.render(), Writes::default())
            }
        }
    };
    lock(&state.stats).applied(kind, response.status.is_success(), writes);
    if writes.any()
        && let Err(e) = state.persist().await
    {
        return e.render();
    }
    // Execution time is per record: a bulk action costs what its records would cost one by one.
    let latency = state.latency(kind) * writes.cost();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    response
}
