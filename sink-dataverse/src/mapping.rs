//! What a `Customer` becomes in Dataverse: the contact's column values on upsert, the tombstone on
//! delete, and the columns read back for the staleness guard. Pure; built once from the
//! configuration, used by [`crate::guard`].

use schemas::{Customer, CustomerOp};
use serde_json::{Map, Value};

use crate::config::{DeleteMode, SinkConfig};

/// `statecode`/`statuscode` of an active and an inactive contact.
pub const ACTIVE: (i64, i64) = (0, 1);
pub const INACTIVE: (i64, i64) = (1, 2);

/// A change's place in a customer's life, which orders changes of the same second:
/// `customer.created` before `customer.updated` before `customer.deleted`.
pub const CREATED: i64 = 0;
pub const UPDATED: i64 = 1;
pub const DELETED: i64 = 2;

/// At most this many event ids are kept for one second (the oldest go first), and their list
/// stays within [`MAX_EVENT_IDS_LEN`] characters, the documented column length.
pub const MAX_EVENT_IDS: usize = 16;
pub const MAX_EVENT_IDS_LEN: usize = 1000;

/// The place of `change` in its customer's life ([`CREATED`], [`UPDATED`], [`DELETED`]).
pub fn rank(change: &Customer) -> i64 {
    match change.op {
        CustomerOp::Delete => DELETED,
        CustomerOp::Upsert if change.source_event_type.ends_with(".created") => CREATED,
        CustomerOp::Upsert => UPDATED,
    }
}

/// What a write stamps on the contact besides its values: the applied change's time and rank,
/// and the ids of every change applied at that time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub created: i64,
    pub rank: i64,
    pub event_ids: Vec<String>,
}

impl Stamp {
    /// The event-id column's value: the ids, comma-separated, bounded by [`MAX_EVENT_IDS`] and
    /// [`MAX_EVENT_IDS_LEN`] (the most recent kept).
    pub fn event_ids_value(&self) -> String {
        let mut kept: Vec<&str> = Vec::new();
        let mut len = 0;
        for id in self.event_ids.iter().rev().take(MAX_EVENT_IDS) {
            let add = id.len() + usize::from(!kept.is_empty());
            if len + add > MAX_EVENT_IDS_LEN {
                break;
            }
            len += add;
            kept.push(id);
        }
        kept.reverse();
        kept.join(",")
    }

    /// Reads the event-id column's value back.
    pub fn parse_event_ids(value: &str) -> Vec<String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// A customer field that can be mapped to a column.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Email,
    FirstName,
    LastName,
    FullName,
    Phone,
    Description,
    AddressLine1,
    AddressLine2,
    AddressCity,
    AddressState,
    AddressPostalCode,
    AddressCountryCode,
    AddressCountryName,
    Metadata(String),
}

impl Source {
    fn value<'c>(&self, c: &'c Customer) -> Option<&'c str> {
        match self {
            Source::Email => c.email.as_deref(),
            Source::FirstName => c.first_name.as_deref(),
            Source::LastName => c.last_name.as_deref(),
            Source::FullName => c.full_name.as_deref(),
            Source::Phone => c.phone.as_deref(),
            Source::Description => c.description.as_deref(),
            Source::AddressLine1 => c.address_line1.as_deref(),
            Source::AddressLine2 => c.address_line2.as_deref(),
            Source::AddressCity => c.address_city.as_deref(),
            Source::AddressState => c.address_state.as_deref(),
            Source::AddressPostalCode => c.address_postal_code.as_deref(),
            Source::AddressCountryCode => c.address_country_code.as_deref(),
            Source::AddressCountryName => c.address_country_name.as_deref(),
            Source::Metadata(key) => c.metadata.get(key).map(String::as_str),
        }
    }
}

/// The table, its key and guard columns, and the mapped columns, as validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub table: String,
    pub alternate_key: String,
    pub created: String,
    pub deleted: String,
    pub rank: String,
    pub event_ids: String,
    pub delete_mode: DeleteMode,
    mapped: Vec<(Source, String)>,
}

