//! The enricher stage: consumes `stripe.events`, turns customer events into normalised
//! [`schemas::Customer`] changes and produces them to `customers.normalized`.
//!
//! Modules:
//! * [`normalize`]: the normalisation rules as pure functions (documented for users in
//!   `NORMALIZATION.md`).

pub mod normalize;
