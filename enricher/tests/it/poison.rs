//! Poison records go to the dead-letter topic with their reason and origin; the records around
//! them go through and the partition moves on.

use common::dlq::headers;

use crate::support::{Env, Running, customer_event, metric, stripe_event};

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_are_dead_lettered_with_headers_and_neighbours_go_through() {
    let env = Env::start().await;
    let t = env.topics(1).await;
    let good = |i: i64| {
        customer_event(
            &format!("evt_good{i}"),
            "customer.updated",
            &format!("cus_{i}"),
            i,
        )
    };

    // The wire format with a schema id the registry never issued.
    let unknown_id: Vec<u8> = [0u8, 0x7f, 0xff, 0xff, 0x01, 2, 3].to_vec();
    let not_json = stripe_event(
        "evt_notjson",
        "customer.updated",
        "cus_x",
        0,
        b"<html>502</html>".to_vec(),
    );
    let no_id = stripe_event(
        "evt_noid",
        "customer.created",
        "cus_y",
        0,
        br#"{"id":"evt_noid","type":"customer.created","data":{"object":{"object":"customer","email":"a@b.co"}}}"#.to_vec(),
    );

    let mut expected_dead = Vec::new();
    env.produce_to(&t.input, &good(1), 0).await;
    let at = env
        .produce_raw(&t.input, "cus_garbage", Some(b"definitely not avro"), 0)
        .await;
    expected_dead.push((at, "malformed_payload", b"definitely not avro".to_vec()));
    env.produce_to(&t.input, &good(2), 0).await;
    let at = env
        .produce_raw(&t.input, "cus_unknown", Some(&unknown_id), 0)
        .await;
    expected_dead.push((at, "unknown_schema", unknown_id.clone()));
    env.produce_to(&t.input, &good(3), 0).await;
    let at = env.produce_to(&t.input, &not_json, 0).await;
    expected_dead.push((at, "not_json", Vec::new()));
    env.produce_to(&t.input, &good(4), 0).await;
    let at = env.produce_to(&t.input, &no_id, 0).await;
    expected_dead.push((at, "missing_customer_id", Vec::new()));
    let at = env.produce_raw(&t.input, "cus_tombstone", None, 0).await;
    expected_dead.push((at, "malformed_payload", Vec::new()));
    env.produce_to(&t.input, &good(5), 0).await;

    let started_ms = now_ms();
    let running = Running::start(env.config(&t)).await;
    env.wait_caught_up(&t.group, &t.input).await;

    let out = env.read_customers(&t.output).await;
    let ids: Vec<&str> = out.iter().map(|o| o.customer.source_event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["evt_good1", "evt_good2", "evt_good3", "evt_good4", "evt_good5"]
    );

    let dead = env.read_all(&t.dlq).await;
    assert_eq!(dead.len(), expected_dead.len(), "{dead:#?}");
    for (d, ((partition, offset), class, bytes)) in dead.iter().zip(&expected_dead) {
        assert_eq!(d.header(headers::STAGE), Some("enricher"));
        assert_eq!(d.header(headers::ERROR_CLASS), Some(*class), "{d:#?}");
        assert!(!d.header(headers::ERROR_MESSAGE).unwrap_or_default().is_empty());
        assert_eq!(d.header(headers::ORIGINAL_TOPIC), Some(t.input.as_str()));
        assert_eq!(
            d.header(headers::ORIGINAL_PARTITION),
            Some(partition.to_string().as_str())
        );
        assert_eq!(
            d.header(headers::ORIGINAL_OFFSET),
            Some(offset.to_string().as_str())
        );
        assert_eq!(d.header(headers::ATTEMPTS), Some("1"));
        let failed_at: u128 = d.header(headers::FAILED_AT).unwrap().parse().unwrap();
        assert!(failed_at >= started_ms && failed_at <= now_ms(), "{failed_at}");
        if !bytes.is_empty() {
            assert_eq!(
                d.payload.as_deref().unwrap_or_default(),
                bytes.as_slice(),
                "original bytes kept"
            );
        }
        assert!(d.key.is_some(), "original key kept");
    }
    // The bytes of a decodable poison record are kept as they were, so it can be re-driven.
    let not_json_dead = dead
        .iter()
        .find(|d| d.header(headers::ERROR_CLASS) == Some("not_json"))
        .unwrap();
    let kept: schemas::StripeEvent = env
        .codec
        .decode(not_json_dead.payload.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(kept, not_json);

    let m = running.metrics().await;
    assert_eq!(
        metric(&m, "enricher_dead_lettered_total{class=\"malformed_payload\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enricher_dead_lettered_total{class=\"unknown_schema\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enricher_dead_lettered_total{class=\"not_json\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enricher_dead_lettered_total{class=\"missing_customer_id\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "enricher_records_out_total"), 5.0, "{m}");
    running.stop().await;
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
