//! A change Dataverse refuses (a validation error) goes to the dead-letter topic with Dataverse's
//! error code and message, while its neighbours in the same batch are written; undecodable
//! records are dead-lettered too, and the partition moves on.

use std::collections::HashMap;

use crate::support::{Admin, Env, Sink, assert_contact, upsert};

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_change_is_dead_lettered_while_its_neighbours_are_written() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let emu = dataverse_emulator::spawn(dataverse_emulator::Config::default())
        .await
        .unwrap();
    let admin = Admin::of(&emu);
    let mut changes: Vec<_> = (0..10)
        .map(|i| upsert(&format!("cus_dlq{i}"), 1_760_000_000 + i, &format!("N{i}")))
        .collect();
    // `firstname` holds at most 50 characters.
    changes[4].first_name = Some("x".repeat(60));
    let landed = env.produce(&t.input, &changes).await;
    let (_, poison_offset) = env
        .produce_raw(&t.input, "cus_poison", b"not avro at all", 0)
        .await;
    let after = upsert("cus_after", 1_760_000_100, "After");
    env.produce(&t.input, std::slice::from_ref(&after)).await;

    let mut config = env.config(&t, &emu);
    // One batch for everything, so the refusal shares its $batch with the others.
    config.linger = common::config::HumanDuration::millis(50);
    let sink = Sink::start(config).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let contacts = admin.contacts().await;
    assert_eq!(
        contacts.len(),
        10,
        "9 neighbours and the change after the poison record"
    );
    for (i, c) in changes.iter().enumerate() {
        if i == 4 {
            assert!(!contacts.contains_key(&c.customer_id));
        } else {
            assert_contact(&contacts[&c.customer_id], c);
        }
    }
    assert_contact(&contacts["cus_after"], &after);

    let dead = env.read_all(&t.dlq).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_key: HashMap<_, _> = dead.iter().map(|d| (d.key.clone().unwrap(), d)).collect();
    let refused = by_key["cus_dlq4"];
    let h = &refused.headers;
    assert_eq!(h["dlq.stage"], "sink-dataverse");
    assert_eq!(h["dlq.error.class"], "validation");
    assert_eq!(h["dlq.dataverse.status"], "400");
    assert_eq!(h["dlq.dataverse.code"], "0x80044331");
    assert!(h["dlq.dataverse.message"].contains("firstname"), "{h:?}");
    assert!(h["dlq.error.message"].contains("0x80044331"), "{h:?}");
    assert_eq!(h["dlq.original.topic"], t.input);
    assert_eq!(h["dlq.original.offset"], landed[4].1.to_string());
    assert!(
        h.contains_key("traceparent"),
        "the trace context travels on: {h:?}"
    );
    assert_eq!(
        refused.payload.as_deref(),
        Some(&env.encode(&t.input, &changes[4]).await[..])
    );

    let poison = by_key["cus_poison"];
    assert_eq!(poison.headers["dlq.error.class"], "malformed_payload");
    assert_eq!(poison.headers["dlq.original.offset"], poison_offset.to_string());
    assert_eq!(poison.payload.as_deref(), Some(&b"not avro at all"[..]));

    assert_eq!(
        sink.metric("sink_dataverse_dead_lettered_total{class=\"validation\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_dead_lettered_total{class=\"malformed_payload\"}")
            .await,
        1.0
    );
    assert_eq!(
        sink.metric("sink_dataverse_writes_total{outcome=\"dead_lettered\"}")
            .await,
        2.0
    );
    sink.stop().await;
}
