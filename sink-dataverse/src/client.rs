//! Talking to the Dataverse Web API, in three layers:
//!
//! * [`Transport`] sends one HTTP request: bearer token (renewed once on 401), a permit from the
//!   shared [`Limiter`] (429 pauses every writer for `Retry-After`), `x-ms-dop-hint` fed back,
//!   timeouts and connection failures as transient errors.
//! * [`Dataverse`] takes single operations from many concurrent callers and coalesces them into
//!   `$batch` requests of up to `batch_size` (waiting at most `linger` for company), with
//!   `Prefer: odata.continue-on-error` and no change sets, so every operation succeeds or fails
//!   on its own. Callers see one answer per operation, as if each had been sent alone.
//! * [`ContactStore`] is what the write loop needs: read a contact by alternate key, and apply a
//!   conditional write.

use std::{future::Future, sync::Arc, time::Duration};

use common::stage::Fatal;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::Instrument;

use crate::{
    apply::Contacts,
    auth::{AuthError, TokenSource, describe},
    batch::{self, PartRequest},
    error::{WriteError, classify},
    guard::{Precondition, Request, StoredRow, Write},
    mapping::Columns,
    metrics::Metrics,
    odata,
    rate::{Limiter, Permit},
};

/// HTTP methods the sink uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

/// One Web API operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub method: Method,
    /// Path and query under the Web API base, e.g. `contacts(k='v')?$select=a`.
    pub path: String,
    /// Conditional headers and the like.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body, for writes.
    pub body: Option<String>,
}

impl Operation {
    /// The entity set the operation is on: `contacts` of `contacts(k='v')?$select=a`.
    pub fn table(&self) -> &str {
        self.path.split(['(', '?', '/']).next().unwrap_or_default()
    }
}

/// The span of one operation as its caller sees it: opened under the caller's span (a record's
/// `change` span), it lasts until the operation's own answer arrives, whether the operation was
/// sent alone or in a `$batch`. So every record's trace holds its Dataverse reads and writes.
fn operation_span(op: &Operation) -> tracing::Span {
    tracing::info_span!(
        "dataverse_operation",
        otel.name = %format_args!("dataverse {} {}", op.method.as_str(), op.table()),
        otel.status_code = tracing::field::Empty,
        http.request.method = op.method.as_str(),
        dataverse.table = op.table(),
        http.response.status_code = tracing::field::Empty,
    )
}

/// The span of one HTTP request to Dataverse (kind `client`): one operation, under that
/// operation's span, or a `$batch` of `operations`, which serves many records' traces at once and
/// so starts a trace of its own linked to each operation's span.
fn request_span(
    parent: Option<&tracing::Span>,
    method: &str,
    target: &str,
    operations: usize,
) -> tracing::Span {
    tracing::info_span!(
        parent: parent.and_then(tracing::Span::id),
        "dataverse_request",
        otel.name = %format_args!("{method} {target}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        dataverse.operations = operations,
        http.response.status_code = tracing::field::Empty,
    )
}

/// Records an answer's status on the current span (an operation's or a request's); a failure
/// that is not Dataverse's verdict on the operation (timeout, throttling, 5xx) marks it an error.
fn record_status(span: &tracing::Span, status: Option<u16>) {
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if status.is_none_or(|s| s >= 500 || s == 429) {
        span.record("otel.status_code", "error");
    }
}

/// The answer to one operation (a whole response, or one part of a batch response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Bounds on honouring `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Pause when a 429 carries no usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Longest pause honoured.
    pub max_retry_after: Duration,
}

