//! A local fake of the part of Stripe's REST API the pipeline's jobs read (`backfill`,
//! `reconcile`), served by axum on a free port inside the test process. Faithful to what Stripe
//! documents: list objects newest first with `limit` (1–100, default 10), `starting_after` /
//! `ending_before` cursors and `has_more`; the events list's `created[gte|gt|lte|lt]`, `type` (one
//! name or a `*` wildcard) / `types[]` (up to 20 exact names; mutually exclusive with `type`) and `delivery_success` filters and its
//! 30-day retention; deleted customers absent from lists and answered as
//! `{"id", "object": "customer", "deleted": true}` by `GET /v1/customers/{id}`; errors as
//! `{"error": {"type", "code", "message", "param"}}` with a `Request-Id` header; API keys as a
//! bearer token or as the basic-auth user name; and rate limiting (429, `Stripe-Should-Retry: true`).
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use harness::stripe_fake::StripeFake;
//! let fake = StripeFake::start().await?;
//! let event_id = fake.add_event(harness::pipeline::customer_event(
//!     "evt_1", "customer.created", 1_765_000_000,
//!     serde_json::json!({"id": "cus_1", "object": "customer", "email": "a@example.com"}),
//! ), false); // false: its webhook was never delivered (`delivery_success=false` lists it)
//! // Point a client at it: STRIPE_API_BASE=fake.url(), STRIPE_API_KEY=fake.api_key().
//! fake.set_rate_limit(Some(5)); // at most 5 requests per second, then 429s
//! # let _ = event_id; Ok(()) }
//! ```
//!
//! * [`StripeFake::add_event`] / [`StripeFake::add_workload`] — events (and the customers they
//!   leave behind: created and updated events set the customer, deleted events delete it).
//!   `add_workload` takes the distinct events of a [`crate::workload::Workload`] and a choice of
//!   which were delivered; `customer.updated` events get `data.previous_attributes`.
//! * [`StripeFake::put_customer`] / [`StripeFake::delete_customer`] — customers directly.
//! * Faults: [`StripeFake::set_rate_limit`], [`StripeFake::set_latency`],
//!   [`StripeFake::fail_next`] (answer the next requests with a status and optional
//!   `Stripe-Should-Retry`).
//! * [`StripeFake::client_settings`] — `common::stripe` settings pointing at the fake.
//! * What happened: [`StripeFake::requests`] (path and query of every request),
//!   [`StripeFake::throttled`].

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::workload::Workload;

/// Stripe lists events of the last 30 days.
pub const RETENTION_SECS: i64 = 30 * 86_400;
/// The key the fake accepts unless told otherwise.
pub const DEFAULT_KEY: &str = "sk_test_fake0123456789abcdefghijkl";

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The answer's status.
    pub status: u16,
}

impl Request {
    /// The first value of `name` in the query.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct StoredEvent {
    /// Insertion order; breaks ties of `created` (newest first = highest first).
    seq: u64,
    created: i64,
    id: String,
    event_type: String,
    delivered: bool,
    json: Value,
}

enum StoredCustomer {
    Live { seq: u64, created: i64, object: Value },
    Deleted,
}

#[derive(Default)]
struct Inner {
    key: String,
    seq: u64,
    events: Vec<StoredEvent>,
    customers: BTreeMap<String, StoredCustomer>,
    rate_limit: Option<u32>,
    window: Option<(Instant, u32)>,
    latency: Duration,
    faults: VecDeque<(u16, Option<bool>)>,
    requests: Vec<Request>,
    throttled: u64,
    request_seq: u64,
}

