//! The shared consumer loop against a real broker: order per partition, commits after success,
//! and nothing committed that was not finished.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::consume::{Abandoned, BatchHandler, ConsumerLoop, LoopSettings, Record};
use harness::{TestEnv, unique, wait_until};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

async fn produce(env: &TestEnv, topic: &str, n: usize, keys: usize) {
    let producer: FutureProducer =
        common::kafka::producer(&env.kafka_settings(), "consume-test", Duration::from_secs(10)).unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % keys);
        let payload = i.to_string();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
        pending.push(delivery);
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Records what it saw, in the order it finished it.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(i32, i64)>>,
    /// Offsets (partition 0) the handler refuses to finish: it waits for cancellation instead.
    stuck_at: Option<i64>,
}

impl BatchHandler for Recorder {
    async fn handle(&self, batch: Vec<Record>, cancel: &CancellationToken) -> Result<(), Abandoned> {
        for r in &batch {
            if Some(r.offset) == self.stuck_at {
                cancel.cancelled().await;
                return Err(Abandoned);
            }
        }
        // Simulated downstream latency, varying so partitions interleave.
        tokio::time::sleep(Duration::from_millis(u64::from(rand_ms()))).await;
        self.seen
            .lock()
            .unwrap()
            .extend(batch.iter().map(|r| (r.partition, r.offset)));
        Ok(())
    }
}

fn rand_ms() -> u8 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 4) as u8
}

