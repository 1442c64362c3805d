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
