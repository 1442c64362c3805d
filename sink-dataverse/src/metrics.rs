//! The sink's Prometheus metrics, served at `/metrics` by `common::ops`. Names follow
//! `sink_dataverse_<thing>_<unit>`; label values come from fixed sets (outcomes, error classes)
//! or the consumer's own assignment (topic, partition), never from ids or messages.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::guard::Outcome;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

fn request_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    writes: Family<OutcomeLabel, Counter>,
    dead_lettered: Family<ClassLabel, Counter>,
    retries: Family<ClassLabel, Counter>,
    conflicts: Counter,
    same_second_ties: Counter,
    throttled: Counter,
    throttled_seconds: Counter<f64, AtomicU64>,
    batch_size: Histogram,
    write_seconds: Histogram,
    request_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    token_renewals: Family<ReasonLabel, Counter>,
    concurrency_limit: Gauge,
    cache_lookups: Family<ResultLabel, Counter>,
    reads: Counter,
    cache_entries: Gauge,
    budget_remaining_seconds: Gauge<f64, AtomicU64>,
    budget_remaining_requests: Gauge,
}

/// How a change found what it needed to know of its contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The sink's own last read or write of it.
    Hit,
    /// Unknown, presumed new: written create-only.
    PresumedNew,
    /// Unknown, read first.
    Read,
}

impl Lookup {
    pub const ALL: [Lookup; 3] = [Lookup::Hit, Lookup::PresumedNew, Lookup::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::PresumedNew => "presumed_new",
            Lookup::Read => "read",
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in a new registry with the `sink_dataverse` prefix.
    pub fn new() -> (Self, Registry) {
        let mut registry = Registry::with_prefix("sink_dataverse");
        let m = Metrics {
            writes: Family::default(),
            dead_lettered: Family::default(),
            retries: Family::default(),
            conflicts: Counter::default(),
            same_second_ties: Counter::default(),
            throttled: Counter::default(),
            throttled_seconds: Counter::default(),
            batch_size: Histogram::new([1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
            write_seconds: request_histogram(),
            request_seconds: Family::new_with_constructor(request_histogram),
            token_renewals: Family::default(),
            concurrency_limit: Gauge::default(),
            cache_lookups: Family::default(),
            reads: Counter::default(),
            cache_entries: Gauge::default(),
            budget_remaining_seconds: Gauge::default(),
            budget_remaining_requests: Gauge::default(),
        };
        registry.register(
            "writes",
            "Customer changes finished, by outcome (created, updated, deactivated, tombstoned, deleted, already_absent, stale, unchanged, dead_lettered)",
            m.writes.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter topic, by error class",
            m.dead_lettered.clone(),
        );
        registry.register(
            "retries",
            "Transient failures that were retried, by class",
            m.retries.clone(),
        );
        registry.register(
            "conflicts",
            "Conditional writes that lost a race (412) and were decided again",
            m.conflicts.clone(),
        );
        registry.register(
            "same_second_ties",
            "Updates of one customer within one second that the events cannot order, applied in partition order (the customer id is logged)",
            m.same_second_ties.clone(),
        );
        registry.register("throttled", "429 answers from Dataverse", m.throttled.clone());
        registry.register_with_unit(
            "throttled",
            "Time every writer was paused by Retry-After",
            Unit::Seconds,
            m.throttled_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Operations per HTTP request to Dataverse (1 = a single request)",
            m.batch_size.clone(),
        );
        registry.register_with_unit(
            "write",
            "Time from starting a customer change to finishing it, retries included",
            Unit::Seconds,
            m.write_seconds.clone(),
        );
        registry.register_with_unit(
            "request",
            "Time of one HTTP request to Dataverse, by kind (single, batch)",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        registry.register(
            "token_renewals",
            "Access tokens obtained, by reason (initial, expiring, rejected)",
            m.token_renewals.clone(),
        );
        registry.register(
            "concurrency_limit",
            "Concurrent Dataverse requests allowed now",
            m.concurrency_limit.clone(),
        );
        registry.register(
            "contact_cache_lookups",
            "Customer changes by what the sink knew of the contact: hit (its own last read or write), presumed_new (unknown, written create-only), read (unknown, read first)",
            m.cache_lookups.clone(),
        );
        registry.register(
            "contact_cache_entries",
            "Contacts the sink remembers (bounded by contact_cache_entries)",
            m.cache_entries.clone(),
        );
        registry.register(
            "reads",
            "Contacts read from Dataverse by alternate key",
            m.reads.clone(),
        );
        registry.register_with_unit(
            "budget_remaining_execution",
            "Execution time left in Dataverse's service protection window, as its last answer said (x-ms-ratelimit-time-remaining-xrm-requests)",
            Unit::Seconds,
            m.budget_remaining_seconds.clone(),
        );
        registry.register(
            "budget_remaining_requests",
            "Requests left in Dataverse's service protection window, as its last answer said (x-ms-ratelimit-burst-remaining-xrm-requests)",
            m.budget_remaining_requests.clone(),
        );
        // Every fixed series exists from the start, so rates and alerts work before the first write.
        for outcome in Outcome::ALL {
            let _ = m.writes.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for lookup in Lookup::ALL {
            let _ = m.cache_lookups.get_or_create(&ResultLabel {
                result: lookup.as_str(),
            });
        }
        for kind in ["single", "batch"] {
            let _ = m.request_seconds.get_or_create(&KindLabel { kind });
        }
        (m, registry)
    }

    pub fn finished(&self, outcome: Outcome, seconds: f64) {
        self.writes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.write_seconds.observe(seconds);
    }

    /// A record was dead-lettered; counted as a finished write with that outcome too.
    pub fn dead_lettered(&self, class: &'static str) {
        self.dead_lettered.get_or_create(&ClassLabel { class }).inc();
        self.writes
            .get_or_create(&OutcomeLabel {
                outcome: Outcome::DeadLettered.as_str(),
            })
            .inc();
    }

    pub fn retried(&self, class: &'static str) {
        self.retries.get_or_create(&ClassLabel { class }).inc();
    }

    pub fn lookup(&self, lookup: Lookup, cache_entries: usize) {
        self.cache_lookups
            .get_or_create(&ResultLabel {
                result: lookup.as_str(),
            })
            .inc();
        self.cache_entries.set(cache_entries as i64);
    }

    pub fn read(&self) {
        self.reads.inc();
    }

    /// What Dataverse's last answer said is left of its budget.
    pub fn budget_remaining(&self, requests: Option<u64>, execution_ms: Option<f64>) {
        if let Some(requests) = requests {
            self.budget_remaining_requests.set(requests as i64);
        }
        if let Some(ms) = execution_ms {
            self.budget_remaining_seconds.set(ms / 1000.0);
        }
    }

    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    pub fn same_second_tie(&self) {
        self.same_second_ties.inc();
    }

    pub fn throttled(&self, paused_seconds: f64) {
        self.throttled.inc();
        self.throttled_seconds.inc_by(paused_seconds);
    }

    pub fn request(&self, operations: usize, seconds: f64) {
        self.batch_size.observe(operations as f64);
        let kind = if operations > 1 { "batch" } else { "single" };
        self.request_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
    }

    pub fn token_renewed(&self, reason: &'static str) {
        self.token_renewals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn concurrency_limit(&self, limit: usize) {
        self.concurrency_limit.set(limit as i64);
    }
}
