//! `dataverse-emulator`: parses flags (over an optional config file over the defaults), binds, prints
//! `dataverse-emulator listening on http://ADDR` once bound, and serves until SIGINT or SIGTERM.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dataverse_emulator::{Config, Secret, TableConfig};

/// A local emulator of the Microsoft Dataverse Web API (tokens, tables, $batch, throttling, faults).
#[derive(Debug, Parser)]
#[command(name = "dataverse-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "DATAVERSE_EMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Configuration file (TOML, or JSON when it ends in .json) over the defaults.
    #[arg(long, env = "DATAVERSE_EMULATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Persist rows and tokens to this snapshot file (in memory only when absent).
    #[arg(long, env = "DATAVERSE_EMULATOR_PERSIST")]
    persist: Option<PathBuf>,
    /// Client id allowed to get tokens (replaces the configured clients when given with a secret).
    #[arg(long, env = "DATAVERSE_EMULATOR_CLIENT_ID")]
    client_id: Option<String>,
    /// Secret of --client-id.
    #[arg(long, env = "DATAVERSE_EMULATOR_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Access token lifetime in seconds [default: 3600].
    #[arg(long, env = "DATAVERSE_EMULATOR_TOKEN_LIFETIME_SECS")]
    token_lifetime_secs: Option<u64>,
    /// Turn the service protection limits off.
    #[arg(long, env = "DATAVERSE_EMULATOR_NO_LIMITS")]
    no_limits: bool,
    /// Sliding window of the limits in milliseconds [default: 300000].
    #[arg(long, env = "DATAVERSE_EMULATOR_WINDOW_MS")]
    window_ms: Option<u64>,
    /// Requests per window per client [default: 6000].
    #[arg(long, env = "DATAVERSE_EMULATOR_MAX_REQUESTS")]
    max_requests: Option<u64>,
    /// Combined execution time per window per client, in milliseconds [default: 1200000].
    #[arg(long, env = "DATAVERSE_EMULATOR_MAX_EXECUTION_TIME_MS")]
    max_execution_time_ms: Option<u64>,
    /// Concurrent requests per client [default: 52].
    #[arg(long, env = "DATAVERSE_EMULATOR_MAX_CONCURRENT")]
    max_concurrent: Option<u64>,
    /// Simulated processing time of every operation, in milliseconds [default: 0].
    #[arg(long, env = "DATAVERSE_EMULATOR_LATENCY_MS")]
    latency_ms: Option<u64>,
    /// Fraction of Web API requests answered 500/503 [default: 0].
    #[arg(long, env = "DATAVERSE_EMULATOR_ERROR_RATE")]
    error_rate: Option<f64>,
    /// Serve the contacts table without the sink's Stripe columns and alternate key, as a fresh
    /// environment has it, for `sink-dataverse provision` to create them.
    #[arg(long, env = "DATAVERSE_EMULATOR_BARE_CONTACTS")]
    bare_contacts: bool,
    /// How long a key created through the metadata API stays Pending, in milliseconds [default: 1000].
    #[arg(long, env = "DATAVERSE_EMULATOR_KEY_PENDING_MS")]
    key_pending_ms: Option<u64>,
    /// How long its index then builds (InProgress), in milliseconds [default: 2000].
    #[arg(long, env = "DATAVERSE_EMULATOR_KEY_BUILD_MS")]
    key_build_ms: Option<u64>,
    /// Fraction of Web API requests whose connection is dropped [default: 0].
    #[arg(long, env = "DATAVERSE_EMULATOR_DROP_RATE")]
    drop_rate: Option<f64>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<(SocketAddr, Config)> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(path) = self.persist {
            config.persist_path = Some(path);
        }
        match (self.client_id, self.client_secret) {
            (Some(id), Some(secret)) => {
                config.clients.clear();
                config.clients.insert(id, Secret::new(secret));
            }
            (None, None) => {}
            _ => anyhow::bail!("--client-id and --client-secret must be given together"),
        }
        if let Some(secs) = self.token_lifetime_secs {
            config.token_lifetime_secs = secs;
        }
        if self.no_limits {
            config.limits.enabled = false;
        }
        let limits = &mut config.limits;
        limits.window_ms = self.window_ms.unwrap_or(limits.window_ms);
        limits.max_requests = self.max_requests.unwrap_or(limits.max_requests);
        limits.max_execution_time_ms = self.max_execution_time_ms.unwrap_or(limits.max_execution_time_ms);
        limits.max_concurrent = self.max_concurrent.unwrap_or(limits.max_concurrent);
        if let Some(ms) = self.latency_ms {
            config.latency.default_ms = ms;
        }
        if let Some(rate) = self.error_rate {
            config.faults.error_rate = rate;
        }
        if self.bare_contacts {
            for table in &mut config.tables {
                if table.entity_set == "contacts" {
                    *table = TableConfig::bare_contacts();
                }
            }
        }
        if let Some(ms) = self.key_pending_ms {
            config.key_index.pending_ms = ms;
        }
        if let Some(ms) = self.key_build_ms {
            config.key_index.build_ms = ms;
        }
        if let Some(rate) = self.drop_rate {
            config.faults.drop_rate = rate;
        }
        config.validate()?;
        Ok((self.listen, config))
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (listen, config) = Args::parse().into_config()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("dataverse-emulator listening on http://{addr}");
    dataverse_emulator::run(listener, config, shutdown_signal()).await
}
