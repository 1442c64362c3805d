//! The HTTP answers, driven in-process through the router with a publisher that needs no broker.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::{HeaderValue, Method, Request};
use common::{config::Secret, ops::check};
use futures::future::BoxFuture;
use proptest::prelude::*;
use schemas::StripeEvent;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::*;
use crate::{
    publish::Written,
    signature::{now_unix, signature_header},
};

const SECRET: &str = "whsec_http_tests";

/// A publisher that records what it was given; can be made to fail or to wait for a gate.
struct FakePublisher {
    written: Mutex<Vec<StripeEvent>>,
    calls: AtomicUsize,
    fail: AtomicBool,
    /// Refuse every record as over the broker's limit.
    too_large: AtomicBool,
    gate: Semaphore,
}

impl FakePublisher {
    fn new() -> Arc<Self> {
        Arc::new(FakePublisher {
            written: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            too_large: AtomicBool::new(false),
            gate: Semaphore::new(Semaphore::MAX_PERMITS),
        })
    }

    /// A publisher whose writes wait until [`FakePublisher::open`].
    fn gated() -> Arc<Self> {
        let publisher = FakePublisher::new();
        publisher.gate.forget_permits(Semaphore::MAX_PERMITS);
        publisher
    }

    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn written(&self) -> Vec<StripeEvent> {
        self.written.lock().unwrap().clone()
    }
}

impl Publisher for FakePublisher {
    fn write<'a>(
        &'a self,
        event: &'a VerifiedEvent,
        _budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<Written, PublishError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate stays open");
            if self.fail.load(Ordering::SeqCst) {
                // An internal detail that must never reach the caller.
                return Err(PublishError::Aborted("broker-7.internal:9092 refused".into()));
            }
            if self.too_large.load(Ordering::SeqCst) {
                return Err(PublishError::TooLarge {
                    size: 1_100_000,
                    limit: 1_064_960,
                });
            }
            let mut written = self.written.lock().unwrap();
            written.push(event.record().clone());
            Ok(Written {
                partition: 0,
                offset: written.len() as i64 - 1,
            })
        })
    }

    fn checks(&self) -> Vec<(&'static str, Check)> {
        vec![("fake", check(|| async { Ok(()) }))]
    }
}

fn config() -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.webhook.secrets = vec![Secret::new(SECRET)];
    c.limits.max_body = 4096;
    c
}

fn router(config: &GatewayConfig, publisher: Arc<FakePublisher>) -> Router {
    app(AppState::new(config, publisher))
}

fn event_body(id: &str, kind: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"{kind}","created":1700000000,"livemode":false,
"data":{{"object":{{"id":"cus_{id}","object":"customer","email":null}}}}}}"#
    )
}

fn signed(body: &str) -> Request<Body> {
    signed_with(body, SECRET, now_unix())
}

fn signed_with(body: &str, secret: &str, t: i64) -> Request<Body> {
    Request::post(WEBHOOK_PATH)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature_header(secret, t, body.as_bytes()))
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

async fn metrics_text(app: &Router) -> String {
    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_verified_event_is_written_then_acknowledged() {
    let publisher = FakePublisher::new();
    let app = router(&config(), publisher.clone());
    let body = event_body("evt_ok", "customer.created");
    let (status, _, json) = send(&app, signed(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, serde_json::json!({"received": true, "id": "evt_ok"}));
    let written = publisher.written();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].raw_body, body.as_bytes());
    assert_eq!(written[0].object_id.as_deref(), Some("cus_evt_ok"));
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_produce_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_in_flight_requests 0"), "{metrics}");
}

