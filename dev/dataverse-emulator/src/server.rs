//! The HTTP service: routes, the request pipeline of the Web API (token check → throttling → faults →
//! execution → latency → persistence), `$batch` execution, the token endpoint, the admin API, and a
//! listener whose connections fault injection can close without an answer.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::{IncomingStream, Listener};
use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::api::{self, Context, OpKind, Writes};
use crate::auth::{Tokens, parse_form};
use crate::batch::{self, Item, ResponseItem};
use crate::config::{Config, FaultConfig, LatencyConfig};
use crate::error::ApiError;
use crate::faults::{Decision, Faults};
use crate::limits::{Admission, Limiter, Throttle};
use crate::persist::Persister;
use crate::response::ApiResponse;
use crate::stats::Stats;
use crate::store::Store;

/// Takes a std lock. A poisoned lock only means another request panicked mid-update; the data is
/// still the best there is, so carry on with it rather than fail every later request.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared state. Every lock is a std mutex taken for a synchronous moment, never across `.await`.
#[derive(Debug)]
pub struct AppState {
    config: Config,
    store: Mutex<Store>,
    tokens: Mutex<Tokens>,
    limiter: Mutex<Limiter>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    persister: Option<Persister>,
}

impl AppState {
    /// Builds the state, loading the snapshot file when persistence is on.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let mut store = Store::new(&config);
        let mut tokens = Tokens::default();
        let persister = config.persist_path.clone().map(Persister::new);
        if let Some(persister) = &persister
            && let Some(snapshot) = Persister::load(persister.path())?
        {
            store.restore(snapshot.store)?;
            tokens.restore(snapshot.tokens);
            tracing::info!(path = %persister.path().display(), "loaded persisted state");
        }
        Ok(Arc::new(Self {
            store: Mutex::new(store),
            tokens: Mutex::new(tokens),
            limiter: Mutex::new(Limiter::new(config.limits.clone())),
            faults: Mutex::new(Faults::new(config.faults.clone(), Instant::now())),
            stats: Mutex::new(Stats::default()),
            persister,
            config,
        }))
    }

    fn latency(&self, kind: OpKind) -> Duration {
        let LatencyConfig {
            default_ms,
            create_ms,
            retrieve_ms,
            query_ms,
            update_ms,
            delete_ms,
        } = &self.config.latency;
        let ms = match kind {
            OpKind::Create => create_ms,
            OpKind::Retrieve => retrieve_ms,
            OpKind::Query => query_ms,
            OpKind::Update => update_ms,
            OpKind::Delete => delete_ms,
        };
        Duration::from_millis(ms.unwrap_or(*default_ms))
    }

    /// Writes the snapshot file, when persistence is on. Called after a change, before answering.
    async fn persist(&self) -> Result<(), ApiError> {
        let Some(persister) = &self.persister else {
            return Ok(());
        };
        let ticket = persister.ticket();
        let store = lock(&self.store).snapshot_json();
        let tokens = lock(&self.tokens).snapshot();
        let bytes = serde_json::to_vec(&json!({ "store": store, "tokens": tokens }))
            .map_err(|e| ApiError::Internal(format!("cannot serialise snapshot: {e}")))?;
        persister
            .write(ticket, bytes)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write {}: {e}", persister.path().display())))
    }
}

/// A connection handle: its peer, and the switch that makes it fail so it closes without an answer.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The peer.
    pub remote: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl Conn {
    fn drop_connection(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }
}

/// The listener the service runs on: a TCP listener whose connections can be dropped on purpose.
#[derive(Debug)]
pub struct DroppableListener(TcpListener);

/// A TCP stream that fails every read and write once its connection was dropped by fault injection, so
/// the HTTP stack closes it before writing any answer.
#[derive(Debug)]
pub struct DroppableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl DroppableStream {
    fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }
}

fn dropped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by fault injection",
    )
}

