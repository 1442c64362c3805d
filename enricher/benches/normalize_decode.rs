//! The enricher's CPU work per record, without Kafka: decode a `stripe.events` value with
//! `schemas::Codec` (the writer's schema already cached, as it is after the first record), and
//! normalise the customer event into a `Customer` (`normalize::customer_from_stripe_event`, what
//! the handler calls), then both together. The codec's first lookup goes to the workspace's schema
//! registry, started in this process; nothing measured touches the network.
//!
//! `cargo bench -p enricher --bench normalize_decode`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use enricher::normalize;
use schema_registry::{Compatibility, Config};
use schemas::{Codec, RegistryConfig, StripeEvent};

/// A `customer.updated` event of typical size (about 2 KiB), pretty-printed as Stripe sends it,
/// with the messy fields normalisation works on (name to split, phone to format, country code).
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
      "email": "  JennyRosen@Example.COM ",
      "invoice_prefix": "0759376C",
      "livemode": false,
      "metadata": {{
{metadata}
      }},
      "name": "Dr. Jenny  Rosen",
      "next_invoice_sequence": 1,
      "phone": "(415) 555-2671",
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

fn event() -> StripeEvent {
    StripeEvent {
        event_id: "evt_1NG8Du2eZvKYlo2CUI79vXWy".into(),
        event_type: "customer.updated".into(),
        created: 1686089970,
        api_version: Some("2025-04-30.basil".into()),
        livemode: false,
        account: None,
        object_id: Some("cus_NffrFeUfNV2Hib".into()),
        object_type: Some("customer".into()),
        request_id: Some("req_abcdEFGH1234".into()),
        idempotency_key: Some("8a5f2c4e-1d3b-4c6a-9e7f-0b1c2d3e4f5a".into()),
        raw_body: body(),
        signature_header: format!("t=1686089970,v1={}", "a".repeat(64)),
        received_at: 1686089970123,
        source: Some("webhook".into()),
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let registry = rt
        .block_on(schema_registry::spawn(Config {
            data_dir: None,
            default_compatibility: Compatibility::Backward,
        }))
        .expect("the registry starts");
    let codec = Codec::new(&RegistryConfig::new(registry.url())).expect("a codec");
    let event = event();
    let payload = rt
        .block_on(codec.encode("stripe.events", &event))
        .expect("encodes");
    // The first decode fetches and caches the writer's schema.
    let decoded: StripeEvent = rt.block_on(codec.decode(&payload)).expect("decodes");
    assert_eq!(decoded.event_id, event.event_id);
    assert!(
        normalize::customer_from_stripe_event(&event)
            .expect("normalises")
            .is_some()
    );

    let mut group = c.benchmark_group("per_record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("codec_decode_cached", |b| {
        b.iter(|| {
            rt.block_on(codec.decode::<StripeEvent>(black_box(&payload)))
                .expect("decodes")
        })
    });
    group.bench_function("normalize", |b| {
        b.iter(|| normalize::customer_from_stripe_event(black_box(&event)).expect("normalises"))
    });
    group.bench_function("decode_normalize", |b| {
        b.iter(|| {
            let event: StripeEvent = rt.block_on(codec.decode(black_box(&payload))).expect("decodes");
            normalize::customer_from_stripe_event(&event).expect("normalises")
        })
    });
    group.finish();
    rt.block_on(registry.stop()).expect("the registry stops");
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
