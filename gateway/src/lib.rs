//! The gateway: the pipeline's front door. It receives Stripe webhooks, verifies their
//! signatures over the raw bytes, and writes each event to Kafka (`stripe.events`), answering 2xx
//! only once the broker has acknowledged the record. Anything else is a non-2xx, so Stripe
//! delivers it again.
//!
//! * [`signature`] — `Stripe-Signature` parsing and verification; builds [`VerifiedPayload`].
//! * [`event`] — parsing a verified body into the `StripeEvent` record and its key; its
//!   `lenient` submodule reads each field so that null or an unexpected shape is "absent".
//! * [`dedup`] — recently accepted event ids and single-flight for concurrent duplicates.
//! * [`publish`] — the durable write ([`publish::Publisher`]): Avro via the schema registry,
//!   idempotent `acks=all` produce.
//! * [`http`] — the axum router and handler; [`error`] — the one error-to-response mapping.
//! * [`metrics`] — `gateway_*` Prometheus metrics.
//! * [`config`] — settings, defaults and validation; [`tls`] — optional rustls termination.
//! * [`send`] — `gateway send`: signs and posts test events (`send::generate` makes realistic
//!   customer events), for people testing a deployment.
//! * [`backfill`] — `gateway backfill`: events read from Stripe's events API, written as webhooks
//!   are, resumable from a checkpoint in Kafka.
//! * [`run`] (`server`) — accept connections (header read time bounded), serve until shutdown,
//!   then drain and flush within a deadline.
//!
//! Neighbours: `schemas` (record and codec), `common` (config, Kafka clients, ops routes,
//! telemetry), and downstream the enricher, which reads `stripe.events`.

pub mod backfill;
pub mod config;
pub mod dedup;
pub mod error;
pub mod event;
pub mod http;
pub mod metrics;
pub mod publish;
pub mod send;
mod server;
pub mod signature;
pub mod tls;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use event::VerifiedEvent;
pub use http::{AppState, WEBHOOK_PATH, app};
pub use server::{run, url};
pub use signature::{SignatureError, VerifiedPayload, Verifier};
