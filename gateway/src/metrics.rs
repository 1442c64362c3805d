//! The gateway's Prometheus metrics, served at `/metrics` by `common::ops`. Names follow
//! `gateway_<thing>_<unit>`; label values come from fixed sets, never from ids or messages.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::signature::SignatureError;

/// How a webhook request ended; the `outcome` label of `gateway_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written and acknowledged by the broker: 200.
    Accepted,
    /// Accepted before (or by a concurrent request): 200, not written again.
    Duplicate,
    /// Verified but of a type the configuration filters out: 200, not written.
    Ignored,
    /// Signature verification failed: 400.
    BadSignature,
    /// Verified body that is not a Stripe event, or a body that could not be read: 400.
    BadRequest,
    /// Source address not allowed: 403.
    Forbidden,
    /// Method other than POST: 405.
    MethodNotAllowed,
    /// Body over the limit: 413.
    TooLarge,
    /// The body did not arrive within `limits.body_read_timeout`: 408.
    BodyTimeout,
    /// Content type other than JSON: 415.
    UnsupportedMediaType,
    /// Broker or registry could not take the write in time: 503.
    Unavailable,
    /// Too many requests in flight: 503.
    Overloaded,
    /// The request took longer than its budget: 503.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Ignored,
        Outcome::BadSignature,
        Outcome::BadRequest,
        Outcome::Forbidden,
        Outcome::MethodNotAllowed,
        Outcome::TooLarge,
        Outcome::BodyTimeout,
        Outcome::UnsupportedMediaType,
        Outcome::Unavailable,
        Outcome::Overloaded,
        Outcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::BadSignature => "bad_signature",
            Outcome::BadRequest => "bad_request",
            Outcome::Forbidden => "forbidden",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::TooLarge => "too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::Unavailable => "unavailable",
            Outcome::Overloaded => "overloaded",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<OutcomeLabel, Counter>,
    verification_failures: Family<ReasonLabel, Counter>,
    write_failures: Family<DependencyLabel, Counter>,
    /// Time from handing the record to the producer (schema lookup included) to the broker's
    /// acknowledgement, successful writes only.
    produce_duration: Histogram,
    request_duration: Histogram,
    in_flight: Gauge,
    duplicates: Counter,
    /// Verified events answered 413 because their record is over the broker's limit.
    events_too_large: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in a new registry with the `gateway` prefix.
    pub fn new() -> (Self, Registry) {
        let mut registry = Registry::with_prefix("gateway");
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
        ];
        let m = Metrics {
            requests: Family::default(),
            verification_failures: Family::default(),
            write_failures: Family::default(),
            produce_duration: Histogram::new(buckets),
            request_duration: Histogram::new(buckets),
            in_flight: Gauge::default(),
            duplicates: Counter::default(),
            events_too_large: Counter::default(),
        };
        registry.register(
            "requests",
            "Webhook requests by how they ended",
            m.requests.clone(),
        );
        registry.register(
            "verification_failures",
            "Webhook signature verification failures by reason",
            m.verification_failures.clone(),
        );
        registry.register(
            "write_failures",
            "Events that could not be written, by the dependency that failed",
            m.write_failures.clone(),
        );
        registry.register_with_unit(
            "produce_duration",
            "Time to write one event until the broker acknowledged it",
            Unit::Seconds,
            m.produce_duration.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer one webhook request",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Verified webhook events being written now",
            m.in_flight.clone(),
        );
        registry.register(
            "duplicates",
            "Deliveries of an event already accepted, answered without writing",
            m.duplicates.clone(),
        );
        registry.register(
            "events_too_large",
            "Verified events refused with 413 because their record is over the broker's limit",
            m.events_too_large.clone(),
        );
        // Every series exists from the start, so rates and alerts work before the first event.
        for outcome in Outcome::ALL {
            let _ = m.requests.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for reason in SignatureError::REASONS {
            let _ = m.verification_failures.get_or_create(&ReasonLabel { reason });
        }
        for dependency in ["kafka", "schema_registry", "internal"] {
            let _ = m.write_failures.get_or_create(&DependencyLabel { dependency });
        }
        (m, registry)
    }

    pub fn request(&self, outcome: Outcome, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.request_duration.observe(seconds);
        if outcome == Outcome::Duplicate {
            self.duplicates.inc();
        }
    }

    pub fn verification_failure(&self, reason: &'static str) {
        self.verification_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn write_failure(&self, dependency: &'static str) {
        self.write_failures
            .get_or_create(&DependencyLabel { dependency })
            .inc();
    }

    pub fn event_too_large(&self) {
        self.events_too_large.inc();
    }

    pub fn produced(&self, seconds: f64) {
        self.produce_duration.observe(seconds);
    }

    /// Counts a request in flight until the guard is dropped (also when the client goes away).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