/// The fake's handle; the server stops when it is dropped.
pub struct StripeFake {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StripeFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeFake")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for StripeFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StripeFake {
    /// Starts on a free port of 127.0.0.1 accepting [`DEFAULT_KEY`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_key(DEFAULT_KEY).await
    }

    /// Starts accepting `key` (a `sk_test_…`/`rk_…` key, to exercise the client's key modes).
    pub async fn start_with_key(key: &str) -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            key: key.to_string(),
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/v1/events", get(list_events))
            .route("/v1/events/{id}", get(get_event))
            .route("/v1/customers", get(list_customers))
            .route("/v1/customers/{id}", get(get_customer))
            .fallback(not_found)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StripeFake { addr, inner, server })
    }

    /// Base URL, for `STRIPE_API_BASE` / `stripe.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client settings pointing at the fake: its key and URL, a pace of 1000 requests/s and short
    /// retry delays (10–50 ms), so tests are quick and rate limiting is the fake's to decide.
    pub fn client_settings(&self) -> common::stripe::StripeSettings {
        use common::config::{HumanDuration, Secret};
        common::stripe::StripeSettings {
            api_key: Secret::new(self.api_key()),
            base_url: self.url(),
            requests_per_second: 1000.0,
            backoff: common::retry::BackoffSettings {
                initial: HumanDuration::millis(10),
                max: HumanDuration::millis(50),
            },
            ..common::stripe::StripeSettings::default()
        }
    }

    /// The key it accepts, for `STRIPE_API_KEY`.
    pub fn api_key(&self) -> String {
        self.lock().key.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an event (a JSON body as Stripe posts it) and applies it to the customer it carries.
    /// `delivered` is whether its webhook delivery succeeded (`delivery_success`). Returns its id.
    pub fn add_event(&self, body: impl AsRef<str>, delivered: bool) -> String {
        let mut json: Value = serde_json::from_str(body.as_ref()).expect("an event body is JSON");
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let id = json["id"].as_str().expect("an event has an id").to_string();
        let event_type = json["type"].as_str().expect("an event has a type").to_string();
        let created = json["created"].as_i64().expect("an event has created");
        json["pending_webhooks"] = json!(if delivered { 0 } else { 1 });
        let object = json["data"]["object"].clone();
        if event_type.starts_with("customer.")
            && object["object"] == "customer"
            && let Some(cid) = object["id"].as_str()
        {
            if event_type == "customer.updated"
                && json["data"].get("previous_attributes").is_none()
                && let Some(StoredCustomer::Live { object: before, .. }) = inner.customers.get(cid)
            {
                json["data"]["previous_attributes"] = previous_attributes(before, &object);
            }
            let customer = match event_type.as_str() {
                "customer.deleted" => Some(StoredCustomer::Deleted),
                "customer.created" | "customer.updated" => match inner.customers.get(cid) {
                    Some(StoredCustomer::Deleted) => None,
                    _ => Some(StoredCustomer::Live {
                        seq,
                        created: object["created"].as_i64().unwrap_or(created),
                        object: object.clone(),
                    }),
                },
                _ => None,
            };
            if let Some(c) = customer {
                inner.customers.insert(cid.to_string(), c);
            }
        }
        inner.events.push(StoredEvent {
            seq,
            created,
            id: id.clone(),
            event_type,
            delivered,
            json,
        });
        id
    }

    /// Adds every distinct event of `workload`, in time order (so customers end as the model
    /// says), with `delivered(event_id)` choosing which webhooks succeeded.
    pub fn add_workload(&self, workload: &Workload, delivered: impl Fn(&str) -> bool) {
        let mut seen = std::collections::HashSet::new();
        let mut events: Vec<(i64, u8, &str, &str)> = Vec::new();
        for d in &workload.deliveries {
            if !seen.insert(d.event_id.as_str()) {
                continue;
            }
            let v: Value = serde_json::from_str(&d.body).expect("workload bodies are JSON");
            let rank = match v["type"].as_str() {
                Some("customer.created") => 0,
                Some("customer.updated") => 1,
                _ => 2,
            };
            events.push((v["created"].as_i64().unwrap_or(0), rank, &d.event_id, &d.body));
        }
        events.sort_by_key(|(t, r, id, _)| (*t, *r, event_seq(id)));
        for (_, _, id, body) in events {
            self.add_event(body, delivered(id));
        }
    }

    /// Sets a customer object as it is now (its `id` and `created` are read from it).
    pub fn put_customer(&self, object: Value) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let id = object["id"].as_str().expect("a customer has an id").to_string();
        let created = object["created"].as_i64().unwrap_or(0);
        inner
            .customers
            .insert(id, StoredCustomer::Live { seq, created, object });
    }

    /// Deletes a customer: gone from lists, `GET` answers `deleted: true`.
    pub fn delete_customer(&self, id: &str) {
        self.lock()
            .customers
            .insert(id.to_string(), StoredCustomer::Deleted);
    }

    /// The customer as `GET /v1/customers/{id}` would answer, or `None` if it never existed.
    pub fn customer(&self, id: &str) -> Option<Value> {
        self.lock().customers.get(id).map(|c| match c {
            StoredCustomer::Live { object, .. } => object.clone(),
            StoredCustomer::Deleted => deleted_customer(id),
        })
    }

    /// Marks an event's webhook as delivered (or not).
    pub fn set_delivered(&self, event_id: &str, delivered: bool) {
        let mut inner = self.lock();
        if let Some(e) = inner.events.iter_mut().find(|e| e.id == event_id) {
            e.delivered = delivered;
            e.json["pending_webhooks"] = json!(if delivered { 0 } else { 1 });
        }
    }

    /// At most `per_second` requests in each one-second window; beyond, 429 as Stripe answers.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        let mut inner = self.lock();
        inner.rate_limit = per_second;
        inner.window = None;
    }

    /// Every answer waits this long first (a slow API, to interrupt a job mid-way).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `times` requests are answered `status` with Stripe's error body, and with
    /// `Stripe-Should-Retry` set to `should_retry` when given.
    pub fn fail_next(&self, times: usize, status: u16, should_retry: Option<bool>) {
        let mut inner = self.lock();
        for _ in 0..times {
            inner.faults.push_back((status, should_retry));
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Requests answered 429 by the rate limiter.
    pub fn throttled(&self) -> u64 {
        self.lock().throttled
    }

    /// How many events it holds (including ones past retention).
    pub fn event_count(&self) -> usize {
        self.lock().events.len()
    }
}

/// The number after the last `_` of an event id, so a workload's events of one customer keep
/// their order within one second.
fn event_seq(id: &str) -> u64 {
    id.rsplit('_').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Top-level fields that changed, with their values before, as Stripe's `previous_attributes`.
fn previous_attributes(before: &Value, after: &Value) -> Value {
    let mut prev = serde_json::Map::new();
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (k, old) in b {
            if a.get(k) != Some(old) {
                prev.insert(k.clone(), old.clone());
            }
        }
        for k in a.keys() {
            if !b.contains_key(k) {
                prev.insert(k.clone(), Value::Null);
            }
        }
    }
    Value::Object(prev)
}

fn deleted_customer(id: &str) -> Value {
    json!({"id": id, "object": "customer", "deleted": true})
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

type Shared = Arc<Mutex<Inner>>;

/// A Stripe error answer.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
    should_retry: Option<bool>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: param.map(str::to_string),
            should_retry: None,
        }
    }

    fn missing(message: impl Into<String>, param: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("resource_missing"),
            message: message.into(),
            param: Some(param.into()),
            should_retry: None,
        }
    }
}

