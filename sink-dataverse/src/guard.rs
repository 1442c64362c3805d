//! The staleness guard: given a customer change and the contact as last read (with its etag),
//! decide whether to skip the change or which conditional write applies it. Pure; the write loop
//! in [`crate::apply`] reads, decides, writes with the precondition, and on a lost race (412)
//! reads and decides again.
//!
//! Changes are ordered by `(t, r)`: the event time `t` (whole seconds) and then the event type's
//! place in a customer's life `r` (`created` < `updated` < `deleted`). The contact stores the
//! `(s, q)` of the change last applied and the ids of the changes applied at `s`. Rules:
//! * no contact: an upsert creates it (`If-None-Match: *`); a delete leaves a tombstone
//!   (deactivate mode) or is already done (delete mode);
//! * a tombstone the sink wrote is final (Stripe never reuses a deleted customer's id): every
//!   upsert is stale, every delete unchanged; and a delete always applies to a live contact;
//! * the change's id is among those applied at `s = t`: a redelivery, skipped (unchanged);
//! * `(s, q) > (t, r)`: the change is older than what Dataverse holds: skipped (stale);
//! * `(s, q) = (t, r)` (two updates of one second, which the events cannot order): applied in
//!   partition order, recording the id, and counted as a tie (on a contact stored before ids
//!   were recorded, skipped when it already holds these values);
//! * `(s, q) < (t, r)`, or no `s` (a contact the sink never wrote): applied, conditional on the
//!   etag read (`If-Match`).

use std::cmp::Ordering;

use schemas::{Customer, CustomerOp};
use serde_json::{Map, Value};

use crate::{
    config::DeleteMode,
    mapping::{self, Columns, Stamp},
};