impl Columns {
    /// The column plan of a validated configuration.
    pub fn from_config(config: &SinkConfig) -> Self {
        let m = &config.mapping;
        let mut mapped = Vec::new();
        for (source, column) in [
            (Source::Email, &m.email),
            (Source::FirstName, &m.first_name),
            (Source::LastName, &m.last_name),
            (Source::FullName, &m.full_name),
            (Source::Phone, &m.phone),
            (Source::Description, &m.description),
            (Source::AddressLine1, &m.address_line1),
            (Source::AddressLine2, &m.address_line2),
            (Source::AddressCity, &m.address_city),
            (Source::AddressState, &m.address_state),
            (Source::AddressPostalCode, &m.address_postal_code),
            (Source::AddressCountryCode, &m.address_country_code),
            (Source::AddressCountryName, &m.address_country_name),
        ] {
            let column = column.trim();
            if !column.is_empty() {
                mapped.push((source, column.to_string()));
            }
        }
        for (key, column) in &m.metadata {
            let column = column.trim();
            if !column.is_empty() {
                mapped.push((Source::Metadata(key.clone()), column.to_string()));
            }
        }
        let d = &config.dataverse;
        Columns {
            table: d.table.clone(),
            alternate_key: d.alternate_key.clone(),
            created: d.created_column.clone(),
            deleted: d.deleted_column.clone(),
            rank: d.rank_column.clone(),
            event_ids: d.event_ids_column.clone(),
            delete_mode: d.delete_mode,
            mapped,
        }
    }

    /// The mapped column names, in mapping order.
    pub fn mapped_columns(&self) -> impl Iterator<Item = &str> {
        self.mapped.iter().map(|(_, c)| c.as_str())
    }

    /// The contact's mapped column values for `customer`: every mapped column, `null` when the
    /// customer has no value, so an upsert always leaves the full latest state.
    pub fn values(&self, customer: &Customer) -> Map<String, Value> {
        self.mapped
            .iter()
            .map(|(source, column)| {
                let value = source
                    .value(customer)
                    .map_or(Value::Null, |v| Value::String(v.to_string()));
                (column.clone(), value)
            })
            .collect()
    }

    /// The body of an upsert: the mapped values, the stamp and `deleted = false`.
    pub fn upsert_body(&self, customer: &Customer, stamp: &Stamp) -> Map<String, Value> {
        let mut body = self.values(customer);
        self.insert_stamp(&mut body, stamp);
        body.insert(self.deleted.clone(), Value::Bool(false));
        body
    }

    /// The body that turns a contact into a tombstone: inactive, marked deleted, stamped with the
    /// delete. Other columns are left as they were.
    pub fn tombstone_body(&self, stamp: &Stamp) -> Map<String, Value> {
        let mut body = Map::new();
        self.insert_stamp(&mut body, stamp);
        body.insert(self.deleted.clone(), Value::Bool(true));
        body.insert("statecode".into(), Value::from(INACTIVE.0));
        body.insert("statuscode".into(), Value::from(INACTIVE.1));
        body
    }

    fn insert_stamp(&self, body: &mut Map<String, Value>, stamp: &Stamp) {
        body.insert(self.created.clone(), Value::from(stamp.created));
        body.insert(self.rank.clone(), Value::from(stamp.rank));
        body.insert(self.event_ids.clone(), Value::String(stamp.event_ids_value()));
    }