#[tokio::test]
async fn every_refusal_has_its_status_and_reason() {
    let publisher = FakePublisher::new();
    let app = router(&config(), publisher.clone());
    let body = event_body("evt_1", "customer.created");
    let now = now_unix();
    let with_header = |h: &str| {
        Request::post(WEBHOOK_PATH)
            .header("content-type", "application/json")
            .header("stripe-signature", h)
            .body(Body::from(body.clone()))
            .unwrap()
    };
    let good_tag = crate::signature::sign(SECRET, now, body.as_bytes());
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "missing header",
            Request::post(WEBHOOK_PATH)
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "No Stripe-Signature header found",
        ),
        (
            "malformed header",
            with_header("nonsense"),
            StatusCode::BAD_REQUEST,
            "Unable to extract timestamp and signatures from header",
        ),
        (
            "v0 only",
            with_header(&format!("t={now},v0={good_tag}")),
            StatusCode::BAD_REQUEST,
            "No signatures found with expected scheme v1",
        ),
        (
            "wrong secret",
            signed_with(&body, "whsec_other", now),
            StatusCode::BAD_REQUEST,
            "No signatures found matching the expected signature for payload",
        ),
        (
            "stale",
            signed_with(&body, SECRET, now - 3600),
            StatusCode::BAD_REQUEST,
            "Timestamp outside the tolerance zone",
        ),
        (
            "future",
            signed_with(&body, SECRET, now + 3600),
            StatusCode::BAD_REQUEST,
            "Timestamp outside the tolerance zone",
        ),
        (
            "two signature headers",
            Request::post(WEBHOOK_PATH)
                .header("content-type", "application/json")
                .header("stripe-signature", format!("t={now},v1={good_tag}"))
                .header("stripe-signature", format!("t={now},v1={good_tag}"))
                .body(Body::from(body.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "Unable to extract timestamp and signatures from header",
        ),
        (
            "signed, but not a Stripe event",
            signed(r#"{"hello":"world"}"#),
            StatusCode::BAD_REQUEST,
            "Request body is not a Stripe event: `object` is not \"event\"",
        ),
        (
            "signed, but not JSON",
            signed("hello"),
            StatusCode::BAD_REQUEST,
            "Request body is not valid JSON",
        ),
        (
            "over the limit (declared)",
            {
                let mut r = signed(&format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)));
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("5010"));
                r
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is larger than 4096 bytes",
        ),
        (
            "over the limit (streamed, no length)",
            {
                let chunks = futures::stream::iter(
                    (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1000]))),
                );
                Request::post(WEBHOOK_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(chunks))
                    .unwrap()
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is larger than 4096 bytes",
        ),
        (
            "form content type",
            Request::post(WEBHOOK_PATH)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body.clone()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ),
        (
            "no content type",
            Request::post(WEBHOOK_PATH)
                .body(Body::from(body.clone()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ),
        (
            "GET",
            Request::get(WEBHOOK_PATH).body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed; use POST",
        ),
        (
            "PUT",
            Request::builder()
                .method(Method::PUT)
                .uri(WEBHOOK_PATH)
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed; use POST",
        ),
    ];
    for (name, request, status, message) in cases {
        let (got, headers, json) = send(&app, request).await;
        assert_eq!(got, status, "{name}: {json}");
        assert_eq!(json, serde_json::json!({ "error": message }), "{name}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(headers.get("allow").unwrap(), "POST");
        }
    }
    assert!(publisher.written().is_empty(), "nothing refused is ever written");
    let metrics = metrics_text(&app).await;
    for line in [
        r#"gateway_verification_failures_total{reason="missing_header"} 1"#,
        r#"gateway_verification_failures_total{reason="malformed_header"} 2"#,
        r#"gateway_verification_failures_total{reason="no_v1_signature"} 1"#,
        r#"gateway_verification_failures_total{reason="no_matching_signature"} 1"#,
        r#"gateway_verification_failures_total{reason="timestamp_too_old"} 1"#,
        r#"gateway_verification_failures_total{reason="timestamp_in_future"} 1"#,
        r#"gateway_requests_total{outcome="bad_signature"} 7"#,
        r#"gateway_requests_total{outcome="too_large"} 2"#,
        r#"gateway_requests_total{outcome="method_not_allowed"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_failed_write_is_503_without_details_and_is_not_remembered() {
    let publisher = FakePublisher::new();
    let app = router(&config(), publisher.clone());
    let body = event_body("evt_retry", "customer.updated");
    publisher.fail.store(true, Ordering::SeqCst);
    let (status, headers, json) = send(&app, signed(&body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        json,
        serde_json::json!({"error": "Event could not be stored; retry later"})
    );
    publisher.fail.store(false, Ordering::SeqCst);
    let (status, _, _) = send(&app, signed(&body)).await;
    assert_eq!(status, StatusCode::OK, "Stripe's retry is written");
    assert_eq!(publisher.written().len(), 1);
}

#[tokio::test]
async fn duplicates_are_acknowledged_without_writing_again() {
    let publisher = FakePublisher::new();
    let app = router(&config(), publisher.clone());
    let body = event_body("evt_dup", "customer.updated");
    assert_eq!(send(&app, signed(&body)).await.0, StatusCode::OK);
    // Stripe signs every attempt afresh: a different header, the same event.
    let (status, _, json) = send(&app, signed_with(&body, SECRET, now_unix() - 5)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["duplicate"], true);
    assert_eq!(publisher.written().len(), 1);
    assert!(metrics_text(&app).await.contains("gateway_duplicates_total 1"));
}

#[tokio::test]
async fn concurrent_duplicates_write_once() {
    let publisher = FakePublisher::gated();
    let app = router(&config(), publisher.clone());
    let body = event_body("evt_race", "customer.updated");
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send_owned(app.clone(), signed(&body))))
        .collect();
    // Wait until the first write reached the publisher, then let it finish.
    harness_wait(|| publisher.calls.load(Ordering::SeqCst) == 1).await;
    publisher.open(100);
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(publisher.calls.load(Ordering::SeqCst), 1);
    assert_eq!(publisher.written().len(), 1);
}

