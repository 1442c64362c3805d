//! A Confluent-compatible schema registry (Avro only) for development and tests.
//!
//! It speaks the subset of the Confluent Schema Registry REST API that clients use
//! (register, look up, fetch by id, versions, compatibility checks, configuration), with
//! Confluent's status codes and `error_code`s, so that `schema_registry_converter` and
//! `curl` work against it as against the real thing. State is kept in memory and, with a
//! data directory, in one JSON file that is rewritten (temporary file + rename) on every
//! change, so ids survive a restart.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = schema_registry::Config::default();
//! schema_registry::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{RwLock, oneshot};
use tokio::task::JoinHandle;

mod api;
pub mod compat;
mod error;
mod json;
mod store;

pub use compat::Compatibility;
pub use error::RegistryError;
pub use json::CONTENT_TYPE;
pub use store::STATE_FILE;

use store::Registry;

/// Start-up configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where the state file lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// The global compatibility level until one is set with `PUT /config`.
    pub default_compatibility: Compatibility,
}

/// Shared state of the service. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<RwLock<Registry>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// An empty registry that keeps its state in memory only.
    pub fn in_memory(default_compatibility: Compatibility) -> Self {
        Self::from_registry(Registry::in_memory(default_compatibility))
    }

    /// The registry described by `config`: loaded from its data directory when it has
    /// one (which is created if missing), in memory otherwise.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let registry = match &config.data_dir {
            Some(dir) => Registry::open(dir, config.default_compatibility).await?,
            None => Registry::in_memory(config.default_compatibility),
        };
        Ok(Self::from_registry(registry))
    }

    fn from_registry(registry: Registry) -> Self {
        AppState {
            registry: Arc::new(RwLock::new(registry)),
        }
    }

    /// Apply a change: it runs on a copy, which is persisted and only then swapped in, so a
    /// failed write leaves the state as it was. `f` returns whether anything changed.
    async fn write<T>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<(T, bool), RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut guard = self.registry.write().await;
        let mut next = guard.clone();
        let (out, changed) = f(&mut next)?;
        if changed {
            next.persist().await?;
            *guard = next;
        }
        Ok(out)
    }
}

/// The HTTP application, for serving or for `tower::ServiceExt::oneshot` tests.
pub fn app(state: AppState) -> axum::Router {
    api::router(state)
}

/// Serve `state` on `listener` until `shutdown` completes (in-flight requests finish).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Open the registry described by `config` and serve it on `listener` until `shutdown`
/// completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::open(&config).await?;
    serve(listener, state, shutdown).await
}

/// A registry running in this process on `127.0.0.1` with an ephemeral port, for tests.
#[derive(Debug)]
pub struct RunningRegistry {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningRegistry {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving and wait until the server has finished.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }
}

/// Open the registry and serve it on `127.0.0.1:0` in a background task. It is ready to
/// answer when this returns.
pub async fn spawn(config: Config) -> anyhow::Result<RunningRegistry> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = AppState::open(&config).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, async {
        let _ = rx.await;
    }));
    Ok(RunningRegistry {
        addr,
        shutdown: Some(tx),
        task,
    })
}
