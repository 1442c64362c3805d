//! The producer every stage writes through, against a real broker: a client whose delivery
//! timed out is replaced (never left to bump its idempotent epoch, which the local broker cannot
//! take) and writing goes on; a record the broker can never take is refused as permanent, and its
//! dead letter is still written.

use std::time::Duration;

use common::{
    consume::Record,
    dlq::{DeadLetters, Failure},
    health::Health,
    producer::{Producer, SendError},
    retry::BackoffSettings,
};
use harness::{TestEnv, unique, wait_until};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);

async fn connect(env: &TestEnv) -> Producer {
    Producer::connect(
        &env.kafka_settings(),
        "producer-test",
        DELIVERY_TIMEOUT,
        Health::new(),
    )
    .await
    .unwrap()
}

/// Sends until the broker acknowledges, the way every stage retries a transient failure.
async fn send_until_written(producer: &Producer, topic: &str, payload: &str) {
    wait_until("the record to be written", DEADLINE, || async {
        match producer
            .send(FutureRecord::<str, str>::to(topic).key("k").payload(payload))
            .await
        {
            Ok(_) => Some(()),
            Err(SendError::Transient(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
            Err(e @ SendError::Permanent(_)) => panic!("not a permanent failure: {e}"),
        }
    })
    .await
    .unwrap();
}

async fn wait_replaced(producer: &Producer, times: u64) {
    wait_until("the producer to be replaced", DEADLINE, || async {
        (producer.resets().get() >= times).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_whose_delivery_timed_out_is_replaced_and_keeps_writing() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique("producer-timeout");
    env.create_topic(&topic, 1).await.unwrap();
    let producer = connect(&env).await;
    producer
        .send(FutureRecord::<str, str>::to(&topic).key("k").payload("before"))
        .await
        .unwrap();

    env.broker.stop();
    let timed_out = producer
        .send(
            FutureRecord::<str, str>::to(&topic)
                .key("k")
                .payload("unacknowledged"),
        )
        .await
        .expect_err("no broker to acknowledge it");
    assert!(matches!(timed_out, SendError::Transient(_)), "{timed_out:?}");
    wait_replaced(&producer, 1).await;
    assert!(producer.fatal_error().is_none(), "the new client is healthy");

    env.broker.start_again().await.unwrap();
    send_until_written(&producer, &topic, "after").await;
    assert_eq!(producer.resets().get(), 1, "replaced once, not on every retry");
    let payloads: Vec<_> = env
        .read_all(&topic)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.payload.unwrap()).unwrap())
        .collect();
    assert_eq!(
        payloads,
        ["before", "after"],
        "the timed-out record was reported failed and never sent later"
    );
}

fn record(topic: &str, payload: Vec<u8>) -> Record {
    Record {
        topic: topic.to_string(),
        partition: 0,
        offset: 7,
        key: Some(b"cus_1".to_vec()),
        payload: Some(payload),
        headers: None,
        timestamp_ms: None,
    }
}

fn failure() -> Failure {
    Failure {
        class: "validation".into(),
        message: "refused by the test".into(),
        attempts: 1,
    }
}

fn quick_backoff() -> BackoffSettings {
    BackoffSettings {
        initial: common::config::HumanDuration::millis(50),
        max: common::config::HumanDuration::millis(200),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_waits_out_a_broker_outage_through_a_replaced_producer() {
    let mut env = TestEnv::start().await.unwrap();
    let dlq = unique("producer-dlq");
    env.create_topic(&dlq, 1).await.unwrap();
    let producer = connect(&env).await;
    let health = Health::new();
    let dead_letters = DeadLetters::new(producer.clone(), "test", quick_backoff(), health.clone());

    env.broker.stop();
    let cancel = CancellationToken::new();
    let send = async {
        dead_letters
            .send(&dlq, &record("input", b"poison".to_vec()), &failure(), &cancel)
            .await
    };
    let restart = async {
        wait_replaced(&producer, 1).await;
        assert!(
            health.verdict(Duration::ZERO).is_err(),
            "readiness can say why the stage is stuck"
        );
        env.broker.start_again().await.unwrap();
    };
    let (sent, ()) = tokio::time::timeout(DEADLINE * 2, async { tokio::join!(send, restart) })
        .await
        .expect("the dead letter is written once the broker is back, not stuck behind the old client");
    sent.unwrap();
    assert!(health.verdict(Duration::ZERO).is_ok(), "the problem clears");
    let written = env.read_all(&dlq).await;
    assert_eq!(written.len(), 1, "written once");
    assert_eq!(written[0].payload.as_deref(), Some(&b"poison"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_for_the_broker_is_permanent_and_dead_lettered_without_its_value() {
    let env = TestEnv::start().await.unwrap();
    let dlq = unique("producer-large");
    env.create_topic(&dlq, 1).await.unwrap();
    let producer = connect(&env).await;
    // Over the client's message.max.bytes (1,000,000 by default): no broker would take it.
    let huge = vec![b'x'; 1_100_000];

    let refused = producer
        .send(FutureRecord::<str, [u8]>::to(&dlq).key("k").payload(&huge))
        .await
        .expect_err("too large");
    assert!(matches!(refused, SendError::Permanent(_)), "{refused:?}");
    assert_eq!(
        producer.resets().get(),
        0,
        "a refused record is no reason to replace the client"
    );

    let dead_letters = DeadLetters::new(producer.clone(), "test", quick_backoff(), Health::new());
    let cancel = CancellationToken::new();
    tokio::time::timeout(
        DEADLINE,
        dead_letters.send(&dlq, &record("input", huge), &failure(), &cancel),
    )
    .await
    .expect("the dead letter is written")
    .unwrap();
    let written = env.read_all(&dlq).await;
    assert_eq!(written.len(), 1);
    assert!(written[0].payload.is_none(), "the value is left out");
    assert!(
        written[0]
            .header(common::dlq::headers::PAYLOAD_OMITTED)
            .is_some_and(|reason| !reason.is_empty()),
        "the dead letter says why its value is missing: {:?}",
        written[0].headers
    );
}