#[tokio::test(flavor = "multi_thread")]
async fn records_are_handled_in_partition_order_and_committed_after_success() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("consume");
    env.create_topic(&topic, 3).await.unwrap();
    produce(&env, &topic, 300, 30).await;

    let group = unique("group");
    let settings = LoopSettings {
        max_batch: 7,
        max_queued_per_partition: 20,
        ..LoopSettings::default()
    };
    let consumer_loop =
        ConsumerLoop::new(&env.kafka_settings(), "consume-test", &group, &[&topic], settings).unwrap();
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));

    wait_until("all 300 records handled", Duration::from_secs(60), || {
        let n = handler.seen.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 300, "each record handled once in a clean run");
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (p, o) in &seen {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(*o > prev, "partition {p}: offset {o} handled after {prev}");
        }
    }
    assert_eq!(
        env.committed(&group, &topic).await,
        env.high_watermarks(&topic).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_work_is_never_committed_and_is_redelivered() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("consume");
    env.create_topic(&topic, 1).await.unwrap();
    produce(&env, &topic, 10, 1).await;
    let group = unique("group");
    let settings = LoopSettings {
        max_batch: 1,
        shutdown_grace: Duration::from_millis(300),
        ..LoopSettings::default()
    };

    // First member: finishes 0..=4, hangs on 5 until the shutdown grace period cancels it.
    let first = ConsumerLoop::new(
        &env.kafka_settings(),
        "consume-test",
        &group,
        &[&topic],
        settings.clone(),
    )
    .unwrap();
    let handler = Arc::new(Recorder {
        stuck_at: Some(5),
        ..Recorder::default()
    });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(first.run(handler.clone(), shutdown.clone()));
    wait_until("offsets 0..=4 handled", Duration::from_secs(60), || {
        let n = handler.seen.lock().unwrap().len();
        async move { (n >= 5).then_some(()) }
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(
        env.committed(&group, &topic).await.get(&0),
        Some(&5),
        "commit stops at the unfinished record"
    );

    // Second member of the same group starts at the unfinished record.
    let second =
        ConsumerLoop::new(&env.kafka_settings(), "consume-test", &group, &[&topic], settings).unwrap();
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(second.run(handler.clone(), shutdown.clone()));
    wait_until("offsets 5..=9 handled", Duration::from_secs(60), || {
        let n = handler.seen.lock().unwrap().len();
        async move { (n >= 5).then_some(()) }
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let offsets: Vec<i64> = handler.seen.lock().unwrap().iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, vec![5, 6, 7, 8, 9]);
    assert_eq!(env.committed(&group, &topic).await.get(&0), Some(&10));
}

/// Holds every batch until the gate opens (or the loop cancels it), counting what it finished.
#[derive(Default)]
struct Gated {
    open: tokio::sync::Notify,
    is_open: std::sync::atomic::AtomicBool,
    seen: Mutex<Vec<(i32, i64)>>,
}

impl Gated {
    fn open(&self) {
        self.is_open.store(true, std::sync::atomic::Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

impl BatchHandler for Gated {
    async fn handle(&self, batch: Vec<Record>, cancel: &CancellationToken) -> Result<(), Abandoned> {
        let opened = self.open.notified();
        if !self.is_open.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::select! {
                () = opened => {}
                () = cancel.cancelled() => return Err(Abandoned),
            }
        }
        self.seen
            .lock()
            .unwrap()
            .extend(batch.iter().map(|r| (r.partition, r.offset)));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_paused_when_it_moves_away_is_resumed_when_it_comes_back() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("consume");
    env.create_topic(&topic, 2).await.unwrap();
    produce(&env, &topic, 200, 20).await;
    let group = unique("group");
    let settings = LoopSettings {
        max_batch: 5,
        max_queued_per_partition: 5,
        shutdown_grace: Duration::from_millis(200),
        ..LoopSettings::default()
    };
    // Each member counts its own pauses.
    let new_member = |metrics: &common::consume::LoopMetrics| {
        let settings = LoopSettings {
            metrics: metrics.clone(),
            ..settings.clone()
        };
        ConsumerLoop::new(&env.kafka_settings(), "consume-test", &group, &[&topic], settings).unwrap()
    };
    let assigned = |status: &common::consume::LoopStatus, n: usize| {
        let status = status.clone();
        async move { (status.assigned().len() == n).then_some(()) }
    };

    // First member: owns both partitions, holds every batch, so both fill up and are paused.
    let first_metrics = common::consume::LoopMetrics::default();
    let first = new_member(&first_metrics);
    let first_status = first.status();
    let first_handler = Arc::new(Gated::default());
    let first_stop = CancellationToken::new();
    let first_run = tokio::spawn(first.run(first_handler.clone(), first_stop.clone()));
    wait_until(
        "first member owns both partitions",
        Duration::from_secs(60),
        || assigned(&first_status, 2),
    )
    .await
    .unwrap();
    wait_until("both partitions paused", Duration::from_secs(60), || {
        let paused = first_metrics.paused_partitions.get();
        async move { (paused == 2).then_some(()) }
    })
    .await
    .unwrap();

    // A second member takes one partition away (its handler holds everything too), then leaves,
    // so the paused partition comes back to the first member.
    let second = new_member(&common::consume::LoopMetrics::default());
    let second_status = second.status();
    let second_stop = CancellationToken::new();
    let second_run = tokio::spawn(second.run(Arc::new(Gated::default()), second_stop.clone()));
    wait_until(
        "the second member owns one partition",
        Duration::from_secs(90),
        || assigned(&second_status, 1),
    )
    .await
    .unwrap();
    wait_until("the first member gave one up", Duration::from_secs(90), || {
        assigned(&first_status, 1)
    })
    .await
    .unwrap();
    second_stop.cancel();
    second_run.await.unwrap().unwrap();
    wait_until(
        "the partition is back with the first member",
        Duration::from_secs(90),
        || assigned(&first_status, 2),
    )
    .await
    .unwrap();

    // Once the first member's handler lets go, both partitions drain to the end.
    first_handler.open();
    let caught_up = env
        .wait_caught_up_within(&group, &topic, Duration::from_secs(90))
        .await;
    first_stop.cancel();
    first_run.await.unwrap().unwrap();
    assert!(
        caught_up.is_ok(),
        "a partition stayed paused after moving back: committed {:?} of {:?}",
        env.committed(&group, &topic).await,
        env.high_watermarks(&topic).await
    );
    let seen = first_handler.seen.lock().unwrap().clone();
    for p in 0..2 {
        assert!(seen.iter().any(|(q, _)| *q == p), "partition {p} never handled");
    }
}