impl AsyncRead for DroppableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DroppableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Listener for DroppableListener {
    type Io = DroppableStream;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    return (
                        DroppableStream {
                            inner: stream,
                            kill: kill.clone(),
                        },
                        Conn { remote, kill },
                    );
                }
                Err(error) => {
                    // Usually too many open files: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Conn {
            remote: self.0.local_addr()?,
            kill: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, DroppableListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, DroppableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Serves until `shutdown` resolves, then finishes the requests in flight and writes a last snapshot.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    axum::serve(
        DroppableListener(listener),
        app.into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    state
        .persist()
        .await
        .map_err(|e| anyhow::anyhow!("final snapshot failed: {e}"))?;
    Ok(())
}

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/api/data/{*rest}", any(web_api))
        .route("/_admin/stats", get(admin_stats))
        .route("/_admin/reset", post(admin_reset))
        .route("/_admin/faults", get(admin_get_faults).post(admin_set_faults))
        .route("/_admin/tables/{set}", get(admin_table))
        .route("/_admin/tokens/expire", post(admin_expire_tokens))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .fallback(|request: Request| async move {
            ApiError::ResourceNotFound(request.uri().path().trim_start_matches('/').to_owned()).render()
        })
        .with_state(state)
}

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

async fn web_api(
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
    tokio::time::sleep(state.latency(kind) * writes.cost()).await;
    response
}

async fn run_batch(state: &Arc<AppState>, base: &str, headers: &HeaderMap, body: &[u8]) -> ApiResponse {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let items = match batch::parse(content_type, body) {
        Ok(items) => items,
        Err(e) => return e.render(),
    };
    let operations = batch::operation_count(&items);
    if operations > batch::MAX_OPERATIONS {
        return ApiError::MalformedBatch(format!(
            "The batch holds {operations} operations; the maximum is {}.",
            batch::MAX_OPERATIONS
        ))
        .render();
    }
    {
        let mut stats = lock(&state.stats);
        stats.batches.requests += 1;
        stats.batches.operations += operations as u64;
    }
    let continue_on_error = api::prefers(headers, "odata.continue-on-error");
    let ctx = Context {
        base_url: base,
        in_batch: true,
    };
    let mut answers = Vec::new();
    let mut failed: Option<StatusCode> = None;
    let mut any_writes = false;
    for item in items {
        match item {
            Item::Single(operation) => {
                let (response, kind, writes) = {
                    let mut store = lock(&state.store);
                    run_operation(&mut store, &ctx, &operation, &HashMap::new())
                };
                lock(&state.stats).applied(kind, response.status.is_success(), writes);
                any_writes |= writes.any();
                tokio::time::sleep(state.latency(kind) * writes.cost()).await;
                let status = response.status;
                answers.push(ResponseItem::Single {
                    content_id: operation.content_id,
                    response,
                });
                if status.as_u16() >= 400 && !continue_on_error {
                    failed = Some(status);
                    break;
                }
            }
            Item::ChangeSet(members) => {
                let mut latency = Duration::ZERO;
                let result = {
                    let mut store = lock(&state.store);
                    run_change_set(&mut store, &ctx, &members, |kind, cost| {
                        latency += state.latency(kind) * cost
                    })
                };
                tokio::time::sleep(latency).await;
                match result {
                    Ok((responses, per_kind)) => {
                        let mut stats = lock(&state.stats);
                        stats.batches.change_sets_committed += 1;
                        for (kind, writes) in per_kind {
                            stats.applied(kind, true, writes);
                            any_writes |= writes.any();
                        }
                        answers.push(ResponseItem::ChangeSet(responses));
                    }
                    Err((content_id, response)) => {
                        lock(&state.stats).batches.change_sets_rolled_back += 1;
                        let status = response.status;
                        answers.push(ResponseItem::Single { content_id, response });
                        if !continue_on_error {
                            failed = Some(status);
                            break;
                        }
                    }
                }
            }
        }
    }
    if any_writes && let Err(e) = state.persist().await {
        return e.render();
    }
    let (boundary, body) = batch::render(&answers);
    let mut response = ApiResponse::odata(failed.unwrap_or(StatusCode::OK));
    if continue_on_error {
        response.push(
            HeaderName::from_static("preference-applied"),
            "odata.continue-on-error",
        );
    }
    response.push(
        header::CONTENT_TYPE,
        &format!("multipart/mixed; boundary={boundary}"),
    );
    response.body = body;
    response
}

