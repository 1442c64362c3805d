//! A crash (SIGKILL) mid-stream loses nothing: the restarted process re-reads from the last
//! commit, so every event comes out at least once and each key ends on its latest change.

use std::collections::{HashMap, HashSet};

use harness::{Service, free_port};

use crate::support::{Env, customer_stream, wait_metric};

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_enricher_mid_stream_loses_nothing() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    let first = customer_stream("a", 200, 14); // 200 × 15 + 67 deletions
    let second = customer_stream("b", 50, 4);
    env.produce(&t.input, &first, None).await;

    let addr = ([127, 0, 0, 1], free_port()).into();
    let mut process_env = env.process_env(&t, addr);
    // Small batches, so the stream takes long enough to be interrupted half-way.
    process_env.push(("ENRICHER_CONSUMER__MAX_BATCH".into(), "5".into()));
    // Restarting in place, as an orchestrator does: the same instance id, so the new process takes
    // the partitions back at once. (With dynamic membership the group must first notice the old
    // member is gone; the local broker does not finish a rebalance whose leader died, so a new
    // member joining within the session timeout would wait for ever.)
    process_env.push(("ENRICHER_INSTANCE_ID".into(), "enricher-0".into()));
    let mut service = Service::start("enricher", &[], &process_env, addr).await.unwrap();
    wait_metric(addr, "enricher_records_out_total", 200.0).await;
    service.process.kill();

    let committed: i64 = env.committed(&t.group, &t.input).await.values().sum();
    assert!(
        committed < first.len() as i64,
        "killed mid-stream: {committed} of {} committed",
        first.len()
    );

    // More arrives while it is down; then it comes back.
    env.produce(&t.input, &second, None).await;
    let service = Service::start("enricher", &[], &process_env, addr).await.unwrap();
    if let Err(e) = env.try_wait_caught_up(&t.group, &t.input).await {
        panic!("{e}\n{}", service.process.log_tail());
    }

    let out = env.read_customers(&t.output).await;
    let seen: HashSet<&str> = out.iter().map(|o| o.customer.source_event_id.as_str()).collect();
    let all: Vec<_> = first.iter().chain(&second).collect();
    let missing: Vec<&str> = all
        .iter()
        .map(|e| e.event_id.as_str())
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} events, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(out.len() >= all.len());

    // Redelivery repeats a suffix of a partition, so every key still ends on its latest change.
    let mut last_in: HashMap<&str, &str> = HashMap::new();
    for e in &all {
        last_in.insert(e.object_id.as_deref().unwrap(), &e.event_id);
    }
    let mut last_out: HashMap<&str, &str> = HashMap::new();
    for o in &out {
        last_out.insert(&o.customer.customer_id, &o.customer.source_event_id);
    }
    assert_eq!(last_out, last_in);
}
