//! Counters for the admin API (`GET /_admin/stats`) and the Prometheus endpoint (`GET /metrics`):
//! answers by status, writes applied, batches, throttling, injected faults and tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::api::{OpKind, Writes};
use crate::config::ThrottleKind;

/// All counters since start-up or the last reset.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Answers of the Web API and token endpoints, by status code.
    pub requests_by_status: BTreeMap<u16, u64>,
    /// Connections closed without an answer by fault injection.
    pub dropped_connections: u64,
    /// Row writes and reads that took effect (writes of rolled-back change sets are not counted).
    pub operations: Operations,
    /// `$batch` counters.
    pub batches: Batches,
    /// 429 answers by limit.
    pub throttled: BTreeMap<&'static str, u64>,
    /// Error answers injected by the fault settings.
    pub faults_injected: u64,
    /// Columns and keys created through the metadata API.
    pub definitions_created: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests refused.
    pub tokens_refused: u64,
}

/// Row operations that took effect.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Operations {
    /// Rows created (by `POST` or by upsert).
    pub created: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Successful reads (retrieve and query).
    pub read: u64,
}

/// `$batch` counters.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Batches {
    /// `$batch` requests processed.
    pub requests: u64,
    /// Operations they carried.
    pub operations: u64,
    /// Change sets committed.
    pub change_sets_committed: u64,
    /// Change sets rolled back.
    pub change_sets_rolled_back: u64,
}

impl Stats {
    /// Counts one answer.
    pub fn answered(&mut self, status: u16) {
        *self.requests_by_status.entry(status).or_default() += 1;
    }

    /// Counts what an operation did.
    pub fn applied(&mut self, kind: OpKind, succeeded: bool, writes: Writes) {
        self.operations.created += writes.created;
        self.operations.updated += writes.updated;
        self.operations.deleted += writes.deleted;
        self.definitions_created += writes.definitions;
        if succeeded && matches!(kind, OpKind::Retrieve | OpKind::Query) {
            self.operations.read += 1;
        }
    }

    /// Counts a 429.
    pub fn throttled(&mut self, kind: ThrottleKind) {
        *self.throttled.entry(kind.label()).or_default() += 1;
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self, in_flight: u64, rows: &BTreeMap<String, usize>) -> String {
        let mut out = String::new();
        let plain = |value: u64| vec![(String::new(), value)];
        family(
            &mut out,
            "dataverse_emulator_requests_total",
            "counter",
            "Answers of the Web API and token endpoints by status.",
            self.requests_by_status
                .iter()
                .map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n))
                .collect(),
        );
        family(
            &mut out,
            "dataverse_emulator_operations_total",
            "counter",
            "Row operations that took effect.",
            vec![
                ("{kind=\"created\"}".into(), self.operations.created),
                ("{kind=\"updated\"}".into(), self.operations.updated),
                ("{kind=\"deleted\"}".into(), self.operations.deleted),
                ("{kind=\"read\"}".into(), self.operations.read),
            ],
        );
        family(
            &mut out,
            "dataverse_emulator_throttled_total",
            "counter",
            "429 answers by service protection limit.",
            [
                ThrottleKind::Requests,
                ThrottleKind::ExecutionTime,
                ThrottleKind::Concurrency,
            ]
            .iter()
            .map(|k| {
                (
                    format!("{{limit=\"{}\"}}", k.label()),
                    self.throttled.get(k.label()).copied().unwrap_or(0),
                )
            })
            .collect(),
        );
        family(
            &mut out,
            "dataverse_emulator_batches_total",
            "counter",
            "$batch requests processed.",
            plain(self.batches.requests),
        );
        family(
            &mut out,
            "dataverse_emulator_change_sets_rolled_back_total",
            "counter",
            "Change sets rolled back.",
            plain(self.batches.change_sets_rolled_back),
        );
        family(
            &mut out,
            "dataverse_emulator_dropped_connections_total",
            "counter",
            "Connections closed without an answer by fault injection.",
            plain(self.dropped_connections),
        );
        family(
            &mut out,
            "dataverse_emulator_faults_injected_total",
            "counter",
            "Error answers injected.",
            plain(self.faults_injected),
        );
        family(
            &mut out,
            "dataverse_emulator_tokens_issued_total",
            "counter",
            "Access tokens issued.",
            plain(self.tokens_issued),
        );
        family(
            &mut out,
            "dataverse_emulator_in_flight_requests",
            "gauge",
            "Web API requests in flight.",
            plain(in_flight),
        );
        family(
            &mut out,
            "dataverse_emulator_rows",
            "gauge",
            "Rows per table.",
            rows.iter()
                .map(|(set, n)| (format!("{{entity_set=\"{set}\"}}"), *n as u64))
                .collect(),
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}
