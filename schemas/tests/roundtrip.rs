//! Every contract parses, and every Rust mirror round-trips through Avro binary with its schema.

use std::collections::BTreeMap;

use apache_avro::{
    from_value, reader::datum::GenericDatumReader, to_value, types::Value, writer::datum::GenericDatumWriter,
};
use proptest::prelude::*;
use schemas::{AvroRecord, Customer, CustomerOp, StripeEvent};

fn roundtrip<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T) {
    let value = to_value(record).unwrap().resolve(T::schema()).unwrap();
    let writer = GenericDatumWriter::builder(T::schema()).build().unwrap();
    let bytes = writer.write_value_to_vec(value).unwrap();
    let reader = GenericDatumReader::builder(T::schema()).build().unwrap();
    let decoded: Value = reader.read_value(&mut &bytes[..]).unwrap();
    let back: T = from_value(&decoded).unwrap();
    assert_eq!(&back, record);
}

#[test]
fn every_avsc_file_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let text = std::fs::read_to_string(&path).unwrap();
            apache_avro::Schema::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "one .avsc per record type");
    // The embedded copies parse too.
    let _ = StripeEvent::schema();
    let _ = Customer::schema();
}

pub fn sample_event() -> StripeEvent {
    StripeEvent {
        event_id: "evt_1".into(),
        event_type: "customer.updated".into(),
        created: 1_700_000_000,
        api_version: Some("2025-04-30.basil".into()),
        livemode: false,
        account: None,
        object_id: Some("cus_1".into()),
        object_type: Some("customer".into()),
        request_id: None,
        idempotency_key: Some("ik".into()),
        raw_body: b"{\"id\": \"evt_1\",\n \"object\": \"event\"}\xff".to_vec(),
        signature_header: "t=1,v1=ab".into(),
        received_at: 1_700_000_000_123,
        source: Some("webhook".into()),
    }
}

#[test]
fn stripe_event_roundtrips() {
    roundtrip(&sample_event());
}

#[test]
fn customer_roundtrips_both_ops() {
    let mut c = Customer::deletion("cus_1", "evt_2", "customer.deleted", 5, true);
    roundtrip(&c);
    c.op = CustomerOp::Upsert;
    c.email = Some("a@b.c".into());
    c.last_name = Some("Ng".into());
    c.metadata = BTreeMap::from([("plan".to_string(), "gold".to_string())]);
    c.warnings = vec!["phone_unparsed".into()];
    roundtrip(&c);
}

fn opt() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,12}")
}

proptest! {
    #[test]
    fn any_stripe_event_roundtrips(id in ".{0,20}", created in any::<i64>(), body in proptest::collection::vec(any::<u8>(), 0..256), account in opt(), live in any::<bool>()) {
        let mut e = sample_event();
        e.event_id = id;
        e.created = created;
        e.raw_body = body;
        e.account = account;
        e.livemode = live;
        roundtrip(&e);
    }

    #[test]
    fn any_customer_roundtrips(email in opt(), name in opt(), meta in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4), delete in any::<bool>()) {
        let mut c = Customer::deletion("cus_x", "evt", "customer.updated", 1, false);
        c.op = if delete { CustomerOp::Delete } else { CustomerOp::Upsert };
        c.email = email;
        c.full_name = name;
        c.metadata = meta;
        roundtrip(&c);
    }
}

/// `stripe_event.avsc` before the optional `source` field: what earlier readers hold.
const STRIPE_EVENT_V1: &str = include_str!("stripe_event_v1.avsc");

fn write_with(schema: &apache_avro::Schema, value: Value) -> Vec<u8> {
    let value = value.resolve(schema).unwrap();
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

fn read_as(writer: &apache_avro::Schema, reader: &apache_avro::Schema, bytes: &[u8]) -> Value {
    GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .unwrap()
        .read_value(&mut &bytes[..])
        .unwrap()
}

#[test]
fn a_record_with_source_is_read_by_the_earlier_schema() {
    let v1 = apache_avro::Schema::parse_str(STRIPE_EVENT_V1).unwrap();
    let mut event = sample_event();
    event.source = Some(schemas::SOURCE_BACKFILL.into());
    let bytes = write_with(StripeEvent::schema(), to_value(&event).unwrap());
    let old = read_as(StripeEvent::schema(), &v1, &bytes);
    let Value::Record(fields) = &old else {
        panic!("{old:?}")
    };
    assert!(fields.iter().all(|(name, _)| name != "source"));
    assert!(fields.contains(&("event_id".to_string(), Value::String(event.event_id.clone()))));
    assert!(fields.contains(&(
        "received_at".to_string(),
        Value::TimestampMillis(event.received_at)
    )));
}

#[test]
fn a_record_of_the_earlier_schema_reads_with_source_null() {
    let v1 = apache_avro::Schema::parse_str(STRIPE_EVENT_V1).unwrap();
    let event = sample_event();
    let Value::Record(mut fields) = to_value(&event).unwrap() else {
        panic!("a record")
    };
    fields.retain(|(name, _)| name != "source");
    let bytes = write_with(&v1, Value::Record(fields));
    let new = read_as(&v1, StripeEvent::schema(), &bytes);
    let back: StripeEvent = from_value(&new).unwrap();
    assert_eq!(back.source, None);
    assert_eq!(
        back,
        StripeEvent {
            source: None,
            ..event
        }
    );
}
