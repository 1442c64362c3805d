//! Resetting a group's committed offsets against a real broker.

use std::time::Duration;

use common::replay::{self, ReplayArgs, ReplayError, ResetTo};
use harness::{TestEnv, unique};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
};

const BASE_MS: i64 = 1_790_000_000_000;

fn committed(env: &TestEnv, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.bootstrap_servers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    match consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .find_partition(topic, 0)?
        .offset()
    {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

fn args(to: ResetTo, dry_run: bool, assume_inactive: bool) -> ReplayArgs {
    ReplayArgs {
        topic: None,
        partitions: vec![],
        to_offset: match to {
            ResetTo::Offset(o) => Some(o),
            _ => None,
        },
        to_datetime: match to {
            ResetTo::Timestamp(t) => Some(t),
            _ => None,
        },
        to_earliest: to == ResetTo::Earliest,
        to_latest: to == ResetTo::Latest,
        dry_run,
        assume_inactive,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_committed_offsets_by_offset_time_and_ends() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("replay");
    env.create_topic(&topic, 1).await.unwrap();
    let producer: FutureProducer =
        common::kafka::producer(&env.kafka_settings(), "replay-test", Duration::from_secs(10)).unwrap();
    for i in 0..10i64 {
        let payload = i.to_string();
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .payload(&payload)
                    .timestamp(BASE_MS + i * 1000),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let group = unique("group");
    let kafka = env.kafka_settings();
    let run = |to, dry, assume| {
        let (kafka, group, topic) = (kafka.clone(), group.clone(), topic.clone());
        tokio::task::spawn_blocking(move || replay::run(&kafka, &group, &topic, &args(to, dry, assume)))
    };

    run(ResetTo::Latest, false, true).await.unwrap().unwrap();
    assert_eq!(committed(&env, &group, &topic), Some(10));

    // This broker cannot describe groups: without the override the reset is refused, unchanged.
    let refused = run(ResetTo::Offset(4), false, false).await.unwrap().unwrap_err();
    assert!(
        matches!(refused, ReplayError::CannotCheckMembers { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("--assume-inactive"));
    assert_eq!(committed(&env, &group, &topic), Some(10));

    // A dry run shows the plan and changes nothing.
    let plan = run(ResetTo::Offset(4), true, false).await.unwrap().unwrap();
    assert_eq!(
        (plan.rows[0].current, plan.rows[0].new, plan.rows[0].high),
        (Some(10), 4, 10)
    );
    assert_eq!(committed(&env, &group, &topic), Some(10));

    run(ResetTo::Offset(4), false, true).await.unwrap().unwrap();
    assert_eq!(committed(&env, &group, &topic), Some(4));

    // The first record at or after record 7's timestamp is record 7.
    run(ResetTo::Timestamp(BASE_MS + 6500), false, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed(&env, &group, &topic), Some(7));

    run(ResetTo::Earliest, false, true).await.unwrap().unwrap();
    assert_eq!(committed(&env, &group, &topic), Some(0));

    let (k, g, t) = (kafka.clone(), group.clone(), topic.clone());
    let err = tokio::task::spawn_blocking(move || replay::plan(&k, &g, &t, &[7], ResetTo::Earliest))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ReplayError::UnknownPartition { partition: 7, .. }),
        "{err}"
    );
}
