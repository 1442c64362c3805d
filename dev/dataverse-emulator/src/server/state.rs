//! The shared state of the service and the one way to take its locks.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::api::OpKind;
use crate::auth::Tokens;
use crate::config::{Config, LatencyConfig};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::limits::Limiter;
use crate::persist::Persister;
use crate::stats::Stats;
use crate::store::Store;

/// Takes a std lock. A poisoned lock only means another request panicked mid-update; the data is
/// still the best there is, so carry on with it rather than fail every later request.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared state. Every lock is a std mutex taken for a synchronous moment, never across `.await`.
#[derive(Debug)]
pub struct AppState {
    pub(super) config: Config,
    pub(super) store: Mutex<Store>,
    pub(super) tokens: Mutex<Tokens>,
    pub(super) limiter: Mutex<Limiter>,
    pub(super) faults: Mutex<Faults>,
    pub(super) stats: Mutex<Stats>,
    pub(super) persister: Option<Persister>,
}

impl AppState {
    /// Builds the state, loading the snapshot file when persistence is on.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let mut store = Store::new(&config);
        let mut tokens = Tokens::default();
        let persister = config.persist_path.clone().map(Persister::new);
        if let Some(persister) = &persister
            && let Some(snapshot) = Persister::load(persister.path())?
        {
            store.restore(snapshot.store)?;
            tokens.restore(snapshot.tokens);
            tracing::info!(path = %persister.path().display(), "loaded persisted state");
        }
        Ok(Arc::new(Self {
            store: Mutex::new(store),
            tokens: Mutex::new(tokens),
            limiter: Mutex::new(Limiter::new(config.limits.clone())),
            faults: Mutex::new(Faults::new(config.faults.clone(), Instant::now())),
            stats: Mutex::new(Stats::default()),
            persister,
            config,
        }))
    }

    pub(super) fn latency(&self, kind: OpKind) -> Duration {
        let LatencyConfig {
            default_ms,
            create_ms,
            retrieve_ms,
            query_ms,
            update_ms,
            delete_ms,
        } = &self.config.latency;
        let ms = match kind {
            OpKind::Create => create_ms,
            OpKind::Retrieve => retrieve_ms,
            OpKind::Query => query_ms,
            OpKind::Update => update_ms,
            OpKind::Delete => delete_ms,
        };
        Duration::from_millis(ms.unwrap_or(*default_ms))
    }

    /// Writes the snapshot file, when persistence is on. Called after a change, before answering.
    pub(super) async fn persist(&self) -> Result<(), ApiError> {
        let Some(persister) = &self.persister else {
            return Ok(());
        };
        let ticket = persister.ticket();
        let store = lock(&self.store).snapshot_json();
        let tokens = lock(&self.tokens).snapshot();
        let bytes = serde_json::to_vec(&json!({ "store": store, "tokens": tokens }))
            .map_err(|e| ApiError::Internal(format!("cannot serialise snapshot: {e}")))?;
        persister
            .write(ticket, bytes)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write {}: {e}", persister.path().display())))
    }
}
