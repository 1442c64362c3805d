//! A crash (SIGKILL) mid-batch loses nothing: the restarted sink re-reads from the last commit,
//! the guard turns whatever was already written into no-ops, and every customer ends on its
//! newest change.

use std::collections::HashMap;

use harness::{Service, free_port, wait_until};

use crate::support::{Admin, DEADLINE, Env, assert_contact, metric, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_sink_mid_batch_loses_nothing() {
    let env = Env::start().await;
    let t = env.topics(3).await;
    // Slow writes, so the kill lands while batches are in flight.
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config {
        latency: dataverse_emulator::LatencyConfig {
            default_ms: 2,
            update_ms: Some(25),
            ..Default::default()
        },
        ..dataverse_emulator::Config::default()
    })
    .await
    .unwrap();
    let admin = Admin::of(&emu);
    // 60 customers, three changes each, in time order.
    let mut changes = Vec::new();
    for round in 0..3 {
        for i in 0..60 {
            changes.push(upsert(
                &format!("cus_crash{i:02}"),
                1_760_000_000 + round,
                &format!("R{round}x{i}"),
            ));
        }
    }
    env.produce(&t.input, &changes).await;

    let addr = ([127, 0, 0, 1], free_port()).into();
    let mut process_env = env.process_env(&t, &emu, addr);
    process_env.push(("SINK_CONSUMER__MAX_BATCH".into(), "10".into()));
    process_env.push(("SINK_MAX_CONCURRENCY".into(), "2".into()));
    // Restarting in place, as an orchestrator does: the same instance id, so the restarted
    // process takes the killed one's place in the group at once. (With dynamic membership the
    // local broker can assign the dead member's partitions to it again while its session is
    // expiring, and then never rebalance.)
    process_env.push(("SINK_INSTANCE_ID".into(), "sink-0".into()));
    let mut service = Service::start("sink-dataverse", &[], &process_env, addr)
        .await
        .unwrap();
    wait_until("some changes written", DEADLINE, || async {
        let written = metric(addr, "sink_dataverse_writes_total{outcome=\"created\"}").await
            + metric(addr, "sink_dataverse_writes_total{outcome=\"updated\"}").await;
        (written >= 40.0).then_some(())
    })
    .await
    .unwrap();
    service.process.kill();

    let committed: i64 = env.committed(&t.group, &t.input).await.values().sum();
    assert!(
        committed < changes.len() as i64,
        "killed mid-stream: {committed} of {} committed",
        changes.len()
    );

    // More arrives while it is down, for half of the customers; then it comes back.
    let later: Vec<_> = (0..30)
        .map(|i| upsert(&format!("cus_crash{i:02}"), 1_760_000_010, &format!("Final{i}")))
        .collect();
    env.produce(&t.input, &later).await;
    let service = Service::start("sink-dataverse", &[], &process_env, addr)
        .await
        .unwrap();
    if let Err(e) = env.try_wait_caught_up(&t.group, &t.input).await {
        panic!("{e}\nsink log:\n{}", service.process.log_tail());
    }

    let contacts: HashMap<_, _> = admin.contacts().await;
    assert_eq!(contacts.len(), 60);
    for c in &later {
        assert_contact(&contacts[&c.customer_id], c);
    }
    // The other half ends on the last change of the interrupted stream.
    for c in &changes[120..] {
        if !later.iter().any(|l| l.customer_id == c.customer_id) {
            assert_contact(&contacts[&c.customer_id], c);
        }
    }
    assert_eq!(
        metric(addr, "sink_dataverse_writes_total{outcome=\"dead_lettered\"}").await,
        0.0
    );
}
