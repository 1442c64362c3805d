//! A small client of Stripe's REST API for the jobs that read Stripe directly (the gateway's
//! `backfill`, `reconcile`): listing events and customers with Stripe's cursor pagination, looking
//! up one customer, pacing requests below Stripe's rate limits and retrying what Stripe says may be
//! retried. Tests point it at `harness::stripe_fake`; production at `https://api.stripe.com`.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), common::stripe::StripeError> {
//! use common::stripe::{EventQuery, StripeClient, StripeSettings};
//! let client = StripeClient::new(&StripeSettings::from_env()?)?;
//! let query = EventQuery {
//!     created_gte: Some(1_765_000_000),
//!     types: vec!["customer.*".into()],
//!     delivery_success: Some(false),
//!     ..EventQuery::default()
//! };
//! let mut pages = client.events(query);
//! while let Some(page) = pages.next_page().await? {
//!     for event in &page.data {
//!         println!("{} {} {}", event.id, event.event_type, event.created);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! * [`StripeSettings`] — the `stripe` section of a job's settings: `api_key` (`STRIPE_API_KEY`;
//!   a secret key `sk_…` or a restricted key `rk_…`), `base_url` (`STRIPE_API_BASE`),
//!   `requests_per_second` (0 = by key mode: 80 in live mode, 20 in test mode, below Stripe's
//!   documented 100 and 25 per second), `max_retries`, `timeout`, `backoff`.
//! * [`StripeClient::events`] / [`StripeClient::customers`] — a [`Pager`] over `GET /v1/events` or
//!   `GET /v1/customers`: newest first, `limit` ≤ 100 per page, the next page starts after the
//!   last id of the previous one (`starting_after`) while `has_more` is true.
//!   [`StripeClient::list_events`] and [`StripeClient::list_customers`] fetch one page.
//! * [`StripeClient::customer`] — `GET /v1/customers/{id}` as a [`CustomerLookup`]: the
//!   customer, `Deleted` (Stripe answers a deleted customer with `{"id", "object": "customer",
//!   "deleted": true}`) or `Missing` (404 `resource_missing`).
//! * [`StripeError`] — Stripe's `{"error": {"type", "code", "message"}}` with the HTTP status;
//!   [`StripeError::Unauthorized`] names the key setting, never the key.
//!
//! Retries: a 429, a 409 `lock_timeout`, a 5xx or a connection failure is retried with capped,
//! jittered backoff up to `max_retries` times, unless Stripe answers `Stripe-Should-Retry: false`;
//! `Stripe-Should-Retry: true` makes any status retryable. A `Retry-After` header, when present,
//! is the least wait. (docs.stripe.com/rate-limits, docs.stripe.com/error-low-level)

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{
    config::{ConfigError, HumanDuration, Secret},
    retry::{Backoff, BackoffSettings},
};

/// Stripe's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// The largest page Stripe's list endpoints return.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Client-side pace in live mode: Stripe allows 100 operations per second.
pub const LIVE_REQUESTS_PER_SECOND: f64 = 80.0;
/// Client-side pace in test mode (sandboxes): Stripe allows 25 operations per second.
pub const TEST_REQUESTS_PER_SECOND: f64 = 20.0;

/// The `stripe` section of a job's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeSettings {
    /// Secret (`sk_live_…`, `sk_test_…`) or restricted (`rk_live_…`, `rk_test_…`) API key
    /// (`STRIPE_API_KEY`). Required by the jobs that call Stripe; no default.
    pub api_key: Secret,
    /// Base URL of the API (`STRIPE_API_BASE`). Default `https://api.stripe.com`.
    pub base_url: String,
    /// Requests per second this client sends at most; `0` picks by key mode (80 live, 20 test).
    pub requests_per_second: f64,
    /// Retries of one request after a retryable failure. Default 8.
    pub max_retries: u32,
    /// Time budget of one HTTP request. Default `30s`.
    pub timeout: HumanDuration,
    /// Delays between retries. Default 500 ms growing to 30 s.
    pub backoff: BackoffSettings,
    /// Page size of list calls, 1 to 100. Default 100.
    pub page_size: u32,
}

