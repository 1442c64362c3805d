//! The Stripe side as the reconciliation needs it: every live customer, and what Stripe says
//! about one id. [`CustomerSource`] keeps the comparison testable without HTTP; the
//! implementation over Stripe's API is [`crate::stripe_api`].

use std::future::Future;

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
