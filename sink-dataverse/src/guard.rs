//! The staleness guard: given a customer change and the contact as last read (with its etag),
//! decide whether to skip the change or which conditional write applies it. Pure; the write loop
//! in [`crate::apply`] reads, decides, writes with the precondition, and on a lost race (412)
//! reads and decides again.
//!
//! Rules (`t` = the change's event time, `s` = the time stored on the contact):
//! * no contact: an upsert creates it (`If-None-Match: *`); a delete leaves a tombstone
//!   (deactivate mode) or is already done (delete mode);
//! * `s > t`: the change is older than what Dataverse holds: skip (stale);
//! * `s = t`: same second: apply in partition order, unless the contact already holds exactly
//!   this change (a redelivery): skip (unchanged), so replays write nothing;
//! * `s < t` or no `s`: apply, conditional on the etag read (`If-Match`).

use schemas::{Customer, CustomerOp};
use serde_json::{Map, Value};

use crate::{
    config::DeleteMode,
    mapping::{ACTIVE, Columns},
};

/// The guard's view of a contact, read by alternate key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// `@odata.etag`: the version the next write is conditional on.
    pub etag: String,
    /// The event time stored by the last change applied; `None` for a contact the sink never
    /// wrote (it loses against any change).
    pub created: Option<i64>,
    /// The tombstone flag.
    pub deleted: bool,
    /// The selected columns as Dataverse returned them.
    pub values: Map<String, Value>,
}

impl StoredRow {
    /// Reads a row from a Web API entity body (`{"@odata.etag": …, "<column>": …}`). `None` when
    /// the body carries no etag, which Dataverse always sends.
    pub fn from_json(columns: &Columns, body: &Value) -> Option<Self> {
        let object = body.as_object()?;
        let etag = object.get("@odata.etag")?.as_str()?.to_string();
        let created = match object.get(&columns.created) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let deleted = matches!(object.get(&columns.deleted), Some(Value::Bool(true)));
        let values = columns
            .mapped_columns()
            .filter_map(|c| object.get(c).map(|v| (c.to_string(), v.clone())))
            .collect();
        Some(StoredRow {
            etag,
            created,
            deleted,
            values,
        })
    }
}

/// The condition a write carries, so it applies only to the row the decision was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: <etag>`: the row is still the version read.
    Matches(String),
    /// `If-None-Match: *`: the row still does not exist (create only).
    Absent,
}

/// The request that applies a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `PATCH <table>(<key>='<id>')` with this body.
    Patch(Map<String, Value>),
    /// `DELETE <table>(<key>='<id>')`.
    Delete,
}

/// How a change ended; the `outcome` label of `sink_dataverse_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new contact.
    Created,
    /// An existing contact now holds the change.
    Updated,
    /// The contact became a tombstone (deactivate mode).
    Deactivated,
    /// No contact existed; an inactive tombstone was created so older changes stay out.
    Tombstoned,
    /// The contact was removed (delete mode).
    Deleted,
    /// Delete mode, and no contact existed: nothing to do.
    AlreadyAbsent,
    /// Dataverse holds a newer change: skipped.
    Stale,
    /// Dataverse already holds exactly this change (a redelivery): skipped.
    Unchanged,
    /// Refused by Dataverse and written to the dead-letter topic.
    DeadLettered,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Created,
        Outcome::Updated,
        Outcome::Deactivated,
        Outcome::Tombstoned,
        Outcome::Deleted,
        Outcome::AlreadyAbsent,
        Outcome::Stale,
        Outcome::Unchanged,
        Outcome::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Deactivated => "deactivated",
            Outcome::Tombstoned => "tombstoned",
            Outcome::Deleted => "deleted",
            Outcome::AlreadyAbsent => "already_absent",
            Outcome::Stale => "stale",
            Outcome::Unchanged => "unchanged",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// A conditional write and what it means when it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub precondition: Precondition,
    pub request: Request,
    pub outcome: Outcome,
}

/// Skip the change, or apply it with this write.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Skip(Outcome),
    Write(Write),
}

