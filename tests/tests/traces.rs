//! End to end with span export on: every stage a real process exporting over OTLP/HTTP to the
//! harness's receiver. One signed webhook must come out as one trace, from the gateway's request
//! through both Kafka hops to the sink's Dataverse writes, carried by the W3C `traceparent` header
//! of each record; and a record arriving without usable trace context is still processed, in a
//! trace of its own that the next stage continues.

use std::time::Duration;

use harness::{
    otlp::{Kind, ReceivedSpan, Receiver},
    pipeline::{Names, Pipeline, customer_event},
    wait_until,
};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use schemas::{Codec, StripeEvent};
use serde_json::json;

fn customer(id: &str, name: &str, email: &str) -> serde_json::Value {
    json!({"id": id, "object": "customer", "name": name, "email": email, "livemode": false})
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The spans, one a line, for failure messages.
fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} {:?} `{}` trace {} span {} parent {:?} links {:?} {:?}",
                s.service, s.kind, s.name, s.trace_id, s.span_id, s.parent_span_id, s.links, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one span among `spans` matching `pred`; fails listing them all otherwise.
fn the_one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pred(s)).collect();
    match found[..] {
        [one] => one,
        _ => panic!(
            "expected exactly one {what}, found {}; all spans:\n{}",
            found.len(),
            describe(spans)
        ),
    }
}

fn assert_attrs(span: &ReceivedSpan, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            span.attr(key),
            Some(*value),
            "attribute `{key}` of {} span `{}`: {:?}",
            span.service,
            span.name,
            span.attributes
        );
    }
}

fn assert_child_of(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        (child.trace_id.as_str(), child.parent_span_id.as_deref()),
        (parent.trace_id.as_str(), Some(parent.span_id.as_str())),
        "{} span `{}` must be a child of {} span `{}` in its trace",
        child.service,
        child.name,
        parent.service,
        parent.name
    );
}

/// Where a produce span says its record landed: (partition, offset).
fn landed(send: &ReceivedSpan) -> (String, String) {
    let get = |key| {
        send.attr(key)
            .unwrap_or_else(|| {
                panic!(
                    "{} span `{}` has no `{key}`: {:?}",
                    send.service, send.name, send.attributes
                )
            })
            .to_string()
    };
    let (partition, offset) = (
        get("messaging.destination.partition.id"),
        get("messaging.kafka.offset"),
    );
    assert!(partition.parse::<i32>().is_ok(), "partition `{partition}`");
    assert!(offset.parse::<i64>().is_ok(), "offset `{offset}`");
    (partition, offset)
}

/// Asserts the messaging attributes of a process span, and that it consumed exactly the record
/// `send` produced (same topic, partition, offset and key).
fn assert_consumed(process: &ReceivedSpan, send: &ReceivedSpan, topic: &str, group: &str, key: &str) {
    assert_eq!(process.kind, Kind::Consumer, "{}", process.name);
    assert_eq!(process.name, format!("process {topic}"));
    let (partition, offset) = landed(send);
    assert_attrs(
        process,
        &[
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "process"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", topic),
            ("messaging.destination.partition.id", &partition),
            ("messaging.kafka.offset", &offset),
            ("messaging.consumer.group.name", group),
            ("messaging.kafka.message.key", key),
        ],
    );
}

/// Asserts the messaging attributes of a produce span.
fn assert_produced(send: &ReceivedSpan, topic: &str, key: &str) {
    assert_eq!(send.kind, Kind::Producer, "{}", send.name);
    assert_eq!(send.name, format!("send {topic}"));
    assert_attrs(
        send,
        &[
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "send"),
            ("messaging.operation.name", "send"),
            ("messaging.destination.name", topic),
            ("messaging.kafka.message.key", key),
        ],
    );
    landed(send);
    assert!(!send.error, "the produce succeeded: {send:?}");
}

