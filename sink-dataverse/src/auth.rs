//! OAuth 2.0 client credentials against Microsoft Entra ID (or any endpoint speaking the same
//! form): one token shared by every request, renewed before it expires and once more when
//! Dataverse answers 401. The secret and the tokens are never logged.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::Secret;
use serde::Deserialize;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Why a token could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint refused the credentials or the request (`invalid_client`,
    /// `unauthorized_client`, `invalid_scope`, …): a configuration problem.
    #[error("the token endpoint refused the request ({status} {error}): {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    /// The token endpoint could not be reached or failed: retry.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// How a token is asked for.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    /// Renew from here on, well before expiry, so no request carries a token about to lapse.
    renew_at: Instant,
}

/// The cache: the current token, and why the next one will be fetched.
#[derive(Default)]
struct Cache {
    current: Option<Cached>,
    /// Dataverse refused the last token before it was due for renewal.
    rejected: bool,
}

/// Hands out a valid bearer token, fetching a new one when needed (one fetch at a time).
pub struct TokenSource {
    http: reqwest::Client,
    credentials: Credentials,
    cached: Mutex<Cache>,
    /// Serialises renewals so a burst of requests with an expiring token fetches one new token,
    /// not one each. Held across the fetch on purpose; the cache itself is a short std lock.
    renewing: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.credentials.token_url)
            .field("client_id", &self.credentials.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; Entra ID v1 endpoints send it as a string.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// When to renew a token that lives `lifetime`: five minutes before expiry, or halfway through
/// for short-lived tokens.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 2).min(Duration::from_secs(300))
}

impl TokenSource {
    pub fn new(http: reqwest::Client, credentials: Credentials, metrics: Metrics) -> Self {
        TokenSource {
            http,
            credentials,
            cached: Mutex::new(Cache::default()),
            renewing: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    fn fresh(&self) -> Option<Arc<str>> {
        let cache = lock(&self.cached);
        cache
            .current
            .as_ref()
            .filter(|c| Instant::now() < c.renew_at)
            .map(|c| c.token.clone())
    }

    /// A token valid for a while yet.
    pub async fn token(&self) -> Result<Arc<str>, AuthError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _renewing = self.renewing.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, lifetime) = self.fetch().await?;
        let mut cache = lock(&self.cached);
        let reason = match (&cache.current, cache.rejected) {
            (_, true) => "rejected",
            (Some(_), false) => "expiring",
            (None, false) => "initial",
        };
        self.metrics.token_renewed(reason);
        tracing::debug!(
            lifetime_secs = lifetime.as_secs(),
            reason,
            "access token obtained"
        );
        *cache = Cache {
            current: Some(Cached {
                token: token.clone(),
                renew_at: Instant::now() + renew_after(lifetime),
            }),
            rejected: false,
        };
        Ok(token)
    }

    /// Dataverse refused `token` (401): forget it, so the next call fetches a new one. A token
    /// already replaced by a concurrent renewal is left alone.
    pub fn reject(&self, token: &str) {
        let mut cache = lock(&self.cached);
        if cache.current.as_ref().is_some_and(|c| &*c.token == token) {
            cache.current = None;
            cache.rejected = true;
        }
    }

    async fn fetch(&self) -> Result<(Arc<str>, Duration), AuthError> {
        let c = &self.credentials;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.expose()),
            ("scope", c.scope.as_str()),
        ];
        let response = self
            .http
            .post(&c.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            // The error names the URL, never the form.
            .map_err(|e| AuthError::Unavailable(describe(&e)))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| AuthError::Unavailable(describe(&e)))?;
        if (200..300).contains(&status) {
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                AuthError::Unavailable(format!(
                    "the token endpoint answered {status} without a token: {e}"
                ))
            })?;
            let lifetime = parsed
                .expires_in
                .as_ref()
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                .map(Duration::from_secs)
                .filter(|d| !d.is_zero())
                // No lifetime given: assume the shortest Entra ID issues.
                .unwrap_or(Duration::from_secs(3600));
            return Ok((Arc::from(parsed.access_token), lifetime));
        }
        let error: TokenErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
        if status == 429 || status >= 500 || error.error == "temporarily_unavailable" {
            return Err(AuthError::Unavailable(format!(
                "HTTP {status} {}",
                error.error_description
            )));
        }
        Err(AuthError::Refused {
            status,
            error: error.error,
            description: error.error_description,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only a cache behind it; a panic elsewhere leaves nothing half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A transport error's description with its causes, without the request body.
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_well_before_expiry() {
        assert_eq!(renew_after(Duration::from_secs(3599)), Duration::from_secs(3299));
        assert_eq!(renew_after(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(renew_after(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
