//! From a verified body to the `StripeEvent` record and its Kafka key. Pure code, fed only by
//! [`signature`](crate::signature) (a [`VerifiedEvent`] can only be built from a
//! [`VerifiedPayload`]) and read by [`publish`](crate::publish).
//!
//! Parsing is lenient in the way Stripe asks of its integrations: unknown fields are ignored, and a
//! null or unexpected type in any field the record does not require reads as "absent". Only what
//! makes a body a Stripe event is required: `object: "event"`, a non-empty `id` and `type`, and an
//! integer `created`. The raw bytes travel unchanged; nothing here re-serialises them.

mod lenient;

use schemas::{SOURCE_BACKFILL, SOURCE_WEBHOOK, StripeEvent};
use serde::{
    Deserialize,
    de::{IgnoredAny, MapAccess},
};

use self::lenient::{Lenient, Shape};
use crate::signature::VerifiedPayload;

/// Why a verified body is not a Stripe event. The texts are safe to send back: they name the
/// field, never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Request body is not valid JSON")]
    NotJson,
    #[error("Request body is not a Stripe event: expected a JSON object")]
    NotAnObject,
    #[error("Request body is not a Stripe event: `object` is not \"event\"")]
    NotAnEvent,
    #[error("Request body is not a Stripe event: `id` is missing")]
    MissingId,
    #[error("Request body is not a Stripe event: `type` is missing")]
    MissingType,
    #[error("Request body is not a Stripe event: `created` is missing")]
    MissingCreated,
}

impl BodyError {
    /// A short, stable name for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::NotJson => "not_json",
            BodyError::NotAnObject => "not_an_object",
            BodyError::NotAnEvent => "not_an_event",
            BodyError::MissingId => "missing_id",
            BodyError::MissingType => "missing_type",
            BodyError::MissingCreated => "missing_created",
        }
    }
}

/// A verified, parsed Stripe event, ready to be written: the record and its key.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    record: StripeEvent,
    key: String,
}

impl VerifiedEvent {
    /// Parses a verified body. `received_at_ms` is when the request arrived (ms since the epoch).
    pub fn parse(payload: VerifiedPayload, received_at_ms: i64) -> Result<Self, BodyError> {
        Self::from_body(
            payload.body(),
            payload.signature_header(),
            received_at_ms,
            SOURCE_WEBHOOK,
        )
    }

    /// An event read from Stripe's events API (`gateway backfill`), parsed exactly as a webhook
    /// body is. Authentic without a signature: it came from Stripe over TLS, asked for with the
    /// account's API key. `raw_body` is the event as the API returned it; `signature_header` is
    /// empty; `source` is `backfill`.
    pub fn from_api(body: &[u8], read_at_ms: i64) -> Result<Self, BodyError> {
        Self::from_body(body, "", read_at_ms, SOURCE_BACKFILL)
    }

    fn from_body(
        body: &[u8],
        signature_header: &str,
        received_at_ms: i64,
        source: &str,
    ) -> Result<Self, BodyError> {
        // serde's derived structs also accept a JSON array (fields by position): refuse anything
        // but an object before parsing.
        let first = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => BodyError::NotAnObject,
                Err(_) => BodyError::NotJson,
            });
        }
        let raw: RawEvent = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => BodyError::NotAnObject,
            _ => BodyError::NotJson,
        })?;
        if raw.object.0.as_deref() != Some("event") {
            return Err(BodyError::NotAnEvent);
        }
        let event_id = raw.id.0.filter(|s| !s.is_empty()).ok_or(BodyError::MissingId)?;
        let event_type = raw
            .kind
            .0
            .filter(|s| !s.is_empty())
            .ok_or(BodyError::MissingType)?;
        let created = raw.created.0.ok_or(BodyError::MissingCreated)?;
        let object = raw.data.0.unwrap_or_default();
        let object_id = object.id.filter(|s| !s.is_empty());
        // One object's events share a partition, so consumers see them in order. An event without
        // an object id (none is documented) falls back to its own id, so it is still written.
        let key = object_id.clone().unwrap_or_else(|| event_id.clone());
        let request = raw.request.0.unwrap_or_default();
        let record = StripeEvent {
            event_id,
            event_type,
            created,
            api_version: raw.api_version.0,
            livemode: raw.livemode.0.unwrap_or(false),
            account: raw.account.0,
            object_id,
            object_type: object.object,
            request_id: request.id,
            idempotency_key: request.idempotency_key,
            raw_body: body.to_vec(),
            signature_header: signature_header.to_string(),
            received_at: received_at_ms,
            source: Some(source.to_string()),
        };
        Ok(VerifiedEvent { record, key })
    }

    /// The record to encode.
    pub fn record(&self) -> &StripeEvent {
        &self.record
    }

    /// The Kafka record key: `data.object.id`.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn event_id(&self) -> &str {
        &self.record.event_id
    }

    pub fn event_type(&self) -> &str {
        &self.record.event_type
    }
}

