//! Fault injection (error answers, dropped connections, latency, forced throttle windows), the admin
//! API (stats, reset, table dumps) and the metrics endpoint.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Env, contact, contact_key, eventually, header, odata_error, retry_after};

#[tokio::test]
async fn error_rate_answers_500_or_503_in_the_odata_shape_without_applying() {
    let env = Env::default().await;
    env.set_faults(json!({"error_rate": 1.0})).await;
    for i in 0..10 {
        let response = env
            .patch(&contact_key(&format!("cus_{i}")), contact("A", "B"))
            .await;
        let status = response.status();
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        let (code, message) = odata_error(response, status).await;
        assert_eq!(code, "0x80040216");
        assert!(message.contains("injected"), "{message}");
    }
    // Tokens and the admin API are never faulted.
    env.fetch_token("sink-dataverse", "local-secret").await;
    assert!(
        env.rows("contacts").await.is_empty(),
        "no faulted request was applied"
    );
    env.set_faults(json!({})).await;
    assert_eq!(
        env.patch(&contact_key("cus_ok"), contact("A", "B"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(env.stats().await["faults_injected"], 10);
}

#[tokio::test]
async fn fail_next_fails_exactly_that_many_requests() {
    let env = Env::default().await;
    env.set_faults(json!({"fail_next": 2, "error_statuses": [503]}))
        .await;
    let key = contact_key("cus_retry");
    assert_eq!(
        env.patch(&key, contact("A", "B")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let view = env.admin_get("faults").await;
    assert_eq!(view["fail_next"], 1, "counts down");
    assert_eq!(
        env.patch(&key, contact("A", "B")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        env.patch(&key, contact("A", "B")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(env.rows("contacts").await.len(), 1);
}

#[tokio::test]
async fn dropped_connections_give_no_answer_before_or_after_applying() {
    let env = Env::default().await;
    env.set_faults(json!({"drop_next": 1})).await;
    let error = env
        .request(Method::PATCH, &contact_key("cus_lost"))
        .json(&contact("A", "B"))
        .send()
        .await
        .expect_err("the connection closes without an answer");
    assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    assert!(
        env.rows("contacts").await.is_empty(),
        "dropped before processing: nothing applied"
    );
    assert_eq!(
        env.patch(&contact_key("cus_lost"), contact("A", "B"))
            .await
            .status(),
        StatusCode::NO_CONTENT,
        "the next request is answered"
    );

    env.set_faults(json!({"drop_after_apply_rate": 1.0})).await;
    let error = env
        .request(Method::PATCH, &contact_key("cus_applied"))
        .json(&contact("C", "D"))
        .send()
        .await
        .expect_err("the answer is lost");
    assert!(!error.is_status(), "{error:?}");
    env.set_faults(json!({})).await;
    let row: Value = env
        .get(&contact_key("cus_applied"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        row["fullname"], "C D",
        "the write happened although the client never heard"
    );
    assert_eq!(env.stats().await["dropped_connections"], 2);
}

#[tokio::test]
async fn added_latency_slows_every_request() {
    let env = Env::default().await;
    env.set_faults(json!({"added_latency_ms": 300})).await;
    let started = Instant::now();
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let usage = &env.stats().await["limits"]["sink-dataverse"];
    assert!(
        usage["execution_ms_in_window"].as_u64() >= Some(300),
        "added latency counts as execution time"
    );
}

#[tokio::test]
async fn forced_throttle_window_answers_429_until_it_ends() {
    let env = Env::default().await;
    env.set_faults(json!({"force_throttle": {"duration_ms": 1500, "kind": "execution_time"}}))
        .await;
    let response = env.get("contacts").await;
    assert!(
        (1..=2).contains(&retry_after(&response)),
        "the time left of the 1.5 s window"
    );
    let (code, _) = odata_error(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(code, "0x80072321");
    eventually("the forced window to end", || async {
        env.admin_get("faults").await["force_throttle_remaining_ms"]
            .is_null()
            .then_some(())
    })
    .await;
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalid_fault_settings_are_refused() {
    let env = Env::default().await;
    for (body, needle) in [
        (json!({"error_rate": 2.0}), "faults.error_rate"),
        (
            json!({"error_statuses": [200], "fail_next": 1}),
            "not an error status",
        ),
        (json!({"no_such_fault": true}), "no_such_fault"),
    ] {
        let (_, message) = odata_error(env.admin_post("faults", body).await, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(needle), "{message}");
    }
}

#[tokio::test]
async fn stats_reset_and_table_dumps() {
    let env = Env::default().await;
    env.patch(&contact_key("cus_s1"), contact("A", "B")).await;
    env.patch(&contact_key("cus_s1"), contact("A", "C")).await;
    env.delete(&contact_key("cus_none")).await;
    env.get("contacts").await;
    env.http
        .get(env.api("contacts"))
        .send()
        .await
        .expect("unauthorised");

    let stats = env.stats().await;
    assert_eq!(stats["requests_by_status"]["204"], 2);
    assert_eq!(stats["requests_by_status"]["404"], 1);
    assert_eq!(stats["requests_by_status"]["401"], 1);
    assert_eq!(stats["requests_by_status"]["200"], 2, "the token and the query");
    assert_eq!(
        stats["operations"],
        json!({"created": 1, "updated": 1, "deleted": 0, "read": 1})
    );
    assert_eq!(stats["rows"]["contacts"], 1);
    assert_eq!(stats["tokens_issued"], 1);

    let dump = env.admin_get("tables/contacts").await;
    assert_eq!(dump["count"], 1);
    let row = &dump["value"][0];
    assert_eq!(row["fullname"], "A C");
    assert!(row["@odata.etag"].as_str().is_some_and(|e| e.starts_with("W/")));
    assert!(row.get("new_stripedeleted").is_some(), "all columns are dumped");

    let metrics = env
        .http
        .get(format!("{}/metrics", env.emulator.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("dataverse_emulator_requests_total{status=\"204\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dataverse_emulator_rows{entity_set=\"contacts\"} 1"),
        "{metrics}"
    );

    let response = env.admin_post("reset", json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stats = env.stats().await;
    assert_eq!(stats["rows"]["contacts"], 0);
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(
        env.get("contacts").await.status(),
        StatusCode::OK,
        "tokens survive a default reset"
    );

    let response = env
        .admin_post("reset", json!({"rows": false, "tokens": true}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(env.get("contacts").await.status(), StatusCode::UNAUTHORIZED);

    let response = env
        .http
        .get(format!("{}/_admin/tables/nothing", env.emulator.url()))
        .send()
        .await
        .expect("dump");
    odata_error(response, StatusCode::NOT_FOUND).await;
    let health = env
        .http
        .get(format!("{}/readyz", env.emulator.url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(header(&health, "content-type").starts_with("text/plain"));
}
