//! A replay from the earliest offset, or a restart after a long outage, hands the enricher a
//! backlog far larger than its in-hand queues: it must drain it steadily, staying in its group
//! (no session timeout, no rebalance), with every record processed exactly as without a backlog.

use std::time::Duration;

use crate::support::{Env, Running, customer_stream, metric};

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_twenty_thousand_drains_without_leaving_the_group() {
    let env = Env::start().await;
    let t = env.topics(4).await;
    // 4,000 customers, created + 4 updates each, every third deleted: 21,334 events.
    let events = customer_stream("backlog", 4_000, 4);
    assert!(events.len() >= 20_000);
    env.produce(&t.input, &events, None).await;

    let started = std::time::Instant::now();
    let running = Running::start(env.config(&t)).await;
    env.env
        .wait_caught_up_within(&t.group, &t.input, Duration::from_secs(900))
        .await
        .unwrap();
    eprintln!("drained {} records in {:?}", events.len(), started.elapsed());

    let m = running.metrics().await;
    assert_eq!(
        metric(&m, "enricher_consumer_rebalances_total{kind=\"assign\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enricher_consumer_rebalances_total{kind=\"revoke\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enricher_consumer_rebalances_total{kind=\"error\"}"),
        0.0,
        "{m}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", running.ops))
        .await
        .unwrap();
    assert!(ready.status().is_success(), "{:?}", ready.text().await);

    // Exactly as without a backlog, counted rather than read back (the local broker reads a
    // large topic back slowly): every event consumed once, every change acknowledged once, and
    // the output holds exactly that many records, so none was lost and none written twice.
    let n = events.len() as f64;
    assert_eq!(metric(&m, "enricher_records_in_total"), n, "{m}");
    assert_eq!(metric(&m, "enricher_records_out_total"), n, "{m}");
    assert_eq!(metric(&m, "enricher_producer_resets_total"), 0.0, "{m}");
    let written: i64 = env.high_watermarks(&t.output).await.values().sum();
    assert_eq!(written as f64, n, "records on {}", t.output);
    assert!(env.high_watermarks(&t.dlq).await.values().all(|h| *h == 0));
    running.stop().await;
}
