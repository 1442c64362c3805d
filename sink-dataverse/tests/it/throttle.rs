//! Service protection limits: when Dataverse throttles, every writer pauses for `Retry-After`
//! instead of pushing on (which would lengthen the wait), concurrency is cut and ramps back up,
//! and every record is still written.

use std::time::Duration;

use dataverse_emulator::{Config, LimitsConfig};
use serde_json::json;

use crate::support::{Admin, Env, Sink, assert_contact, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn a_throttle_storm_ends_with_everything_written_and_no_429_storm() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    // 10 requests per 2 s sliding window, 3 at a time.
    let emu = dataverse_emulator::spawn(Config {
        limits: LimitsConfig {
            max_requests: 10,
            window_ms: 2000,
            max_concurrent: 3,
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await
    .unwrap();
    let admin = Admin::of(&emu);
    let changes: Vec<_> = (0..120)
        .map(|i| upsert(&format!("cus_storm{i:03}"), 1_760_000_000 + i, &format!("N{i}")))
        .collect();
    env.produce(&t.input, &changes).await;

    let mut config = env.config(&t, &emu);
    config.max_concurrency = 8;
    // Small batches, so the records need many more requests than the window allows.
    config.batch_size = 4;
    config.throttle.ramp_up_after = 5;
    let sink = Sink::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    assert_eq!(contacts.len(), changes.len());
    for c in &changes {
        assert_contact(&contacts[&c.customer_id], c);
    }
    let stats = admin.stats().await;
    let throttled: u64 = stats["throttled"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let answered_ok: u64 = ["200", "204"]
        .iter()
        .filter_map(|s| stats["requests_by_status"][s].as_u64())
        .sum();
    eprintln!("throttle storm: {throttled} 429s, {answered_ok} successful requests");
    assert!(throttled > 0, "the limits were hit: {stats}");
    // The sink saw (and paused for) every 429 the emulator sent.
    assert_eq!(
        sink.metric("sink_dataverse_throttled_total").await as u64,
        throttled
    );
    assert!(sink.metric("sink_dataverse_throttled_seconds_total").await >= 1.0);
    // No storm: a 429 only ever comes back for requests already in flight when the pause began,
    // so there are far fewer of them than successful requests (a client that kept pushing would
    // collect one per attempt, and a Retry-After growing with every one).
    assert!(
        throttled * 2 <= answered_ok + 8,
        "{throttled} 429s against {answered_ok} successful requests: {stats}"
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"dead_lettered\"}")
            .await,
        0.0
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_writer_waits_out_retry_after() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let emu = dataverse_emulator::spawn(Config {
        latency: dataverse_emulator::LatencyConfig {
            default_ms: 20,
            ..Default::default()
        },
        ..Config::default()
    })
    .await
    .unwrap();
    let admin = Admin::of(&emu);
    let first: Vec<_> = (0..30)
        .map(|i| upsert(&format!("cus_w{i:02}"), 100, "A"))
        .collect();
    let second: Vec<_> = (0..90)
        .map(|i| upsert(&format!("cus_w{i:02}"), 200, "B"))
        .collect();
    env.produce(&t.input, &first).await;
    let mut config = env.config(&t, &emu);
    config.max_concurrency = 6;
    config.batch_size = 2;
    let sink = Sink::start(config).await;
    admin.wait_contacts(30).await;

    // Dataverse throttles everyone for 3 s while a burst is being written.
    admin
        .set_faults(json!({"force_throttle": {"duration_ms": 3000, "kind": "execution_time"}}))
        .await;
    env.produce(&t.input, &second).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    for c in &second {
        assert_contact(&contacts[&c.customer_id], c);
    }
    let stats = admin.stats().await;
    let throttled = stats["throttled"]["execution_time"].as_u64().unwrap_or(0);
    eprintln!("forced window: {throttled} 429s");
    assert!(throttled >= 1, "{stats}");
    // At most the requests in flight when the window began: nothing is sent while paused.
    assert!(
        throttled <= 6,
        "{throttled} 429s for one Retry-After window: {stats}"
    );
    let paused = sink.metric("sink_dataverse_throttled_seconds_total").await;
    assert!(
        paused >= Duration::from_secs(2).as_secs_f64(),
        "paused {paused} s for a 3 s window"
    );
    sink.stop().await;
}
