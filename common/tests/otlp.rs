//! Spans reach a configured OTLP/HTTP endpoint, from inside an async runtime as the stages run.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, routing::post};
use common::telemetry::{TelemetrySettings, init};

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_http() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                if !body.is_empty() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let settings = TelemetrySettings {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TelemetrySettings::default()
    };
    let telemetry = init("otlp-test", &settings).unwrap();
    tracing::info_span!("exported_span", customer_id = "cus_1").in_scope(|| tracing::info!("inside"));
    // Shutting down flushes the batch synchronously.
    telemetry.shutdown();
    assert!(
        hits.load(Ordering::SeqCst) >= 1,
        "the collector received the span batch"
    );
}

#[test]
fn a_bad_log_filter_names_the_setting() {
    let settings = TelemetrySettings {
        log: "info,[=".into(),
        ..TelemetrySettings::default()
    };
    let err = init("x", &settings).unwrap_err().to_string();
    assert!(err.contains("telemetry.log"), "{err}");
}