/// The guard. `stored` is the contact as read by alternate key (`None`: no such contact).
pub fn decide(columns: &Columns, change: &Customer, stored: Option<&StoredRow>) -> Decision {
    let t = change.source_event_created;
    let Some(row) = stored else {
        return match (change.op, columns.delete_mode) {
            (CustomerOp::Upsert, _) => Decision::Write(Write {
                precondition: Precondition::Absent,
                request: Request::Patch(columns.upsert_body(change)),
                outcome: Outcome::Created,
            }),
            (CustomerOp::Delete, DeleteMode::Deactivate) => Decision::Write(Write {
                precondition: Precondition::Absent,
                request: Request::Patch(columns.tombstone_body(t)),
                outcome: Outcome::Tombstoned,
            }),
            (CustomerOp::Delete, DeleteMode::Delete) => Decision::Skip(Outcome::AlreadyAbsent),
        };
    };
    if let Some(s) = row.created {
        if s > t {
            return Decision::Skip(Outcome::Stale);
        }
        if s == t && already_applied(columns, change, row) {
            return Decision::Skip(Outcome::Unchanged);
        }
    }
    let precondition = Precondition::Matches(row.etag.clone());
    let write = match (change.op, columns.delete_mode) {
        (CustomerOp::Upsert, _) => {
            let mut body = columns.upsert_body(change);
            if row.deleted {
                // A newer change after a tombstone wins (the ordering rule), so the contact comes
                // back to life. Contacts deactivated by people, not by the sink, stay inactive.
                body.insert("statecode".into(), Value::from(ACTIVE.0));
                body.insert("statuscode".into(), Value::from(ACTIVE.1));
            }
            Write {
                precondition,
                request: Request::Patch(body),
                outcome: Outcome::Updated,
            }
        }
        (CustomerOp::Delete, DeleteMode::Deactivate) => Write {
            precondition,
            request: Request::Patch(columns.tombstone_body(t)),
            outcome: Outcome::Deactivated,
        },
        (CustomerOp::Delete, DeleteMode::Delete) => Write {
            precondition,
            request: Request::Delete,
            outcome: Outcome::Deleted,
        },
    };
    Decision::Write(write)
}

