//! The report: one [`Report`] value, rendered as a table for people or as JSON (`--json`) for
//! scripts, so both always say the same thing.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::compare::{Comparison, Drift, FieldDiff};

/// What a run found (and, with `--repair`, wrote).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The `source_event_id` of this run's corrective records.
    pub run_id: String,
    /// When Stripe was first read, unix seconds.
    pub read_at: i64,
    /// Live customers Stripe listed.
    pub stripe_customers: usize,
    /// Contacts the sink manages (the alternate key set), tombstones included.
    pub dataverse_contacts: usize,
    /// Customers whose contact matches.
    pub in_sync: usize,
    /// Drifted customers per kind.
    pub summary: Summary,
    /// Every drifted customer, by kind, then by customer id.
    pub drift: Vec<Entry>,
    /// Contacts that differ but were written from an event at or after the read: the pipeline
    /// is ahead of this listing. Not drift.
    pub changed_since_read: Vec<String>,
    /// Stripe customers the enricher's normaliser refuses (their events go to its dead-letter
    /// topic). Not drift, not repaired.
    pub unreadable: Vec<Unreadable>,
    /// What `--repair` wrote; absent without it.
    pub repair: Option<Repair>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub missing: usize,
    pub different: usize,
    pub deleted_in_stripe: usize,
    pub unknown_to_stripe: usize,
    pub deleted_in_dataverse: usize,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.missing
            + self.different
            + self.deleted_in_stripe
            + self.unknown_to_stripe
            + self.deleted_in_dataverse
    }
}

/// One drifted customer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub customer_id: String,
    #[serde(flatten)]
    pub drift: Drift,
    /// What the corrective record does (`upsert`, `delete`), or `none` when this drift is not
    /// repaired.
    pub repair: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    pub customer_id: String,
    pub reason: String,
}

/// What `--repair` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repair {
    /// The topic written.
    pub topic: String,
    /// Corrective records acknowledged by the broker.
    pub records: usize,
    /// Drifted customers left as they are (see each entry's `repair`).
    pub not_repaired: Vec<String>,
}

impl Report {
    pub fn new(
        run_id: String,
        read_at: i64,
        stripe_customers: usize,
        dataverse_contacts: usize,
        comparison: &Comparison,
    ) -> Self {
        let mut summary = Summary::default();
        let drift = comparison
            .findings
            .iter()
            .map(|f| {
                *match f.drift {
                    Drift::Missing => &mut summary.missing,
                    Drift::Different { .. } => &mut summary.different,
                    Drift::DeletedInStripe => &mut summary.deleted_in_stripe,
                    Drift::UnknownToStripe => &mut summary.unknown_to_stripe,
                    Drift::DeletedInDataverse => &mut summary.deleted_in_dataverse,
                } += 1;
                Entry {
                    customer_id: f.customer_id.clone(),
                    drift: f.drift.clone(),
                    repair: match &f.correction {
                        Some(c) if c.op == schemas::CustomerOp::Delete => "delete",
                        Some(_) => "upsert",
                        None => "none",
                    },
                }
            })
            .collect();
        Report {
            run_id,
            read_at,
            stripe_customers,
            dataverse_contacts,
            in_sync: comparison.in_sync,
            summary,
            drift,
            changed_since_read: comparison.changed_since_read.clone(),
            unreadable: comparison
                .unreadable
                .iter()
                .map(|(id, reason)| Unreadable {
                    customer_id: id.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            repair: None,
        }
    }

    /// Whether anything drifted.
    pub fn has_drift(&self) -> bool {
        !self.drift.is_empty()
    }

    /// The JSON form (`--json`), one document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The table form: one line per drifted customer, one more per further differing column,
    /// then the summary lines.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<[String; 6]> = Vec::new();
        for entry in &self.drift {
            let first = [
                entry.drift.label().to_string(),
                entry.customer_id.clone(),
                String::new(),
                String::new(),
                String::new(),
                entry.repair.to_string(),
            ];
            match &entry.drift {
                Drift::Different { fields } => {
                    for (
                        i,
                        FieldDiff {
                            column,
                            dataverse,
                            stripe,
                            ..
                        },
                    ) in fields.iter().enumerate()
                    {
                        let mut row = if i == 0 { first.clone() } else { Default::default() };
                        row[2] = column.clone();
                        row[3] = cell(dataverse);
                        row[4] = cell(stripe);
                        rows.push(row);
                    }
                }
                _ => rows.push(first),
            }
        }
        let mut out = String::new();
        if !rows.is_empty() {
            let header = [
                "DRIFT",
                "CUSTOMER",
                "COLUMN",
                "DATAVERSE",
                "STRIPE (NORMALISED)",
                "REPAIR",
            ]
            .map(String::from);
            let mut widths = [0usize; 6];
            for row in std::iter::once(&header).chain(&rows) {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let mut line = String::new();
                for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                    if i + 1 == row.len() {
                        line.push_str(c);
                    } else {
                        let _ = write!(line, "{c:<w$}  ");
                    }
                }
                out.push_str(line.trim_end());
                out.push('\n');
            }
            out.push('\n');
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} Stripe customers, {} Dataverse contacts: {} in sync, {} drifted ({} missing in Dataverse, {} different, {} deleted in Stripe, {} unknown to Stripe, {} deleted in Dataverse)",
            self.stripe_customers,
            self.dataverse_contacts,
            self.in_sync,
            s.total(),
            s.missing,
            s.different,
            s.deleted_in_stripe,
            s.unknown_to_stripe,
            s.deleted_in_dataverse,
        );
        if !self.changed_since_read.is_empty() {
            let _ = writeln!(
                out,
                "changed in Dataverse since Stripe was read (not drift): {}",
                self.changed_since_read.join(", ")
            );
        }
        for u in &self.unreadable {
            let _ = writeln!(
                out,
                "unreadable in Stripe (not repaired): {}: {}",
                u.customer_id, u.reason
            );
        }
        match &self.repair {
            Some(r) => {
                let _ = write!(
                    out,
                    "repair: {} corrective records written to {} (source_event_id {})",
                    r.records, r.topic, self.run_id
                );
                if !r.not_repaired.is_empty() {
                    let _ = write!(out, "; not repaired: {}", r.not_repaired.join(", "));
                }
                out.push('\n');
            }
            None if self.has_drift() => out.push_str("run again with --repair to write corrective records\n"),
            None => {}
        }
        out
    }
}

