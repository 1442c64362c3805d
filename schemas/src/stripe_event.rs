//! `StripeEvent`: the value of `stripe.events` (schema `avro/stripe_event.avsc`).

use serde::{Deserialize, Serialize};

use crate::record::avro_record;

/// A verified Stripe webhook event. `raw_body` is authoritative; the other fields are parsed from
/// it so consumers can route and filter without parsing JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeEvent {
    /// `evt_…`; the key duplicates are recognised by.
    pub event_id: String,
    /// e.g. `customer.updated`.
    pub event_type: String,
    /// Unix seconds, as set by Stripe; orders changes to one object.
    pub created: i64,
    pub api_version: Option<String>,
    pub livemode: bool,
    /// Connected account, for Stripe Connect platforms.
    pub account: Option<String>,
    /// `data.object.id`, also the record key, so one object's events share a partition.
    pub object_id: Option<String>,
    /// `data.object.object`, e.g. `customer`.
    pub object_type: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// The request body exactly as Stripe signed it.
    #[serde(with = "apache_avro::serde::bytes")]
    pub raw_body: Vec<u8>,
    /// The `Stripe-Signature` header that was verified, kept for audit and re-verification.
    pub signature_header: String,
    /// Milliseconds since the epoch when the gateway received the request.
    pub received_at: i64,
    /// How the event arrived: [`SOURCE_WEBHOOK`] or [`SOURCE_BACKFILL`]; `None` in records
    /// written before the field existed (all webhooks). An optional field with a default, so
    /// readers of the earlier schema read new records and new readers read old ones.
    #[serde(default)]
    pub source: Option<String>,
}

/// `source` of a verified webhook delivery.
pub const SOURCE_WEBHOOK: &str = "webhook";
/// `source` of an event read from Stripe's events API by `gateway backfill`.
pub const SOURCE_BACKFILL: &str = "backfill";

avro_record!(StripeEvent, "stripe_event.avsc");