fn answer(status: StatusCode, body: Value, request_id: String, should_retry: Option<bool>) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("request-id", v);
    }
    if let Some(r) = should_retry {
        h.insert(
            "stripe-should-retry",
            HeaderValue::from_static(if r { "true" } else { "false" }),
        );
    }
    resp
}

fn error_response(e: ApiError, request_id: String) -> Response {
    let mut error = json!({"type": e.kind, "message": e.message});
    if let Some(c) = e.code {
        error["code"] = json!(c);
    }
    if let Some(p) = e.param {
        error["param"] = json!(p);
    }
    error["request_log_url"] = json!(format!("https://dashboard.stripe.com/test/logs/{request_id}"));
    answer(e.status, json!({ "error": error }), request_id, e.should_retry)
}

/// What every request goes through: latency, recording, auth, injected faults, rate limit.
async fn handle(
    state: &Shared,
    path: &str,
    headers: &HeaderMap,
    query: Option<String>,
    route: impl FnOnce(&mut Inner, &[(String, String)]) -> Result<Value, ApiError>,
) -> Response {
    let latency = state.lock().unwrap_or_else(|p| p.into_inner()).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let pairs = parse_query(query.as_deref().unwrap_or(""));
    let mut inner = state.lock().unwrap_or_else(|p| p.into_inner());
    inner.request_seq += 1;
    let request_id = format!("req_fake{:010}", inner.request_seq);
    let outcome = (|| {
        authorize(&inner.key, headers)?;
        if let Some((status, should_retry)) = inner.faults.pop_front() {
            return Err(ApiError {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                kind: if status >= 500 {
                    "api_error"
                } else {
                    "invalid_request_error"
                },
                code: (status == 429).then_some("rate_limit"),
                message: format!("Injected failure ({status})."),
                param: None,
                should_retry,
            });
        }
        if let Some(limit) = inner.rate_limit {
            let now = Instant::now();
            let (start, count) = match inner.window {
                Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => (start, count),
                _ => (now, 0),
            };
            if count >= limit {
                inner.window = Some((start, count));
                inner.throttled += 1;
                return Err(ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "invalid_request_error",
                    code: Some("rate_limit"),
                    message: "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.".into(),
                    param: None,
                    should_retry: Some(true),
                });
            }
            inner.window = Some((start, count + 1));
        }
        route(&mut inner, &pairs)
    })();
    let (resp, status) = match outcome {
        Ok(body) => (answer(StatusCode::OK, body, request_id, None), 200),
        Err(e) => {
            let status = e.status.as_u16();
            (error_response(e, request_id), status)
        }
    };
    inner.requests.push(Request {
        path: path.to_string(),
        query: pairs,
        status,
    });
    resp
}

