//! `gateway`: parse the command line and configuration, set up telemetry, bind, and run until
//! SIGINT or SIGTERM; or, with `send`, sign and post test events to a gateway. Everything else is
//! the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::config::ConfigArgs;
use gateway::GatewayConfig;

/// Receives Stripe webhooks, verifies them and writes them durably to Kafka.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks (the default).
    Run,
    /// Print the effective configuration (secrets masked) and exit.
    PrintConfig,
    /// Sign Stripe events and POST them to a webhook URL (a gateway under test), printing each
    /// answer; exits non-zero when any answer is not 2xx. Needs no configuration.
    Send(gateway::send::SendArgs),
    /// Recover events whose webhooks were missed: read them from Stripe's events API (the last
    /// 30 days) and write them to the topic as verified webhooks are written. Resumable.
    Backfill(gateway::backfill::BackfillArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Send(args)) = cli.command {
        let summary = gateway::send::run(args).await?;
        if summary.failed() > 0 {
            anyhow::bail!(
                "{} of {} events were not answered 2xx ({} non-2xx, {} errors)",
                summary.failed(),
                summary.sent,
                summary.not_ok,
                summary.errors
            );
        }
        return Ok(());
    }
    if let Some(Command::Backfill(args)) = cli.command {
        let config = GatewayConfig::load_for_backfill(&cli.config)?;
        let telemetry = common::telemetry::init("gateway-backfill", &config.telemetry)?;
        let shutdown = common::shutdown::on_signal();
        let dry_run = args.dry_run;
        let result = gateway::backfill::run(config.clone(), args, shutdown).await;
        telemetry.shutdown();
        let summary = result?;
        println!(
            "{}",
            gateway::backfill::render_summary(&summary, dry_run, &config.topic)
        );
        return Ok(());
    }
    let config = GatewayConfig::load(&cli.config)?;
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", common::config::render(&config));
        return Ok(());
    }
    let telemetry = common::telemetry::init("gateway", &config.telemetry)?;
    let shutdown = common::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("setting `listen`: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout, for people and for harnesses that wait for it.
    println!(
        "gateway listening on {}",
        gateway::url(addr, config.tls.enabled())
    );
    let result = gateway::run(config, listener, shutdown).await;
    telemetry.shutdown();
    result
}
