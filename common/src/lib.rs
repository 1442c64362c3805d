//! Plumbing shared by every stage, so each stage's crate holds only its own logic.
//!
//! * [`config`] — typed settings from defaults, a TOML file, environment variables and `--set`
//!   flags, validated at start-up with errors that name the setting.
//! * [`consume`] — the commit-after-success consumer loop: ordered per partition, concurrent across
//!   partitions, commits never pass an unfinished record.
//! * [`dlq`] — dead-letter writes with the reason and origin in headers.
//! * [`producer`] — the one producer every stage writes through: classifies failures (transient,
//!   permanent, broken client) and replaces a broken client.
//! * [`dlq_admin`] — the `dlq list | show | redrive` commands: dead letters grouped by reason, one
//!   shown in full, and sent back to where they came from exactly once per dead letter.
//! * [`health`] — what keeps a stage from making progress, for `/readyz`.
//! * [`lag`] — consumer lag of the partitions a loop owns, on a client of its own.
//! * [`kafka`] — client builders with the pipeline's delivery guarantees baked in (idempotent
//!   `acks=all` producer; consumer with manual offset storage), topic creation, and W3C trace
//!   context in record headers.
//! * [`telemetry`] — tracing subscriber, optional OTLP export.
//! * [`ops`] — `/healthz`, `/readyz` and `/metrics` for every service.
//! * [`offsets`] — the lowest-unfinished-offset tracker that keeps commits from passing a gap.
//! * [`replay`] — reset a group's committed offsets by offset, time, earliest or latest.
//! * [`retry`] — capped, jittered backoff and the one retry-until-cancelled loop.
//! * [`stripe`] — a client of Stripe's REST API (events, customers): pagination, pacing below
//!   Stripe's rate limits, retries as Stripe's `Stripe-Should-Retry` says.
//! * [`shutdown`] — SIGINT/SIGTERM as a cancellation token.
//! * [`stage`] — what every consuming stage shares above the loop: the command line (`run`,
//!   `print-config`, `replay`, `dlq`) and the runner that wires ops, producer, topics, loop and lag.

pub mod config;
pub mod consume;
pub mod dlq;
pub mod dlq_admin;
pub mod health;
pub mod kafka;
pub mod lag;
pub mod offsets;
pub mod ops;
pub mod producer;
pub mod replay;
pub mod retry;
pub mod shutdown;
pub mod stage;
pub mod stripe;
pub mod telemetry;

pub use config::Secret;
