//! A replay from the earliest offset, or a restart after a long outage, hands the sink a backlog
//! far larger than its in-hand queues: it must drain it steadily, staying in its group (no
//! session timeout, no rebalance), with every change applied exactly as without a backlog.

use std::time::{Duration, Instant};

use crate::support::{Admin, Env, Sink, assert_contact, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_twenty_thousand_drains_without_leaving_the_group() {
    let env = Env::start().await;
    let t = env.topics(4).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    // 5,000 customers, four changes each, newer each time, interleaved across customers.
    let (customers, changes_each): (u32, u32) = (5_000, 4);
    let changes: Vec<_> = (0..changes_each)
        .flat_map(|round| {
            (0..customers).map(move |c| {
                upsert(
                    &format!("cus_backlog{c:05}"),
                    1_760_000_000 + i64::from(round),
                    &format!("Round{round}"),
                )
            })
        })
        .collect();
    env.produce(&t.input, &changes).await;

    let started = Instant::now();
    let sink = Sink::start(env.config(&t, &emu)).await;
    env.wait_caught_up_within(&t.group, &t.input, Duration::from_secs(900))
        .await
        .unwrap();
    eprintln!("drained {} changes in {:?}", changes.len(), started.elapsed());

    let rebalances = |kind: &str| format!("sink_dataverse_consumer_rebalances_total{{kind=\"{kind}\"}}");
    assert_eq!(sink.metric(&rebalances("assign")).await, 1.0);
    assert_eq!(sink.metric(&rebalances("revoke")).await, 0.0);
    assert_eq!(sink.metric(&rebalances("error")).await, 0.0);
    let ready = reqwest::get(format!("http://{}/readyz", sink.addr))
        .await
        .unwrap();
    assert!(ready.status().is_success(), "{:?}", ready.text().await);

    // Exactly as without a backlog: each customer created once and updated three times.
    let outcome = |o: &str| format!("sink_dataverse_writes_total{{outcome=\"{o}\"}}");
    assert_eq!(sink.metric(&outcome("created")).await, f64::from(customers));
    assert_eq!(
        sink.metric(&outcome("updated")).await,
        f64::from(customers * (changes_each - 1))
    );
    for skipped in ["stale", "unchanged", "dead_lettered"] {
        assert_eq!(sink.metric(&outcome(skipped)).await, 0.0, "{skipped}");
    }
    let contacts = admin.contacts().await;
    assert_eq!(contacts.len(), customers as usize);
    let last = &changes[changes.len() - customers as usize..];
    for c in last {
        assert_contact(&contacts[&c.customer_id], c);
    }
    sink.stop().await;
}