/// Runs one batch operation; a failure is answered in place and leaves nothing behind.
fn run_operation(
    store: &mut Store,
    ctx: &Context<'_>,
    operation: &batch::Operation,
    content_ids: &HashMap<String, String>,
) -> (ApiResponse, OpKind, Writes) {
    let mut undo = Vec::new();
    let (path, query) = match batch::resolve_url(&operation.url, content_ids) {
        Ok(resolved) => resolved,
        Err(e) => return (e.render(), OpKind::of(&operation.method, ""), Writes::default()),
    };
    let kind = OpKind::of(&operation.method, &path);
    let request = api::Request {
        method: &operation.method,
        path: &path,
        query: query.as_deref(),
        headers: &operation.headers,
        body: &operation.body,
    };
    match api::execute(store, ctx, &request, &mut undo) {
        Ok(outcome) => (outcome.response, kind, outcome.writes),
        Err(e) => {
            store.rollback(undo);
            (e.render(), kind, Writes::default())
        }
    }
}

type ChangeSetResult =
    Result<(Vec<(Option<String>, ApiResponse)>, Vec<(OpKind, Writes)>), (Option<String>, ApiResponse)>;

/// Runs a change set atomically: all operations apply, or the first failure rolls back the rest and
/// becomes the change set's only answer.
fn run_change_set(
    store: &mut Store,
    ctx: &Context<'_>,
    members: &[batch::Operation],
    mut on_operation: impl FnMut(OpKind, u32),
) -> ChangeSetResult {
    let mut undo = Vec::new();
    let mut content_ids: HashMap<String, String> = HashMap::new();
    let mut responses = Vec::new();
    let mut kinds = Vec::new();
    for operation in members {
        let resolved = batch::resolve_url(&operation.url, &content_ids);
        let outcome = resolved.and_then(|(path, query)| {
            let kind = OpKind::of(&operation.method, &path);
            let request = api::Request {
                method: &operation.method,
                path: &path,
                query: query.as_deref(),
                headers: &operation.headers,
                body: &operation.body,
            };
            let outcome = api::execute(store, ctx, &request, &mut undo);
            let cost = outcome.as_ref().map_or(1, |o| o.writes.cost());
            on_operation(kind, cost);
            outcome.map(|outcome| (kind, outcome))
        });
        match outcome {
            Ok((kind, outcome)) => {
                if let (Some(id), Some(path)) = (&operation.content_id, &outcome.entity_path) {
                    content_ids.insert(id.clone(), path.clone());
                }
                kinds.push((kind, outcome.writes));
                responses.push((operation.content_id.clone(), outcome.response));
            }
            Err(e) => {
                store.rollback(undo);
                return Err((operation.content_id.clone(), e.render()));
            }
        }
    }
    Ok((responses, kinds))
}

async fn token(State(state): State<Arc<AppState>>, Path(tenant): Path<String>, request: Request) -> Response {
    let response = match issue_token(&state, &tenant, request).await {
        Ok(body) => {
            let mut response =
                ApiResponse::new(StatusCode::OK).json_body(&body, "application/json; charset=utf-8");
            response.push(header::CACHE_CONTROL, "no-store, no-cache");
            response.push(header::PRAGMA, "no-cache");
            response
        }
        Err(e) => {
            lock(&state.stats).tokens_refused += 1;
            e.render()
        }
    };
    lock(&state.stats).answered(response.status.as_u16());
    response.into_response()
}

async fn issue_token(state: &Arc<AppState>, tenant: &str, request: Request) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(64 * 1024))?;
    let form = parse_form(&bytes)?;
    let issued = lock(&state.tokens).issue(
        tenant,
        &form,
        &state.config.clients,
        state.config.token_lifetime_secs,
    )?;
    lock(&state.stats).tokens_issued += 1;
    state.persist().await?;
    serde_json::to_value(issued).map_err(|e| ApiError::Internal(e.to_string()))
}

fn rows_per_table(state: &AppState) -> BTreeMap<String, usize> {
    let store = lock(&state.store);
    store
        .entity_sets()
        .map(|set| (set.to_owned(), store.table(set).map(|t| t.len()).unwrap_or(0)))
        .collect()
}

