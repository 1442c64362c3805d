//! The `enricher` command: parse the command line and configuration, set up telemetry, and hand
//! over to the library ([`enricher::run`] or [`common::replay::run`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use common::{
    config::{self, ConfigArgs},
    replay::{self, ReplayArgs},
};
use enricher::EnricherConfig;

/// Normalises Stripe customer events from `stripe.events` into `customers.normalized`.
///
/// Settings come from defaults, a TOML file (`--config`), the environment (`KAFKA_BOOTSTRAP_SERVERS`,
/// `SCHEMA_REGISTRY_URL`, `ENRICHER_*`) and `--set key=value`; see `print-config`.
#[derive(Debug, Parser)]
#[command(name = "enricher", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume, normalise and produce until SIGINT or SIGTERM (the default).
    Run,
    /// Print the effective configuration as TOML, secrets masked, and exit.
    PrintConfig,
    /// Reset the group's committed offsets for a topic (default: the input topic), so records
    /// are delivered again (or skipped). Stop every enricher of the group first.
    Replay(ReplayArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enricher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings: EnricherConfig = config::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintConfig => {
            print!("{}", config::render(&settings));
            Ok(())
        }
        Command::Replay(args) => {
            let _telemetry = common::telemetry::init(enricher::STAGE, &settings.telemetry)?;
            tokio::task::spawn_blocking(move || {
                replay::run(&settings.kafka, &settings.group, &settings.input_topic, &args)
            })
            .await
            .context("replay task failed")?
            .context("replay")?;
            Ok(())
        }
        Command::Run => {
            let telemetry = common::telemetry::init(enricher::STAGE, &settings.telemetry)?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("invalid setting `listen`: cannot listen on {}", settings.listen))?;
            // One line on stdout, for people and for harnesses that wait for it.
            println!("enricher ops listening on http://{}", listener.local_addr()?);
            let shutdown = common::shutdown::on_signal();
            let result = enricher::run(settings, listener, shutdown).await;
            telemetry.shutdown();
            result
        }
    }
}
