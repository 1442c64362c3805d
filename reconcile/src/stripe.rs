//! The Stripe side as the reconciliation needs it: every live customer, and what Stripe says
//! about one id, each with the time it was asked for. [`CustomerSource`] keeps the run testable
//! without HTTP; [`common::stripe::StripeClient`] (pagination, pacing, Stripe's retry rules)
//! implements it.

use std::future::Future;

use anyhow::Context as _;
use common::stripe::{CustomerLookup, CustomerQuery, StripeClient};
use serde_json::Value;

/// A customer object and the unix second its request was sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    pub value: T,
    pub read_at: i64,
}

/// Stripe's answer for one id.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The customer object.
    Live(Value),
    /// `{"id": …, "object": "customer", "deleted": true}`.
    Deleted,
    /// 404 `resource_missing`: no such customer.
    Unknown,
}

/// Where customers come from.
pub trait CustomerSource {
    /// Every live customer (Stripe's list leaves deleted customers out), each with the time
    /// its page was asked for.
    fn customers(&self) -> impl Future<Output = anyhow::Result<Vec<Read<Value>>>> + Send;
    /// One customer by id.
    fn customer(&self, id: &str) -> impl Future<Output = anyhow::Result<Read<Lookup>>> + Send;
}

/// Now, in unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl CustomerSource for StripeClient {
    async fn customers(&self) -> anyhow::Result<Vec<Read<Value>>> {
        let mut pages = StripeClient::customers(self, CustomerQuery::default());
        let mut out = Vec::new();
        loop {
            let read_at = unix_now();
            let Some(page) = pages.next_page().await.context("GET /v1/customers")? else {
                return Ok(out);
            };
            out.extend(page.data.into_iter().map(|value| Read { value, read_at }));
        }
    }

    async fn customer(&self, id: &str) -> anyhow::Result<Read<Lookup>> {
        let read_at = unix_now();
        let value = match StripeClient::customer(self, id).await? {
            CustomerLookup::Found(object) => Lookup::Live(object),
            CustomerLookup::Deleted => Lookup::Deleted,
            CustomerLookup::Missing => Lookup::Unknown,
        };
        Ok(Read { value, read_at })
    }
}