/// The enricher's and the sink's spans for customer `key`, once all are exported:
/// (enricher process, enricher send, sink process).
async fn downstream_spans(
    receiver: &Receiver,
    names: &Names,
    key: &str,
) -> (ReceivedSpan, ReceivedSpan, ReceivedSpan) {
    let found = |spans: &[ReceivedSpan], service: &str, name: &str| {
        spans
            .iter()
            .find(|s| {
                s.service == service && s.name == name && s.attr("messaging.kafka.message.key") == Some(key)
            })
            .cloned()
    };
    let result = wait_until(
        &format!("the enricher's and the sink's spans for {key}"),
        Duration::from_secs(60),
        || async {
            let spans = receiver.spans();
            Some((
                found(&spans, "enricher", &format!("process {}", names.events_topic))?,
                found(&spans, "enricher", &format!("send {}", names.customers_topic))?,
                found(
                    &spans,
                    "sink-dataverse",
                    &format!("process {}", names.customers_topic),
                )?,
            ))
        },
    )
    .await;
    result.unwrap_or_else(|e| {
        panic!(
            "{e}; refused exports {:?}; spans:\n{}",
            receiver.refused(),
            describe(&receiver.spans())
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_webhook_through_every_stage_to_dataverse() {
    let receiver = Receiver::start().await.unwrap();
    let pipeline = Pipeline::start_with(vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        // The batch span processor's export interval (5 s by default).
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ])
    .await
    .unwrap();
    let names = pipeline.names.clone();

    // Part 1: a signed webhook.
    let (event_id, customer_id) = ("evt_traces_1", "cus_traces_1");
    let body = customer_event(
        event_id,
        "customer.created",
        now() - 10,
        customer(customer_id, "Ada Lovelace", "ada@example.com"),
    );
    let response = pipeline.send_webhook(&body).await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    wait_until("the contact in Dataverse", Duration::from_secs(60), || async {
        pipeline.contact(customer_id).await.ok().flatten()
    })
    .await
    .unwrap();

    let (enrich, enrich_send, change) = downstream_spans(&receiver, &names, customer_id).await;
    let request = wait_until("the gateway's request span", Duration::from_secs(30), || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.service == "gateway" && s.attr("event_id") == Some(event_id))
    })
    .await
    .unwrap();

    // The gateway's request: a server span, the root of the trace.
    assert_eq!(request.name, "POST /webhooks/stripe");
    assert_eq!(request.kind, Kind::Server);
    assert_eq!(request.parent_span_id, None, "Stripe sends no trace context");
    assert_attrs(
        &request,
        &[
            ("http.request.method", "POST"),
            ("http.route", "/webhooks/stripe"),
            ("http.response.status_code", "200"),
            ("event_type", "customer.created"),
        ],
    );

    // One trace: every stage's spans for the event share the request's trace id.
    let trace = receiver.trace(&request.trace_id);
    for (stage, span) in [
        ("enricher", &enrich),
        ("enricher", &enrich_send),
        ("sink", &change),
    ] {
        assert_eq!(
            span.trace_id,
            request.trace_id,
            "the {stage}'s `{}` continues the gateway's trace (trace context from the Kafka headers); trace:\n{}",
            span.name,
            describe(&trace)
        );
    }

    // gateway: request → send stripe.events
    let produce = the_one(&trace, "gateway produce span", |s| {
        s.service == "gateway" && s.kind == Kind::Producer
    });
    assert_produced(produce, &names.events_topic, customer_id);
    assert_child_of(produce, &request);

    // enricher: process stripe.events (child of the gateway's produce) → send customers.normalized
    assert_consumed(
        &enrich,
        produce,
        &names.events_topic,
        &names.enricher_group,
        customer_id,
    );
    assert_child_of(&enrich, produce);
    assert_attrs(&enrich, &[("event_id", event_id), ("customer_id", customer_id)]);
    assert_produced(&enrich_send, &names.customers_topic, customer_id);
    assert_child_of(&enrich_send, &enrich);

    // sink: process customers.normalized (child of the enricher's produce) → Dataverse operations
    assert_consumed(
        &change,
        &enrich_send,
        &names.customers_topic,
        &names.sink_group,
        customer_id,
    );
    assert_child_of(&change, &enrich_send);
    assert_attrs(&change, &[("customer_id", customer_id), ("event_id", event_id)]);

    let operations: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| {
            s.service == "sink-dataverse" && s.parent_span_id.as_deref() == Some(change.span_id.as_str())
        })
        .collect();
    let write = operations
        .iter()
        .find(|s| s.name == "dataverse PATCH contacts")
        .unwrap_or_else(|| {
            panic!(
                "no Dataverse write under the sink's span; trace:\n{}",
                describe(&trace)
            )
        });
    assert_attrs(
        write,
        &[("http.request.method", "PATCH"), ("dataverse.table", "contacts")],
    );
    let status = write.attr("http.response.status_code").unwrap_or_default();
    assert!(status.starts_with('2'), "the write succeeded: status `{status}`");
    assert!(!write.error, "{write:?}");
    // Every operation went out in an HTTP request (kind client): alone, as the operation's child;
    // in a `$batch`, as a span of its own trace linked to each operation it carried.
    let all = receiver.spans();
    for op in &operations {
        assert!(op.name.starts_with("dataverse "), "{op:?}");
        let carried = all.iter().any(|s| {
            s.service == "sink-dataverse"
                && s.kind == Kind::Client
                && (s.parent_span_id.as_deref() == Some(op.span_id.as_str()) || s.links_to(op))
        });
        assert!(
            carried,
            "no HTTP request span for `{}`; spans:\n{}",
            op.name,
            describe(&all)
        );
    }
    let write_request = all
        .iter()
        .find(|s| s.kind == Kind::Client && s.parent_span_id.as_deref() == Some(write.span_id.as_str()));
    if let Some(r) = write_request {
        assert_eq!(r.trace_id, request.trace_id);
        assert_eq!(r.name, "PATCH contacts");
        assert_attrs(r, &[("http.request.method", "PATCH")]);
    }

    // Each stage names itself on its spans.
    let services: std::collections::BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["enricher", "gateway", "sink-dataverse"].into_iter().collect(),
        "{}",
        describe(&trace)
    );

    // Part 2: records with no trace context, or garbage for one, produced straight to the events
    // topic, are processed all the same: the enricher starts a trace, the sink continues it.
    let codec = Codec::new(&pipeline.env.registry_settings().codec_config()).unwrap();
    let producer = common::kafka::producer(
        &pipeline.env.kafka_settings(),
        "traces-test",
        Duration::from_secs(10),
    )
    .unwrap();
    let garbage = || {
        OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-not-a-trace-id-zz"),
            })
            .insert(Header {
                key: "tracestate",
                value: Some("=="),
            })
    };
    let cases = [("cus_traces_none", None), ("cus_traces_garbage", Some(garbage()))];
    for (i, (id, headers)) in cases.iter().enumerate() {
        let event_id = format!("evt_traces_direct_{i}");
        let body = customer_event(
            &event_id,
            "customer.created",
            now() - 5,
            customer(id, "Direct Record", "d@example.com"),
        );
        let event = StripeEvent {
            event_id: event_id.clone(),
            event_type: "customer.created".into(),
            created: now() - 5,
            api_version: Some("2025-04-30.basil".into()),
            livemode: false,
            account: None,
            object_id: Some(id.to_string()),
            object_type: Some("customer".into()),
            request_id: None,
            idempotency_key: None,
            raw_body: body.into_bytes(),
            signature_header: "t=0,v1=00".into(),
            received_at: now() * 1000,
            source: Some("webhook".into()),
        };
        let payload = codec.encode(&names.events_topic, &event).await.unwrap();
        let mut record = FutureRecord::to(&names.events_topic).key(*id).payload(&payload);
        if let Some(headers) = headers {
            record = record.headers(headers.clone());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker acknowledges the record");
    }
    for (id, _) in &cases {
        wait_until(&format!("{id} in Dataverse"), Duration::from_secs(60), || async {
            pipeline.contact(id).await.ok().flatten()
        })
        .await
        .unwrap();
        let (enrich, enrich_send, change) = downstream_spans(&receiver, &names, id).await;
        assert_eq!(
            enrich.parent_span_id, None,
            "{id}: without usable trace context the enricher starts a trace"
        );
        assert_eq!(enrich.trace_id.len(), 32);
        assert_ne!(enrich.trace_id, "0".repeat(32));
        assert_ne!(enrich.trace_id, request.trace_id);
        assert_child_of(&enrich_send, &enrich);
        assert_child_of(&change, &enrich_send);
        assert_consumed(
            &change,
            &enrich_send,
            &names.customers_topic,
            &names.sink_group,
            id,
        );
    }
    assert_eq!(receiver.refused(), Vec::<String>::new());
}
