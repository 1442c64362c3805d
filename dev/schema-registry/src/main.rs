//! `schema-registry`: serve a Confluent-compatible schema registry.
//!
//! Prints `schema-registry listening on http://ADDR` on stdout once it accepts
//! connections; logs go to stderr (`RUST_LOG`, default `info`).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use schema_registry::{AppState, Compatibility, Config};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "schema-registry", version, about)]
struct Args {
    /// Address to listen on (`HOST:PORT`; port 0 picks a free one).
    #[arg(long, env = "SCHEMA_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Directory for the state file; without it the state lives in memory only.
    #[arg(long, env = "SCHEMA_REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Global compatibility level until one is set with `PUT /config`.
    #[arg(long, env = "SCHEMA_REGISTRY_COMPATIBILITY", default_value = "BACKWARD")]
    compatibility: Compatibility,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("schema-registry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = Config {
        data_dir: args.data_dir,
        default_compatibility: args.compatibility,
    };
    let state = AppState::open(&config).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        data_dir = ?config.data_dir,
        compatibility = %config.default_compatibility,
        "schema registry started"
    );
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "schema-registry listening on http://{addr}")?;
        stdout.flush()?;
    }
    schema_registry::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("schema registry stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
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
