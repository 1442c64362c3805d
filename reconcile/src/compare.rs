//! The comparison: what Stripe says about each customer against the contact the sink keeps for
//! it, and the corrective record that would repair each difference. Pure: the listings come in,
//! findings go out; [`crate::run`] does the reading and [`crate::repair`] the writing.
//!
//! Stripe's side is normalised by the enricher's own code ([`enricher::normalize`]), and compared
//! in Dataverse's terms: the column values the sink's mapping ([`sink_dataverse::mapping`]) would
//! write for it, so "different" means exactly "the sink would change this contact".

use std::collections::BTreeMap;

use enricher::normalize::{self, CUSTOMER_DELETED, CUSTOMER_UPDATED, SourceEvent};
use schemas::Customer;
use serde::Serialize;
use serde_json::{Map, Value};
use sink_dataverse::{config::Mapping, mapping::Columns};

/// What Stripe said about one customer, and when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeRead {
    pub customer_id: String,
    pub state: StripeState,
    /// When the answer was asked for, unix seconds: the time corrective records are stamped
    /// with, so any real event from then on still wins in the sink's guard.
    pub read_at: i64,
}

/// A customer's state in Stripe.
#[derive(Debug, Clone, PartialEq)]
pub enum StripeState {
    /// A live customer, normalised exactly as the enricher normalises it, with the corrective
    /// record's source fields already set (`customer.updated` at `read_at`).
    Live(Box<Customer>),
    /// Stripe answers for the id with a deleted customer.
    Deleted,
    /// Stripe has no customer with this id (`404 resource_missing`).
    Unknown,
    /// Stripe's object could not be normalised (the enricher would dead-letter its events).
    Unreadable(String),
}

/// A contact the sink manages (one with the alternate key set), as listed from Dataverse.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub customer_id: String,
    /// The sink's tombstone (the deleted column is true): final, a deleted customer.
    pub tombstone: bool,
    /// The event time of the last change the sink applied, if any.
    pub stamp: Option<i64>,
    /// The mapped columns as Dataverse returned them.
    pub values: Map<String, Value>,
}

/// How one customer drifted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// Live in Stripe, no contact in Dataverse.
    Missing,
    /// Live in both, and the contact does not hold what the sink would write for Stripe's state.
    Different { fields: Vec<FieldDiff> },
    /// Deleted in Stripe, but the contact is not the sink's tombstone.
    DeletedInStripe,
    /// Stripe has no such customer, but the contact is not a tombstone.
    UnknownToStripe,
    /// Live in Stripe, but the contact is the sink's tombstone. Stripe never revives a deleted
    /// customer, so the tombstone was written by mistake; the sink keeps tombstones final, so
    /// this is reported, not repaired.
    DeletedInDataverse,
}

impl Drift {
    /// The order findings are listed in.
    fn order(&self) -> u8 {
        match self {
            Drift::Missing => 0,
            Drift::Different { .. } => 1,
            Drift::DeletedInStripe => 2,
            Drift::UnknownToStripe => 3,
            Drift::DeletedInDataverse => 4,
        }
    }

    /// The stable name used in the JSON output (`kind`).
    pub fn name(&self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Different { .. } => "different",
            Drift::DeletedInStripe => "deleted_in_stripe",
            Drift::UnknownToStripe => "unknown_to_stripe",
            Drift::DeletedInDataverse => "deleted_in_dataverse",
        }
    }

    /// The words used in the table.
    pub fn label(&self) -> &'static str {
        match self {
            Drift::Missing => "missing in Dataverse",
            Drift::Different { .. } => "different",
            Drift::DeletedInStripe => "deleted in Stripe",
            Drift::UnknownToStripe => "unknown to Stripe",
            Drift::DeletedInDataverse => "deleted in Dataverse",
        }
    }
}

/// One column whose value differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// The customer field (`email`, `metadata.tier`).
    pub field: String,
    /// The contact column it maps to (`emailaddress1`).
    pub column: String,
    /// What the contact holds.
    pub dataverse: Value,
    /// What the sink would write for Stripe's state.
    pub stripe: Value,
}

/// One drifted customer and the record that repairs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub customer_id: String,
    pub drift: Drift,
    /// The `customers.normalized` record that repairs it; `None` when the sink could not apply
    /// one (a tombstone is final) or repairing this kind is turned off.
    pub correction: Option<Customer>,
}

