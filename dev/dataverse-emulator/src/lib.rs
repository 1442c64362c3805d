//! A local emulator of the Microsoft Dataverse Web API subset the sink uses, faithful where it hurts:
//! Entra ID client credentials tokens that expire, `/api/data/v9.2/` create/retrieve/query/upsert/delete
//! with alternate keys and etags, `$batch` with atomic change sets, the three service protection limits
//! (429 + `Retry-After`), and fault injection. Run it as the `dataverse-emulator` binary, from tests with
//! [`run`] or [`spawn`], or as a container.
//!
//! Modules, from the wire inwards:
//! * `server` — routes and the request pipeline (token → limits → faults → execute → latency → persist),
//!   split by concern: `listener`, `web_api`, `batch_exec`, `token`, `admin`, `state`.
//! * `batch` — the `multipart/mixed` batch format: parsing, URL and `Content-ID` resolution, rendering.
//! * `api` — one Web API operation against the store, with the documented answers.
//! * `bulk` — `CreateMultiple`, `UpdateMultiple` and `UpsertMultiple`, each one transaction.
//! * `metadata` — table definitions (`EntityDefinitions`, their `Attributes` and `Keys`), read and created.
//! * `schema` — column and key metadata that changes at run time, and the key index jobs.
//! * `odata` — URL parsing: key segments, `$select`/`$filter`/`$top`/`$count`/`$orderby`.
//! * `store` — tables, rows, alternate-key indexes, row versions and the write rules, with undo.
//! * `auth`, `limits`, `faults`, `stats`, `persist` — tokens, service protection, fault injection,
//!   counters and the snapshot file.
//! * `error` — the one error type and its one rendering into Dataverse's (or Entra ID's) error shape.
//! * `response` — the transport-neutral answer (status, headers, body) that errors and operations produce.
//! * `config` — the settings and the table schema rules (system columns, value types).
//! * `values` — GUIDs and timestamps in Dataverse's formats; a leaf every other module may use.

mod api;
mod auth;
mod batch;
mod bulk;
pub mod config;
mod error;
mod faults;
pub mod limits;
mod metadata;
mod odata;
mod persist;
mod response;
mod schema;
mod server;
mod stats;
mod store;
mod values;

use std::future::Future;
use std::net::SocketAddr;

pub use config::{
    AlternateKeyConfig, ColumnConfig, ColumnType, Config, FaultConfig, ForceThrottle, KeyIndexConfig,
    LatencyConfig, LimitsConfig, Secret, TableConfig, ThrottleKind,
};
pub use error::ApiError;

/// The Web API path under the environment URL.
pub const API_PATH: &str = "/api/data/v9.2/";

/// Serves the emulator on `listener` until `shutdown` resolves; then finishes the requests in flight
/// and, when persistence is on, writes a last snapshot. Fails at start-up on an invalid configuration
/// (the error names the setting) or an unreadable snapshot file.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    tracing::info!(
        tables = ?config.tables.iter().map(|t| t.entity_set.as_str()).collect::<Vec<_>>(),
        clients = ?config.clients.keys().collect::<Vec<_>>(),
        limits = ?config.limits,
        latency = ?config.latency,
        persist = ?config.persist_path,
        "starting dataverse emulator"
    );
    let state = server::AppState::new(config)?;
    server::serve(listener, state, shutdown).await
}

/// An emulator running in the background, for tests. Dropping it stops the server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `127.0.0.1:0` and runs the emulator in a background task.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let state = server::AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, state, async {
        // A dropped sender also means stop.
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        shutdown: Some(tx),
        task,
    })
}

impl Running {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The environment URL, `http://ADDR` (the Web API is under `/api/data/v9.2/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Web API base URL, `http://ADDR/api/data/v9.2/`.
    pub fn api_url(&self) -> String {
        format!("http://{}{API_PATH}", self.addr)
    }

    /// The token URL for a tenant, `http://ADDR/<tenant>/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}/oauth2/v2.0/token", self.addr)
    }

    /// Stops the server gracefully and waits for it (and its last snapshot).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| anyhow::anyhow!("emulator task failed: {e}"))?
    }
}
