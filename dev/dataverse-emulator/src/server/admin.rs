//! The admin API under `/_admin/` and the Prometheus endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::state::{AppState, lock};
use crate::config::FaultConfig;
use crate::error::ApiError;
use crate::response::ApiResponse;
use crate::stats::Stats;

fn rows_per_table(state: &AppState) -> BTreeMap<String, usize> {
    let store = lock(&state.store);
    store
        .entity_sets()
        .map(|set| (set.to_owned(), store.table(set).map(|t| t.len()).unwrap_or(0)))
        .collect()
}

fn admin_json(value: &Value) -> Response {
    ApiResponse::new(StatusCode::OK)
        .json_body(value, "application/json")
        .into_response()
}

pub(super) async fn admin_stats(State(state): State<Arc<AppState>>) -> Response {
    let stats = lock(&state.stats).clone();
    let limits = lock(&state.limiter).usage(Instant::now());
    let in_flight: u64 = limits.values().map(|u| u.in_flight).sum();
    let requests_total: u64 = stats.requests_by_status.values().sum();
    let mut value = serde_json::to_value(&stats).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("requests_total".into(), json!(requests_total));
        map.insert("in_flight".into(), json!(in_flight));
        map.insert(
            "limits".into(),
            serde_json::to_value(limits).unwrap_or(Value::Null),
        );
        map.insert(
            "rows".into(),
            serde_json::to_value(rows_per_table(&state)).unwrap_or(Value::Null),
        );
    }
    admin_json(&value)
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = lock(&state.stats).clone();
    let in_flight: u64 = lock(&state.limiter)
        .usage(Instant::now())
        .values()
        .map(|u| u.in_flight)
        .sum();
    let text = stats.prometheus(in_flight, &rows_per_table(&state));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// What `POST /_admin/reset` clears; everything but tokens by default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ResetRequest {
    rows: bool,
    stats: bool,
    limits: bool,
    faults: bool,
    tokens: bool,
}

impl Default for ResetRequest {
    fn default() -> Self {
        Self {
            rows: true,
            stats: true,
            limits: true,
            faults: true,
            tokens: false,
        }
    }
}

fn admin_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Admin(format!("Invalid admin request body: {e}.")))
}

async fn read_admin_body(request: Request) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), 1024 * 1024)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(1024 * 1024))
}

pub(super) async fn admin_reset(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = async {
        let reset: ResetRequest = admin_body(&read_admin_body(request).await?)?;
        if reset.rows {
            lock(&state.store).clear();
        }
        if reset.stats {
            *lock(&state.stats) = Stats::default();
        }
        if reset.limits {
            lock(&state.limiter).reset();
        }
        if reset.faults {
            lock(&state.faults).set(state.config.faults.clone(), Instant::now());
            lock(&state.store).set_rejections(state.config.faults.reject_values.clone());
        }
        if reset.tokens {
            lock(&state.tokens).clear();
        }
        if reset.rows || reset.tokens {
            state.persist().await?;
        }
        Ok::<_, ApiError>(json!({
            "rows": reset.rows, "stats": reset.stats, "limits": reset.limits,
            "faults": reset.faults, "tokens": reset.tokens,
        }))
    }
    .await;
    match result {
        Ok(value) => admin_json(&value),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn admin_get_faults(State(state): State<Arc<AppState>>) -> Response {
    let view = lock(&state.faults).view(Instant::now());
    admin_json(&serde_json::to_value(view).unwrap_or(Value::Null))
}

pub(super) async fn admin_set_faults(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let result = async {
        let faults: FaultConfig = admin_body(&read_admin_body(request).await?)?;
        faults
            .validate("faults")
            .map_err(|e| ApiError::Admin(e.to_string()))?;
        let now = Instant::now();
        lock(&state.store).set_rejections(faults.reject_values.clone());
        let mut active = lock(&state.faults);
        active.set(faults, now);
        Ok::<_, ApiError>(serde_json::to_value(active.view(now)).unwrap_or(Value::Null))
    }
    .await;
    match result {
        Ok(value) => admin_json(&value),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn admin_table(State(state): State<Arc<AppState>>, Path(set): Path<String>) -> Response {
    let store = lock(&state.store);
    match store.table(&set) {
        Ok(table) => {
            let rows: Vec<Value> = table
                .rows()
                .map(|row| Value::Object(table.row_json(row, None)))
                .collect();
            admin_json(&json!({"entity_set": set, "count": rows.len(), "value": rows}))
        }
        Err(e) => e.into_response(),
    }
}

pub(super) async fn admin_expire_tokens(State(state): State<Arc<AppState>>) -> Response {
    let expired = lock(&state.tokens).expire_all();
    admin_json(&json!({"expired": expired}))
}
