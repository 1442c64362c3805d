//! N customer changes become N contacts with the mapped columns; operations share `$batch`
//! requests; the ops endpoints answer.

use serde_json::Value;

use crate::support::{Admin, Env, Sink, assert_contact, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn n_changes_become_n_contacts_with_the_right_columns() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let changes: Vec<_> = (0..60)
        .map(|i| {
            let mut c = upsert(&format!("cus_flow{i:03}"), 1_760_000_000 + i, &format!("Name{i}"));
            if i % 7 == 0 {
                // Missing values are written as nulls.
                c.phone = None;
                c.address_line1 = None;
            }
            c
        })
        .collect();
    env.produce(&t.input, &changes).await;

    let sink = Sink::start(env.config(&t, &emu)).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    assert_eq!(contacts.len(), changes.len());
    for c in &changes {
        assert_contact(&contacts[&c.customer_id], c);
    }
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"created\"}")
            .await,
        60.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );

    // Reads and writes were coalesced: fewer HTTP requests than operations.
    let stats = admin.stats().await;
    let batches = stats["batches"]["requests"].as_u64().unwrap();
    let operations = stats["batches"]["operations"].as_u64().unwrap();
    assert!(
        batches > 0 && operations > batches,
        "no $batch coalescing: {stats}"
    );
    let requests = sink.metric("sink_dataverse_batch_size_count").await;
    assert!(requests < 120.0, "120 operations took {requests} requests");

    // The ops endpoints.
    let base = format!("http://{}", sink.addr);
    assert_eq!(
        reqwest::get(format!("{base}/healthz")).await.unwrap().status(),
        200
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["dataverse"], "ok", "{ready}");
    assert_eq!(ready["checks"]["dataverse_token"], "ok", "{ready}");
    let page = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "sink_dataverse_writes_total",
        "sink_dataverse_throttled_total",
        "sink_dataverse_throttled_seconds_total",
        "sink_dataverse_batch_size_bucket",
        "sink_dataverse_write_seconds_bucket",
        "sink_dataverse_request_seconds_bucket",
        "sink_dataverse_token_renewals_total{reason=\"initial\"} 1",
        // Dataverse's budget (the emulator's defaults): 1,200 s of execution per 300 s window.
        "sink_dataverse_concurrency_limit 4",
        "sink_dataverse_budget_remaining_requests",
        "sink_dataverse_budget_remaining_execution_seconds",
        "sink_dataverse_contact_cache_lookups_total{result=\"presumed_new\"}",
        "sink_dataverse_reads_total",
        "sink_dataverse_consumer_lag{",
    ] {
        assert!(page.contains(family), "/metrics lacks {family}:\n{page}");
    }
    sink.stop().await;
}
