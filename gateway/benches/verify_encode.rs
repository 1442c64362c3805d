//! The gateway's CPU work per event, without I/O: verify the signature, parse the body into the
//! `StripeEvent` record, and encode it as a Confluent wire-format Avro value (the schema id is
//! fixed here; in the service the codec's cache supplies it after the first lookup).
//!
//! `cargo bench -p gateway --bench verify_encode`

use std::{hint::black_box, time::Duration};

use apache_avro::writer::datum::GenericDatumWriter;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::{VerifiedEvent, Verifier, signature};
use schemas::{AvroRecord, StripeEvent};

const SECRET: &str = "whsec_benchmark_secret";

/// A `customer.updated` event of typical size (about 2 KiB), pretty-printed as Stripe sends it.
fn body() -> Vec<u8> {
    let metadata: String = (0..10)
        .map(|i| format!("        \"key_{i}\": \"value number {i}\""))
        .collect::<Vec<_>>()
        .join(",\n");
    format!(
        r#"{{
  "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
  "object": "event",
  "api_version": "2025-04-30.basil",
  "created": 1686089970,
  "data": {{
    "object": {{
      "id": "cus_NffrFeUfNV2Hib",
      "object": "customer",
      "address": {{"city": "South San Francisco", "country": "US", "line1": "354 Oyster Point Blvd", "line2": null, "postal_code": "94080", "state": "CA"}},
      "balance": 0,
      "created": 1680893993,
      "currency": null,
      "default_source": null,
      "delinquent": false,
      "description": "A customer of long standing",
      "email": "jennyrosen@example.com",
      "invoice_prefix": "0759376C",
      "invoice_settings": {{"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null}},
      "livemode": false,
      "metadata": {{
{metadata}
      }},
      "name": "Jenny Rosen",
      "next_invoice_sequence": 1,
      "phone": "+14155552671",
      "preferred_locales": ["en-US"],
      "shipping": null,
      "tax_exempt": "none",
      "test_clock": null
    }},
    "previous_attributes": {{"email": "jenny@example.com"}}
  }},
  "livemode": false,
  "pending_webhooks": 1,
  "request": {{"id": "req_abcdEFGH1234", "idempotency_key": "8a5f2c4e-1d3b-4c6a-9e7f-0b1c2d3e4f5a"}},
  "type": "customer.updated"
}}"#
    )
    .into_bytes()
}

/// Encodes as the codec does (`schema_registry_converter` writes the serde value straight into
/// the Avro datum with a `GenericDatumWriter`), then prefixes the wire-format header.
fn encode(writer: &GenericDatumWriter<'_>, record: &StripeEvent) -> Vec<u8> {
    let datum = writer.write_ser_to_vec(record).expect("the record encodes");
    let mut payload = Vec::with_capacity(5 + datum.len());
    payload.push(0);
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&datum);
    payload
}

fn benches(c: &mut Criterion) {
    let body = Bytes::from(body());
    let now = std::time::SystemTime::now();
    let t = signature::now_unix();
    let header = signature::signature_header(SECRET, t, &body);
    let one = Verifier::new([SECRET], Duration::from_secs(300), Duration::from_secs(300));
    // Rolling a secret: two secrets configured, Stripe sends two signatures, the match is last.
    let rotating = Verifier::new(
        ["whsec_old_secret", SECRET],
        Duration::from_secs(300),
        Duration::from_secs(300),
    );
    let rotating_header = format!(
        "t={t},v1={},v1={}",
        signature::sign("whsec_elsewhere", t, &body),
        signature::sign(SECRET, t, &body)
    );

    let writer = GenericDatumWriter::builder(StripeEvent::schema())
        .build()
        .expect("the schema makes a writer");

    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify", |b| {
        b.iter(|| {
            one.verify(Some(header.as_bytes()), body.clone(), now)
                .expect("verifies")
        })
    });
    group.bench_function("verify_two_secrets_two_signatures", |b| {
        b.iter(|| {
            rotating
                .verify(Some(rotating_header.as_bytes()), body.clone(), now)
                .expect("verifies")
        })
    });
    group.bench_function("verify_parse", |b| {
        b.iter(|| {
            let verified = one
                .verify(Some(header.as_bytes()), body.clone(), now)
                .expect("verifies");
            VerifiedEvent::parse(verified, 0).expect("parses")
        })
    });
    group.bench_function("verify_parse_encode", |b| {
        b.iter(|| {
            let verified = one
                .verify(Some(header.as_bytes()), body.clone(), now)
                .expect("verifies");
            let event = VerifiedEvent::parse(verified, 0).expect("parses");
            black_box(encode(&writer, event.record()))
        })
    });
    group.bench_function("reject_unsigned", |b| {
        let forged = format!("t={t},v1={}", "0".repeat(64));
        b.iter(|| {
            one.verify(Some(forged.as_bytes()), body.clone(), now)
                .expect_err("refused")
        })
    });
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