/// The top-level fields the record needs; everything else is skipped without being built.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    id: Lenient<String>,
    #[serde(default)]
    object: Lenient<String>,
    #[serde(default, rename = "type")]
    kind: Lenient<String>,
    #[serde(default)]
    created: Lenient<i64>,
    #[serde(default)]
    livemode: Lenient<bool>,
    #[serde(default)]
    api_version: Lenient<String>,
    #[serde(default)]
    account: Lenient<String>,
    #[serde(default)]
    request: Lenient<RequestHead>,
    #[serde(default)]
    data: Lenient<ObjectHead>,
}

/// `request`: `{id, idempotency_key}` in current API versions, a bare id string in old ones.
#[derive(Default)]
struct RequestHead {
    id: Option<String>,
    idempotency_key: Option<String>,
}

/// `data.object`'s `id` and `object` (read through `data`).
#[derive(Default)]
struct ObjectHead {
    id: Option<String>,
    object: Option<String>,
}

impl Shape for RequestHead {
    fn from_str(s: &str) -> Option<Self> {
        Some(RequestHead {
            id: Some(s.to_string()),
            idempotency_key: None,
        })
    }

    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Id,
            IdempotencyKey,
            #[serde(other)]
            Other,
        }
        let mut head = RequestHead::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => head.id = map.next_value::<Lenient<String>>()?.0,
                Field::IdempotencyKey => {
                    head.idempotency_key = map.next_value::<Lenient<String>>()?.0;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(head))
    }
}

/// Read from `data`: finds `object` and takes its `id` and `object`.
impl Shape for ObjectHead {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum DataField {
            Object,
            #[serde(other)]
            Other,
        }
        let mut head = None;
        while let Some(field) = map.next_key::<DataField>()? {
            match field {
                DataField::Object => head = map.next_value::<Lenient<ObjectFields>>()?.0.map(|f| f.0),
                DataField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// The inside of `data.object`.
struct ObjectFields(ObjectHead);

impl Shape for ObjectFields {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Id,
            Object,
            #[serde(other)]
            Other,
        }
        let mut head = ObjectHead::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => head.id = map.next_value::<Lenient<String>>()?.0,
                Field::Object => head.object = map.next_value::<Lenient<String>>()?.0,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(ObjectFields(head)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::signature::{Verifier, signature_header};

    const SECRET: &str = "whsec_event_tests";

    fn verified(body: &[u8]) -> VerifiedPayload {
        let t = crate::signature::now_unix();
        let header = signature_header(SECRET, t, body);
        Verifier::new([SECRET], Duration::from_secs(300), Duration::from_secs(300))
            .verify(
                Some(header.as_bytes()),
                Bytes::copy_from_slice(body),
                SystemTime::now(),
            )
            .unwrap()
    }

    fn parse(body: &str) -> Result<VerifiedEvent, BodyError> {
        VerifiedEvent::parse(verified(body.as_bytes()), 42)
    }

    /// A real `customer.updated` delivery, shortened, with the fields Stripe adds over time.
    const CUSTOMER_UPDATED: &str = r#"{
  "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
  "object": "event",
  "api_version": "2025-04-30.basil",
  "created": 1686089970,
  "data": {
    "object": {
      "id": "cus_NffrFeUfNV2Hib",
      "object": "customer",
      "address": null,
      "email": "jennyrosen@example.com",
      "metadata": {"crm": "x"},
      "name": "Jenny Rosen",
      "preferred_locales": ["en"]
    },
    "previous_attributes": {"email": null}
  },
  "livemode": false,
  "pending_webhooks": 1,
  "request": {"id": "req_abc", "idempotency_key": "idem-1"},
  "type": "customer.updated",
  "a_field_from_the_future": {"nested": [1, 2, {"x": null}]}
}"#;

    #[test]
    fn a_full_event_is_read_and_kept_byte_for_byte() {
        let e = parse(CUSTOMER_UPDATED).unwrap();
        let r = e.record();
        assert_eq!(r.event_id, "evt_1NG8Du2eZvKYlo2CUI79vXWy");
        assert_eq!(r.event_type, "customer.updated");
        assert_eq!(r.created, 1_686_089_970);
        assert_eq!(r.api_version.as_deref(), Some("2025-04-30.basil"));
        assert!(!r.livemode);
        assert_eq!(r.account, None);
        assert_eq!(r.object_id.as_deref(), Some("cus_NffrFeUfNV2Hib"));
        assert_eq!(r.object_type.as_deref(), Some("customer"));
        assert_eq!(r.request_id.as_deref(), Some("req_abc"));
        assert_eq!(r.idempotency_key.as_deref(), Some("idem-1"));
        assert_eq!(r.raw_body, CUSTOMER_UPDATED.as_bytes());
        assert!(r.signature_header.starts_with("t="));
        assert_eq!(r.received_at, 42);
        assert_eq!(e.key(), "cus_NffrFeUfNV2Hib");
    }

    #[test]
    fn nulls_and_odd_shapes_read_as_absent() {
        let e = parse(
            r#"{"id":"evt_1","object":"event","type":"customer.deleted","created":1,
                "api_version":null,"livemode":null,"account":7,"request":null,
                "data":{"object":{"id":null,"object":["x"]}}}"#,
        )
        .unwrap();
        let r = e.record();
        assert_eq!(r.api_version, None);
        assert!(!r.livemode);
        assert_eq!(r.account, None);
        assert_eq!(r.request_id, None);
        assert_eq!(r.object_id, None);
        assert_eq!(r.object_type, None);
        assert_eq!(e.key(), "evt_1", "falls back to the event id");

        // Old API versions send `request` as a bare id; Connect events carry `account`.
        let e = parse(
            r#"{"id":"evt_2","object":"event","type":"customer.created","created":2,
                "request":"req_old","account":"acct_1","livemode":true,"data":"odd"}"#,
        )
        .unwrap();
        assert_eq!(e.record().request_id.as_deref(), Some("req_old"));
        assert_eq!(e.record().account.as_deref(), Some("acct_1"));
        assert!(e.record().livemode);
        assert_eq!(e.record().object_id, None);
    }

