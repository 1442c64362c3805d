//! The HTTP service: the routes and serving them. By concern:
//! * `listener` — a TCP listener whose connections fault injection can close without an answer;
//! * `web_api` — the Web API pipeline (token check → throttling → faults → execution → latency →
//!   persistence) and one request's execution;
//! * `batch_exec` — `$batch` execution: operations in order, change sets atomically;
//! * `token` — the Entra ID token endpoint;
//! * `admin` — the admin API under `/_admin/` and `/metrics`;
//! * `state` — the shared state and its locks, which all of the above use.

mod admin;
mod batch_exec;
mod listener;
mod state;
mod token;
mod web_api;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

use crate::error::ApiError;

pub use state::AppState;

use listener::{Conn, DroppableListener};

/// Serves until `shutdown` resolves, then finishes the requests in flight and writes a last snapshot.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    axum::serve(
        DroppableListener(listener),
        app.into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    state
        .persist()
        .await
        .map_err(|e| anyhow::anyhow!("final snapshot failed: {e}"))?;
    Ok(())
}

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .route("/api/data/{*rest}", any(web_api::web_api))
        .route("/_admin/stats", get(admin::admin_stats))
        .route("/_admin/reset", post(admin::admin_reset))
        .route(
            "/_admin/faults",
            get(admin::admin_get_faults).post(admin::admin_set_faults),
        )
        .route("/_admin/tables/{set}", get(admin::admin_table))
        .route("/_admin/tokens/expire", post(admin::admin_expire_tokens))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(admin::metrics))
        .fallback(|request: Request| async move {
            ApiError::ResourceNotFound(request.uri().path().trim_start_matches('/').to_owned()).render()
        })
        .with_state(state)
}
