//! The `dlq` commands against the whole pipeline, every component a real process: dead letters
//! the sink made of Dataverse rejections are listed, redriven once the cause is fixed, land in
//! Dataverse, and a second redrive sends nothing; the enricher's undecodable records are listed,
//! shown, and redriven by reason without any record going back twice.

use std::{collections::HashMap, time::Duration};

use harness::{
    pipeline::{Pipeline, Stage, customer_event},
    wait_until, workspace_bin,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

/// Runs `<stage> dlq …` with the stage's environment; returns stdout parsed as JSON (stderr,
/// the progress lines, is shown on failure).
async fn dlq(pipeline: &Pipeline, stage: Stage, args: &[&str]) -> Value {
    let stdout = dlq_text(pipeline, stage, args).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("dlq {args:?}: {e}:\n{stdout}"))
}

/// Runs `<stage> dlq …` with the stage's environment; returns stdout.
async fn dlq_text(pipeline: &Pipeline, stage: Stage, args: &[&str]) -> String {
    let binary = match stage {
        Stage::Enricher => "enricher",
        Stage::Sink => "sink-dataverse",
        Stage::Gateway => unreachable!("the gateway has no dead letters"),
    };
    let mut command = tokio::process::Command::new(workspace_bin(binary).unwrap());
    command.arg("dlq").args(args).kill_on_drop(true);
    for (k, v) in pipeline.stage_env(stage, 0) {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the dlq command finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{binary} dlq {args:?} exited with {}:\n{stdout}\n{stderr}",
        output.status
    );
    println!("$ {binary} dlq {}\n{stdout}{stderr}", args.join(" "));
    stdout.into_owned()
}

fn total(watermarks: &HashMap<i32, i64>) -> i64 {
    watermarks.values().sum()
}

fn customer(id: &str, email: &str) -> Value {
    json!({"id": id, "object": "customer", "name": "Ada Lovelace", "email": email, "livemode": false})
}

