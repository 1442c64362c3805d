//! The codec against a real broker and the workspace's registry, as
//! child processes, including restarts and every class of bad input.

use std::time::Duration;

use harness::{TestEnv, unique};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer},
    producer::FutureRecord,
};
use schemas::{Codec, CodecError, StripeEvent, topics};

fn event(id: &str) -> StripeEvent {
    StripeEvent {
        event_id: id.into(),
        event_type: "customer.created".into(),
        created: 1_700_000_000,
        api_version: Some("2025-04-30.basil".into()),
        livemode: false,
        account: None,
        object_id: Some("cus_42".into()),
        object_type: Some("customer".into()),
        request_id: Some("req_1".into()),
        idempotency_key: None,
        raw_body: format!("{{\n  \"id\": \"{id}\",\n  \"object\": \"event\"\n}}").into_bytes(),
        signature_header: "t=1700000000,v1=00".into(),
        received_at: 1_700_000_000_500,
        source: Some("webhook".into()),
    }
}

async fn produce(env: &TestEnv, codec: &Codec, topic: &str, record: &StripeEvent) -> (i32, i64) {
    let producer =
        common::kafka::producer(&env.kafka_settings(), "codec-test", Duration::from_secs(10)).unwrap();
    let payload = codec.encode(topic, record).await.unwrap();
    let key = record.object_id.clone().unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(common::kafka::trace_headers(&Default::default())),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledges the record");
    (delivery.partition, delivery.offset)
}

fn consumer(env: &TestEnv, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer =
        common::kafka::consumer(&env.kafka_settings(), "codec-test", group, DefaultConsumerContext).unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

async fn next_payload(consumer: &StreamConsumer) -> (Vec<u8>, i32, i64, bool) {
    let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a record arrives within the deadline")
        .expect("consuming works");
    let has_traceparent = msg
        .headers()
        .is_some_and(|h| rdkafka::message::Headers::iter(h).any(|h| h.key == "traceparent"));
    (
        msg.payload().unwrap().to_vec(),
        msg.partition(),
        msg.offset(),
        has_traceparent,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_event_roundtrips_through_broker_and_offset_is_committed() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    env.create_topic(&topic, 3).await.unwrap();
    let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let schema_id = codec.prepare::<StripeEvent>(&topic).await.unwrap();

    let sent = event("evt_roundtrip");
    let (partition, offset) = produce(&env, &codec, &topic, &sent).await;

    let group = unique("group");
    let consumer = consumer(&env, &group, &topic);
    let (payload, p, o, has_traceparent) = next_payload(&consumer).await;
    assert_eq!((p, o), (partition, offset));
    assert!(has_traceparent, "trace context travels in the headers");
    assert_eq!(schemas::split_wire_format(&payload).unwrap().0, schema_id);
    let received: StripeEvent = codec.decode(&payload).await.unwrap();
    assert_eq!(received, sent);

    consumer.store_offset(&topic, p, o).unwrap();
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, p);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let committed = committed.find_partition(&topic, p).unwrap().offset();
    // The committed offset is the next one to read.
    assert_eq!(committed, Offset::Offset(o + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn records_survive_registry_and_broker_restarts() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    env.create_topic(&topic, 1).await.unwrap();
    let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let sent = event("evt_restart");
    produce(&env, &codec, &topic, &sent).await;

    env.registry.stop();
    env.broker.stop();
    env.registry.start_again().await.unwrap();
    env.broker.start_again().await.unwrap();

    // A fresh codec has no cached schema: the id must still resolve after the registry restart.
    let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let consumer = consumer(&env, &unique("group"), &topic);
    let (payload, _, offset, _) = next_payload(&consumer).await;
    assert_eq!(offset, 0);
    let received: StripeEvent = codec.decode(&payload).await.unwrap();
    assert_eq!(received, sent);

    // Registering the same schema again after the restart yields the same id.
    let id_before = schemas::split_wire_format(&payload).unwrap().0;
    assert_eq!(codec.prepare::<StripeEvent>(&topic).await.unwrap(), id_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_payloads_and_registry_outage_give_distinct_typed_errors() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique(topics::STRIPE_EVENTS);
    let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let good = codec.encode(&topic, &event("evt_good")).await.unwrap();

    // Not the wire format at all.
    let err = codec
        .decode::<StripeEvent>(b"{\"id\":\"evt_1\"}")
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");

    // Corrupt: right header, datum cut short.
    let err = codec
        .decode::<StripeEvent>(&good[..good.len() / 2])
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Undecodable { .. }), "{err:?}");

    // Corrupt: trailing garbage after a complete datum.
    let mut long = good.clone();
    long.extend_from_slice(&[1, 2, 3]);
    let err = codec.decode::<StripeEvent>(&long).await.unwrap_err();
    assert!(matches!(err, CodecError::Undecodable { .. }), "{err:?}");

    // A schema id the registry never issued.
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&9999u32.to_be_bytes());
    let err = codec.decode::<StripeEvent>(&unknown).await.unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchema { id: 9999 }), "{err:?}");
    assert!(!err.is_transient());

    // Registry down: a fresh codec (nothing cached) gets a transient error, and is not stuck
    // with it once the registry is back.
    env.registry.stop();
    let fresh = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let err = fresh.decode::<StripeEvent>(&good).await.unwrap_err();
    assert!(matches!(err, CodecError::RegistryUnavailable(_)), "{err:?}");
    assert!(err.is_transient());
    let err = fresh.encode(&topic, &event("evt_x")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    env.registry.start_again().await.unwrap();
    let decoded: StripeEvent = fresh.decode(&good).await.unwrap();
    assert_eq!(decoded.event_id, "evt_good");
    fresh.encode(&topic, &event("evt_y")).await.unwrap();
}