/// A column value in the table: text as is, `null` as `-`, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Finding;
    use serde_json::json;

    fn comparison() -> Comparison {
        let upsert = |id: &str| {
            let mut c = schemas::Customer::deletion(id, "reconcile_1", "customer.updated", 5, false);
            c.op = schemas::CustomerOp::Upsert;
            c
        };
        Comparison {
            findings: vec![
                Finding {
                    customer_id: "cus_new".into(),
                    drift: Drift::Missing,
                    correction: Some(upsert("cus_new")),
                },
                Finding {
                    customer_id: "cus_moved".into(),
                    drift: Drift::Different {
                        fields: vec![
                            FieldDiff {
                                field: "email".into(),
                                column: "emailaddress1".into(),
                                dataverse: json!("old@example.com"),
                                stripe: json!("new@example.com"),
                            },
                            FieldDiff {
                                field: "address_city".into(),
                                column: "address1_city".into(),
                                dataverse: Value::Null,
                                stripe: json!("Oslo"),
                            },
                        ],
                    },
                    correction: Some(upsert("cus_moved")),
                },
                Finding {
                    customer_id: "cus_gone".into(),
                    drift: Drift::DeletedInStripe,
                    correction: Some(schemas::Customer::deletion(
                        "cus_gone",
                        "reconcile_1",
                        "customer.deleted",
                        5,
                        false,
                    )),
                },
                Finding {
                    customer_id: "cus_tomb".into(),
                    drift: Drift::DeletedInDataverse,
                    correction: None,
                },
            ],
            in_sync: 7,
            changed_since_read: vec!["cus_busy".into()],
            unreadable: vec![("cus_bad".into(), "data.object is not a Stripe customer".into())],
        }
    }

    #[test]
    fn the_table_lists_each_drift_and_each_differing_column() {
        let report = Report::new("reconcile_1".into(), 5, 10, 9, &comparison());
        let table = report.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("DRIFT") && lines[0].ends_with("REPAIR"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("missing in Dataverse")
                && lines[1].contains("cus_new")
                && lines[1].ends_with("upsert"),
            "{table}"
        );
        let words = |line: &str| line.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            words(lines[2]),
            [
                "different",
                "cus_moved",
                "emailaddress1",
                "old@example.com",
                "new@example.com",
                "upsert"
            ]
        );
        assert_eq!(
            words(lines[3]),
            ["address1_city", "-", "Oslo"],
            "a further column of the same customer"
        );
        assert!(
            lines[4].starts_with("deleted in Stripe") && lines[4].ends_with("delete"),
            "{table}"
        );
        assert!(
            lines[5].starts_with("deleted in Dataverse") && lines[5].ends_with("none"),
            "{table}"
        );
        assert!(table.contains("10 Stripe customers, 9 Dataverse contacts: 7 in sync, 4 drifted (1 missing in Dataverse, 1 different, 1 deleted in Stripe, 0 unknown to Stripe, 1 deleted in Dataverse)"), "{table}");
        assert!(table.contains("not drift): cus_busy"), "{table}");
        assert!(
            table.contains("unreadable in Stripe (not repaired): cus_bad"),
            "{table}"
        );
        assert!(table.contains("--repair"), "{table}");
    }

    #[test]
    fn the_json_says_what_the_table_says() {
        let mut report = Report::new("reconcile_1".into(), 5, 10, 9, &comparison());
        report.repair = Some(Repair {
            topic: "customers.normalized".into(),
            records: 3,
            not_repaired: vec!["cus_tomb".into()],
        });
        let json: Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["summary"]["missing"], 1);
        assert_eq!(json["summary"]["different"], 1);
        assert_eq!(json["in_sync"], 7);
        assert_eq!(json["drift"][1]["customer_id"], "cus_moved");
        assert_eq!(json["drift"][1]["kind"], "different");
        assert_eq!(json["drift"][1]["fields"][0]["column"], "emailaddress1");
        assert_eq!(json["drift"][1]["fields"][0]["field"], "email");
        assert_eq!(json["drift"][1]["fields"][1]["dataverse"], Value::Null);
        assert_eq!(json["drift"][2]["kind"], "deleted_in_stripe");
        assert_eq!(json["drift"][2]["repair"], "delete");
        assert_eq!(json["drift"][3]["repair"], "none");
        assert_eq!(json["repair"]["records"], 3);
        assert!(report.to_table().contains("repair: 3 corrective records written to customers.normalized (source_event_id reconcile_1); not repaired: cus_tomb"));
    }
}