/// Everything the comparison found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Drifted customers, by kind, then by customer id.
    pub findings: Vec<Finding>,
    /// Customers whose contact matches (live in both and equal, or deleted/unknown in Stripe
    /// with a tombstone in Dataverse).
    pub in_sync: usize,
    /// Customers whose contact differs but was written from an event at or after the time
    /// Stripe was read: the pipeline is ahead of this listing, not behind it.
    pub changed_since_read: Vec<String>,
    /// Stripe customers that could not be normalised, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// What the comparison needs besides the two sides.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The sink's table and mapping.
    pub columns: &'a Columns,
    /// Column → customer field name, for the report.
    pub fields: BTreeMap<String, String>,
    /// The `source_event_id` of this run's corrective records.
    pub event_id: &'a str,
    /// `livemode` of corrective deletions (which carry no Stripe object to take it from).
    pub livemode: bool,
    /// Whether contacts unknown to Stripe get a corrective deletion.
    pub repair_unknown: bool,
}

/// Column → field name of a mapping.
pub fn field_names(mapping: &Mapping) -> BTreeMap<String, String> {
    mapping
        .columns()
        .into_iter()
        .filter(|(_, column)| !column.is_empty())
        .map(|(field, column)| (column, field))
        .collect()
}

/// Normalises a customer object read from Stripe at `read_at`, as the enricher would normalise
/// it in a `customer.updated` event of that time with id `event_id`.
pub fn read_customer(object: &Value, read_at: i64, event_id: &str) -> StripeRead {
    let customer_id = object
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    let event = SourceEvent {
        id: event_id,
        event_type: CUSTOMER_UPDATED,
        created: read_at,
        livemode: object.get("livemode").and_then(Value::as_bool).unwrap_or(false),
    };
    let state = match normalize::customer_from_object(object, event) {
        Ok(customer) => StripeState::Live(Box::new(customer)),
        Err(e) => StripeState::Unreadable(e.to_string()),
    };
    StripeRead {
        customer_id,
        state,
        read_at,
    }
}

/// Compares every customer Stripe answered for with the contacts. A tombstone Stripe did not
/// list is in sync (a deleted customer is never listed); any other contact without a Stripe
/// answer is not judged (the caller asks Stripe about every such contact).
pub fn compare(plan: &Plan<'_>, stripe: &[StripeRead], contacts: &[Contact]) -> Comparison {
    let read: std::collections::BTreeSet<&str> = stripe.iter().map(|r| r.customer_id.as_str()).collect();
    let mut out = Comparison {
        in_sync: contacts
            .iter()
            .filter(|c| c.tombstone && !read.contains(c.customer_id.as_str()))
            .count(),
        ..Comparison::default()
    };
    let contacts: BTreeMap<&str, &Contact> = contacts.iter().map(|c| (c.customer_id.as_str(), c)).collect();
    for read in stripe {
        let contact = contacts.get(read.customer_id.as_str()).copied();
        let finding = |drift: Drift, correction: Option<Customer>| Finding {
            customer_id: read.customer_id.clone(),
            drift,
            correction,
        };
        let deletion = || {
            Customer::deletion(
                read.customer_id.clone(),
                plan.event_id,
                CUSTOMER_DELETED,
                read.read_at,
                plan.livemode,
            )
        };
        match (&read.state, contact) {
            (StripeState::Unreadable(reason), _) => {
                out.unreadable.push((read.customer_id.clone(), reason.clone()));
            }
            (StripeState::Live(customer), None) => {
                out.findings
                    .push(finding(Drift::Missing, Some((**customer).clone())));
            }
            (StripeState::Live(_), Some(c)) if c.tombstone => {
                out.findings.push(finding(Drift::DeletedInDataverse, None));
            }
            (StripeState::Live(customer), Some(c)) => {
                let fields = differences(plan, customer, c);
                if fields.is_empty() {
                    out.in_sync += 1;
                } else if c.stamp.is_some_and(|s| s >= read.read_at) {
                    out.changed_since_read.push(read.customer_id.clone());
                } else {
                    out.findings
                        .push(finding(Drift::Different { fields }, Some((**customer).clone())));
                }
            }
            (StripeState::Deleted | StripeState::Unknown, None) => {}
            (StripeState::Deleted | StripeState::Unknown, Some(c)) if c.tombstone => out.in_sync += 1,
            (StripeState::Deleted, Some(_)) => {
                out.findings
                    .push(finding(Drift::DeletedInStripe, Some(deletion())));
            }
            (StripeState::Unknown, Some(_)) => {
                let correction = plan.repair_unknown.then(deletion);
                out.findings.push(finding(Drift::UnknownToStripe, correction));
            }
        }
    }
    out.findings
        .sort_by(|a, b| (a.drift.order(), &a.customer_id).cmp(&(b.drift.order(), &b.customer_id)));
    out
}

