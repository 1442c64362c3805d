//! [`CustomerSource`] over Stripe's REST API: `GET /v1/customers` page by page (`limit`,
//! `starting_after`, `has_more`) and `GET /v1/customers/{id}`, with the secret key as a bearer
//! token, paced, and retried on 429 (Stripe's rate limiter), 5xx and connection failures.
//!
//! This is the minimum the reconciliation needs, kept on its own here; a shared Stripe client in
//! `common` would replace it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use common::{config::Secret, retry::BackoffSettings};
use serde_json::Value;

use crate::{
    config::ReconcileConfig,
    pace::Pacer,
    stripe::{CustomerSource, Lookup, Read, unix_now},
};

/// Stripe's customers.
pub struct StripeCustomers {
    http: reqwest::Client,
    base_url: String,
    key: Secret,
    page_size: usize,
    pacer: Pacer,
    backoff: BackoffSettings,
    max_attempts: u32,
}

impl std::fmt::Debug for StripeCustomers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeCustomers")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// One answer.
struct Answer {
    status: u16,
    body: Value,
    read_at: i64,
}

impl StripeCustomers {
    pub fn new(config: &ReconcileConfig) -> anyhow::Result<Self> {
        let timeout: Duration = config.request_timeout.into();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .context("building the HTTP client")?;
        Ok(StripeCustomers {
            http,
            base_url: config.stripe.base_url.trim_end_matches('/').to_string(),
            key: config.stripe.api_key.clone(),
            page_size: config.stripe.page_size,
            pacer: Pacer::new(config.stripe.requests_per_second),
            backoff: config.backoff.clone(),
            max_attempts: config.max_attempts,
        })
    }

    /// A GET, retried while Stripe is rate limiting, failing or unreachable. Any other answer
    /// is returned as it is.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base_url);
        let mut backoff = self.backoff.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let read_at = unix_now();
            let sent = self
                .http
                .get(&url)
                .query(query)
                .bearer_auth(self.key.expose())
                .send()
                .await;
            let failure = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let should_retry = response
                        .headers()
                        .get("stripe-should-retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v == "true");
                    let text = response.text().await.unwrap_or_default();
                    let retry = should_retry.unwrap_or(status == 429 || status >= 500);
                    if !retry || attempt >= self.max_attempts {
                        let body = serde_json::from_str(&text).with_context(|| {
                            format!("Stripe's answer to GET {path} (HTTP {status}) is not JSON")
                        })?;
                        return Ok(Answer {
                            status,
                            body,
                            read_at,
                        });
                    }
                    format!("HTTP {status}: {}", error_message(&text))
                }
                Err(e) if attempt >= self.max_attempts => {
                    bail!("GET {path} failed after {attempt} attempts: {e}")
                }
                Err(e) => e.to_string(),
            };
            let delay = backoff.next_delay();
            tracing::warn!(attempt, error = %failure, retry_in = ?delay, "a Stripe request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Stripe's error message from an error body, or the body itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn refused(path: &str, answer: &Answer) -> anyhow::Error {
    anyhow::anyhow!(
        "Stripe refused GET {path} (HTTP {}): {}",
        answer.status,
        error_message(&answer.body.to_string())
    )
}

impl CustomerSource for StripeCustomers {
    async fn customers(&self) -> anyhow::Result<Vec<Read<Value>>> {
        let path = "/v1/customers";
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", self.page_size.to_string())];
            if let Some(id) = &after {
                query.push(("starting_after", id.clone()));
            }
            let answer = self.get(path, &query).await?;
            if answer.status != 200 {
                return Err(refused(path, &answer));
            }
            let data = answer.body["data"]
                .as_array()
                .with_context(|| format!("Stripe's list of customers has no `data`: {}", answer.body))?;
            for customer in data {
                out.push(Read {
                    value: customer.clone(),
                    read_at: answer.read_at,
                });
            }
            let has_more = answer.body["has_more"].as_bool().unwrap_or(false);
            match data.last().and_then(|c| c["id"].as_str()) {
                Some(last) if has_more => after = Some(last.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn customer(&self, id: &str) -> anyhow::Result<Read<Lookup>> {
        let segment: String = id
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/v1/customers/{segment}");
        let answer = self.get(&path, &[]).await?;
        let value = match answer.status {
            200 if answer.body["deleted"] == Value::Bool(true) => Lookup::Deleted,
            200 => Lookup::Live(answer.body),
            404 if answer.body["error"]["code"] == "resource_missing" => Lookup::Unknown,
            _ => return Err(refused(&path, &answer)),
        };
        Ok(Read {
            value,
            read_at: answer.read_at,
        })
    }
}
