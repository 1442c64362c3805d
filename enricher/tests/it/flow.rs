//! The main path: customer events across partitions become one normalised record each, in order
//! per key, with the trace carried forward; other events are skipped; offsets are committed.

use std::collections::HashMap;

use schemas::CustomerOp;

use crate::support::{Env, Running, customer_stream, metric, stripe_event, trace_id};

#[tokio::test(flavor = "multi_thread")]
async fn customer_events_across_partitions_arrive_once_each_in_key_order() {
    let env = Env::start().await;
    let t = env.topics(4).await;

    // 24 customers, created + 4 updates each, every third deleted; with invoice events between.
    let customers = customer_stream("flow", 24, 4);
    let mut input = Vec::new();
    for (i, e) in customers.iter().enumerate() {
        input.push(e.clone());
        if i % 10 == 0 {
            input.push(stripe_event(
                &format!("evt_inv{i}"),
                "invoice.paid",
                &format!("in_{i}"),
                0,
                b"{}".to_vec(),
            ));
        }
    }
    let skipped = input.len() - customers.len();
    let sent = env.produce(&t.input, &input, None).await;
    let partitions_used: std::collections::HashSet<i32> = sent.iter().map(|s| s.partition).collect();
    assert!(
        partitions_used.len() > 1,
        "the keys spread over several partitions"
    );

    let running = Running::start(env.config(&t)).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let out = env.read_customers(&t.output).await;
    assert_eq!(
        out.len(),
        customers.len(),
        "one record per customer event in a clean run"
    );

    // Per key, the changes come out in the order the events went in.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for e in &customers {
        expected
            .entry(e.object_id.clone().unwrap())
            .or_default()
            .push(e.event_id.clone());
    }
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for o in &out {
        assert_eq!(
            o.raw.key.as_deref(),
            Some(o.customer.customer_id.as_str()),
            "keyed by customer id"
        );
        got.entry(o.customer.customer_id.clone())
            .or_default()
            .push(o.customer.source_event_id.clone());
    }
    assert_eq!(got, expected);

    // Normalised, and deletions are deletions.
    let sample = out
        .iter()
        .find(|o| o.customer.source_event_type == "customer.created")
        .unwrap();
    let seq = &sample.customer.metadata["seq"];
    assert_eq!(
        sample.customer.email.as_deref(),
        Some(format!("ada.{seq}@example.com").as_str())
    );
    assert_eq!(sample.customer.address_country_code.as_deref(), Some("GB"));
    assert_eq!(
        sample.customer.full_name.as_deref(),
        Some(format!("Ada Lovelace {seq}").as_str())
    );
    let deletes = out.iter().filter(|o| o.customer.op == CustomerOp::Delete).count();
    assert_eq!(deletes, 8);

    // The trace continues: each output carries the trace id of its input.
    let trace_of: HashMap<&str, &str> = sent
        .iter()
        .map(|s| (s.event_id.as_str(), trace_id(&s.traceparent)))
        .collect();
    for o in &out {
        let parent = o.raw.header("traceparent").expect("output carries traceparent");
        assert_eq!(trace_id(parent), trace_of[o.customer.source_event_id.as_str()]);
    }

    // Metrics and ops endpoints.
    let text = running
        .wait_metric("enricher_records_out_total", customers.len() as f64)
        .await;
    assert_eq!(text, customers.len() as f64);
    let m = running.metrics().await;
    assert_eq!(metric(&m, "enricher_records_in_total"), input.len() as f64, "{m}");
    assert_eq!(
        metric(&m, "enricher_records_skipped_total"),
        skipped as f64,
        "{m}"
    );
    assert!(m.contains("enricher_processing_seconds_bucket"), "{m}");
    crate::support::wait_metric(running.ops, "enricher_assigned_partitions", 4.0).await;
    let lag_series = format!("enricher_consumer_lag{{topic=\"{}\",partition=\"0\"}}", t.input);
    harness::wait_until("lag reported as 0", crate::support::DEADLINE, || async {
        let m = running.metrics().await;
        (m.contains(&lag_series) && metric(&m, &lag_series) == 0.0).then_some(())
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{}/healthz", running.ops))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let ready = client
        .get(format!("http://{}/readyz", running.ops))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success(), "{}", ready.text().await.unwrap());

    running.stop().await;
    assert!(env.read_all(&t.dlq).await.is_empty(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_event_types_narrow_what_is_normalised() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let input = customer_stream("narrow", 3, 1); // 3 created, 3 updated, 1 deleted
    env.produce(&t.input, &input, None).await;

    let mut config = env.config(&t);
    config.event_types = ["customer.created".to_string(), "customer.updated".to_string()].into();
    let running = Running::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;
    let out = env.read_customers(&t.output).await;
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|o| o.customer.op == CustomerOp::Upsert));
    running.wait_metric("enricher_records_skipped_total", 1.0).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_while_waiting_for_the_broker_is_prompt() {
    // Nothing listens on port 1: start-up keeps retrying, ops already answer.
    let mut config = enricher::EnricherConfig::default();
    config.kafka.bootstrap_servers = "127.0.0.1:1".into();
    config.registry.url = "http://127.0.0.1:1".into();
    let running = Running::start(config).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{}/healthz", running.ops))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let ready = client
        .get(format!("http://{}/readyz", running.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_ne!(body["checks"]["kafka"], "ok", "{body}");
    assert_ne!(body["checks"]["schema_registry"], "ok", "{body}");

    let started = std::time::Instant::now();
    running.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