impl Default for StripeSettings {
    fn default() -> Self {
        StripeSettings {
            api_key: Secret::default(),
            base_url: DEFAULT_BASE_URL.into(),
            requests_per_second: 0.0,
            max_retries: 8,
            timeout: HumanDuration::secs(30),
            backoff: BackoffSettings {
                initial: HumanDuration::millis(500),
                max: HumanDuration::secs(30),
            },
            page_size: MAX_PAGE_SIZE,
        }
    }
}

/// The environment variables a job maps onto its `stripe` section (besides its own prefixed ones).
pub const STRIPE_ENV: &[(&str, &str)] = &[
    ("STRIPE_API_KEY", "stripe.api_key"),
    ("STRIPE_API_BASE", "stripe.base_url"),
];

impl StripeSettings {
    /// Defaults with `STRIPE_API_KEY` and `STRIPE_API_BASE` from the environment, validated.
    pub fn from_env() -> Result<Self, StripeError> {
        let mut s = StripeSettings::default();
        if let Ok(key) = std::env::var("STRIPE_API_KEY") {
            s.api_key = Secret::new(key);
        }
        if let Ok(url) = std::env::var("STRIPE_API_BASE").map(|u| u.trim().to_string())
            && !url.is_empty()
        {
            s.base_url = url;
        }
        s.validate("stripe")
            .map_err(|e| StripeError::Config(e.to_string()))?;
        Ok(s)
    }

    /// The key's mode, from its prefix.
    pub fn mode(&self) -> Result<KeyMode, ConfigError> {
        KeyMode::of(self.api_key.expose()).map_err(|e| ConfigError::invalid("stripe.api_key", e))
    }

    /// The pace this client keeps: the setting, or the default of the key's mode.
    pub fn effective_rate(&self) -> f64 {
        if self.requests_per_second > 0.0 {
            return self.requests_per_second;
        }
        match self.mode() {
            Ok(KeyMode::Live) => LIVE_REQUESTS_PER_SECOND,
            _ => TEST_REQUESTS_PER_SECOND,
        }
    }

    /// Rejects settings that cannot work; `section` names them in errors (`stripe.api_key`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        KeyMode::of(self.api_key.expose())
            .map_err(|e| ConfigError::invalid(format!("{section}.api_key"), e))?;
        let url = self.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                format!("{section}.base_url"),
                format!("expected an http:// or https:// URL, got `{url}`"),
            ));
        }
        if !self.requests_per_second.is_finite() || self.requests_per_second < 0.0 {
            return Err(ConfigError::invalid(
                format!("{section}.requests_per_second"),
                "must be 0 (by key mode) or a positive number",
            ));
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            return Err(ConfigError::invalid(
                format!("{section}.page_size"),
                format!("must be between 1 and {MAX_PAGE_SIZE} (Stripe's limit)"),
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(ConfigError::invalid(
                format!("{section}.timeout"),
                "must be longer than 0",
            ));
        }
        self.backoff.validate(&format!("{section}.backoff"))
    }
}

/// Live or test mode, as the key's prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    /// The mode of `key`; the error says what is wrong without showing the key.
    pub fn of(key: &str) -> Result<KeyMode, String> {
        if key.is_empty() {
            return Err(
                "no Stripe API key: set STRIPE_API_KEY to a secret key (sk_…) or a restricted key (rk_…)"
                    .into(),
            );
        }
        for (prefix, mode) in [
            ("sk_live_", KeyMode::Live),
            ("rk_live_", KeyMode::Live),
            ("sk_test_", KeyMode::Test),
            ("rk_test_", KeyMode::Test),
        ] {
            if key.starts_with(prefix) && key.len() > prefix.len() {
                return Ok(mode);
            }
        }
        Err(if key.starts_with("pk_") {
            "this is a publishable key (pk_…); the API calls need a secret key (sk_…) or a restricted key (rk_…)"
        } else if key.starts_with("whsec_") {
            "this is a webhook signing secret (whsec_…), not an API key (sk_… or rk_…)"
        } else {
            "not a Stripe API key (STRIPE_API_KEY): expected sk_live_…, sk_test_…, rk_live_… or rk_test_…"
        }
        .into())
    }
}

