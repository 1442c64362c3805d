//! A registry outage is transient: records wait and are retried, never dead-lettered or
//! skipped, and the consumer stays in its group.

use crate::support::{Env, Running, customer_stream, metric};

#[tokio::test(flavor = "multi_thread")]
async fn registry_outage_is_retried_and_nothing_is_dead_lettered() {
    let mut env = Env::start().await;
    let t = env.topics(2).await;
    let running = Running::start(env.config(&t)).await;
    // Ready: the output schema is registered and the group joined.
    running.wait_metric("enricher_assigned_partitions", 2.0).await;

    // Encoded while the registry is up; the enricher has not seen this schema id yet, so it must
    // ask the registry, which is down.
    let events = customer_stream("outage", 10, 1);
    let encoded = env.encode_all(&t.input, &events).await;
    env.env.registry.stop();
    env.send_encoded(&t.input, &encoded, None).await;
    running
        .wait_metric("enricher_retries_total{cause=\"registry\"}", 2.0)
        .await;
    let m = running.metrics().await;
    assert_eq!(metric(&m, "enricher_records_out_total"), 0.0, "{m}");
    assert!(
        !m.contains("enricher_dead_lettered_total{"),
        "nothing dead-lettered: {m}"
    );

    env.env.registry.start_again().await.unwrap();
    env.wait_caught_up(&t.group, &t.input).await;
    let out = env.read_customers(&t.output).await;
    assert_eq!(out.len(), events.len());
    assert!(env.read_all(&t.dlq).await.is_empty());
    running.stop().await;
}