/// The emulator's writes that took effect.
async fn writes(pipeline: &Pipeline) -> i64 {
    let stats = pipeline.emulator_stats().await.unwrap();
    let ops = &stats["operations"];
    ["created", "updated", "deleted"]
        .iter()
        .map(|k| ops[*k].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_dead_lettered_by_a_dataverse_rejection_land_once_each_after_the_fix() {
    let pipeline = Pipeline::start().await.unwrap();
    let input = pipeline.names.customers_topic.clone();
    let dlq_topic = format!("{input}.dlq");
    // A business rule refuses one email domain: the sink's writes of those customers get 400
    // 0x80040265, which is permanent, so they are dead-lettered.
    pipeline
        .set_faults(json!({"reject_values": [{
            "column": "emailaddress1",
            "contains": "@blocked.example",
            "message": "Email addresses at blocked.example are not accepted."
        }]}))
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let blocked = ["cus_dlq_b1", "cus_dlq_b2", "cus_dlq_b3"];
    let fine = ["cus_dlq_ok1", "cus_dlq_ok2"];
    for (i, id) in blocked.iter().chain(&fine).enumerate() {
        let email = if blocked.contains(id) {
            format!("{id}@blocked.example")
        } else {
            format!("{id}@example.com")
        };
        let body = customer_event(
            &format!("evt_{id}"),
            "customer.created",
            now - 10 + i as i64,
            customer(id, &email),
        );
        assert_eq!(pipeline.send_webhook(&body).await.unwrap().status(), 200);
    }
    let env = &pipeline.env;
    wait_until("three dead letters", Duration::from_secs(90), || async {
        (total(&env.high_watermarks(&dlq_topic).await) == 3).then_some(())
    })
    .await
    .unwrap();
    for id in fine {
        wait_until("the accepted contacts", Duration::from_secs(60), || async {
            pipeline.contact(id).await.ok().flatten()
        })
        .await
        .unwrap();
    }
    for id in blocked {
        assert!(pipeline.contact(id).await.unwrap().is_none(), "{id} was written");
    }

    // Listed as one group: the sink, validation, the Dataverse code.
    let listing = dlq(&pipeline, Stage::Sink, &["list", "--json"]).await;
    assert_eq!(listing["total"], 3, "{listing:#}");
    assert_eq!(listing["redriven"], 0);
    let groups = listing["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{listing:#}");
    assert_eq!(groups[0]["stage"], "sink-dataverse");
    assert_eq!(groups[0]["class"], "validation");
    assert_eq!(groups[0]["detail"], "0x80040265");
    assert_eq!(groups[0]["count"], 3);
    assert!(groups[0]["first_failed_at"].is_string() && groups[0]["last_failed_at"].is_string());

    // One shown in full: the value is the enricher's Avro Customer, decoded through the registry.
    let (partition, offset) = groups[0]["offsets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, range)| (p.clone(), range[0].as_i64().unwrap()))
        .next()
        .unwrap();
    dlq_text(&pipeline, Stage::Sink, &["list"]).await;
    dlq_text(
        &pipeline,
        Stage::Sink,
        &["show", &offset.to_string(), "--partition", &partition],
    )
    .await;
    let shown = dlq(
        &pipeline,
        Stage::Sink,
        &["show", &offset.to_string(), "--partition", &partition, "--json"],
    )
    .await;
    assert_eq!(shown["value"]["format"], "avro", "{shown:#}");
    assert!(
        shown["value"]["schema"].as_str().unwrap().ends_with("Customer"),
        "{shown:#}"
    );
    let shown_id = shown["value"]["value"]["customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(blocked.contains(&shown_id.as_str()), "{shown:#}");
    assert_eq!(shown["key"], shown_id.as_str());
    assert_eq!(shown["original"]["topic"], input.as_str());

    // A dry run lists the three and sends nothing.
    let before_input = total(&env.high_watermarks(&input).await);
    let dry = dlq(&pipeline, Stage::Sink, &["redrive", "--dry-run", "--json"]).await;
    assert_eq!(dry["would_send"], 3, "{dry:#}");
    assert_eq!(dry["sent"], 0);
    assert_eq!(total(&env.high_watermarks(&input).await), before_input);

    // Still refused: redriving now would only dead-letter them again, so fix the cause first.
    pipeline.set_faults(json!({})).await.unwrap();
    let writes_before = writes(&pipeline).await;
    let text = dlq_text(&pipeline, Stage::Sink, &["redrive", "--dry-run"]).await;
    assert_eq!(text.matches("would send").count(), 3, "one line each: {text}");
    assert_eq!(total(&env.high_watermarks(&input).await), before_input);
    let first = dlq(&pipeline, Stage::Sink, &["redrive", "--json"]).await;
    assert_eq!(first["sent"], 3, "{first:#}");
    assert_eq!(total(&env.high_watermarks(&input).await), before_input + 3);
    for id in blocked {
        let contact = wait_until("the redriven contact", Duration::from_secs(60), || async {
            pipeline.contact(id).await.ok().flatten()
        })
        .await
        .unwrap();
        assert_eq!(contact["emailaddress1"], format!("{id}@blocked.example"));
    }
    env.wait_caught_up(&pipeline.names.sink_group, &input).await;
    assert_eq!(
        writes(&pipeline).await,
        writes_before + 3,
        "each redriven record written once"
    );
    assert_eq!(
        total(&env.high_watermarks(&dlq_topic).await),
        3,
        "nothing dead-lettered again"
    );

    // A second redrive sends nothing: the topic's end offsets and the writes stay put.
    let second = dlq(&pipeline, Stage::Sink, &["redrive", "--json"]).await;
    assert_eq!(second["sent"], 0, "{second:#}");
    assert_eq!(second["already_redriven"], 3);
    assert_eq!(total(&env.high_watermarks(&input).await), before_input + 3);
    env.wait_caught_up(&pipeline.names.sink_group, &input).await;
    assert_eq!(writes(&pipeline).await, writes_before + 3);
    dlq_text(&pipeline, Stage::Sink, &["list"]).await;
    let listing = dlq(&pipeline, Stage::Sink, &["list", "--json"]).await;
    assert_eq!(
        (listing["total"].as_i64(), listing["redriven"].as_i64()),
        (Some(3), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_records_are_listed_shown_and_redriven_by_reason_once_each() {
    let mut pipeline = Pipeline::start().await.unwrap();
    let events = pipeline.names.events_topic.clone();
    let dlq_topic = format!("{events}.dlq");
    let producer: FutureProducer = common::kafka::producer(
        &pipeline.env.kafka_settings(),
        "dlq-test",
        Duration::from_secs(10),
    )
    .unwrap();
    // Not the wire format; an unknown schema id; not the wire format again. One key, so one
    // partition of the dead-letter topic, in this order.
    let payloads: [&[u8]; 3] = [
        b"not avro at all",
        &[0, 0x7f, 0xff, 0xff, 0xff, 2, 4],
        b"{\"json\":true}",
    ];
    for payload in payloads {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&events)
                    .partition(0)
                    .key("cus_poison")
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let env = &pipeline.env;
    wait_until("three dead letters", Duration::from_secs(90), || async {
        (total(&env.high_watermarks(&dlq_topic).await) == 3).then_some(())
    })
    .await
    .unwrap();

    let listing = dlq(&pipeline, Stage::Enricher, &["list", "--json"]).await;
    assert_eq!(listing["total"], 3, "{listing:#}");
    let groups = listing["groups"].as_array().unwrap();
    let by_class: HashMap<&str, &Value> = groups.iter().map(|g| (g["class"].as_str().unwrap(), g)).collect();
    assert_eq!(by_class.len(), 2, "{listing:#}");
    assert_eq!(by_class["malformed_payload"]["count"], 2);
    assert_eq!(by_class["unknown_schema"]["count"], 1);
    assert_eq!(by_class["malformed_payload"]["stage"], "enricher");
    // The table says the same.
    let table = dlq_text(&pipeline, Stage::Enricher, &["list"]).await;
    assert!(
        table.starts_with(&format!("{dlq_topic}: 3 dead letters, 0 redriven, 3 pending")),
        "{table}"
    );
    let row = table.lines().find(|l| l.contains("malformed_payload")).unwrap();
    assert!(row.starts_with("enricher") && row.contains(" 2 "), "{table}");

    let (partition, range) = by_class["malformed_payload"]["offsets"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let first = range[0].as_i64().unwrap();
    assert_eq!(range[1].as_i64().unwrap(), first + 2, "{listing:#}");

    let text = dlq_text(
        &pipeline,
        Stage::Enricher,
        &["show", &first.to_string(), "--partition", partition],
    )
    .await;
    assert!(text.contains("utf8: not avro at all"), "{text}");
    let shown = dlq(
        &pipeline,
        Stage::Enricher,
        &["show", &first.to_string(), "--partition", partition, "--json"],
    )
    .await;
    assert_eq!(shown["key"], "cus_poison");
    assert_eq!(shown["original"]["topic"], events.as_str());
    assert_eq!(shown["original"]["partition"], 0);
    assert_eq!(shown["value"]["format"], "raw", "{shown:#}");
    assert_eq!(shown["value"]["utf8"], "not avro at all");
    assert_eq!(shown["value"]["hex"], hex::encode(b"not avro at all"));
    assert!(
        shown["value"]["why"].as_str().unwrap().contains("magic byte"),
        "{shown:#}"
    );
    let headers: HashMap<&str, &str> = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap_or("")))
        .collect();
    assert_eq!(headers["dlq.error.class"], "malformed_payload");
    assert_eq!(headers["dlq.stage"], "enricher");

    // Redriven records would fail again and come back as new dead letters; stop the enricher so
    // only the redrive writes.
    pipeline.kill(Stage::Enricher);
    let env = &pipeline.env;
    let base = total(&env.high_watermarks(&events).await);

    // A filter redrives the middle record; the one before it stays eligible.
    let by_reason = dlq(
        &pipeline,
        Stage::Enricher,
        &["redrive", "--reason", "unknown_schema", "--json"],
    )
    .await;
    assert_eq!(
        (
            by_reason["sent"].as_i64(),
            by_reason["skipped_by_filter"].as_i64()
        ),
        (Some(1), Some(2)),
        "{by_reason:#}"
    );
    assert_eq!(total(&env.high_watermarks(&events).await), base + 1);
    let again = dlq(
        &pipeline,
        Stage::Enricher,
        &["redrive", "--reason", "unknown_schema", "--json"],
    )
    .await;
    assert_eq!(
        (again["sent"].as_i64(), again["already_redriven"].as_i64()),
        (Some(0), Some(1)),
        "{again:#}"
    );

    // Without a filter: the two others, not the one already sent.
    let rest = dlq(&pipeline, Stage::Enricher, &["redrive", "--json"]).await;
    assert_eq!(
        (rest["sent"].as_i64(), rest["already_redriven"].as_i64()),
        (Some(2), Some(1)),
        "{rest:#}"
    );
    assert_eq!(total(&env.high_watermarks(&events).await), base + 3);
    let none = dlq(&pipeline, Stage::Enricher, &["redrive", "--json"]).await;
    assert_eq!(none["sent"], 0, "{none:#}");
    assert_eq!(total(&env.high_watermarks(&events).await), base + 3);

    // The copies carry the original key and bytes, no dlq.* header but where they came from.
    let copies: Vec<_> = env
        .read_all(&events)
        .await
        .into_iter()
        .filter(|r| r.header("dlq.redriven.from").is_some())
        .collect();
    assert_eq!(copies.len(), 3);
    let mut sent: Vec<Vec<u8>> = copies.iter().map(|c| c.payload.clone().unwrap()).collect();
    sent.sort();
    let mut expected: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
    expected.sort();
    assert_eq!(sent, expected);
    for c in &copies {
        assert_eq!(c.key.as_deref(), Some("cus_poison"));
        assert_eq!(c.partition, 0);
        assert!(
            !c.headers
                .keys()
                .any(|k| k.starts_with("dlq.") && k != "dlq.redriven.from"),
            "{:?}",
            c.headers
        );
        assert!(
            c.header("dlq.redriven.from")
                .unwrap()
                .starts_with(&format!("{dlq_topic}/{partition}/"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_without_its_value_is_redriven_from_the_original_or_reported() {
    use common::dlq::headers;
    use common::dlq_admin::{DlqTarget, RedriveArgs, redrive};
    use rdkafka::message::{Header, OwnedHeaders};

    let env = harness::TestEnv::start().await.unwrap();
    let original = harness::unique("orig");
    let dlq_topic = format!("{original}.dlq");
    env.create_topic(&original, 1).await.unwrap();
    env.create_topic(&dlq_topic, 1).await.unwrap();
    let producer: FutureProducer =
        common::kafka::producer(&env.kafka_settings(), "dlq-test", Duration::from_secs(10)).unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&original)
                .key("cus_big")
                .payload(b"the original bytes")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // Two dead letters without their value: one pointing at the original, one at an offset the
    // topic does not hold.
    for offset in ["0", "99"] {
        let mut h = OwnedHeaders::new();
        for (key, value) in [
            (headers::STAGE, "sink-dataverse"),
            (headers::ERROR_CLASS, "too_large"),
            (
                headers::ERROR_MESSAGE,
                "Dataverse refused the change (413): too large",
            ),
            (headers::ORIGINAL_TOPIC, original.as_str()),
            (headers::ORIGINAL_PARTITION, "0"),
            (headers::ORIGINAL_OFFSET, offset),
            (headers::FAILED_AT, "1796635300137"),
            (headers::PAYLOAD_OMITTED, "Broker: Message size too large"),
        ] {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&dlq_topic)
                    .key("cus_big")
                    .headers(h),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let target = DlqTarget {
        kafka: env.kafka_settings(),
        registry: None,
        stage: "sink-dataverse".into(),
        dlq_topic: dlq_topic.clone(),
        progress_group: harness::unique("sink.redrive"),
        ledger_topic: format!("{dlq_topic}.redriven"),
        topics: common::kafka::TopicSettings::default(),
    };
    let run =
        |target: DlqTarget| tokio::task::spawn_blocking(move || redrive(&target, &RedriveArgs::default()));
    let first = run(target.clone()).await.unwrap().unwrap();
    assert_eq!((first.sent, first.unavailable), (1, 1), "{first}");
    let missing = first.rows.iter().find(|r| r.outcome == "unavailable").unwrap();
    assert_eq!(missing.offset, 1);
    assert!(
        missing
            .note
            .as_deref()
            .unwrap()
            .contains(&format!("{original}/0/99 is not in the topic")),
        "{first}"
    );
    let records = env.read_all(&original).await;
    assert_eq!(records.len(), 2);
    let copy = &records[1];
    assert_eq!(copy.payload.as_deref(), Some(&b"the original bytes"[..]));
    assert_eq!(copy.key.as_deref(), Some("cus_big"));
    assert!(copy.header("traceparent").is_some());
    assert_eq!(
        copy.header("dlq.redriven.from"),
        Some(format!("{dlq_topic}/0/0").as_str())
    );

    // Again: the one sent is not sent twice; the missing one is reported again.
    let second = run(target).await.unwrap().unwrap();
    assert_eq!(
        (second.sent, second.already_redriven, second.unavailable),
        (0, 1, 1),
        "{second}"
    );
    assert_eq!(env.read_all(&original).await.len(), 2);
}
