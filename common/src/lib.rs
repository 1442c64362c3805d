//! Plumbing shared by every stage, so each stage's crate holds only its own logic.
//!
//! * [`config`] — typed settings from defaults, a TOML file, environment variables and `--set`
//!   flags, validated at start-up with errors that name the setting.
//! * [`consume`] — the commit-after-success consumer loop: ordered per partition, concurrent across
//!   partitions, commits never pass an unfinished record.
//! * [`dlq`] — dead-letter writes with the reason and origin in headers.
//! * [`kafka`] — client builders with the pipeline's delivery guarantees baked in (idempotent
//!   `acks=all` producer; consumer with manual offset storage), topic creation, and W3C trace
//!   context in record headers.
//! * [`telemetry`] — tracing subscriber, optional OTLP export.
//! * [`ops`] — `/healthz`, `/readyz` and `/metrics` for every service.
//! * [`offsets`] — the lowest-unfinished-offset tracker that keeps commits from passing a gap.
//! * [`replay`] — reset a group's committed offsets by offset, time, earliest or latest.
//! * [`retry`] — capped, jittered backoff.
//! * [`shutdown`] — SIGINT/SIGTERM as a cancellation token.
//! * [`stage`] — the command line every consuming stage shares (`run`, `print-config`, `replay`).

pub mod config;
pub mod consume;
pub mod dlq;
pub mod kafka;
pub mod offsets;
pub mod ops;
pub mod replay;
pub mod retry;
pub mod shutdown;
pub mod stage;
pub mod telemetry;

pub use config::Secret;