/// What went wrong talking to Stripe. Never carries the API key.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("Stripe settings: {0}")]
    Config(String),
    /// 401: the key is wrong, revoked or expired.
    #[error("Stripe rejected the API key (401 {kind}): {message} — check STRIPE_API_KEY (stripe.api_key)")]
    Unauthorized { kind: String, message: String },
    /// 403: a restricted key without the permission this call needs.
    #[error(
        "the Stripe API key may not do this (403 {kind}): {message} — a restricted key needs read access to events and customers"
    )]
    Forbidden { kind: String, message: String },
    /// Any other error answer, after retries where retrying was allowed.
    #[error("Stripe answered {status} ({kind}{}): {message}{}",
        code.as_deref().map(|c| format!(", {c}")).unwrap_or_default(),
        request_id.as_deref().map(|r| format!(" [request {r}]")).unwrap_or_default())]
    Api {
        status: u16,
        /// `error.type`, e.g. `invalid_request_error`, `rate_limit_error`, `api_error`.
        kind: String,
        /// `error.code`, e.g. `resource_missing`, `rate_limit`, `lock_timeout`.
        code: Option<String>,
        message: String,
        request_id: Option<String>,
        /// How many requests were sent, retries included.
        attempts: u32,
    },
    /// No answer (connection refused, reset, timed out), after retries.
    #[error("cannot reach Stripe at {url} after {attempts} attempts: {message}")]
    Transport {
        url: String,
        message: String,
        attempts: u32,
    },
    /// A 2xx answer that is not what the endpoint documents.
    #[error("unexpected answer from Stripe's {path}: {message}")]
    Decode { path: String, message: String },
}

