//! A Dataverse outage drops nothing: writes are retried (never skipped, never dead-lettered)
//! while the sink stays in its group; shutdown during the outage abandons the writes within the
//! grace period and commits nothing unfinished; answers lost after the write was applied are
//! harmless, because a retried change finds itself already applied.

use std::time::Duration;

use serde_json::json;

use crate::support::{Admin, Env, Sink, assert_contact, upsert, wait_metric};

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_delays_writes_but_drops_nothing() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let changes: Vec<_> = (0..40)
        .map(|i| upsert(&format!("cus_out{i:02}"), 1_760_000_000 + i, &format!("N{i}")))
        .collect();

    // The sink starts (its start-up checks waits for Dataverse to answer), then Dataverse goes
    // down before the changes arrive: the sink retries them.
    let config = env.config(&t, &emu);
    let sink = Sink::start(config.clone()).await;
    harness::wait_until(
        "the start-up checks answered",
        crate::support::DEADLINE,
        || async { (admin.stats().await["requests_by_status"]["200"].as_u64() >= Some(2)).then_some(()) },
    )
    .await
    .unwrap();
    admin.set_faults(json!({"error_rate": 1.0})).await;
    env.produce(&t.input, &changes).await;
    wait_metric(
        sink.addr,
        "sink_dataverse_retries_total{class=\"server_error\"}",
        10.0,
    )
    .await;
    let ready = reqwest::get(format!("http://{}/readyz", sink.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while Dataverse fails");
    assert!(admin.contacts().await.is_empty());

    // Shutting down mid-outage abandons the writes within the grace period, commits nothing.
    let took = sink.stop().await;
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let committed = env.committed(&t.group, &t.input).await;
    assert!(
        committed.values().all(|o| *o == 0),
        "nothing finished, nothing committed: {committed:?}"
    );

    // Dataverse comes back, flaky: some errors, some answers lost after the write was applied.
    admin
        .set_faults(json!({"error_rate": 0.1, "drop_after_apply_rate": 0.15, "drop_rate": 0.05}))
        .await;
    let sink = Sink::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;
    let contacts = admin.contacts().await;
    assert_eq!(contacts.len(), changes.len());
    for c in &changes {
        assert_contact(&contacts[&c.customer_id], c);
    }
    assert!(
        env.read_all(&t.dlq).await.is_empty(),
        "an outage never dead-letters"
    );
    sink.stop().await;
}
