//! The operational HTTP surface every service exposes: `GET /healthz` (the process is alive),
//! `GET /readyz` (its dependencies answer) and `GET /metrics` (Prometheus/OpenMetrics text).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{FutureExt, future::BoxFuture};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// One named dependency check for `/readyz`.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Builds a [`Check`] from an async closure.
pub fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || f().boxed())
}

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Registry>,
    checks: Arc<Vec<(&'static str, Check)>>,
    check_timeout: Duration,
}

/// The ops routes, to be merged into a service's router or served on their own listener.
pub fn router(metrics: Arc<Registry>, checks: Vec<(&'static str, Check)>) -> Router {
    let state = OpsState {
        metrics,
        checks: Arc::new(checks),
        check_timeout: Duration::from_secs(3),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let results = futures::future::join_all(state.checks.iter().map(|(name, check)| {
        let timeout = state.check_timeout;
        async move {
            let outcome = match tokio::time::timeout(timeout, check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (*name, outcome)
        }
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                serde_json::Value::String(r.err().unwrap_or_else(|| "ok".into())),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.metrics) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let res = router
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let mut registry = Registry::with_prefix("demo");
        let counter = Counter::<u64>::default();
        registry.register("events", "Events seen", counter.clone());
        counter.inc_by(3);
        let ok = check(|| async { Ok(()) });
        let down = check(|| async { Err("connection refused".to_string()) });
        let registry = Arc::new(registry);

        let r = router(registry.clone(), vec![("kafka", ok.clone())]);
        assert_eq!(get(r.clone(), "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(r.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = get(r, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("demo_events_total 3"), "{body}");

        let r = router(registry, vec![("kafka", ok), ("schema_registry", down)]);
        let (status, body) = get(r, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checks"]["schema_registry"], "connection refused");
        assert_eq!(v["checks"]["kafka"], "ok");
    }
}