fn admin_json(value: &Value) -> Response {
    ApiResponse::new(StatusCode::OK)
        .json_body(value, "application/json")
        .into_response()
}

async fn admin_stats(State(state): State<Arc<AppState>>) -> Response {
    let stats = lock(&state.stats).clone();
    let limits = lock(&state.limiter).usage(Instant::now());
    let in_flight: u64 = limits.values().map(|u| u.in_flight).sum();
    let requests_total: u64 = stats.requests_by_status.values().sum();
    let mut value = serde_json::to_value(&stats).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("requests_total".into(), json!(requests_total));
        map.insert("in_flight".into(), json!(in_flight));
        map.insert(
            "limits".into(),
            serde_json::to_value(limits).unwrap_or(Value::Null),
        );
        map.insert(
            "rows".into(),
            serde_json::to_value(rows_per_table(&state)).unwrap_or(Value::Null),
        );
    }
    admin_json(&value)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = lock(&state.stats).clone();
    let in_flight: u64 = lock(&state.limiter)
        .usage(Instant::now())
        .values()
        .map(|u| u.in_flight)
        .sum();
    let text = stats.prometheus(in_flight, &rows_per_table(&state));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// What `POST /_admin/reset` clears; everything but tokens by default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ResetRequest {
    rows: bool,
    stats: bool,
    limits: bool,
    faults: bool,
    tokens: bool,
}

impl Default for ResetRequest {
    fn default() -> Self {
        Self {
            rows: true,
            stats: true,
            limits: true,
            faults: true,
            tokens: false,
        }
    }
}

fn admin_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Admin(format!("Invalid admin request body: {e}.")))
}

async fn read_admin_body(request: Request) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), 1024 * 1024)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(1024 * 1024))
}

async fn admin_reset(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = async {
        let reset: ResetRequest = admin_body(&read_admin_body(request).await?)?;
        if reset.rows {
            lock(&state.store).clear();
        }
        if reset.stats {
            *lock(&state.stats) = Stats::default();
        }
        if reset.limits {
            lock(&state.limiter).reset();
        }
        if reset.faults {
            lock(&state.faults).set(state.config.faults.clone(), Instant::now());
        }
        if reset.tokens {
            lock(&state.tokens).clear();
        }
        if reset.rows || reset.tokens {
            state.persist().await?;
        }
        Ok::<_, ApiError>(json!({
            "rows": reset.rows, "stats": reset.stats, "limits": reset.limits,
            "faults": reset.faults, "tokens": reset.tokens,
        }))
    }
    .await;
    match result {
        Ok(value) => admin_json(&value),
        Err(e) => e.into_response(),
    }
}

async fn admin_get_faults(State(state): State<Arc<AppState>>) -> Response {
    let view = lock(&state.faults).view(Instant::now());
    admin_json(&serde_json::to_value(view).unwrap_or(Value::Null))
}

async fn admin_set_faults(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = async {
        let faults: FaultConfig = admin_body(&read_admin_body(request).await?)?;
        faults
            .validate("faults")
            .map_err(|e| ApiError::Admin(e.to_string()))?;
        let now = Instant::now();
        let mut active = lock(&state.faults);
        active.set(faults, now);
        Ok::<_, ApiError>(serde_json::to_value(active.view(now)).unwrap_or(Value::Null))
    }
    .await;
    match result {
        Ok(value) => admin_json(&value),
        Err(e) => e.into_response(),
    }
}

async fn admin_table(State(state): State<Arc<AppState>>, Path(set): Path<String>) -> Response {
    let store = lock(&state.store);
    match store.table(&set) {
        Ok(table) => {
            let rows: Vec<Value> = table
                .rows()
                .map(|row| Value::Object(table.row_json(row, None)))
                .collect();
            admin_json(&json!({"entity_set": set, "count": rows.len(), "value": rows}))
        }
        Err(e) => e.into_response(),
    }
}

async fn admin_expire_tokens(State(state): State<Arc<AppState>>) -> Response {
    let expired = lock(&state.tokens).expire_all();
    admin_json(&json!({"expired": expired}))
}