/// Whether the contact already holds exactly this change (same event time, same values).
fn already_applied(columns: &Columns, change: &Customer, row: &StoredRow) -> bool {
    match change.op {
        CustomerOp::Delete => row.deleted,
        CustomerOp::Upsert => {
            !row.deleted
                && columns
                    .values(change)
                    .iter()
                    .all(|(column, want)| row.values.get(column).unwrap_or(&Value::Null) == want)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::SinkConfig;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    pub fn columns(mode: DeleteMode) -> Columns {
        let mut config = SinkConfig::default();
        config.dataverse.delete_mode = mode;
        Columns::from_config(&config)
    }

    pub fn upsert(id: &str, created: i64, name: &str) -> Customer {
        let mut c = Customer::deletion(
            id,
            format!("evt_{created}_{name}"),
            "customer.updated",
            created,
            false,
        );
        c.op = CustomerOp::Upsert;
        c.last_name = Some(name.to_string());
        c
    }

    pub fn delete(id: &str, created: i64) -> Customer {
        Customer::deletion(
            id,
            format!("evt_{created}_del"),
            "customer.deleted",
            created,
            false,
        )
    }

    fn row(columns: &Columns, etag: &str, created: Option<i64>, deleted: bool, name: &str) -> StoredRow {
        let mut values = columns.values(&upsert("cus_1", 0, name));
        values.insert("lastname".into(), json!(name));
        StoredRow {
            etag: etag.into(),
            created,
            deleted,
            values,
        }
    }

    #[test]
    fn decision_table() {
        let cols = columns(DeleteMode::Deactivate);
        let hard = columns(DeleteMode::Delete);
        let live = row(&cols, "W/\"7\"", Some(100), false, "Old");
        let tomb = row(&cols, "W/\"8\"", Some(100), true, "Old");
        let foreign = row(&cols, "W/\"9\"", None, false, "Manual");
        let m = |e: &str| Precondition::Matches(e.into());
        type Case<'a> = (
            &'a str,
            &'a Columns,
            Customer,
            Option<&'a StoredRow>,
            Option<(Precondition, Outcome)>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "new contact",
                &cols,
                upsert("cus_1", 100, "New"),
                None,
                Some((Precondition::Absent, Outcome::Created)),
            ),
            (
                "delete of unknown leaves a tombstone",
                &cols,
                delete("cus_1", 100),
                None,
                Some((Precondition::Absent, Outcome::Tombstoned)),
            ),
            (
                "hard delete of unknown is done",
                &hard,
                delete("cus_1", 100),
                None,
                None,
            ),
            (
                "newer update",
                &cols,
                upsert("cus_1", 101, "New"),
                Some(&live),
                Some((m("W/\"7\""), Outcome::Updated)),
            ),
            (
                "older update is stale",
                &cols,
                upsert("cus_1", 99, "New"),
                Some(&live),
                None,
            ),
            (
                "same second, other values: partition order",
                &cols,
                upsert("cus_1", 100, "New"),
                Some(&live),
                Some((m("W/\"7\""), Outcome::Updated)),
            ),
            (
                "same second, same values: redelivery",
                &cols,
                upsert("cus_1", 100, "Old"),
                Some(&live),
                None,
            ),
            (
                "older update after delete is stale",
                &cols,
                upsert("cus_1", 99, "Old"),
                Some(&tomb),
                None,
            ),
            (
                "same-second update after delete: partition order",
                &cols,
                upsert("cus_1", 100, "Old"),
                Some(&tomb),
                Some((m("W/\"8\""), Outcome::Updated)),
            ),
            (
                "newer delete deactivates",
                &cols,
                delete("cus_1", 101),
                Some(&live),
                Some((m("W/\"7\""), Outcome::Deactivated)),
            ),
            (
                "redelivered delete",
                &cols,
                delete("cus_1", 100),
                Some(&tomb),
                None,
            ),
            (
                "older delete is stale",
                &cols,
                delete("cus_1", 50),
                Some(&live),
                None,
            ),
            (
                "hard delete",
                &hard,
                delete("cus_1", 101),
                Some(&live),
                Some((m("W/\"7\""), Outcome::Deleted)),
            ),
            (
                "contact the sink never wrote",
                &cols,
                upsert("cus_1", 1, "New"),
                Some(&foreign),
                Some((m("W/\"9\""), Outcome::Updated)),
            ),
        ];
        for (name, columns, change, stored, want) in cases {
            let got = decide(columns, &change, stored);
            match (got, want) {
                (Decision::Write(w), Some((pre, outcome))) => {
                    assert_eq!((w.precondition, w.outcome), (pre, outcome), "{name}");
                }
                (Decision::Skip(_), None) => {}
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // Skips say why.
        assert_eq!(
            decide(&cols, &upsert("cus_1", 99, "x"), Some(&live)),
            Decision::Skip(Outcome::Stale)
        );
        assert_eq!(
            decide(&cols, &upsert("cus_1", 100, "Old"), Some(&live)),
            Decision::Skip(Outcome::Unchanged)
        );
        assert_eq!(
            decide(&hard, &delete("cus_1", 1), None),
            Decision::Skip(Outcome::AlreadyAbsent)
        );
    }

    #[test]
    fn an_update_after_a_tombstone_reactivates_and_a_delete_keeps_the_data() {
        let cols = columns(DeleteMode::Deactivate);
        let tomb = row(&cols, "W/\"8\"", Some(100), true, "Old");
        let Decision::Write(w) = decide(&cols, &upsert("cus_1", 101, "New"), Some(&tomb)) else {
            panic!("newer update applies")
        };
        let Request::Patch(body) = w.request else {
            panic!("patch")
        };
        assert_eq!(
            (body["statecode"].clone(), body["statuscode"].clone()),
            (json!(0), json!(1))
        );
        assert_eq!(body["new_stripedeleted"], json!(false));

        let live = row(&cols, "W/\"7\"", Some(100), false, "Old");
        let Decision::Write(w) = decide(&cols, &upsert("cus_1", 101, "New"), Some(&live)) else {
            panic!("newer update applies")
        };
        let Request::Patch(body) = w.request else {
            panic!("patch")
        };
        assert!(!body.contains_key("statecode"), "live contacts keep their state");

        let Decision::Write(w) = decide(&cols, &delete("cus_1", 101), Some(&live)) else {
            panic!("delete applies")
        };
        let Request::Patch(body) = w.request else {
            panic!("patch")
        };
        assert!(
            !body.contains_key("lastname"),
            "a tombstone keeps the contact's data"
        );
    }

    #[test]
    fn rows_are_read_from_web_api_bodies() {
        let cols = columns(DeleteMode::Deactivate);
        let body = json!({
            "@odata.etag": "W/\"123\"",
            "new_stripeeventcreated": 1_700_000_000,
            "new_stripedeleted": null,
            "lastname": "Lovelace",
            "contactid": "00000000-0000-0000-0000-000000000001",
        });
        let row = StoredRow::from_json(&cols, &body).unwrap();
        assert_eq!(row.etag, "W/\"123\"");
        assert_eq!(row.created, Some(1_700_000_000));
        assert!(!row.deleted);
        assert_eq!(row.values["lastname"], json!("Lovelace"));
        assert!(!row.values.contains_key("contactid"));
        assert!(StoredRow::from_json(&cols, &json!({"lastname": "x"})).is_none());
    }

    /// A model of one Dataverse table with Dataverse's conditional write rules, to drive the
    /// guard the way the write loop does.
    #[derive(Debug, Default, Clone)]
    pub struct Model {
        pub rows: BTreeMap<String, (u64, Map<String, Value>)>,
        version: u64,
    }

    impl Model {
        pub fn read(&self, columns: &Columns, id: &str) -> Option<StoredRow> {
            let (version, values) = self.rows.get(id)?;
            let mut body = values.clone();
            body.insert("@odata.etag".into(), json!(format!("W/\"{version}\"")));
            StoredRow::from_json(columns, &Value::Object(body))
        }

        /// Applies a write if its precondition holds; `false` is a 412.
        pub fn write(&mut self, id: &str, write: &Write) -> bool {
            let current = self.rows.get(id).map(|(v, _)| format!("W/\"{v}\""));
            let holds = match (&write.precondition, &current) {
                (Precondition::Absent, None) => true,
                (Precondition::Matches(e), Some(c)) => e == c,
                _ => false,
            };
            if !holds {
                return false;
            }
            self.version += 1;
            match &write.request {
                Request::Delete => {
                    self.rows.remove(id);
                }
                Request::Patch(body) => {
                    let entry = self.rows.entry(id.to_string()).or_insert_with(|| (0, Map::new()));
                    entry.0 = self.version;
                    entry.1.extend(body.clone());
                }
            }
            true
        }

        /// The write loop: read, decide, write; on a lost race read and decide again.
        pub fn apply(&mut self, columns: &Columns, change: &Customer) -> Outcome {
            loop {
                let stored = self.read(columns, &change.customer_id);
                match decide(columns, change, stored.as_ref()) {
                    Decision::Skip(outcome) => return outcome,
                    Decision::Write(w) => {
                        if self.write(&change.customer_id, &w) {
                            return w.outcome;
                        }
                    }
                }
            }
        }
    }

    fn change_strategy() -> impl Strategy<Value = Vec<(i64, bool, u8)>> {
        // (created, is_delete, value): distinct times so "the newest" is well defined.
        proptest::collection::btree_map(0i64..1000, (any::<bool>(), 0u8..4), 1..8)
            .prop_map(|m| m.into_iter().map(|(t, (d, v))| (t, d, v)).collect())
    }

    fn to_change(&(t, is_delete, v): &(i64, bool, u8)) -> Customer {
        if is_delete {
            delete("cus_1", t)
        } else {
            upsert("cus_1", t, &format!("v{v}"))
        }
    }

    proptest! {
        /// Delivered in any order, any number of times, changes to one customer end with the
        /// effect of the newest: its values, or its tombstone. A late, older update never
        /// resurrects a deleted contact.
        #[test]
        fn any_delivery_order_ends_with_the_newest(
            changes in change_strategy(),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..20),
        ) {
            let cols = columns(DeleteMode::Deactivate);
            let mut model = Model::default();
            let mut delivered: Vec<&(i64, bool, u8)> = order.iter().map(|i| i.get(&changes)).collect();
            // Every change is delivered at least once.
            delivered.extend(changes.iter());
            for c in &delivered {
                model.apply(&cols, &to_change(c));
            }
            let newest = changes.iter().max_by_key(|c| c.0).unwrap();
            let row = model.read(&cols, "cus_1").unwrap();
            prop_assert_eq!(row.created, Some(newest.0));
            prop_assert_eq!(row.deleted, newest.1);
            if !newest.1 {
                prop_assert_eq!(row.values["lastname"].clone(), json!(format!("v{}", newest.2)));
                prop_assert_ne!(model.rows["cus_1"].1.get("statecode"), Some(&json!(1)));
            } else {
                prop_assert_eq!(model.rows["cus_1"].1.get("statecode"), Some(&json!(1)));
            }
            // Delivering everything again changes nothing: a replay is a no-op.
            let before = model.rows.clone();
            for c in &changes {
                let outcome = model.apply(&cols, &to_change(c));
                prop_assert!(matches!(outcome, Outcome::Stale | Outcome::Unchanged), "{:?}", outcome);
            }
            prop_assert_eq!(&before, &model.rows);
        }

        /// Two writers (the partition's old and new owner during a rebalance) each read, then
        /// write conditionally, interleaved arbitrarily. Whatever the interleaving, the newer
        /// change wins: a stale read can never overwrite a newer write, because its etag no
        /// longer matches.
        #[test]
        fn racing_writers_cannot_overwrite_a_newer_change(
            a in (0i64..10, any::<bool>()),
            b in (0i64..10, any::<bool>()),
            initial in proptest::option::of(0i64..10),
            schedule in proptest::collection::vec(any::<bool>(), 0..12),
        ) {
            prop_assume!(a.0 != b.0);
            let cols = columns(DeleteMode::Deactivate);
            let mut model = Model::default();
            if let Some(t) = initial {
                model.apply(&cols, &upsert("cus_1", t, "initial"));
            }
            let changes = [to_change(&(a.0, a.1, 1)), to_change(&(b.0, b.1, 2))];
            // Each writer alternates read → conditional write until its change is finished.
            let mut pending: [Option<Option<StoredRow>>; 2] = [None, None];
            let mut done = [false, false];
            let mut steps = schedule.into_iter().map(usize::from).chain(std::iter::repeat([0, 1]).flatten());
            while !(done[0] && done[1]) {
                let w = steps.next().unwrap();
                if done[w] { continue; }
                match pending[w].take() {
                    None => pending[w] = Some(model.read(&cols, "cus_1")),
                    Some(read) => match decide(&cols, &changes[w], read.as_ref()) {
                        Decision::Skip(_) => done[w] = true,
                        Decision::Write(write) => done[w] = model.write("cus_1", &write),
                    },
                }
            }
            let newest = if a.0 > b.0 { (a, 1) } else { (b, 2) };
            let newest_t = newest.0.0.max(initial.unwrap_or(i64::MIN));
            let row = model.read(&cols, "cus_1").unwrap();
            prop_assert_eq!(row.created, Some(newest_t));
            if newest_t == newest.0.0 && !newest.0.1 {
                prop_assert_eq!(row.values["lastname"].clone(), json!(format!("v{}", newest.1)));
            }
        }
    }
}