/// The mapped columns whose contact value is not what the sink would write for `customer`.
fn differences(plan: &Plan<'_>, customer: &Customer, contact: &Contact) -> Vec<FieldDiff> {
    plan.columns
        .values(customer)
        .into_iter()
        .filter_map(|(column, want)| {
            let have = contact.values.get(&column).cloned().unwrap_or(Value::Null);
            (have != want).then(|| FieldDiff {
                field: plan
                    .fields
                    .get(&column)
                    .cloned()
                    .unwrap_or_else(|| column.clone()),
                column,
                dataverse: have,
                stripe: want,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::CustomerOp;
    use serde_json::json;
    use sink_dataverse::config::SinkConfig;

    const READ_AT: i64 = 1_760_000_000;
    const EVENT: &str = "reconcile_test";

    fn columns() -> Columns {
        Columns::from_config(&SinkConfig::default())
    }

    fn plan(columns: &Columns) -> Plan<'_> {
        Plan {
            columns,
            fields: field_names(&SinkConfig::default().mapping),
            event_id: EVENT,
            livemode: false,
            repair_unknown: true,
        }
    }

    fn stripe(object: Value) -> StripeRead {
        read_customer(&object, READ_AT, EVENT)
    }

    fn gone(id: &str, state: StripeState) -> StripeRead {
        StripeRead {
            customer_id: id.into(),
            state,
            read_at: READ_AT,
        }
    }

    /// The contact the sink would have written for `read` (an in-sync contact).
    fn contact_for(columns: &Columns, read: &StripeRead) -> Contact {
        let StripeState::Live(customer) = &read.state else {
            panic!("a live customer")
        };
        Contact {
            customer_id: read.customer_id.clone(),
            tombstone: false,
            stamp: Some(READ_AT - 100),
            values: columns.values(customer),
        }
    }

    fn ada() -> Value {
        json!({
            "id": "cus_ada",
            "object": "customer",
            "name": "  Ada   King Lovelace ",
            "email": " Ada@Example.COM ",
            "phone": "+1 (415) 555-2671",
            "description": "analyst",
            "address": {"line1": " 12 St James's Sq ", "line2": "", "city": "London", "state": null, "postal_code": "SW1Y 4JH", "country": "gb"},
            "metadata": {"tier": "gold"},
            "livemode": false,
            "a_field_stripe_added_later": {"nested": true}
        })
    }

    #[test]
    fn the_stripe_side_is_normalised_by_the_enrichers_code() {
        let read = stripe(ada());
        let StripeState::Live(customer) = &read.state else {
            panic!("{read:?}")
        };
        let body = format!(r#"{{"data":{{"object":{}}}}}"#, ada());
        let enriched = normalize::customer_from_event_body(
            body.as_bytes(),
            SourceEvent {
                id: EVENT,
                event_type: CUSTOMER_UPDATED,
                created: READ_AT,
                livemode: false,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(**customer, enriched, "the same record the enricher produces");
        assert_eq!(customer.email.as_deref(), Some("ada@example.com"));
        assert_eq!(customer.phone.as_deref(), Some("+14155552671"));
        assert_eq!(
            customer.address_country_name.as_deref(),
            Some("United Kingdom of Great Britain and Northern Ireland")
        );
        assert_eq!(customer.source_event_type, CUSTOMER_UPDATED);
        assert_eq!(
            customer.source_event_created, READ_AT,
            "stamped with the read time"
        );
        assert_eq!(customer.source_event_id, EVENT);
    }

    #[test]
    fn a_contact_holding_the_normalised_values_is_in_sync_however_messy_stripe_is() {
        let columns = columns();
        // The contact holds the normalised form; Stripe holds the raw, messy one.
        let read = stripe(ada());
        let contact = contact_for(&columns, &read);
        assert_eq!(contact.values["emailaddress1"], "ada@example.com");
        let result = compare(&plan(&columns), &[read], &[contact]);
        assert_eq!(result.findings, vec![]);
        assert_eq!(result.in_sync, 1);
    }

    #[test]
    fn each_differing_column_is_reported_with_both_values() {
        let columns = columns();
        let read = stripe(ada());
        let mut contact = contact_for(&columns, &read);
        contact
            .values
            .insert("emailaddress1".into(), json!("old@example.com"));
        contact.values.insert("address1_city".into(), Value::Null);
        contact.values.remove("telephone1");
        let result = compare(&plan(&columns), std::slice::from_ref(&read), &[contact]);
        let [finding] = &result.findings[..] else {
            panic!("{result:?}")
        };
        let Drift::Different { fields } = &finding.drift else {
            panic!("{finding:?}")
        };
        let got: Vec<(&str, &str, &Value, &Value)> = fields
            .iter()
            .map(|f| (f.field.as_str(), f.column.as_str(), &f.dataverse, &f.stripe))
            .collect();
        assert_eq!(
            got,
            vec![
                ("address_city", "address1_city", &Value::Null, &json!("London")),
                (
                    "email",
                    "emailaddress1",
                    &json!("old@example.com"),
                    &json!("ada@example.com")
                ),
                ("phone", "telephone1", &Value::Null, &json!("+14155552671")),
            ]
        );
        let StripeState::Live(customer) = &read.state else {
            unreachable!()
        };
        assert_eq!(
            finding.correction.as_ref(),
            Some(&**customer),
            "the repair is the normalised state"
        );
    }

    #[test]
    fn normalisation_edge_cases_are_not_drift() {
        let columns = columns();
        // What the enricher writes for awkward input: a phone it cannot parse kept trimmed, an
        // unknown country left empty, an invalid email kept lower-cased, no name → the email's
        // local part as last name, shipping used when billing is empty.
        let messy = json!({
            "id": "cus_messy",
            "object": "customer",
            "name": null,
            "email": "  NOT-AN-EMAIL ",
            "phone": " call me maybe ",
            "address": {"line1": null, "line2": null, "city": null, "state": null, "postal_code": null, "country": null},
            "shipping": {"name": "x", "phone": null, "address": {"line1": "1 Dock Rd", "city": "Oslo", "country": "Atlantis"}},
        });
        let read = stripe(messy);
        let StripeState::Live(customer) = &read.state else {
            panic!("{read:?}")
        };
        assert_eq!(customer.email.as_deref(), Some("not-an-email"));
        assert_eq!(customer.phone.as_deref(), Some("call me maybe"));
        assert_eq!(customer.address_city.as_deref(), Some("Oslo"));
        assert_eq!(customer.address_country_code, None);
        let contact = Contact {
            customer_id: "cus_messy".into(),
            tombstone: false,
            stamp: Some(1),
            values: serde_json::from_value(json!({
                "emailaddress1": "not-an-email",
                "firstname": null,
                "lastname": customer.last_name,
                "telephone1": "call me maybe",
                "description": null,
                "address1_line1": "1 Dock Rd",
                "address1_line2": null,
                "address1_city": "Oslo",
                "address1_stateorprovince": null,
                "address1_postalcode": null,
                "address1_country": null,
            }))
            .unwrap(),
        };
        let result = compare(
            &plan(&columns),
            std::slice::from_ref(&read),
            std::slice::from_ref(&contact),
        );
        assert_eq!(result.findings, vec![], "{result:?}");

        // The raw, un-normalised value in Dataverse is drift (the sink would write another).
        let mut raw = contact;
        raw.values
            .insert("emailaddress1".into(), json!("  NOT-AN-EMAIL "));
        let result = compare(&plan(&columns), &[read], &[raw]);
        assert!(
            matches!(&result.findings[..], [Finding { drift: Drift::Different { fields }, .. }] if fields.len() == 1 && fields[0].column == "emailaddress1"),
            "{result:?}"
        );
    }

    #[test]
    fn mapped_metadata_is_compared_and_unmapped_fields_are_not() {
        let mut config = SinkConfig::default();
        config.mapping.metadata.insert("tier".into(), "new_tier".into());
        config.mapping.description = String::new();
        let columns = Columns::from_config(&config);
        let plan = Plan {
            fields: field_names(&config.mapping),
            ..plan(&columns)
        };
        let read = stripe(ada());
        let mut contact = contact_for(&columns, &read);
        assert_eq!(contact.values["new_tier"], "gold");
        contact.values.insert("new_tier".into(), json!("silver"));
        contact
            .values
            .insert("description".into(), json!("not mapped, not compared"));
        let result = compare(&plan, &[read], &[contact]);
        let [
            Finding {
                drift: Drift::Different { fields },
                ..
            },
        ] = &result.findings[..]
        else {
            panic!("{result:?}")
        };
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(
            (fields[0].field.as_str(), fields[0].column.as_str()),
            ("metadata.tier", "new_tier")
        );
    }

    #[test]
    fn every_kind_of_drift_and_its_repair() {
        let columns = columns();
        let missing = stripe(json!({"id": "cus_missing", "object": "customer", "name": "New Person"}));
        let deleted = gone("cus_deleted", StripeState::Deleted);
        let unknown = gone("cus_unknown", StripeState::Unknown);
        let revived = stripe(json!({"id": "cus_tomb", "object": "customer", "name": "Back Again"}));
        let live = |id: &str| Contact {
            customer_id: id.into(),
            tombstone: false,
            stamp: Some(READ_AT - 5),
            values: Map::new(),
        };
        let tomb = |id: &str| Contact {
            tombstone: true,
            ..live(id)
        };
        let contacts = vec![
            live("cus_deleted"),
            live("cus_unknown"),
            tomb("cus_tomb"),
            tomb("cus_deleted_done"),
            tomb("cus_unknown_done"),
        ];
        let reads = vec![
            unknown,
            deleted,
            missing.clone(),
            revived,
            gone("cus_deleted_done", StripeState::Deleted),
            gone("cus_unknown_done", StripeState::Unknown),
            gone("cus_deleted_never_written", StripeState::Deleted),
        ];
        let result = compare(&plan(&columns), &reads, &contacts);
        let kinds: Vec<(&str, &str)> = result
            .findings
            .iter()
            .map(|f| (f.drift.name(), f.customer_id.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("missing", "cus_missing"),
                ("deleted_in_stripe", "cus_deleted"),
                ("unknown_to_stripe", "cus_unknown"),
                ("deleted_in_dataverse", "cus_tomb"),
            ]
        );
        assert_eq!(
            result.in_sync, 2,
            "tombstones of deleted and unknown customers are in sync"
        );
        let unlisted = compare(&plan(&columns), &[], &contacts[2..]);
        assert_eq!(unlisted.in_sync, 3, "tombstones Stripe does not list are in sync");
        assert_eq!(unlisted.findings, vec![]);

        let StripeState::Live(new) = &missing.state else {
            unreachable!()
        };
        assert_eq!(result.findings[0].correction.as_ref(), Some(&**new));
        for finding in &result.findings[1..3] {
            let c = finding.correction.as_ref().expect("a corrective deletion");
            assert_eq!(c.op, CustomerOp::Delete);
            assert_eq!(c.customer_id, finding.customer_id);
            assert_eq!(c.source_event_type, CUSTOMER_DELETED);
            assert_eq!(c.source_event_created, READ_AT);
            assert_eq!(c.source_event_id, EVENT);
        }
        assert_eq!(result.findings[3].correction, None, "a tombstone is final");

        let keep_unknown = Plan {
            repair_unknown: false,
            ..plan(&columns)
        };
        let result = compare(&keep_unknown, &reads, &contacts);
        let unknown = result
            .findings
            .iter()
            .find(|f| f.drift == Drift::UnknownToStripe)
            .unwrap();
        assert_eq!(unknown.correction, None, "still reported, not repaired");
    }

    #[test]
    fn a_contact_written_since_stripe_was_read_is_not_drift() {
        let columns = columns();
        let read = stripe(ada());
        let mut contact = contact_for(&columns, &read);
        contact
            .values
            .insert("emailaddress1".into(), json!("newer@example.com"));
        contact.stamp = Some(READ_AT);
        let result = compare(
            &plan(&columns),
            std::slice::from_ref(&read),
            std::slice::from_ref(&contact),
        );
        assert_eq!(result.findings, vec![]);
        assert_eq!(result.changed_since_read, vec!["cus_ada".to_string()]);

        contact.stamp = Some(READ_AT - 1);
        let result = compare(&plan(&columns), &[read], &[contact]);
        assert_eq!(result.findings.len(), 1, "written before the read: drift");
    }

    #[test]
    fn an_object_the_enricher_refuses_is_unreadable_not_drift() {
        let columns = columns();
        let read = stripe(json!({"id": "cus_bad", "object": "customer", "email": 42}));
        let result = compare(&plan(&columns), &[read], &[]);
        assert_eq!(result.findings, vec![]);
        let [(id, reason)] = &result.unreadable[..] else {
            panic!("{result:?}")
        };
        assert_eq!(id, "cus_bad");
        assert!(reason.contains("not a Stripe customer"), "{reason}");
    }
}
