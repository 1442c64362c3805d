//! Topics the stages create, against a real broker: the shared `topics` settings decide
//! partitions and replication, and by default the cluster's own replication applies.

use std::time::Duration;

use common::kafka::{TopicSettings, ensure_topics};
use harness::{TestEnv, unique};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};

fn describe(env: &TestEnv, topic: &str) -> Vec<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.bootstrap_servers())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_with_the_configured_partitions_and_replication() {
    let env = TestEnv::start().await.unwrap();
    let settings = TopicSettings {
        partitions: 3,
        replication_factor: 1,
        ..TopicSettings::default()
    };
    let name = unique("topics-explicit");
    ensure_topics(&env.kafka_settings(), &[settings.spec(&name)], "topics")
        .await
        .unwrap();
    assert_eq!(describe(&env, &name), [1, 1, 1]);
    // Existing topics are left as they are: asking again with other settings changes nothing.
    let other = TopicSettings {
        partitions: 5,
        ..settings
    };
    ensure_topics(&env.kafka_settings(), &[other.spec(&name)], "topics")
        .await
        .unwrap();
    assert_eq!(describe(&env, &name).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_asks_for_the_clusters_own_replication() {
    let env = TestEnv::start().await.unwrap();
    let name = unique("topics-default");
    let spec = TopicSettings::default().spec(&name);
    assert_eq!(
        spec.replication, -1,
        "replication factor -1 in CreateTopics (KIP-464)"
    );
    assert!(spec.config.is_empty(), "min.insync.replicas is the cluster's too");
    ensure_topics(&env.kafka_settings(), &[spec], "topics")
        .await
        .unwrap();
    // The local broker's own default is one replica.
    assert_eq!(describe(&env, &name), [1; 6]);
}
