//! The pipeline's data contracts: the Avro schemas of its topics, the Rust types that mirror them,
//! and the codec that reads and writes them in the Confluent wire format through a schema registry.
//!
//! * [`StripeEvent`] — a verified Stripe webhook, lossless (topic [`topics::STRIPE_EVENTS`]).
//! * [`Customer`] — one normalised customer change (topic [`topics::CUSTOMERS_NORMALIZED`]).
//! * [`Codec`] — encode/decode through the registry; [`CodecError`] says what went wrong and
//!   whether retrying can help.
//!
//! Every stage depends on this crate for data shapes and on nothing else for them.

mod codec;
mod customer;
mod record;
mod stripe_event;
pub mod topics;

pub use codec::{Codec, CodecError, RegistryConfig, SchemaMode, split_wire_format};
pub use customer::{Customer, CustomerOp};
pub use record::AvroRecord;
pub use stripe_event::{SOURCE_BACKFILL, SOURCE_WEBHOOK, StripeEvent};

/// Re-exported so callers can name schema types without depending on apache-avro themselves.
pub use apache_avro::Schema;
