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
