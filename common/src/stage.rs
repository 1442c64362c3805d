//! The command line every consuming stage shares: `run` (the default), `print-config` and
//! `replay`, with configuration loaded and validated the same way for all of them.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, ConfigArgs, KafkaSettings, Settings},
    replay::{self, ReplayArgs},
    telemetry::TelemetrySettings,
};

/// What the shared command line needs to know of a consuming stage's settings.
pub trait ConsumingStage: Settings + Send + 'static {
    /// The binary's name, for help, messages and the default service name in traces.
    const NAME: &'static str;
    fn listen(&self) -> SocketAddr;
    fn kafka(&self) -> &KafkaSettings;
    fn telemetry(&self) -> &TelemetrySettings;
    fn group(&self) -> &str;
    fn input_topic(&self) -> &str;
}

#[derive(Debug, Parser)]
struct StageCli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<StageCommand>,
}

#[derive(Debug, Subcommand)]
enum StageCommand {
    /// Consume and process until SIGINT or SIGTERM (the default).
    Run,
    /// Print the effective configuration as TOML, secrets masked, and exit.
    PrintConfig,
    /// Reset the group's committed offsets for a topic (default: the input topic), so records
    /// are delivered again (or skipped). Stop every member of the group first.
    Replay(ReplayArgs),
}

/// Parses the command line and runs the chosen command; `run` is the stage's library entry point.
/// `about` is the first line of `--help`.
pub async fn main<S, F, Fut>(about: &'static str, run: F) -> ExitCode
where
    S: ConsumingStage,
    F: FnOnce(S, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let command = StageCli::command()
        .name(S::NAME)
        .about(about)
        .long_about(format!(
            "{about}\n\nSettings come from defaults, a TOML file (--config), the environment \
             (KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, {}*) and --set key=value; see print-config.",
            S::ENV_PREFIX
        ))
        .version(env!("CARGO_PKG_VERSION"));
    let cli = match StageCli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match dispatch::<S, F, Fut>(cli, run).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{} failed", S::NAME);
            eprintln!("{}: {e:#}", S::NAME);
            ExitCode::FAILURE
        }
    }
}

async fn dispatch<S, F, Fut>(cli: StageCli, run: F) -> anyhow::Result<()>
where
    S: ConsumingStage,
    F: FnOnce(S, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings: S = config::load(&cli.config)?;
    match cli.command.unwrap_or(StageCommand::Run) {
        StageCommand::PrintConfig => {
            print!("{}", config::render(&settings));
            Ok(())
        }
        StageCommand::Replay(args) => {
            let _telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
            tokio::task::spawn_blocking(move || {
                replay::run(settings.kafka(), settings.group(), settings.input_topic(), &args)
            })
            .await
            .context("replay task failed")?
            .context("replay")?;
            Ok(())
        }
        StageCommand::Run => {
            let telemetry = crate::telemetry::init(S::NAME, settings.telemetry())?;
            let addr = settings.listen();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("invalid setting `listen`: cannot listen on {addr}"))?;
            // One line on stdout, for people and for harnesses that wait for it.
            println!("{} ops listening on http://{}", S::NAME, listener.local_addr()?);
            let result = run(settings, listener, crate::shutdown::on_signal()).await;
            telemetry.shutdown();
            result
        }
    }
}
