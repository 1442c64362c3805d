//! The Dataverse side: every contact the sink manages (the alternate key set), read page by page
//! with `Prefer: odata.maxpagesize` and `@odata.nextLink`, through the sink's own HTTP transport
//! (token renewal, the shared limiter that pauses on 429 for `Retry-After`), paced.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use sink_dataverse::{
    auth::{Credentials, TokenSource},
    client::{Method, Operation, ThrottlePolicy, Transport},
    error::WriteError,
    guard::StoredRow,
    mapping::Columns,
    metrics::Metrics,
    odata,
    rate::{Controller, Limiter},
};

use crate::{compare::Contact, config::ReconcileConfig, pace::Pacer};

/// Why the contacts could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Dataverse refused the query (wrong table or column names, privileges) or answered
    /// something that is not a page of contacts.
    #[error("Dataverse refused the contact listing: {0}")]
    Refused(String),
    /// Still failing after every attempt (outage, throttling that does not end).
    #[error("Dataverse did not answer the contact listing after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
}

/// Reads the sink's contacts.
pub struct ContactLister {
    transport: Arc<Transport>,
    columns: Columns,
    api_base: String,
    page_size: usize,
    pacer: Pacer,
    backoff: common::retry::BackoffSettings,
    max_attempts: u32,
}