fn authorize(key: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |message: String| ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "invalid_request_error",
        code: None,
        message,
        param: None,
        should_retry: None,
    };
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').".into(),
        ));
    };
    let given = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_string()
    } else if let Some(b64) = value.strip_prefix("Basic ") {
        // Basic auth: the key is the user name, the password is empty.
        if b64.trim() == base64(format!("{key}:").as_bytes()) {
            key.to_string()
        } else {
            "(basic)".to_string()
        }
    } else {
        value.to_string()
    };
    if given == key {
        return Ok(());
    }
    // Stripe quotes the key with all but its last four characters masked.
    let tail: String = given
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(unauthorized(format!(
        "Invalid API Key provided: {}****{tail}",
        given.get(..8).unwrap_or("")
    )))
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://fake/?{q}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn int_param(q: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    match param(q, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("Invalid integer: {v}"), Some(name))),
    }
}

struct ListParams {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
}

fn list_params(q: &[(String, String)]) -> Result<ListParams, ApiError> {
    let limit = match int_param(q, "limit")? {
        None => 10,
        Some(n) if (1..=100).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                format!("This value must be between 1 and 100 (it currently is '{n}')."),
                Some("limit"),
            ));
        }
    };
    let starting_after = param(q, "starting_after").map(str::to_string);
    let ending_before = param(q, "ending_before").map(str::to_string);
    if starting_after.is_some() && ending_before.is_some() {
        return Err(ApiError::invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            None,
        ));
    }
    Ok(ListParams {
        limit,
        starting_after,
        ending_before,
    })
}

/// `created` filter: `created=<t>` or `created[gte|gt|lte|lt]=<t>`.
fn created_filter(q: &[(String, String)]) -> Result<impl Fn(i64) -> bool, ApiError> {
    let eq = int_param(q, "created")?;
    let gte = int_param(q, "created[gte]")?;
    let gt = int_param(q, "created[gt]")?;
    let lte = int_param(q, "created[lte]")?;
    let lt = int_param(q, "created[lt]")?;
    Ok(move |t: i64| {
        eq.is_none_or(|v| t == v)
            && gte.is_none_or(|v| t >= v)
            && gt.is_none_or(|v| t > v)
            && lte.is_none_or(|v| t <= v)
            && lt.is_none_or(|v| t < v)
    })
}

/// A page of `ordered` (newest first, every object, unfiltered, as `(id, object)`), taking only
/// the objects `keep` accepts, as Stripe's cursors work: the cursor object's place in the whole
/// list, whatever the filters.
fn page(
    ordered: Vec<(String, Value, bool)>,
    params: &ListParams,
    url: &str,
    kind: &str,
) -> Result<Value, ApiError> {
    let position = |cursor: &str, param: &str| {
        ordered
            .iter()
            .position(|(id, _, _)| id == cursor)
            .ok_or_else(|| ApiError::missing(format!("No such {kind}: '{cursor}'"), param))
    };
    let (data, has_more): (Vec<Value>, bool) = if let Some(cursor) = &params.ending_before {
        let at = position(cursor, "ending_before")?;
        let before: Vec<&(String, Value, bool)> = ordered[..at].iter().filter(|(_, _, keep)| *keep).collect();
        let from = before.len().saturating_sub(params.limit);
        (
            before[from..].iter().map(|(_, v, _)| v.clone()).collect(),
            from > 0,
        )
    } else {
        let start = match &params.starting_after {
            Some(cursor) => position(cursor, "starting_after")? + 1,
            None => 0,
        };
        let after: Vec<&(String, Value, bool)> =
            ordered[start..].iter().filter(|(_, _, keep)| *keep).collect();
        let n = params.limit.min(after.len());
        (
            after[..n].iter().map(|(_, v, _)| v.clone()).collect(),
            after.len() > n,
        )
    };
    Ok(json!({"object": "list", "data": data, "has_more": has_more, "url": url}))
}

fn type_matches(pattern: &str, t: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => t.starts_with(prefix),
        None => pattern == t,
    }
}