/// The guard's view of a contact, read by alternate key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// `@odata.etag`: the version the next write is conditional on.
    pub etag: String,
    /// The event time stored by the last change applied; `None` for a contact the sink never
    /// wrote (it loses against any change).
    pub created: Option<i64>,
    /// The rank stored by the last change applied; `None` on contacts written before ranks were
    /// stored (read as `updated`).
    pub rank: Option<i64>,
    /// The ids of the changes applied at `created`.
    pub event_ids: Vec<String>,
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
        let integer = |column: &str| match object.get(column) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let event_ids = match object.get(&columns.event_ids) {
            Some(Value::String(s)) => Stamp::parse_event_ids(s),
            _ => Vec::new(),
        };
        let deleted = matches!(object.get(&columns.deleted), Some(Value::Bool(true)));
        let values = columns
            .mapped_columns()
            .filter_map(|c| object.get(c).map(|v| (c.to_string(), v.clone())))
            .collect();
        Some(StoredRow {
            etag,
            created: integer(&columns.created),
            rank: integer(&columns.rank),
            event_ids,
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
    /// Another `customer.updated` of the same second was applied before: the events cannot say
    /// which is newer, so partition order decides (counted, logged).
    pub tie: bool,
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
    let rank = mapping::rank(change);
    let id = &change.source_event_id;
    let Some(row) = stored else {
        let stamp = Stamp {
            created: t,
            rank,
            event_ids: vec![id.clone()],
        };
        return match (change.op, columns.delete_mode) {
            (CustomerOp::Upsert, _) => write(
                Precondition::Absent,
                Request::Patch(columns.upsert_body(change, &stamp)),
                Outcome::Created,
            ),
            (CustomerOp::Delete, DeleteMode::Deactivate) => write(
                Precondition::Absent,
                Request::Patch(columns.tombstone_body(&stamp)),
                Outcome::Tombstoned,
            ),
            (CustomerOp::Delete, DeleteMode::Delete) => Decision::Skip(Outcome::AlreadyAbsent),
        };
    };
    let redelivered = row.created == Some(t) && row.event_ids.contains(id);
    if row.deleted {
        // Final: a deleted Stripe customer never changes again.
        return Decision::Skip(match change.op {
            CustomerOp::Upsert if !redelivered => Outcome::Stale,
            _ => Outcome::Unchanged,
        });
    }
    if redelivered {
        return Decision::Skip(Outcome::Unchanged);
    }
    let precondition = Precondition::Matches(row.etag.clone());
    // The ids recorded for the second the contact will hold after this write.
    let event_ids_at = |second: i64| {
        let mut ids = if row.created == Some(second) {
            row.event_ids.clone()
        } else {
            Vec::new()
        };
        ids.push(id.clone());
        ids
    };
    if change.op == CustomerOp::Delete {
        // Deletion is final whatever the times say; the stored time never moves back.
        let created = row.created.map_or(t, |s| s.max(t));
        let stamp = Stamp {
            created,
            rank,
            event_ids: event_ids_at(created),
        };
        return match columns.delete_mode {
            DeleteMode::Deactivate => write(
                precondition,
                Request::Patch(columns.tombstone_body(&stamp)),
                Outcome::Deactivated,
            ),
            DeleteMode::Delete => write(precondition, Request::Delete, Outcome::Deleted),
        };
    }
    let mut tie = false;
    if let Some(s) = row.created {
        match (s, row.rank.unwrap_or(mapping::UPDATED)).cmp(&(t, rank)) {
            Ordering::Greater => return Decision::Skip(Outcome::Stale),
            // A contact stored before event ids were recorded: its values tell a redelivery.
            Ordering::Equal if row.event_ids.is_empty() && holds_values(columns, change, row) => {
                return Decision::Skip(Outcome::Unchanged);
            }
            Ordering::Equal => tie = true,
            Ordering::Less => {}
        }
    }
    let stamp = Stamp {
        created: t,
        rank,
        event_ids: event_ids_at(t),
    };
    Decision::Write(Write {
        precondition,
        request: Request::Patch(columns.upsert_body(change, &stamp)),
        outcome: Outcome::Updated,
        tie,
    })
}

fn write(precondition: Precondition, request: Request, outcome: Outcome) -> Decision {
    Decision::Write(Write {
        precondition,
        request,
        outcome,
        tie: false,
    })
}

/// Whether the contact already holds exactly the values of this upsert.
fn holds_values(columns: &Columns, change: &Customer, row: &StoredRow) -> bool {
    columns
        .values(change)
        .iter()
        .all(|(column, want)| row.values.get(column).unwrap_or(&Value::Null) == want)
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

    /// A change of `kind` (`created`, `updated`) with its own event id.
    pub fn change(id: &str, event: &str, kind: &str, created: i64, name: &str) -> Customer {
        let mut c = Customer::deletion(id, event, format!("customer.{kind}"), created, false);
        c.op = CustomerOp::Upsert;
        c.last_name = Some(name.to_string());
        c
    }

    pub fn upsert(id: &str, created: i64, name: &str) -> Customer {
        change(id, &format!("evt_{created}_{name}"), "updated", created, name)
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
            rank: created.map(|_| {
                if deleted {
                    mapping::DELETED
                } else {
                    mapping::UPDATED
                }
            }),
            event_ids: created
                .map(|t| {
                    vec![if deleted {
                        format!("evt_{t}_del")
                    } else {
                        format!("evt_{t}_{name}")
                    }]
                })
                .unwrap_or_default(),
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
        let mut created = row(&cols, "W/\"6\"", Some(100), false, "Old");
        created.rank = Some(mapping::CREATED);
        let mut legacy = row(&cols, "W/\"5\"", Some(100), false, "Old");
        (legacy.rank, legacy.event_ids) = (None, Vec::new());
        let m = |e: &str| Precondition::Matches(e.into());
        // (name, columns, change, stored row, the write it gets or why it is skipped)
        type Case<'a> = (
            &'a str,
            &'a Columns,
            Customer,
            Option<&'a StoredRow>,
            Result<(Precondition, Outcome), Outcome>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "new contact",
                &cols,
                upsert("cus_1", 100, "New"),
                None,
                Ok((Precondition::Absent, Outcome::Created)),
            ),
            (
                "delete of unknown leaves a tombstone",
                &cols,
                delete("cus_1", 100),
                None,
                Ok((Precondition::Absent, Outcome::Tombstoned)),
            ),
            (
                "hard delete of unknown is done",
                &hard,
                delete("cus_1", 100),
                None,
                Err(Outcome::AlreadyAbsent),
            ),
            (
                "newer update",
                &cols,
                upsert("cus_1", 101, "New"),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Updated)),
            ),
            (
                "older update is stale",
                &cols,
                upsert("cus_1", 99, "New"),
                Some(&live),
                Err(Outcome::Stale),
            ),
            (
                "same second, other update, other values: partition order",
                &cols,
                upsert("cus_1", 100, "New"),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Updated)),
            ),
            (
                "same second, same event: redelivery",
                &cols,
                upsert("cus_1", 100, "Old"),
                Some(&live),
                Err(Outcome::Unchanged),
            ),
            (
                "same second, redelivered event with other values",
                &cols,
                change("cus_1", "evt_100_Old", "updated", 100, "Changed"),
                Some(&live),
                Err(Outcome::Unchanged),
            ),
            (
                "same second, other update with the same values: its id is recorded",
                &cols,
                change("cus_1", "evt_other", "updated", 100, "Old"),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Updated)),
            ),
            (
                "same second, created after updated is stale",
                &cols,
                change("cus_1", "evt_c", "created", 100, "New"),
                Some(&live),
                Err(Outcome::Stale),
            ),
            (
                "same second, updated after created applies",
                &cols,
                upsert("cus_1", 100, "New"),
                Some(&created),
                Ok((m("W/\"6\""), Outcome::Updated)),
            ),
            (
                "older created is stale",
                &cols,
                change("cus_1", "evt_c", "created", 99, "New"),
                Some(&created),
                Err(Outcome::Stale),
            ),
            (
                "contact stored before ranks: same-values redelivery",
                &cols,
                upsert("cus_1", 100, "Old"),
                Some(&legacy),
                Err(Outcome::Unchanged),
            ),
            (
                "contact stored before ranks: same-second update",
                &cols,
                upsert("cus_1", 100, "New"),
                Some(&legacy),
                Ok((m("W/\"5\""), Outcome::Updated)),
            ),
            (
                "older update after delete is stale",
                &cols,
                upsert("cus_1", 99, "Old"),
                Some(&tomb),
                Err(Outcome::Stale),
            ),
            (
                "same-second update after delete is stale: deletion is final",
                &cols,
                upsert("cus_1", 100, "New"),
                Some(&tomb),
                Err(Outcome::Stale),
            ),
            (
                "newer update after delete is stale: deletion is final",
                &cols,
                upsert("cus_1", 500, "New"),
                Some(&tomb),
                Err(Outcome::Stale),
            ),
            (
                "newer created after delete is stale",
                &cols,
                change("cus_1", "evt_c2", "created", 500, "New"),
                Some(&tomb),
                Err(Outcome::Stale),
            ),
            (
                "newer delete deactivates",
                &cols,
                delete("cus_1", 101),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Deactivated)),
            ),
            (
                "same-second delete deactivates",
                &cols,
                delete("cus_1", 100),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Deactivated)),
            ),
            (
                "an older delete still deletes: deletion is final",
                &cols,
                delete("cus_1", 50),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Deactivated)),
            ),
            (
                "redelivered delete",
                &cols,
                delete("cus_1", 100),
                Some(&tomb),
                Err(Outcome::Unchanged),
            ),
            (
                "another delete of a tombstone",
                &cols,
                delete("cus_1", 300),
                Some(&tomb),
                Err(Outcome::Unchanged),
            ),
            (
                "hard delete",
                &hard,
                delete("cus_1", 101),
                Some(&live),
                Ok((m("W/\"7\""), Outcome::Deleted)),
            ),
            (
                "contact the sink never wrote",
                &cols,
                upsert("cus_1", 1, "New"),
                Some(&foreign),
                Ok((m("W/\"9\""), Outcome::Updated)),
            ),
        ];
        for (name, columns, change, stored, want) in cases {
            let got = decide(columns, &change, stored);
            match (got, want) {
                (Decision::Write(w), Ok((pre, outcome))) => {
                    assert_eq!((w.precondition, w.outcome), (pre, outcome), "{name}");
                }
                (Decision::Skip(got), Err(want)) => assert_eq!(got, want, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn only_two_updates_of_one_second_are_a_tie() {
        let cols = columns(DeleteMode::Deactivate);
        let live = row(&cols, "W/\"7\"", Some(100), false, "Old");
        let mut created = live.clone();
        created.rank = Some(mapping::CREATED);
        let tie = |stored: &StoredRow, c: &Customer| match decide(&cols, c, Some(stored)) {
            Decision::Write(w) => Some(w.tie),
            Decision::Skip(_) => None,
        };
        assert_eq!(tie(&live, &upsert("cus_1", 100, "New")), Some(true));
        assert_eq!(tie(&live, &upsert("cus_1", 101, "New")), Some(false));
        assert_eq!(tie(&created, &upsert("cus_1", 100, "New")), Some(false));
        assert_eq!(tie(&live, &delete("cus_1", 100)), Some(false));
    }

    #[test]
    fn writes_record_the_ids_of_their_second() {
        let cols = columns(DeleteMode::Deactivate);
        let live = row(&cols, "W/\"7\"", Some(100), false, "Old");
        let body = |c: &Customer| match decide(&cols, c, Some(&live)) {
            Decision::Write(Write {
                request: Request::Patch(body),
                ..
            }) => body,
            other => panic!("{other:?}"),
        };
        let same = body(&upsert("cus_1", 100, "New"));
        assert_eq!(same["new_stripeeventids"], json!("evt_100_Old,evt_100_New"));
        assert_eq!(same["new_stripeeventrank"], json!(1));
        let newer = body(&upsert("cus_1", 101, "New"));
        assert_eq!(
            newer["new_stripeeventids"],
            json!("evt_101_New"),
            "a new second starts afresh"
        );
        let older_delete = body(&delete("cus_1", 90));
        assert_eq!(
            older_delete["new_stripeeventcreated"],
            json!(100),
            "the stored time never moves back"
        );
        assert_eq!(older_delete["new_stripeeventrank"], json!(2));
    }

    #[test]
    fn a_tombstone_is_final_and_keeps_the_data() {
        let cols = columns(DeleteMode::Deactivate);
        let tomb = row(&cols, "W/\"8\"", Some(100), true, "Old");
        assert_eq!(
            decide(&cols, &upsert("cus_1", 101, "New"), Some(&tomb)),
            Decision::Skip(Outcome::Stale)
        );

        let live = row(&cols, "W/\"7\"", Some(100), false, "Old");
        let Decision::Write(w) = decide(&cols, &upsert("cus_1", 101, "New"), Some(&live)) else {
            panic!("newer update applies")
        };
        let Request::Patch(body) = w.request else {
            panic!("patch")
        };
        assert!(
            !body.contains_key("statecode"),
            "contacts keep the state people gave them"
        );

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
        assert_eq!(
            (body["statecode"].clone(), body["statuscode"].clone()),
            (json!(1), json!(2))
        );
    }

    #[test]
    fn rows_are_read_from_web_api_bodies() {
        let cols = columns(DeleteMode::Deactivate);
        let body = json!({
            "@odata.etag": "W/\"123\"",
            "new_stripeeventcreated": 1_700_000_000,
            "new_stripeeventrank": 0,
            "new_stripeeventids": "evt_a,evt_b",
            "new_stripedeleted": null,
            "lastname": "Lovelace",
            "contactid": "00000000-0000-0000-0000-000000000001",
        });
        let row = StoredRow::from_json(&cols, &body).unwrap();
        assert_eq!(row.etag, "W/\"123\"");
        assert_eq!(row.created, Some(1_700_000_000));
        assert_eq!(row.rank, Some(0));
        assert_eq!(row.event_ids, ["evt_a", "evt_b"]);
        assert!(!row.deleted);
        assert_eq!(row.values["lastname"], json!("Lovelace"));
        assert!(!row.values.contains_key("contactid"));
        let bare = StoredRow::from_json(
            &cols,
            &json!({"@odata.etag": "W/\"1\"", "new_stripeeventids": null}),
        )
        .unwrap();
        assert_eq!((bare.created, bare.rank, bare.event_ids.len()), (None, None, 0));
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

    /// One customer's life as Stripe produces it: maybe `customer.created`, then updates, maybe a
    /// final `customer.deleted`, with times that never go back and often repeat (whole seconds),
    /// each event with its own id.
    fn history() -> impl Strategy<Value = Vec<Customer>> {
        (
            any::<bool>(),
            proptest::collection::vec((0i64..2, 0u8..4), 0..7),
            proptest::option::of(0i64..2),
            0i64..3,
        )
            .prop_filter("at least one event", |(c, u, d, _)| {
                *c || !u.is_empty() || d.is_some()
            })
            .prop_map(|(with_created, updates, deleted, start)| {
                let mut t = start;
                let mut events = Vec::new();
                if with_created {
                    events.push(change("cus_1", "evt_0", "created", t, "v0"));
                }
                for (i, (step, value)) in updates.into_iter().enumerate() {
                    t += step;
                    events.push(change(
                        "cus_1",
                        &format!("evt_u{i}"),
                        "updated",
                        t,
                        &format!("v{value}"),
                    ));
                }
                if let Some(step) = deleted {
                    t += step;
                    let mut d = delete("cus_1", t);
                    d.source_event_id = "evt_del".into();
                    events.push(d);
                }
                events
            })
    }

    /// The state Dataverse must end in: deleted if any delete was delivered, otherwise the
    /// greatest change by (time, rank, first delivery among same-second updates).
    fn expected<'a>(delivered: &[&'a Customer]) -> &'a Customer {
        if let Some(d) = delivered.iter().find(|c| c.op == CustomerOp::Delete) {
            return d;
        }
        let mut first: Vec<&Customer> = Vec::new();
        for c in delivered {
            if !first.iter().any(|f| f.source_event_id == c.source_event_id) {
                first.push(c);
            }
        }
        first
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (c.source_event_created, mapping::rank(c), *i))
            .map(|(_, c)| *c)
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Delivered in any order, any number of times, with ties in one second common, the
        /// changes of one customer end in the model's state: the greatest change's values, or the
        /// tombstone once any delete arrived. A replay of everything writes nothing.
        #[test]
        fn any_delivery_order_ends_in_the_models_state(
            events in history(),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
            tail in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
        ) {
            let cols = columns(DeleteMode::Deactivate);
            let mut model = Model::default();
            // Arbitrary deliveries, then every event at least once, then more redeliveries.
            let mut delivered: Vec<&Customer> = order.iter().map(|i| i.get(&events)).collect();
            delivered.extend(events.iter());
            delivered.extend(tail.iter().map(|i| i.get(&events)));
            for c in &delivered {
                model.apply(&cols, c);
            }
            let want = expected(&delivered);
            let row = model.read(&cols, "cus_1").unwrap();
            let state = model.rows["cus_1"].1.get("statecode").cloned();
            if want.op == CustomerOp::Delete {
                prop_assert!(row.deleted);
                prop_assert_eq!(state, Some(json!(1)));
            } else {
                prop_assert!(!row.deleted);
                prop_assert_eq!(row.created, Some(want.source_event_created));
                prop_assert_eq!(row.values["lastname"].clone(), json!(want.last_name.clone().unwrap()));
                prop_assert_ne!(state, Some(json!(1)));
            }
            // Delivering everything again changes nothing: a replay is a no-op.
            let before = model.rows.clone();
            for c in &events {
                let outcome = model.apply(&cols, c);
                prop_assert!(matches!(outcome, Outcome::Stale | Outcome::Unchanged), "{:?}", outcome);
            }
            prop_assert_eq!(&before, &model.rows);
        }

        /// Two writers (the partition's old and new owner during a rebalance) each read, then
        /// write conditionally, interleaved arbitrarily. Whatever the interleaving, the newer
        /// change wins, or the delete: a stale read can never overwrite a newer write, because
        /// its etag no longer matches.
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
            let to_change = |(t, is_delete): (i64, bool), v: u8| {
                if is_delete { delete("cus_1", t) } else { upsert("cus_1", t, &format!("v{v}")) }
            };
            let changes = [to_change(a, 1), to_change(b, 2)];
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
            let row = model.read(&cols, "cus_1").unwrap();
            if a.1 || b.1 {
                prop_assert!(row.deleted);
            } else {
                let newest = if a.0 > b.0 { (a, 1) } else { (b, 2) };
                let newest_t = newest.0.0.max(initial.unwrap_or(i64::MIN));
                prop_assert_eq!(row.created, Some(newest_t));
                if newest_t == newest.0.0 {
                    prop_assert_eq!(row.values["lastname"].clone(), json!(format!("v{}", newest.1)));
                }
            }
        }
    }
}
