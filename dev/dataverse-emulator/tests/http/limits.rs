//! The three service protection limits: 429, the documented codes and messages, `Retry-After` that
//! grows while the client keeps pushing, per-client accounting, and the sliding window.

use dataverse_emulator::Config;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::support::{Env, config_with_second_client, eventually, header, odata_error, retry_after};

/// Sends `count` more requests while throttled and returns every `Retry-After`, checking the code.
async fn keep_pushing(env: &Env, code: &str, count: usize) -> Vec<u64> {
    let mut waits = Vec::new();
    for _ in 0..count {
        let response = env.get("contacts").await;
        let wait = retry_after(&response);
        let (got, _) = odata_error(response, StatusCode::TOO_MANY_REQUESTS).await;
        assert_eq!(got, code);
        waits.push(wait);
    }
    waits
}

fn assert_grows(waits: &[u64]) {
    assert!(
        waits.windows(2).all(|w| w[1] >= w[0]),
        "Retry-After never shrinks while pushing: {waits:?}"
    );
    assert!(
        waits.last() > waits.first(),
        "Retry-After grows while the client keeps pushing: {waits:?}"
    );
}

fn batch_of_gets(count: usize) -> String {
    let mut body = String::new();
    for _ in 0..count {
        body.push_str("--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET contacts?$top=1 HTTP/1.1\r\n\r\n");
    }
    body.push_str("--b--\r\n");
    body
}

async fn send_batch(env: &Env, count: usize) -> Response {
    env.request(Method::POST, "$batch")
        .header("Content-Type", "multipart/mixed; boundary=b")
        .body(batch_of_gets(count))
        .send()
        .await
        .expect("batch")
}

#[tokio::test]
async fn request_count_limit_answers_429_0x80072322_and_the_wait_grows() {
    let mut config = config_with_second_client();
    config.limits.max_requests = 3;
    config.limits.window_ms = 60_000;
    let env = Env::start(config).await;

    // A batch of five operations is one request against this limit.
    let response = send_batch(&env, 5).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-ms-ratelimit-burst-remaining-xrm-requests"),
        "2"
    );
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);

    let response = env.get("contacts").await;
    let first_wait = retry_after(&response);
    assert!(
        (55..=60).contains(&first_wait),
        "the oldest request leaves the 60 s window: {first_wait}"
    );
    let (code, message) = odata_error(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(code, "0x80072322");
    assert_eq!(
        message,
        "Number of requests exceeded the limit of 3 over time window of 60 seconds."
    );
    let mut waits = vec![first_wait];
    waits.extend(keep_pushing(&env, "0x80072322", 4).await);
    assert_grows(&waits);

    // Limits are per client: another application is not throttled.
    let other = env.fetch_token("other-client", "other-secret").await;
    let response = env
        .request_as(&other, Method::GET, "contacts")
        .send()
        .await
        .expect("other");
    assert_eq!(response.status(), StatusCode::OK);
    let stats = env.stats().await;
    assert_eq!(stats["throttled"]["requests"], 5);
    assert_eq!(stats["requests_by_status"]["429"], 5);
}

#[tokio::test]
async fn the_window_slides_and_the_client_is_admitted_again() {
    let mut config = Config::default();
    config.limits.max_requests = 2;
    config.limits.window_ms = 1500;
    let env = Env::start(config).await;
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
    let response = env.get("contacts").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=2).contains(&retry_after(&response)));
    // Wait as a well-behaved client does, without sending: until the server's window has room again.
    eventually("the window to slide", || async {
        let stats = env.stats().await;
        let usage = &stats["limits"]["sink-dataverse"];
        (usage["throttled_for_ms"].is_null() && usage["requests_in_window"].as_u64() < Some(2)).then_some(())
    })
    .await;
    assert_eq!(env.get("contacts").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn execution_time_limit_answers_429_0x80072321_and_batches_do_not_escape_it() {
    let mut config = Config::default();
    config.latency.default_ms = 100;
    config.limits.max_execution_time_ms = 250;
    config.limits.window_ms = 60_000;
    let env = Env::start(config).await;

    // One request, three operations: about 300 ms of execution time.
    let response = send_batch(&env, 3).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stats = env.stats().await;
    assert!(
        stats["limits"]["sink-dataverse"]["execution_ms_in_window"].as_u64() >= Some(300),
        "{stats}"
    );

    let response = env.get("contacts").await;
    let first_wait = retry_after(&response);
    let (code, message) = odata_error(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(code, "0x80072321");
    assert!(message.starts_with("Combined execution time of incoming requests exceeded limit of 250 milliseconds over time window of 60 seconds."), "{message}");
    let mut waits = vec![first_wait];
    waits.extend(keep_pushing(&env, "0x80072321", 4).await);
    assert_grows(&waits);
    assert_eq!(env.stats().await["throttled"]["execution_time"], 5);
}

#[tokio::test]
async fn concurrency_limit_answers_429_0x80072326_immediately_and_the_wait_grows() {
    let mut config = Config::default();
    config.latency.query_ms = Some(3000);
    config.limits.max_concurrent = 2;
    let env = Env::start(config).await;

    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let request = env.request(Method::GET, "contacts");
        slow.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    eventually("two requests in flight", || async {
        (env.stats().await["in_flight"].as_u64() == Some(2)).then_some(())
    })
    .await;

    let response = env.get("contacts").await;
    let first_wait = retry_after(&response);
    let (code, message) = odata_error(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(code, "0x80072326");
    assert_eq!(message, "Number of concurrent requests exceeded the limit of 2.");
    let mut waits = vec![first_wait];
    waits.extend(keep_pushing(&env, "0x80072326", 3).await);
    assert_eq!(waits, [1, 2, 3, 4]);

    for status in slow.join_all().await {
        assert_eq!(
            status.expect("slow request"),
            StatusCode::OK,
            "the requests in flight finish normally"
        );
    }
    let stats: Value = env.stats().await;
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["throttled"]["concurrency"], 4);
}