async fn list_events(State(state): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    handle(&state, "/v1/events", &headers, q, |inner, q| {
        let params = list_params(q)?;
        let created = created_filter(q)?;
        let single = param(q, "type").map(str::to_string);
        let many: Vec<String> = q
            .iter()
            .filter(|(k, _)| k == "types[]" || k == "types")
            .map(|(_, v)| v.clone())
            .collect();
        if single.is_some() && !many.is_empty() {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: type, types.",
                Some("types"),
            ));
        }
        if many.len() > 20 {
            return Err(ApiError::invalid("You may pass at most 20 types.", Some("types")));
        }
        // `type` takes one name or a `*` wildcard; `types[]` takes exact names only.
        let matches = |t: &str| match (&single, many.is_empty()) {
            (Some(p), _) => type_matches(p, t),
            (None, false) => many.iter().any(|m| m == t),
            (None, true) => true,
        };
        let delivery = match param(q, "delivery_success") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                return Err(ApiError::invalid(
                    format!("Invalid boolean: {v}"),
                    Some("delivery_success"),
                ));
            }
        };
        let oldest = now() - RETENTION_SECS;
        let mut events: Vec<&StoredEvent> = inner.events.iter().filter(|e| e.created >= oldest).collect();
        events.sort_by_key(|e| std::cmp::Reverse((e.created, e.seq)));
        let ordered = events
            .into_iter()
            .map(|e| {
                let keep =
                    created(e.created) && matches(&e.event_type) && delivery.is_none_or(|d| d == e.delivered);
                (e.id.clone(), e.json.clone(), keep)
            })
            .collect();
        page(ordered, &params, "/v1/events", "event")
    })
    .await
}

async fn get_event(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let path = format!("/v1/events/{id}");
    handle(&state, &path, &headers, None, |inner, _| {
        let oldest = now() - RETENTION_SECS;
        inner
            .events
            .iter()
            .find(|e| e.id == id && e.created >= oldest)
            .map(|e| e.json.clone())
            .ok_or_else(|| ApiError::missing(format!("No such event: '{id}'"), "id"))
    })
    .await
}

async fn list_customers(State(state): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    handle(&state, "/v1/customers", &headers, q, |inner, q| {
        let params = list_params(q)?;
        let created = created_filter(q)?;
        let email = param(q, "email").map(str::to_string);
        let mut live: Vec<(i64, u64, &String, &Value)> = inner
            .customers
            .iter()
            .filter_map(|(id, c)| match c {
                StoredCustomer::Live { seq, created, object } => Some((*created, *seq, id, object)),
                StoredCustomer::Deleted => None,
            })
            .collect();
        live.sort_by_key(|(created, seq, _, _)| std::cmp::Reverse((*created, *seq)));
        let ordered = live
            .into_iter()
            .map(|(t, _, id, object)| {
                let keep = created(t)
                    && email
                        .as_deref()
                        .is_none_or(|e| object["email"].as_str() == Some(e));
                (id.clone(), object.clone(), keep)
            })
            .collect();
        page(ordered, &params, "/v1/customers", "customer")
    })
    .await
}

async fn get_customer(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let path = format!("/v1/customers/{id}");
    handle(&state, &path, &headers, None, |inner, _| {
        match inner.customers.get(&id) {
            Some(StoredCustomer::Live { object, .. }) => Ok(object.clone()),
            Some(StoredCustomer::Deleted) => Ok(deleted_customer(&id)),
            None => Err(ApiError::missing(format!("No such customer: '{id}'"), "id")),
        }
    })
    .await
}

async fn not_found(State(state): State<Shared>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let path = uri.path().to_string();
    handle(&state, &path, &headers, None, |_, _| {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: None,
            message: format!("Unrecognized request URL (GET: {path})."),
            param: None,
            should_retry: None,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b"sk_test_x:"), "c2tfdGVzdF94Og==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn wildcards_match_prefixes() {
        assert!(type_matches("customer.*", "customer.updated"));
        assert!(!type_matches("customer.*", "charge.succeeded"));
        assert!(type_matches("customer.created", "customer.created"));
    }

    #[test]
    fn previous_attributes_are_the_old_values_of_changed_fields() {
        let before = json!({"id": "cus_1", "email": "a@x", "name": "A"});
        let after = json!({"id": "cus_1", "email": "b@x", "name": "A", "phone": "1"});
        assert_eq!(
            previous_attributes(&before, &after),
            json!({"email": "a@x", "phone": null})
        );
    }
}