impl std::fmt::Debug for ContactLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactLister")
            .field("api_base", &self.api_base)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl ContactLister {
    pub fn new(config: &ReconcileConfig, columns: Columns) -> anyhow::Result<Self> {
        let timeout: Duration = config.request_timeout.into();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        let dv = &config.dataverse;
        // The sink's metrics types are reused for their plumbing; nothing serves them here.
        let (metrics, _registry) = Metrics::new();
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
        let limiter = Limiter::new(Controller::new(1, config.throttle.ramp_up_after));
        let transport = Arc::new(Transport::new(
            http,
            dv.api_base(),
            tokens,
            limiter,
            metrics,
            ThrottlePolicy {
                default_retry_after: config.throttle.default_retry_after.into(),
                max_retry_after: config.throttle.max_retry_after.into(),
            },
        ));
        Ok(ContactLister {
            transport,
            columns,
            api_base: dv.api_base(),
            page_size: config.dataverse_page_size,
            pacer: Pacer::new(config.dataverse_requests_per_second),
            backoff: config.backoff.clone(),
            max_attempts: config.max_attempts,
        })
    }

    /// The first page's path: the key, guard and mapped columns of every row whose key is set.
    pub fn first_path(&self) -> String {
        let mut select = vec![self.columns.alternate_key.as_str()];
        select.extend(self.columns.select());
        format!(
            "{}{}&$filter={}%20ne%20null",
            self.columns.table,
            odata::select_query(&select),
            self.columns.alternate_key
        )
    }

    /// Every managed contact, following `@odata.nextLink` until the last page.
    pub async fn list(&self) -> Result<Vec<Contact>, ListError> {
        let mut contacts = Vec::new();
        let mut path = Some(self.first_path());
        let mut pages = 0u32;
        while let Some(current) = path.take() {
            let page = self.page(&current).await?;
            pages += 1;
            let rows = page
                .get("value")
                .and_then(Value::as_array)
                .ok_or_else(|| ListError::Refused("the answer has no `value` array".into()))?;
            for row in rows {
                contacts.push(self.contact(row)?);
            }
            if let Some(next) = page.get("@odata.nextLink").and_then(Value::as_str) {
                let relative = next.strip_prefix(&self.api_base).ok_or_else(|| {
                    ListError::Refused(format!(
                        "@odata.nextLink `{next}` is not under the Web API base {}",
                        self.api_base
                    ))
                })?;
                path = Some(relative.to_string());
            }
        }
        tracing::info!(contacts = contacts.len(), pages, "Dataverse contacts listed");
        Ok(contacts)
    }

    fn contact(&self, row: &Value) -> Result<Contact, ListError> {
        let key = row
            .get(&self.columns.alternate_key)
            .and_then(Value::as_str)
            .ok_or_else(|| ListError::Refused(format!("a row has no `{}`", self.columns.alternate_key)))?;
        let stored = StoredRow::from_json(&self.columns, row)
            .ok_or_else(|| ListError::Refused(format!("the row of {key} has no @odata.etag")))?;
        Ok(Contact {
            customer_id: key.to_string(),
            tombstone: stored.deleted,
            stamp: stored.created,
            values: stored.values,
        })
    }

    /// One page, retried while Dataverse is unavailable or throttling (the limiter holds every
    /// request for `Retry-After` after a 429).
    async fn page(&self, path: &str) -> Result<Value, ListError> {
        let op = Operation {
            method: Method::Get,
            path: path.to_string(),
            headers: vec![("Prefer", format!("odata.maxpagesize={}", self.page_size))],
            body: None,
        };
        let mut backoff = self.backoff.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let permit = self.transport.limiter().acquire().await;
            let answer = self
                .transport
                .single(&op, &permit, &tracing::Span::current())
                .await;
            drop(permit);
            let error = match answer {
                Ok(answer) if answer.status == 200 => {
                    return serde_json::from_slice(&answer.body)
                        .map_err(|e| ListError::Refused(format!("the page is not JSON: {e}")));
                }
                Ok(answer) => sink_dataverse::error::classify(answer.status, &answer.body, false),
                Err(e) => e,
            };
            let delay = match &error {
                WriteError::Throttled { .. } => Duration::ZERO,
                WriteError::Transient { .. } => backoff.next_delay(),
                WriteError::Conflict { .. } | WriteError::Rejected { .. } => {
                    return Err(ListError::Refused(error.to_string()));
                }
            };
            if attempt >= self.max_attempts {
                return Err(ListError::Unavailable {
                    attempts: attempt,
                    last: error.to_string(),
                });
            }
            tracing::warn!(attempt, error = %error, retry_in = ?delay, "listing Dataverse contacts failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sink_dataverse::mapping::Columns;

    async fn token(emulator: &dataverse_emulator::Running, http: &reqwest::Client) -> String {
        let answer: Value = http
            .post(emulator.token_url("t"))
            .form(&[
                ("client_id", "sink-dataverse"),
                ("client_secret", "local-secret"),
                ("grant_type", "client_credentials"),
                ("scope", &format!("{}/.default", emulator.url())),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_string()
    }

    fn config(emulator: &dataverse_emulator::Running, page_size: usize) -> ReconcileConfig {
        let mut config = ReconcileConfig::default();
        config.dataverse.environment_url = emulator.url();
        config.dataverse.token_url = Some(emulator.token_url("t"));
        config.dataverse.client_id = "sink-dataverse".into();
        config.dataverse.client_secret = common::config::Secret::new("local-secret");
        config.dataverse_page_size = page_size;
        config.dataverse_requests_per_second = 1000.0;
        config
    }

    #[tokio::test]
    async fn every_managed_contact_is_listed_across_pages_and_others_are_not() {
        let emulator = dataverse_emulator::spawn(dataverse_emulator::Config::default())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let token = token(&emulator, &http).await;
        for i in 0..7 {
            let body = json!({
                "lastname": format!("Row {i}"),
                "emailaddress1": format!("r{i}@example.com"),
                "new_stripeeventcreated": 100 + i,
                "new_stripedeleted": i == 3,
            });
            let response = http
                .patch(format!(
                    "{}contacts(new_stripecustomerid='cus_{i}')",
                    emulator.api_url()
                ))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        // A contact someone made by hand: no key, not the sink's.
        let response = http
            .post(format!("{}contacts", emulator.api_url()))
            .bearer_auth(&token)
            .json(&json!({"lastname": "Walk-in"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());

        let config = config(&emulator, 3);
        let columns = Columns::from_config(&config.as_sink());
        let lister = ContactLister::new(&config, columns).unwrap();
        let contacts = lister.list().await.unwrap();
        let mut ids: Vec<&str> = contacts.iter().map(|c| c.customer_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            ["cus_0", "cus_1", "cus_2", "cus_3", "cus_4", "cus_5", "cus_6"]
        );
        let three = contacts.iter().find(|c| c.customer_id == "cus_3").unwrap();
        assert!(three.tombstone);
        assert_eq!(three.stamp, Some(103));
        assert_eq!(three.values["emailaddress1"], "r3@example.com");
        assert!(
            !contacts
                .iter()
                .find(|c| c.customer_id == "cus_4")
                .unwrap()
                .tombstone
        );

        // The queries asked for pages of 3: three of them for 7 rows.
        let stats: Value = http
            .get(format!("{}/_admin/stats", emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["operations"]["read"], 3, "{stats}");
    }

    #[tokio::test]
    async fn a_wrong_column_is_a_refusal_that_names_it() {
        let emulator = dataverse_emulator::spawn(dataverse_emulator::Config::default())
            .await
            .unwrap();
        let mut config = config(&emulator, 10);
        config.mapping.email = "new_nosuchcolumn".into();
        let columns = Columns::from_config(&config.as_sink());
        let error = ContactLister::new(&config, columns)
            .unwrap()
            .list()
            .await
            .unwrap_err();
        assert!(matches!(error, ListError::Refused(_)), "{error}");
        assert!(error.to_string().contains("new_nosuchcolumn"), "{error}");
    }
}
