//! `$batch` execution: operations in order, change sets atomically, `continue-on-error`, one answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode, header};

use super::state::{AppState, lock};
use crate::api::{self, Context, OpKind, Writes};
use crate::batch::{self, Item, ResponseItem};
use crate::error::ApiError;
use crate::response::ApiResponse;
use crate::store::Store;

pub(super) async fn run_batch(
    state: &Arc<AppState>,
    base: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResponse {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let items = match batch::parse(content_type, body) {
        Ok(items) => items,
        Err(e) => return e.render(),
    };
    let operations = batch::operation_count(&items);
    if operations > batch::MAX_OPERATIONS {
        return ApiError::MalformedBatch(format!(
            "The batch holds {operations} operations; the maximum is {}.",
            batch::MAX_OPERATIONS
        ))
        .render();
    }
    {
        let mut stats = lock(&state.stats);
        stats.batches.requests += 1;
        stats.batches.operations += operations as u64;
    }
    let continue_on_error = api::prefers(headers, "odata.continue-on-error");
    let ctx = Context {
        base_url: base,
        in_batch: true,
    };
    let mut schedule = Schedule::new();
    let mut answers = Vec::new();
    let mut failed: Option<StatusCode> = None;
    let mut any_writes = false;
    for item in items {
        match item {
            Item::Single(operation) => {
                let (response, kind, writes) = {
                    let mut store = lock(&state.store);
                    run_operation(&mut store, &ctx, &operation, &HashMap::new())
                };
                lock(&state.stats).applied(kind, response.status.is_success(), writes);
                any_writes |= writes.any();
                schedule.after(state.latency(kind) * writes.cost()).await;
                let status = response.status;
                answers.push(ResponseItem::Single {
                    content_id: operation.content_id,
                    response,
                });
                if status.as_u16() >= 400 && !continue_on_error {
                    failed = Some(status);
                    break;
                }
            }
            Item::ChangeSet(members) => {
                let mut latency = Duration::ZERO;
                let result = {
                    let mut store = lock(&state.store);
                    run_change_set(&mut store, &ctx, &members, |kind, cost| {
                        latency += state.latency(kind) * cost
                    })
                };
                schedule.after(latency).await;
                match result {
                    Ok((responses, per_kind)) => {
                        let mut stats = lock(&state.stats);
                        stats.batches.change_sets_committed += 1;
                        for (kind, writes) in per_kind {
                            stats.applied(kind, true, writes);
                            any_writes |= writes.any();
                        }
                        answers.push(ResponseItem::ChangeSet(responses));
                    }
                    Err((content_id, response)) => {
                        lock(&state.stats).batches.change_sets_rolled_back += 1;
                        let status = response.status;
                        answers.push(ResponseItem::Single { content_id, response });
                        if !continue_on_error {
                            failed = Some(status);
                            break;
                        }
                    }
                }
            }
        }
    }
    if any_writes && let Err(e) = state.persist().await {
        return e.render();
    }
    let (boundary, body) = batch::render(&answers);
    let mut response = ApiResponse::odata(failed.unwrap_or(StatusCode::OK));
    if continue_on_error {
        response.push(
            HeaderName::from_static("preference-applied"),
            "odata.continue-on-error",
        );
    }
    response.push(
        header::CONTENT_TYPE,
        &format!("multipart/mixed; boundary={boundary}"),
    );
    response.body = body;
    response
}

/// A batch's simulated processing time, kept as a schedule from its start: each operation is due
/// its latency after the one before. Waiting for an absolute deadline keeps the timer's
/// millisecond rounding from adding up over a batch's operations, and an operation that is
/// already due (latency 0) never waits for a timer tick.
struct Schedule {
    start: tokio::time::Instant,
    due: Duration,
}

impl Schedule {
    fn new() -> Self {
        Schedule {
            start: tokio::time::Instant::now(),
            due: Duration::ZERO,
        }
    }

    async fn after(&mut self, latency: Duration) {
        self.due += latency;
        let at = self.start + self.due;
        if at > tokio::time::Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Runs one batch operation; a failure is answered in place and leaves nothing behind.
fn run_operation(
    store: &mut Store,
    ctx: &Context<'_>,
    operation: &batch::Operation,
    content_ids: &HashMap<String, String>,
) -> (ApiResponse, OpKind, Writes) {
    let mut undo = Vec::new();
    let (path, query) = match batch::resolve_url(&operation.url, content_ids) {
        Ok(resolved) => resolved,
        Err(e) => return (e.render(), OpKind::of(&operation.method, ""), Writes::default()),
    };
    let kind = OpKind::of(&operation.method, &path);
    let request = api::Request {
        method: &operation.method,
        path: &path,
        query: query.as_deref(),
        headers: &operation.headers,
        body: &operation.body,
    };
    match api::execute(store, ctx, &request, &mut undo) {
        Ok(outcome) => (outcome.response, kind, outcome.writes),
        Err(e) => {
            store.rollback(undo);
            (e.render(), kind, Writes::default())
        }
    }
}

type ChangeSetResult =
    Result<(Vec<(Option<String>, ApiResponse)>, Vec<(OpKind, Writes)>), (Option<String>, ApiResponse)>;

/// Runs a change set atomically: all operations apply, or the first failure rolls back the rest and
/// becomes the change set's only answer.
fn run_change_set(
    store: &mut Store,
    ctx: &Context<'_>,
    members: &[batch::Operation],
    mut on_operation: impl FnMut(OpKind, u32),
) -> ChangeSetResult {
    let mut undo = Vec::new();
    let mut content_ids: HashMap<String, String> = HashMap::new();
    let mut responses = Vec::new();
    let mut kinds = Vec::new();
    for operation in members {
        let resolved = batch::resolve_url(&operation.url, &content_ids);
        let outcome = resolved.and_then(|(path, query)| {
            let kind = OpKind::of(&operation.method, &path);
            let request = api::Request {
                method: &operation.method,
                path: &path,
                query: query.as_deref(),
                headers: &operation.headers,
                body: &operation.body,
            };
            let outcome = api::execute(store, ctx, &request, &mut undo);
            let cost = outcome.as_ref().map_or(1, |o| o.writes.cost());
            on_operation(kind, cost);
            outcome.map(|outcome| (kind, outcome))
        });
        match outcome {
            Ok((kind, outcome)) => {
                if let (Some(id), Some(path)) = (&operation.content_id, &outcome.entity_path) {
                    content_ids.insert(id.clone(), path.clone());
                }
                kinds.push((kind, outcome.writes));
                responses.push((operation.content_id.clone(), outcome.response));
            }
            Err(e) => {
                store.rollback(undo);
                return Err((operation.content_id.clone(), e.render()));
            }
        }
    }
    Ok((responses, kinds))
}