#[tokio::test]
async fn a_verified_event_over_the_record_limit_is_413_and_counted() {
    let publisher = FakePublisher::new();
    let app = router(&config(), publisher.clone());
    publisher.too_large.store(true, Ordering::SeqCst);
    let (status, headers, json) = send(&app, signed(&event_body("evt_big", "x"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(
        json["error"],
        "Event is too large to store: its record would be 1100000 bytes, over the broker limit of 1064960 bytes"
    );
    let metrics = metrics_text(&app).await;
    for line in [
        "gateway_events_too_large_total 1",
        r#"gateway_requests_total{outcome="too_large"} 1"#,
        r#"gateway_write_failures_total{dependency="kafka"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

async fn send_owned(app: Router, request: Request<Body>) -> StatusCode {
    send(&app, request).await.0
}

/// Polls `cond` every few milliseconds, failing after a deadline.
async fn harness_wait(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn overload_is_answered_at_once_not_queued() {
    let publisher = FakePublisher::gated();
    let mut c = config();
    c.limits.max_in_flight = 2;
    let app = router(&c, publisher.clone());
    let first = tokio::spawn(send_owned(app.clone(), signed(&event_body("evt_a", "x"))));
    let second = tokio::spawn(send_owned(app.clone(), signed(&event_body("evt_b", "x"))));
    harness_wait(|| publisher.calls.load(Ordering::SeqCst) == 2).await;
    let (status, headers, json) = send(&app, signed(&event_body("evt_c", "x"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(json["error"], "Too many requests in flight; retry later");
    assert!(metrics_text(&app).await.contains("gateway_in_flight_requests 2"));
    publisher.open(10);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(
        send(&app, signed(&event_body("evt_c", "x"))).await.0,
        StatusCode::OK
    );
}

/// A request declaring a body of `declared` bytes that sends one chunk and then nothing.
fn trickling(declared: usize) -> Request<Body> {
    let chunks = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{")) })
        .chain(futures::stream::pending());
    Request::post(WEBHOOK_PATH)
        .header("content-type", "application/json")
        .header("content-length", declared.to_string())
        .header("stripe-signature", format!("t={},v1=00", now_unix()))
        .body(Body::from_stream(chunks))
        .unwrap()
}

#[tokio::test]
async fn slow_uploads_get_408_and_never_take_the_permits_verified_events_need() {
    let publisher = FakePublisher::new();
    let mut c = config();
    c.limits.max_in_flight = 1;
    c.limits.body_read_timeout = common::config::HumanDuration::millis(300);
    let app = router(&c, publisher.clone());
    let slow: Vec<_> = (0..20)
        .map(|_| tokio::spawn(send_owned(app.clone(), trickling(4000))))
        .collect();
    // While every slow upload is still arriving, the one permit is free for signed events.
    for i in 0..5 {
        let (status, _, json) = send(&app, signed(&event_body(&format!("evt_{i}"), "x"))).await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }
    assert!(slow.iter().all(|t| !t.is_finished()), "still uploading");
    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::REQUEST_TIMEOUT);
    }
    let (status, headers, json) = send(&app, trickling(4000)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(json["error"], "Request body was not received in time");
    assert_eq!(headers.get("connection").unwrap(), "close");
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="body_timeout"} 21"#),
        "{metrics}"
    );
    assert_eq!(publisher.written().len(), 5);
}

#[test]
fn a_declared_length_reserves_little_memory_before_the_bytes_arrive() {
    assert_eq!(initial_capacity(None), 8 * 1024);
    assert_eq!(initial_capacity(Some(100)), 100);
    assert_eq!(initial_capacity(Some(1 << 20)), INITIAL_BODY_CAPACITY);
    assert_eq!(initial_capacity(Some(u64::MAX)), INITIAL_BODY_CAPACITY);
}

#[tokio::test]
async fn a_slow_write_is_503_at_the_request_timeout() {
    let publisher = FakePublisher::gated();
    let mut c = config();
    c.limits.request_timeout = common::config::HumanDuration::millis(200);
    c.limits.produce_timeout = common::config::HumanDuration::millis(100);
    let app = router(&c, publisher.clone());
    let (status, headers, json) = send(&app, signed(&event_body("evt_slow", "x"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(json["error"], "Request timed out; retry later");
    // The write carries on without the client; once it lands, the retry is a duplicate.
    publisher.open(10);
    harness_wait(|| publisher.written().len() == 1).await;
    let (status, _, json) = send(&app, signed(&event_body("evt_slow", "x"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["duplicate"], true);
}

#[tokio::test]
async fn filtered_event_types_are_acknowledged_but_not_written() {
    let publisher = FakePublisher::new();
    let mut c = config();
    c.event_types.0 = vec!["customer.*".into(), "invoice.paid".into()];
    let app = router(&c, publisher.clone());
    for (kind, written) in [
        ("customer.created", true),
        ("invoice.paid", true),
        ("invoice.created", false),
        ("charge.succeeded", false),
    ] {
        let (status, _, json) = send(&app, signed(&event_body(&format!("evt_{kind}"), kind))).await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        assert_eq!(json.get("ignored").is_some(), !written, "{kind}");
    }
    assert_eq!(publisher.written().len(), 2);
}

#[tokio::test]
async fn the_allow_list_checks_the_peer_or_a_trusted_proxys_client() {
    let publisher = FakePublisher::new();
    let mut c = config();
    c.allow_ips = "3.18.12.63,10.9.0.0/16".parse().unwrap();
    c.trusted_proxies = "127.0.0.1".parse().unwrap();
    let app = router(&c, publisher.clone());
    let from = |peer: &str, xff: Option<&str>, id: &str| {
        let mut r = signed(&event_body(id, "x"));
        r.extensions_mut()
            .insert(ConnectInfo(PeerAddr(format!("{peer}:40000").parse().unwrap())));
        if let Some(xff) = xff {
            r.headers_mut()
                .insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        }
        r
    };
    for (i, peer, xff, status) in [
        ("3.18.12.63", None, StatusCode::OK),
        ("10.9.3.4", None, StatusCode::OK),
        ("8.8.8.8", None, StatusCode::FORBIDDEN),
        // An untrusted peer cannot claim an allowed address.
        ("8.8.8.8", Some("3.18.12.63"), StatusCode::FORBIDDEN),
        // Through the trusted proxy: the nearest untrusted hop counts.
        ("127.0.0.1", Some("3.18.12.63"), StatusCode::OK),
        ("127.0.0.1", Some("3.18.12.63, 8.8.8.8"), StatusCode::FORBIDDEN),
        ("127.0.0.1", Some("8.8.8.8, 3.18.12.63"), StatusCode::OK),
        ("127.0.0.1", Some("garbage"), StatusCode::FORBIDDEN),
        ("127.0.0.1", None, StatusCode::FORBIDDEN),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (peer, xff, status))| (i, peer, xff, status))
    .collect::<Vec<_>>()
    {
        let id = format!("evt_source_{i}");
        let (got, _, json) = send(&app, from(peer, xff, &id)).await;
        assert_eq!(got, status, "{peer} {xff:?}: {json}");
    }
    // Without connection info (cannot tell the source) the list fails closed.
    assert_eq!(
        send(&app, signed(&event_body("evt_noinfo", "x"))).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn readiness_and_health() {
    let app = router(&config(), FakePublisher::new());
    for path in ["/healthz", "/readyz"] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[test]
fn event_filter_patterns() {
    let f = EventFilter(vec!["customer.*".into(), "invoice.paid".into()]);
    assert!(f.accepts("customer.created"));
    assert!(f.accepts("customer.subscription.updated"));
    assert!(f.accepts("invoice.paid"));
    assert!(!f.accepts("invoice.paid.extra"));
    assert!(!f.accepts("customerx"));
    assert!(EventFilter(vec![]).accepts("anything"));
    assert!(EventFilter(vec!["*".into()]).accepts("anything"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Arbitrary bodies with arbitrary (or absent, or plausibly shaped) headers: never a panic,
    /// never a 2xx, never a write.
    #[test]
    fn arbitrary_requests_are_never_acknowledged(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        header in proptest::option::of(prop_oneof![
            "[ -~]{0,120}",
            (0i64..2_000_000_000, "[0-9a-f]{64}").prop_map(|(t, s)| format!("t={t},v1={s}")),
            "[0-9a-f]{64}".prop_map(|s| format!("t={},v1={s}", now_unix())),
        ]),
        content_type in prop_oneof![
            Just("application/json".to_string()),
            Just("text/plain".to_string()),
            "[ -~]{0,20}",
        ],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let publisher = FakePublisher::new();
        let app = router(&config(), publisher.clone());
        let mut request = Request::post(WEBHOOK_PATH);
        if let Ok(ct) = HeaderValue::from_str(&content_type) {
            request = request.header("content-type", ct);
        }
        if let Some(h) = header.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            request = request.header("stripe-signature", h);
        }
        let request = request.body(Body::from(body)).unwrap();
        let (status, _, json) = runtime.block_on(send(&app, request));
        prop_assert!(!status.is_success(), "{status} {json}");
        prop_assert!(json["error"].is_string());
        prop_assert!(publisher.written().is_empty());
    }

    /// Arbitrary bytes that *are* correctly signed: a verified body that is not an event is a
    /// 400 with a reason, never a panic or a write.
    #[test]
    fn arbitrary_signed_bodies_are_parsed_safely(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let publisher = FakePublisher::new();
        let app = router(&config(), publisher.clone());
        let t = now_unix();
        let request = Request::post(WEBHOOK_PATH)
            .header("content-type", "application/json")
            .header("stripe-signature", signature_header(SECRET, t, &body))
            .body(Body::from(body.clone()))
            .unwrap();
        let (status, _, _) = runtime.block_on(send(&app, request));
        let is_event = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v["object"] == "event" && v["id"].as_str().is_some_and(|s| !s.is_empty()));
        prop_assert!(status == StatusCode::BAD_REQUEST || (is_event && status == StatusCode::OK), "{status}");
        prop_assert_eq!(publisher.written().len(), usize::from(status == StatusCode::OK));
    }
}
