//! Scaling out: two instances in one group split the partitions; when one stops, the other takes
//! its partitions over and nothing is lost.

use std::collections::HashSet;

use harness::wait_until;

use crate::support::{DEADLINE, Env, Running, customer_stream, metric};

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_the_partitions_and_one_takes_over_when_the_other_stops() {
    let env = Env::start().await;
    let t = env.topics(4).await;

    let one = Running::start(env.config(&t)).await;
    let two = Running::start(env.config(&t)).await;
    wait_until(
        "both instances to own partitions, all 4 between them",
        DEADLINE,
        || async {
            let a = metric(&one.metrics().await, "enricher_assigned_partitions");
            let b = metric(&two.metrics().await, "enricher_assigned_partitions");
            (a > 0.0 && b > 0.0 && a + b == 4.0).then_some(())
        },
    )
    .await
    .unwrap();

    let before = customer_stream("before", 40, 2);
    env.produce(&t.input, &before, None).await;
    env.wait_caught_up(&t.group, &t.input).await;
    let a = metric(&one.metrics().await, "enricher_records_out_total");
    let b = metric(&two.metrics().await, "enricher_records_out_total");
    assert!(a > 0.0 && b > 0.0, "both instances did work: {a} and {b}");
    assert_eq!(
        a + b,
        before.len() as f64,
        "each record once while the group is stable"
    );

    // Stop the first while more is arriving; the second takes every partition over.
    let during = customer_stream("during", 40, 2);
    let producing = env.produce(&t.input, &during, None);
    let (_, ()) = tokio::join!(producing, one.stop());
    let after = customer_stream("after", 20, 1);
    env.produce(&t.input, &after, None).await;
    crate::support::wait_metric(two.ops, "enricher_assigned_partitions", 4.0).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let out = env.read_customers(&t.output).await;
    let seen: HashSet<&str> = out.iter().map(|o| o.customer.source_event_id.as_str()).collect();
    for e in before.iter().chain(&during).chain(&after) {
        assert!(seen.contains(e.event_id.as_str()), "{} lost", e.event_id);
    }
    two.stop().await;
}
