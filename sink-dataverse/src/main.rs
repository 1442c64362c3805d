//! The `sink-dataverse` command: parse the command line, load settings, set up telemetry, and
//! run the library until SIGINT/SIGTERM. Everything else lives in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use common::{config::ConfigArgs, replay::ReplayArgs};
use sink_dataverse::SinkConfig;

/// Consumes customers.normalized and writes each change to Dataverse exactly once in effect.
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
    /// Consume and write (the default).
    Run,
    /// Print the effective settings (secrets masked) and exit.
    PrintConfig,
    /// Move the group's committed offsets (stop every sink instance first).
    Replay(ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config: SinkConfig = common::config::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintConfig => {
            print!("{}", common::config::render(&config));
            Ok(())
        }
        Command::Replay(args) => {
            common::replay::run(&config.kafka, &config.group, &config.input_topic, &args)?;
            Ok(())
        }
        Command::Run => run(config),
    }
}

#[tokio::main]
async fn run(config: SinkConfig) -> anyhow::Result<()> {
    let telemetry = common::telemetry::init("sink-dataverse", &config.telemetry)?;
    let shutdown = common::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("invalid setting `listen`: cannot bind {}", config.listen))?;
    println!(
        "sink-dataverse ops listening on http://{}",
        listener.local_addr()?
    );
    let result = sink_dataverse::run(config, listener, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "sink-dataverse failed");
    }
    telemetry.shutdown();
    result
}
