//! The `sink-dataverse` command: parse the command line and configuration, set up telemetry, and
//! hand over to the library ([`sink_dataverse::run`] or [`common::replay::run`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use common::{
    config::{self, ConfigArgs},
    replay::{self, ReplayArgs},
};
use sink_dataverse::{SinkConfig, handler::STAGE};

/// Consumes customers.normalized and writes each change to a Dataverse contact, exactly once in
/// effect.
///
/// Settings come from defaults, a TOML file (`--config`), the environment
/// (`KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL`, `SINK_*`) and `--set key=value`; see
/// `print-config` and the README.
#[derive(Debug, Parser)]
#[command(name = "sink-dataverse", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume and write until SIGINT or SIGTERM (the default).
    Run,
    /// Print the effective configuration as TOML, secrets masked, and exit.
    PrintConfig,
    /// Reset the group's committed offsets for a topic (default: the input topic), so changes are
    /// delivered again (or skipped). Stop every sink of the group first.
    Replay(ReplayArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sink-dataverse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings: SinkConfig = config::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintConfig => {
            print!("{}", config::render(&settings));
            Ok(())
        }
        Command::Replay(args) => {
            let _telemetry = common::telemetry::init(STAGE, &settings.telemetry)?;
            tokio::task::spawn_blocking(move || {
                replay::run(&settings.kafka, &settings.group, &settings.input_topic, &args)
            })
            .await
            .context("replay task failed")?
            .context("replay")?;
            Ok(())
        }
        Command::Run => {
            let telemetry = common::telemetry::init(STAGE, &settings.telemetry)?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("invalid setting `listen`: cannot listen on {}", settings.listen))?;
            // One line on stdout, for people and for harnesses that wait for it.
            println!(
                "sink-dataverse ops listening on http://{}",
                listener.local_addr()?
            );
            let shutdown = common::shutdown::on_signal();
            let result = sink_dataverse::run(settings, listener, shutdown).await;
            if let Err(e) = &result {
                tracing::error!(error = format!("{e:#}"), "sink-dataverse failed");
            }
            telemetry.shutdown();
            result
        }
    }
}