/// A raw HTTP answer.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Sends HTTP requests to one environment.
pub struct Transport {
    http: reqwest::Client,
    /// `https://org.crm.dynamics.com/api/data/v9.2/`.
    api_base: String,
    tokens: Arc<TokenSource>,
    limiter: Arc<Limiter>,
    metrics: Metrics,
    throttle: ThrottlePolicy,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

fn auth_error(e: AuthError) -> WriteError {
    match e {
        AuthError::Refused { .. } => WriteError::transient("token_refused", e.to_string()),
        AuthError::Unavailable(_) => WriteError::transient("token_unavailable", e.to_string()),
    }
}

fn transport_error(e: &reqwest::Error) -> WriteError {
    let class = if e.is_timeout() { "timeout" } else { "connection" };
    WriteError::transient(class, describe(e))
}

impl Transport {
    pub fn new(
        http: reqwest::Client,
        api_base: String,
        tokens: Arc<TokenSource>,
        limiter: Arc<Limiter>,
        metrics: Metrics,
        throttle: ThrottlePolicy,
    ) -> Self {
        Transport {
            http,
            api_base,
            tokens,
            limiter,
            metrics,
            throttle,
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(ACCEPT, "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
    }

    /// Sends one HTTP request built by `build`, carrying `operations` operations, while holding
    /// `permit`. A 401 renews the token and resends once; a 429 pauses every writer and is
    /// returned as a transient error.
    async fn send(
        &self,
        permit: &Permit,
        operations: usize,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Raw, WriteError> {
        let mut renewed = false;
        loop {
            let token = self.tokens.token().await.map_err(auth_error)?;
            // A pause may have begun since the permit was taken.
            self.limiter.wait_unpaused().await;
            let started = Instant::now();
            let response = build()
                .bearer_auth(&*token)
                .send()
                .await
                .map_err(|e| transport_error(&e))?;
            let status = response.status().as_u16();
            record_status(&tracing::Span::current(), Some(status));
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| transport_error(&e))?.to_vec();
            self.metrics.request(operations, started.elapsed().as_secs_f64());
            if let Some(hint) = header(&headers, "x-ms-dop-hint").and_then(odata::dop_hint) {
                self.limiter.hint(hint);
            }
            let requests_left = header(&headers, "x-ms-ratelimit-burst-remaining-xrm-requests")
                .and_then(odata::header_number)
                .map(|n| n as u64);
            let execution_left =
                header(&headers, "x-ms-ratelimit-time-remaining-xrm-requests").and_then(odata::header_number);
            self.limiter
                .remaining(requests_left, execution_left, started.elapsed());
            self.metrics.budget_remaining(requests_left, execution_left);
            match status {
                401 if !renewed => {
                    tracing::info!("Dataverse refused the access token; renewing it");
                    self.tokens.reject(&token);
                    renewed = true;
                }
                429 => {
                    let pause = self.retry_after(header(&headers, "retry-after"));
                    self.record_throttle(pause, permit.epoch, &body);
                    return Err(classify(429, &body, false));
                }
                _ => {
                    if status < 500 {
                        self.limiter.succeeded();
                    }
                    self.metrics.concurrency_limit(self.limiter.limit());
                    return Ok(Raw {
                        status,
                        headers,
                        body,
                    });
                }
            }
        }
    }

    fn retry_after(&self, value: Option<&str>) -> Duration {
        value
            .and_then(|v| odata::retry_after(v, time::OffsetDateTime::now_utc()))
            .unwrap_or(self.throttle.default_retry_after)
            .min(self.throttle.max_retry_after)
    }

    fn record_throttle(&self, pause: Duration, epoch: u64, body: &[u8]) {
        let added = self.limiter.throttled(pause, epoch);
        self.metrics.throttled(added.as_secs_f64());
        self.metrics.concurrency_limit(self.limiter.limit());
        let error = odata::error_body(body);
        tracing::warn!(
            retry_after_ms = pause.as_millis() as u64,
            code = %error.code,
            concurrency = self.limiter.limit(),
            "Dataverse is throttling; every writer pauses"
        );
    }

    /// Sends one operation on its own, in a request span under `parent` (the operation's span).
    pub async fn single(
        &self,
        op: &Operation,
        permit: &Permit,
        parent: &tracing::Span,
    ) -> Result<Answer, WriteError> {
        let span = request_span(Some(parent), op.method.as_str(), op.table(), 1);
        let answer = self.single_unobserved(op, permit).instrument(span.clone()).await;
        if answer.is_err() {
            record_status(&span, None);
        }
        answer
    }

    async fn single_unobserved(&self, op: &Operation, permit: &Permit) -> Result<Answer, WriteError> {
        let url = self.url(&op.path);
        let raw = self
            .send(permit, 1, || {
                let mut request = self.request(op.method.reqwest(), &url);
                for (name, value) in &op.headers {
                    request = request.header(*name, value);
                }
                if let Some(body) = &op.body {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                request
            })
            .await?;
        Ok(Answer {
            status: raw.status,
            body: raw.body,
        })
    }

    /// Sends operations as one `$batch`, in a request span linked to each operation's span in
    /// `links`. `None` when Dataverse refused the batch as a whole (400, 413, other 4xx): the
    /// caller sends the operations one by one, so each gets its own answer.
    async fn batch(
        &self,
        ops: &[Operation],
        permit: &Permit,
        links: &[&tracing::Span],
    ) -> Option<Vec<Result<Answer, WriteError>>> {
        let span = request_span(None, "POST", "$batch", ops.len());
        for linked in links {
            common::telemetry::link(&span, linked);
        }
        let answers = self.batch_unobserved(ops, permit).instrument(span.clone()).await;
        if matches!(&answers, Some(answers) if answers.iter().all(Result::is_err)) {
            record_status(&span, None);
        }
        answers
    }

    async fn batch_unobserved(
        &self,
        ops: &[Operation],
        permit: &Permit,
    ) -> Option<Vec<Result<Answer, WriteError>>> {
        let boundary = batch::new_boundary();
        let parts: Vec<PartRequest> = ops
            .iter()
            .map(|op| {
                let mut headers = vec![("Accept", "application/json".to_string())];
                headers.extend(op.headers.iter().cloned());
                PartRequest {
                    method: op.method.as_str(),
                    url: self.url(&op.path),
                    headers,
                    body: op.body.clone(),
                }
            })
            .collect();
        let body = batch::render(&boundary, &parts);
        let url = self.url("$batch");
        let content_type = format!("multipart/mixed; boundary={boundary}");
        let raw = self
            .send(permit, ops.len(), || {
                self.request(reqwest::Method::POST, &url)
                    .header(CONTENT_TYPE, &content_type)
                    .header("Prefer", "odata.continue-on-error")
                    .body(body.clone())
            })
            .await;
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => return Some(vec![Err(e); ops.len()]),
        };
        // 401 here is a second refusal after a renewal: transient, like a server error.
        if raw.status >= 500 || matches!(raw.status, 401 | 408 | 409) {
            let e = classify(raw.status, &raw.body, false);
            return Some(vec![Err(e); ops.len()]);
        }
        if raw.status != 200 {
            let error = odata::error_body(&raw.body);
            tracing::warn!(status = raw.status, code = %error.code, error = %error.message, operations = ops.len(), "Dataverse refused the batch as a whole; sending its operations one by one");
            return None;
        }
        let content_type = header(&raw.headers, "content-type").unwrap_or("");
        let parts = match batch::parse(content_type, &raw.body)
            .and_then(|parts| batch::match_answers(parts, ops.len()))
        {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(error = %e, operations = ops.len(), "unusable batch response; the operations are retried");
                let e = WriteError::transient("bad_batch_response", e);
                return Some(vec![Err(e); ops.len()]);
            }
        };
        let answers = parts
            .into_iter()
            .map(|part| {
                if part.status == 429 {
                    let pause = self.retry_after(part.header("retry-after"));
                    self.record_throttle(pause, permit.epoch, &part.body);
                    Err(classify(429, &part.body, false))
                } else {
                    Ok(Answer {
                        status: part.status,
                        body: part.body,
                    })
                }
            })
            .collect();
        Some(answers)
    }

    /// Sends one operation on its own, under the shared limiter (a command's request, such as a
    /// metadata change, rather than a record's).
    pub async fn send_one(&self, op: &Operation) -> Result<Answer, WriteError> {
        let permit = self.limiter.acquire().await;
        self.single(op, &permit, &operation_span(op)).await
    }

    /// A GET outside the limiter, for start-up checks: the body of a 2xx answer, or why not
    /// (refused: the configuration is wrong; unavailable: may clear, including a 429).
    pub async fn fetch(&self, path: &str) -> Result<Vec<u8>, ProbeError> {
        let (status, body) = self.get_unlimited(path).await?;
        match status {
            200..=299 => Ok(body),
            401 | 408 | 409 | 429 | 500..=599 => Err(ProbeError::Unavailable(
                classify(status, &body, false).to_string(),
            )),
            _ => Err(ProbeError::Refused(classify(status, &body, false).to_string())),
        }
    }

    async fn get_unlimited(&self, path: &str) -> Result<(u16, Vec<u8>), ProbeError> {
        let token = self.tokens.token().await.map_err(|e| match e {
            AuthError::Refused { .. } => ProbeError::Refused(e.to_string()),
            AuthError::Unavailable(_) => ProbeError::Unavailable(e.to_string()),
        })?;
        let url = self.url(path);
        let response = self
            .request(reqwest::Method::GET, &url)
            .bearer_auth(&*token)
            .send()
            .await
            .map_err(|e| ProbeError::Unavailable(describe(&e)))?;
        let status = response.status().as_u16();
        if status == 401 {
            self.tokens.reject(&token);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ProbeError::Unavailable(describe(&e)))?;
        Ok((status, body.to_vec()))
    }

    /// A GET outside the limiter, for readiness and start-up checks: the answer status and the
    /// Dataverse error, if any. While every writer is paused by a 429, Dataverse is known to be
    /// reachable and nothing is sent.
    pub async fn probe(&self, path: &str) -> Result<(), ProbeError> {
        if self.limiter.is_paused() {
            return Ok(());
        }
        let (status, body) = self.get_unlimited(path).await?;
        match status {
            200..=299 | 429 => Ok(()),
            401 | 408 | 409 | 500..=599 => Err(ProbeError::Unavailable(
                classify(status, &body, false).to_string(),
            )),
            _ => Err(ProbeError::Refused(classify(status, &body, false).to_string())),
        }
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Dataverse or the token endpoint refused: configuration (URL, table, columns, privileges,
    /// credentials) is wrong.
    #[error("{0}")]
    Refused(String),
    /// Could not be reached, or failed: may clear by itself.
    #[error("{0}")]
    Unavailable(String),
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

struct Queued {
    op: Operation,
    reply: oneshot::Sender<Result<Answer, WriteError>>,
    /// The operation's span: the parent of a request sending it alone, linked from a `$batch`.
    span: tracing::Span,
}

/// Coalesces concurrent operations into `$batch` requests.
pub struct Batcher {
    transport: Arc<Transport>,
    /// `None` when `batch_size` is 1: every operation is sent on its own.
    queue: Option<mpsc::UnboundedSender<Queued>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("batching", &self.queue.is_some())
            .finish_non_exhaustive()
    }
}

/// The class of the error an operation gets when the dispatcher is gone.
const DISPATCHER_STOPPED: &str = "dispatcher_stopped";

impl Batcher {
    /// Starts the dispatcher (when batching); it stops when the last handle is dropped. A
    /// dispatcher or request task that dies (a panic) ends the stage through `fatal`, so the
    /// process exits and is restarted instead of every write waiting on it for good.
    pub fn start(transport: Arc<Transport>, batch_size: usize, linger: Duration, fatal: Fatal) -> Arc<Self> {
        let queue = (batch_size > 1).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            supervise(
                "the $batch dispatcher",
                fatal.clone(),
                dispatch(transport.clone(), rx, batch_size, linger, fatal),
            );
            tx
        });
        Arc::new(Batcher { transport, queue })
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Runs one operation (alone or in a batch with others) and returns its answer, in an
    /// operation span under the caller's span.
    pub async fn execute(&self, op: Operation) -> Result<Answer, WriteError> {
        let span = operation_span(&op);
        let answer = self.run(op, &span).instrument(span.clone()).await;
        record_status(&span, answer.as_ref().ok().map(|a| a.status));
        answer
    }

    async fn run(&self, op: Operation, span: &tracing::Span) -> Result<Answer, WriteError> {
        let Some(queue) = &self.queue else {
            let permit = self.transport.limiter.acquire().await;
            return self.transport.single(&op, &permit, span).await;
        };
        let stopped = || WriteError::transient(DISPATCHER_STOPPED, "the request dispatcher has stopped");
        let (reply, answer) = oneshot::channel();
        let span = span.clone();
        queue.send(Queued { op, reply, span }).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Runs `task` on its own; if it panics, the stage ends with a reason naming `what`.
fn supervise(what: &'static str, fatal: Fatal, task: impl Future<Output = ()> + Send + 'static) {
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = handle.await
            && e.is_panic()
        {
            let reason = format!("{what} failed: {}", panic_message(e.into_panic()));
            tracing::error!(reason, "stopping the sink");
            fatal.fail(reason);
        }
    });
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// Gathers queued operations into batches: up to `batch_size`, waiting at most `linger` after the
/// first; then waits for a permit (while paused or at the concurrency limit, more operations
/// gather) and tops the batch up before sending it on its own task.
async fn dispatch(
    transport: Arc<Transport>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    batch_size: usize,
    linger: Duration,
    fatal: Fatal,
) {
    while let Some(first) = queue.recv().await {
        let mut ops = vec![first];
        let deadline = Instant::now() + linger;
        while ops.len() < batch_size {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(q)) => ops.push(q),
                Ok(None) | Err(_) => break,
            }
        }
        let permit = transport.limiter.acquire().await;
        while ops.len() < batch_size {
            match queue.try_recv() {
                Ok(q) => ops.push(q),
                Err(_) => break,
            }
        }
        // Callers that gave up (revoked partition, shutdown) need no answer.
        ops.retain(|q| !q.reply.is_closed());
        if ops.is_empty() {
            continue;
        }
        supervise(
            "a Dataverse request",
            fatal.clone(),
            send(transport.clone(), ops, permit, fatal.clone()),
        );
    }
}

async fn send(transport: Arc<Transport>, ops: Vec<Queued>, permit: Permit, fatal: Fatal) {
    if let [only] = &ops[..] {
        let answer = transport.single(&only.op, &permit, &only.span).await;
        drop(permit);
        if let Some(q) = ops.into_iter().next() {
            let _ = q.reply.send(answer);
        }
        return;
    }
    let operations: Vec<Operation> = ops.iter().map(|q| q.op.clone()).collect();
    let spans: Vec<&tracing::Span> = ops.iter().map(|q| &q.span).collect();
    let answers = transport.batch(&operations, &permit, &spans).await;
    drop(spans);
    match answers {
        Some(answers) => {
            drop(permit);
            for (q, answer) in ops.into_iter().zip(answers) {
                let _ = q.reply.send(answer);
            }
        }
        None => {
            drop(permit);
            for q in ops {
                let transport = transport.clone();
                supervise("a Dataverse request", fatal.clone(), async move {
                    let permit = transport.limiter.acquire().await;
                    let answer = transport.single(&q.op, &permit, &q.span).await;
                    drop(permit);
                    let _ = q.reply.send(answer);
                });
            }
        }
    }
}

/// Contacts by alternate key, read and written the way the guard needs.
#[derive(Debug)]
pub struct ContactStore {
    dataverse: Arc<Batcher>,
    columns: Columns,
    select: String,
    /// What a write asks back (`Prefer: return=representation`): the guard's columns only.
    select_written: String,
}

impl ContactStore {
    pub fn new(dataverse: Arc<Batcher>, columns: Columns) -> Self {
        let select = odata::select_query(&columns.select());
        let select_written = odata::select_query(&[
            columns.created.as_str(),
            columns.deleted.as_str(),
            columns.rank.as_str(),
            columns.event_ids.as_str(),
        ]);
        ContactStore {
            dataverse,
            columns,
            select,
            select_written,
        }
    }

