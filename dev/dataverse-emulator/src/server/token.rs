//! The Entra ID token endpoint.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::Value;

use super::state::{AppState, lock};
use crate::auth::parse_form;
use crate::error::ApiError;
use crate::response::ApiResponse;

pub(super) async fn token(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let response = match issue_token(&state, &tenant, request).await {
        Ok(body) => {
            let mut response =
                ApiResponse::new(StatusCode::OK).json_body(&body, "application/json; charset=utf-8");
            response.push(header::CACHE_CONTROL, "no-store, no-cache");
            response.push(header::PRAGMA, "no-cache");
            response
        }
        Err(e) => {
            lock(&state.stats).tokens_refused += 1;
            e.render()
        }
    };
    lock(&state.stats).answered(response.status.as_u16());
    response.into_response()
}

async fn issue_token(state: &Arc<AppState>, tenant: &str, request: Request) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(64 * 1024))?;
    let form = parse_form(&bytes)?;
    let issued = lock(&state.tokens).issue(
        tenant,
        &form,
        &state.config.clients,
        state.config.token_lifetime_secs,
    )?;
    lock(&state.stats).tokens_issued += 1;
    state.persist().await?;
    serde_json::to_value(issued).map_err(|e| ApiError::Internal(e.to_string()))
}