    /// The columns read before every write: the guard columns and the mapped columns (so a
    /// redelivered change can be recognised as already applied and not written again).
    pub fn select(&self) -> Vec<&str> {
        let mut columns = vec![
            self.created.as_str(),
            self.deleted.as_str(),
            self.rank.as_str(),
            self.event_ids.as_str(),
        ];
        columns.extend(self.mapped_columns());
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::CustomerOp;
    use serde_json::json;

    pub(crate) fn customer(id: &str, created: i64) -> Customer {
        let mut c = Customer::deletion(id, "evt_1", "customer.updated", created, false);
        c.op = CustomerOp::Upsert;
        c
    }

    #[test]
    fn default_mapping_writes_the_documented_columns() {
        let columns = Columns::from_config(&SinkConfig::default());
        let mut c = customer("cus_1", 1_700_000_000);
        c.email = Some("ada@example.com".into());
        c.first_name = Some("Ada".into());
        c.last_name = Some("Lovelace".into());
        c.full_name = Some("Ada Lovelace".into());
        c.phone = Some("+441234567890".into());
        c.description = Some("vip".into());
        c.address_line1 = Some("1 Main St".into());
        c.address_city = Some("London".into());
        c.address_state = Some("LDN".into());
        c.address_postal_code = Some("N1".into());
        c.address_country_code = Some("GB".into());
        c.address_country_name = Some("United Kingdom".into());
        let stamp = Stamp {
            created: 1_700_000_000,
            rank: UPDATED,
            event_ids: vec!["evt_1".into()],
        };
        let body = Value::Object(columns.upsert_body(&c, &stamp));
        assert_eq!(
            body,
            json!({
                "emailaddress1": "ada@example.com",
                "firstname": "Ada",
                "lastname": "Lovelace",
                "telephone1": "+441234567890",
                "description": "vip",
                "address1_line1": "1 Main St",
                "address1_line2": null,
                "address1_city": "London",
                "address1_stateorprovince": "LDN",
                "address1_postalcode": "N1",
                "address1_country": "United Kingdom",
                "new_stripeeventcreated": 1_700_000_000,
                "new_stripeeventrank": 1,
                "new_stripeeventids": "evt_1",
                "new_stripedeleted": false,
            })
        );
        assert!(
            body.get("new_stripecustomerid").is_none(),
            "the key is in the URL, never repeated in the body"
        );
    }

    #[test]
    fn configured_mapping_and_metadata() {
        let mut config = SinkConfig::default();
        config.mapping.phone = "mobilephone".into();
        config.mapping.description = String::new();
        config.mapping.address_country_code = "new_countrycode".into();
        config
            .mapping
            .metadata
            .insert("segment".into(), "new_segment".into());
        config.mapping.metadata.insert("tier".into(), "new_tier".into());
        let columns = Columns::from_config(&config);
        let mut c = customer("cus_1", 5);
        c.phone = Some("+1".into());
        c.address_country_code = Some("US".into());
        c.metadata.insert("segment".into(), "smb".into());
        let body = columns.values(&c);
        assert_eq!(body["mobilephone"], json!("+1"));
        assert_eq!(body["new_countrycode"], json!("US"));
        assert_eq!(body["new_segment"], json!("smb"));
        assert_eq!(body["new_tier"], Value::Null, "absent metadata clears the column");
        assert!(!body.contains_key("telephone1"));
        assert!(
            !body.contains_key("description"),
            "unmapped fields are not written"
        );
    }

    #[test]
    fn tombstone_and_select() {
        let columns = Columns::from_config(&SinkConfig::default());
        let stamp = Stamp {
            created: 42,
            rank: DELETED,
            event_ids: vec!["evt_a".into(), "evt_b".into()],
        };
        assert_eq!(
            Value::Object(columns.tombstone_body(&stamp)),
            json!({
                "new_stripeeventcreated": 42,
                "new_stripeeventrank": 2,
                "new_stripeeventids": "evt_a,evt_b",
                "new_stripedeleted": true,
                "statecode": 1,
                "statuscode": 2,
            })
        );
        let select = columns.select();
        assert_eq!(
            &select[..4],
            &[
                "new_stripeeventcreated",
                "new_stripedeleted",
                "new_stripeeventrank",
                "new_stripeeventids"
            ]
        );
        assert!(select.contains(&"emailaddress1"));
    }

    #[test]
    fn ranks_follow_a_customers_life() {
        let mut c = customer("cus_1", 1);
        c.source_event_type = "customer.created".into();
        assert_eq!(rank(&c), CREATED);
        c.source_event_type = "customer.updated".into();
        assert_eq!(rank(&c), UPDATED);
        let d = Customer::deletion("cus_1", "evt_d", "customer.deleted", 1, false);
        assert_eq!(rank(&d), DELETED);
    }

    #[test]
    fn event_ids_are_bounded_and_round_trip() {
        let ids: Vec<String> = (0..40).map(|i| format!("evt_{i:024}")).collect();
        let stamp = Stamp {
            created: 1,
            rank: UPDATED,
            event_ids: ids.clone(),
        };
        let value = stamp.event_ids_value();
        assert!(value.len() <= MAX_EVENT_IDS_LEN, "{}", value.len());
        let back = Stamp::parse_event_ids(&value);
        assert_eq!(
            back,
            ids[ids.len() - MAX_EVENT_IDS..],
            "the most recent ids are kept"
        );

        let long: Vec<String> = (0..3).map(|i| format!("{i}{}", "x".repeat(600))).collect();
        let stamp = Stamp {
            created: 1,
            rank: UPDATED,
            event_ids: long.clone(),
        };
        assert_eq!(Stamp::parse_event_ids(&stamp.event_ids_value()), long[2..]);
        assert!(Stamp::parse_event_ids(" , ,").is_empty());
    }
}
