//! `Customer`: the value of `customers.normalized` (schema `avro/customer.avsc`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::avro_record;

/// What a change does to the Dataverse contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerOp {
    Upsert,
    Delete,
}

/// One normalised customer change, keyed by `customer_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// `cus_…`; the alternate key of the contact.
    pub customer_id: String,
    pub op: CustomerOp,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub address_city: Option<String>,
    pub address_state: Option<String>,
    pub address_postal_code: Option<String>,
    pub address_country_code: Option<String>,
    pub address_country_name: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Normalisation notes (`email_invalid`, `phone_unparsed`, …); bounded vocabulary.
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub livemode: bool,
    pub source_event_id: String,
    pub source_event_type: String,
    /// Unix seconds of the source event: the sink's staleness guard compares these.
    pub source_event_created: i64,
}

impl Customer {
    /// A change that carries only what is needed to find and delete the contact.
    pub fn deletion(
        customer_id: impl Into<String>,
        event_id: impl Into<String>,
        event_type: impl Into<String>,
        created: i64,
        livemode: bool,
    ) -> Self {
        Customer {
            customer_id: customer_id.into(),
            op: CustomerOp::Delete,
            email: None,
            first_name: None,
            last_name: None,
            full_name: None,
            phone: None,
            description: None,
            address_line1: None,
            address_line2: None,
            address_city: None,
            address_state: None,
            address_postal_code: None,
            address_country_code: None,
            address_country_name: None,
            metadata: BTreeMap::new(),
            warnings: Vec::new(),
            livemode,
            source_event_id: event_id.into(),
            source_event_type: event_type.into(),
            source_event_created: created,
        }
    }
}

avro_record!(Customer, "customer.avsc");