impl StripeError {
    /// The HTTP status Stripe answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Unauthorized { .. } => Some(401),
            StripeError::Forbidden { .. } => Some(403),
            StripeError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One page of a list endpoint: `{"object": "list", "data": [...], "has_more", "url"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default)]
    pub url: Option<String>,
}

/// A Stripe event as `GET /v1/events` returns it: the fields jobs route on, and the whole object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub pending_webhooks: i64,
    /// `data.object.id`, e.g. `cus_…`.
    pub object_id: Option<String>,
    /// The event object as returned (compact JSON; keys in Stripe's order are not kept).
    pub json: Value,
}

impl Event {
    /// Reads an event object; `None` unless it has `object: "event"`, an `id`, `type` and `created`.
    pub fn from_json(json: Value) -> Option<Event> {
        if json.get("object")?.as_str()? != "event" {
            return None;
        }
        Some(Event {
            id: json.get("id")?.as_str()?.to_string(),
            event_type: json.get("type")?.as_str()?.to_string(),
            created: json.get("created")?.as_i64()?,
            livemode: json.get("livemode").and_then(Value::as_bool).unwrap_or(false),
            pending_webhooks: json.get("pending_webhooks").and_then(Value::as_i64).unwrap_or(0),
            object_id: json
                .pointer("/data/object/id")
                .and_then(Value::as_str)
                .map(str::to_string),
            json,
        })
    }

    /// The event as JSON bytes, for records that keep the event's body.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail.
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// `created[gte]`, unix seconds.
    pub created_gte: Option<i64>,
    /// `created[lt]`, unix seconds.
    pub created_lt: Option<i64>,
    /// One type goes out as `type`, which may be a `*` wildcard (`customer.*`); several go out as
    /// `types[]`, which Stripe matches exactly (up to 20 names, no wildcards): see
    /// [`EventQuery::check`].
    pub types: Vec<String>,
    /// `delivery_success`: `false` lists events whose webhook delivery has not succeeded.
    pub delivery_success: Option<bool>,
}

impl EventQuery {
    /// Rejects what Stripe would refuse or silently not match: more than 20 types, or a
    /// wildcard among several types.
    pub fn check(&self) -> Result<(), String> {
        if self.types.len() > 20 {
            return Err(format!(
                "{} event types given; Stripe takes at most 20",
                self.types.len()
            ));
        }
        if self.types.len() > 1 && self.types.iter().any(|t| t.contains('*')) {
            return Err(
                "a wildcard type (customer.*) works only on its own: Stripe matches several types exactly"
                    .into(),
            );
        }
        Ok(())
    }

    fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.created_gte {
            p.push(("created[gte]".into(), t.to_string()));
        }
        if let Some(t) = self.created_lt {
            p.push(("created[lt]".into(), t.to_string()));
        }
        match self.types.as_slice() {
            [] => {}
            [one] => p.push(("type".into(), one.clone())),
            many => p.extend(many.iter().map(|t| ("types[]".into(), t.clone()))),
        }
        if let Some(d) = self.delivery_success {
            p.push(("delivery_success".into(), d.to_string()));
        }
        p
    }
}

/// Filters of `GET /v1/customers`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerQuery {
    pub created_gte: Option<i64>,
    pub created_lt: Option<i64>,
    /// `email`, exact and case-sensitive as Stripe matches it.
    pub email: Option<String>,
}

impl CustomerQuery {
    fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.created_gte {
            p.push(("created[gte]".into(), t.to_string()));
        }
        if let Some(t) = self.created_lt {
            p.push(("created[lt]".into(), t.to_string()));
        }
        if let Some(e) = &self.email {
            p.push(("email".into(), e.clone()));
        }
        p
    }
}

/// What `GET /v1/customers/{id}` found.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomerLookup {
    /// The customer object.
    Found(Value),
    /// The customer was deleted: Stripe keeps answering `{"id", "object": "customer", "deleted": true}`.
    Deleted,
    /// No such customer (404 `resource_missing`).
    Missing,
}

/// Keeps requests at most `rate` per second, across every task sharing the client.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// A Stripe API client; cheap to clone (one connection pool and one pace for all clones).
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
    mode: KeyMode,
    pacer: Arc<Pacer>,
    max_retries: u32,
    backoff: BackoffSettings,
    page_size: u32,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    pub fn new(settings: &StripeSettings) -> Result<Self, StripeError> {
        settings
            .validate("stripe")
            .map_err(|e| StripeError::Config(e.to_string()))?;
        let mode = settings.mode().map_err(|e| StripeError::Config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout.into())
            .user_agent(concat!("stripe-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(StripeClient {
            http,
            base: settings.base_url.trim().trim_end_matches('/').to_string(),
            key: settings.api_key.clone(),
            mode,
            pacer: Arc::new(Pacer::new(settings.effective_rate())),
            max_retries: settings.max_retries,
            backoff: settings.backoff.clone(),
            page_size: settings.page_size,
        })
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// One page of `GET /v1/events`, newest first.
    pub async fn list_events(
        &self,
        query: &EventQuery,
        starting_after: Option<&str>,
    ) -> Result<Page<Event>, StripeError> {
        query.check().map_err(StripeError::Config)?;
        let page: Page<Value> = self.list("/v1/events", query.params(), starting_after).await?;
        let data = page
            .data
            .into_iter()
            .map(|v| {
                Event::from_json(v).ok_or_else(|| StripeError::Decode {
                    path: "/v1/events".into(),
                    message: "an item of `data` is not an event (object, id, type, created)".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Page {
            data,
            has_more: page.has_more,
            url: page.url,
        })
    }

    /// One page of `GET /v1/customers`, newest first; deleted customers are not listed.
    pub async fn list_customers(
        &self,
        query: &CustomerQuery,
        starting_after: Option<&str>,
    ) -> Result<Page<Value>, StripeError> {
        self.list("/v1/customers", query.params(), starting_after).await
    }

    /// Every page of `GET /v1/events` for `query`, newest first.
    pub fn events(&self, query: EventQuery) -> Pager<Event> {
        let client = self.clone();
        Pager::new(Arc::new(move |after| {
            let (client, query) = (client.clone(), query.clone());
            Box::pin(async move { client.list_events(&query, after.as_deref()).await })
        }))
    }

    /// Every page of `GET /v1/customers` for `query`, newest first.
    pub fn customers(&self, query: CustomerQuery) -> Pager<Value> {
        let client = self.clone();
        Pager::new(Arc::new(move |after| {
            let (client, query) = (client.clone(), query.clone());
            Box::pin(async move { client.list_customers(&query, after.as_deref()).await })
        }))
    }

    /// `GET /v1/customers/{id}`.
    pub async fn customer(&self, id: &str) -> Result<CustomerLookup, StripeError> {
        let path = format!("/v1/customers/{id}");
        match self.get(&path, Vec::new()).await {
            Ok(v) => {
                if v.get("deleted").and_then(Value::as_bool) == Some(true) {
                    Ok(CustomerLookup::Deleted)
                } else {
                    Ok(CustomerLookup::Found(v))
                }
            }
            Err(StripeError::Api { status: 404, .. }) => Ok(CustomerLookup::Missing),
            Err(e) => Err(e),
        }
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        mut params: Vec<(String, String)>,
        starting_after: Option<&str>,
    ) -> Result<Page<T>, StripeError> {
        params.push(("limit".into(), self.page_size.to_string()));
        if let Some(id) = starting_after {
            params.push(("starting_after".into(), id.to_string()));
        }
        let v = self.get(path, params).await?;
        serde_json::from_value(v).map_err(|e| StripeError::Decode {
            path: path.into(),
            message: format!("not a list object: {e}"),
        })
    }

    /// GET with pacing and retries; the JSON body of a 2xx answer.
    async fn get(&self, path: &str, params: Vec<(String, String)>) -> Result<Value, StripeError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = Backoff::new(self.backoff.initial.into(), self.backoff.max.into());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let sent = self
                .http
                .get(&url)
                .bearer_auth(self.key.expose())
                .query(&params)
                .send()
                .await;
            let (error, least_wait) = match sent {
                Err(e) => {
                    let err = StripeError::Transport {
                        url: url.clone(),
                        message: error_chain(&e),
                        attempts: attempt,
                    };
                    (err, None)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let should_retry = resp
                        .headers()
                        .get("stripe-should-retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.eq_ignore_ascii_case("true"));
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let request_id = resp
                        .headers()
                        .get("request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = resp.bytes().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return serde_json::from_slice(&body).map_err(|e| StripeError::Decode {
                            path: path.into(),
                            message: format!("not JSON: {e}"),
                        });
                    }
                    let err = self.api_error(status, &body, request_id, attempt);
                    let retryable = match should_retry {
                        Some(answer) => answer,
                        None => {
                            status == 429
                                || status >= 500
                                || matches!(&err, StripeError::Api { code: Some(c), .. } if c == "lock_timeout")
                        }
                    };
                    if !retryable {
                        return Err(err);
                    }
                    (err, retry_after)
                }
            };
            if attempt > self.max_retries {
                return Err(error);
            }
            let delay = backoff.next_delay().max(least_wait.unwrap_or_default());
            tracing::warn!(attempt, error = %error, retry_in = ?delay, "Stripe request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn api_error(&self, status: u16, body: &[u8], request_id: Option<String>, attempts: u32) -> StripeError {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "type", default)]
            kind: Option<String>,
            #[serde(default)]
            code: Option<String>,
            #[serde(default)]
            message: Option<String>,
        }
        let parsed = serde_json::from_slice::<Envelope>(body).ok().map(|e| e.error);
        let kind = parsed
            .as_ref()
            .and_then(|b| b.kind.clone())
            .unwrap_or_else(|| "unknown_error".into());
        let code = parsed.as_ref().and_then(|b| b.code.clone());
        let message = parsed
            .and_then(|b| b.message)
            .unwrap_or_else(|| format!("{} bytes without a Stripe error object", body.len()));
        // Stripe's 401 message quotes the key, partly masked; mask it fully in case a server does not.
        let message = mask_key(&message, self.key.expose());
        match status {
            401 => StripeError::Unauthorized { kind, message },
            403 => StripeError::Forbidden { kind, message },
            _ => StripeError::Api {
                status,
                kind,
                code,
                message,
                request_id,
                attempts,
            },
        }
    }
}

fn mask_key(message: &str, key: &str) -> String {
    if key.len() < 8 {
        return message.to_string();
    }
    message.replace(key, "********")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

type FetchPage<T> =
    Arc<dyn Fn(Option<String>) -> BoxFuture<'static, Result<Page<T>, StripeError>> + Send + Sync>;

/// Walks a list endpoint page by page (`starting_after` = the last id of the previous page),
/// newest first, until `has_more` is false.
pub struct Pager<T> {
    fetch: FetchPage<T>,
    cursor: Option<String>,
    done: bool,
}

impl<T> fmt::Debug for Pager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pager")
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// An item of a list: its `id`, for the cursor.
pub trait Listed {
    fn list_id(&self) -> Option<&str>;
}

impl Listed for Event {
    fn list_id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl Listed for Value {
    fn list_id(&self) -> Option<&str> {
        self.get("id").and_then(Value::as_str)
    }
}

impl<T: Listed> Pager<T> {
    fn new(fetch: FetchPage<T>) -> Self {
        Pager {
            fetch,
            cursor: None,
            done: false,
        }
    }

    /// Starts after this id instead of at the newest item (to resume a walk).
    pub fn starting_after(mut self, id: impl Into<String>) -> Self {
        self.cursor = Some(id.into());
        self
    }

    /// The id the next page starts after: the last item handed out.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next page, or `None` when the list is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Page<T>>, StripeError> {
        if self.done {
            return Ok(None);
        }
        let page = (self.fetch)(self.cursor.clone()).await?;
        match page.data.last().and_then(Listed::list_id) {
            Some(id) => self.cursor = Some(id.to_string()),
            None => self.done = true,
        }
        if !page.has_more {
            self.done = true;
        }
        Ok(Some(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(key: &str) -> StripeSettings {
        StripeSettings {
            api_key: Secret::new(key),
            ..StripeSettings::default()
        }
    }

    #[test]
    fn key_mode_from_prefix() {
        assert_eq!(KeyMode::of("sk_live_abc").unwrap(), KeyMode::Live);
        assert_eq!(KeyMode::of("rk_live_abc").unwrap(), KeyMode::Live);
        assert_eq!(KeyMode::of("sk_test_abc").unwrap(), KeyMode::Test);
        assert_eq!(KeyMode::of("rk_test_abc").unwrap(), KeyMode::Test);
        for bad in ["", "pk_test_abc123", "whsec_abc123", "sk_test_", "hello123"] {
            let e = KeyMode::of(bad).unwrap_err();
            assert!(e.contains("key"), "{bad}: {e}");
            assert!(!e.contains("123"), "the key must not be echoed: {e}");
        }
        assert!(
            KeyMode::of("pk_live_x")
                .unwrap_err()
                .to_string()
                .contains("publishable")
        );
    }

    #[test]
    fn default_rate_depends_on_mode() {
        assert_eq!(settings("sk_live_x").effective_rate(), LIVE_REQUESTS_PER_SECOND);
        assert_eq!(settings("sk_test_x").effective_rate(), TEST_REQUESTS_PER_SECOND);
        let mut s = settings("sk_live_x");
        s.requests_per_second = 3.0;
        assert_eq!(s.effective_rate(), 3.0);
    }

    #[test]
    fn validation_names_the_setting() {
        let mut s = settings("sk_test_x");
        s.page_size = 101;
        assert!(
            s.validate("stripe")
                .unwrap_err()
                .to_string()
                .contains("stripe.page_size")
        );
        let mut s = settings("sk_test_x");
        s.base_url = "api.stripe.com".into();
        assert!(
            s.validate("stripe")
                .unwrap_err()
                .to_string()
                .contains("stripe.base_url")
        );
        let e = settings("nope").validate("stripe").unwrap_err().to_string();
        assert!(e.contains("stripe.api_key") && !e.contains("nope"), "{e}");
    }

    #[test]
    fn the_key_never_shows() {
        let s = settings("sk_test_supersecret123");
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!crate::config::render(&s).contains("supersecret"));
        let c = StripeClient::new(&s).unwrap();
        assert!(!format!("{c:?}").contains("supersecret"));
        assert_eq!(
            mask_key(
                "Invalid API Key provided: sk_test_supersecret123",
                "sk_test_supersecret123"
            ),
            "Invalid API Key provided: ********"
        );
    }

    #[test]
    fn event_query_parameters() {
        let q = EventQuery {
            created_gte: Some(10),
            created_lt: Some(20),
            types: vec!["customer.*".into()],
            delivery_success: Some(false),
        };
        assert_eq!(
            q.params(),
            vec![
                ("created[gte]".to_string(), "10".to_string()),
                ("created[lt]".into(), "20".into()),
                ("type".into(), "customer.*".into()),
                ("delivery_success".into(), "false".into()),
            ]
        );
        let q = EventQuery {
            types: vec!["customer.created".into(), "customer.deleted".into()],
            ..EventQuery::default()
        };
        assert_eq!(
            q.params(),
            vec![
                ("types[]".to_string(), "customer.created".to_string()),
                ("types[]".into(), "customer.deleted".into()),
            ]
        );
    }

    #[tokio::test]
    async fn pacer_spaces_requests() {
        let p = Pacer::new(50.0);
        let start = Instant::now();
        for _ in 0..6 {
            p.wait().await;
        }
        // Five intervals of 20 ms after the first, immediate, slot.
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }
}