    #[test]
    fn what_is_not_an_event_is_refused_with_a_reason() {
        use BodyError::*;
        for (body, expected) in [
            ("", NotJson),
            ("{", NotJson),
            ("not json", NotJson),
            ("{\"id\":\"evt_1\"} trailing", NotJson),
            ("[]", NotAnObject),
            ("\"evt_1\"", NotAnObject),
            ("null", NotAnObject),
            ("{}", NotAnEvent),
            (
                r#"{"object":"customer","id":"cus_1","type":"x","created":1}"#,
                NotAnEvent,
            ),
            (r#"{"object":"event","type":"x","created":1}"#, MissingId),
            (r#"{"object":"event","id":"","type":"x","created":1}"#, MissingId),
            (r#"{"object":"event","id":5,"type":"x","created":1}"#, MissingId),
            (r#"{"object":"event","id":"evt_1","created":1}"#, MissingType),
            (
                r#"{"object":"event","id":"evt_1","type":null,"created":1}"#,
                MissingType,
            ),
            (r#"{"object":"event","id":"evt_1","type":"x"}"#, MissingCreated),
            (
                r#"{"object":"event","id":"evt_1","type":"x","created":"1"}"#,
                MissingCreated,
            ),
            (
                r#"{"object":"event","id":"evt_1","type":"x","created":1.5}"#,
                MissingCreated,
            ),
            (
                r#"{"object":"event","id":"evt_1","type":"x","created":18446744073709551615}"#,
                MissingCreated,
            ),
        ] {
            assert_eq!(parse(body).map(|_| ()).unwrap_err(), expected, "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        // Inside a field that is skipped: the event is still an event.
        let body = format!(r#"{{"object":"event","id":"evt_1","type":"x","created":1,"data":{deep}}}"#);
        assert_eq!(parse(&body).unwrap().record().object_id, None);
        let body = format!(
            r#"{{"object":"event","id":"evt_1","type":"x","created":1,"data":{{"object":{{"id":{deep}}}}}}}"#
        );
        assert_eq!(parse(&body).unwrap().record().object_id, None);
        // At the top level.
        assert!(parse(&deep).is_err());
        let objects = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(parse(&objects).is_err());
    }

    #[test]
    fn arrays_are_not_events_even_in_field_order() {
        assert_eq!(
            parse(r#"["evt_1","event","customer.created",1]"#)
                .map(|_| ())
                .unwrap_err(),
            BodyError::NotAnObject
        );
    }

    proptest! {
        /// Any verified bytes either parse or are refused with a reason; nothing panics.
        #[test]
        fn body_parser_survives_anything(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = VerifiedEvent::parse(verified(&body), 0);
        }

        /// JSON-shaped noise around the required fields never breaks a valid event.
        #[test]
        fn unknown_fields_never_matter(
            extra in proptest::collection::btree_map("[a-z_]{1,12}", "(null|true|1|\"s\"|\\[\\]|\\{\\})", 0..8)
        ) {
            let mut fields: Vec<String> = extra
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "id" | "object" | "type" | "created" | "data" | "request" | "livemode" | "api_version" | "account"))
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            fields.push(r#""id":"evt_p","object":"event","type":"t","created":3"#.into());
            let body = format!("{{{}}}", fields.join(","));
            let e = parse(&body).unwrap();
            prop_assert_eq!(e.event_id(), "evt_p");
        }
    }
}