    fn row_path(&self, customer_id: &str) -> String {
        odata::key_path(&self.columns.table, &self.columns.alternate_key, customer_id)
    }
}

impl Contacts for ContactStore {
    async fn read(&self, customer_id: &str) -> Result<Option<StoredRow>, WriteError> {
        let op = Operation {
            method: Method::Get,
            path: format!("{}{}", self.row_path(customer_id), self.select),
            headers: Vec::new(),
            body: None,
        };
        let answer = self.dataverse.execute(op).await?;
        match answer.status {
            200 => {
                let body: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
                    WriteError::transient("bad_response", format!("the contact is not JSON: {e}"))
                })?;
                StoredRow::from_json(&self.columns, &body)
                    .map(Some)
                    .ok_or_else(|| WriteError::transient("bad_response", "the contact has no @odata.etag"))
            }
            404 => Ok(None),
            status => Err(classify(status, &answer.body, false)),
        }
    }

    /// A patch asks for the row back (`Prefer: return=representation`, the guard's columns), so
    /// the sink knows the new etag without reading it.
    async fn write(&self, customer_id: &str, write: &Write) -> Result<Option<StoredRow>, WriteError> {
        let condition = match &write.precondition {
            Precondition::Matches(etag) => ("If-Match", etag.clone()),
            Precondition::Absent => ("If-None-Match", "*".to_string()),
        };
        let mut headers = vec![condition];
        let (method, path, body) = match &write.request {
            Request::Patch(body) => {
                headers.push(("Prefer", "return=representation".to_string()));
                (
                    Method::Patch,
                    format!("{}{}", self.row_path(customer_id), self.select_written),
                    Some(serde_json::Value::Object(body.clone()).to_string()),
                )
            }
            Request::Delete => (Method::Delete, self.row_path(customer_id), None),
        };
        let op = Operation {
            method,
            path,
            headers,
            body,
        };
        let answer = self.dataverse.execute(op).await?;
        match answer.status {
            // The row as written; an answer without one (204) only means the sink reads next time.
            200 | 201 => Ok(serde_json::from_slice(&answer.body)
                .ok()
                .and_then(|body| StoredRow::from_json(&self.columns, &body))),
            200..=299 => Ok(None),
            status => Err(classify(status, &answer.body, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_task_that_dies_ends_the_stage_with_the_reason() {
        let fatal = Fatal::default();
        supervise("a Dataverse request", fatal.clone(), async {
            panic!("cannot convert float seconds to Duration: value is either too big or NaN")
        });
        let reason = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(reason) = fatal.reason() {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the stage is told");
        assert!(
            reason.starts_with("a Dataverse request failed: cannot convert float seconds"),
            "{reason}"
        );

        let calm = Fatal::default();
        supervise("a Dataverse request", calm.clone(), async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calm.reason(), None, "a task that ends is no failure");
    }
}
