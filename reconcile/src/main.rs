//! The `reconcile` command: one pass over Stripe and Dataverse, the report on stdout, logs on
//! stderr. Exit status: 0 when nothing drifted (or every drift got a corrective record with
//! `--repair`), 1 when drift was found and left as it is, 2 when the run failed.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use common::config::ConfigArgs;

#[derive(Debug, Parser)]
#[command(
    name = "reconcile",
    version,
    about = "Compares Stripe's customers with the contacts in Dataverse, reports drift, and repairs it through the pipeline.",
    long_about = "Compares Stripe's customers with the contacts in Dataverse, reports drift, and repairs it through the pipeline.\n\n\
        Settings come from defaults, a TOML file (--config), the environment (KAFKA_BOOTSTRAP_SERVERS, \
        SCHEMA_REGISTRY_URL, STRIPE_API_KEY, RECONCILE_*) and --set key=value; see print-config."
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the report as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a corrective record to the sink's input topic for every drift it can repair.
    #[arg(long)]
    repair: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective settings as TOML (secrets masked) and exit.
    PrintConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reconcile failed");
            eprintln!("reconcile: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = reconcile::config::load(&cli.config, std::env::vars())?;
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", common::config::render(&config));
        return Ok(ExitCode::SUCCESS);
    }
    let telemetry = common::telemetry::init("reconcile", &config.telemetry)?;
    let stripe = common::stripe::StripeClient::new(&config.stripe)?;
    let interrupted = common::shutdown::on_signal();
    let report = tokio::select! {
        report = reconcile::reconcile(&config, &stripe, cli.repair) => report,
        () = interrupted.cancelled() => anyhow::bail!("interrupted; nothing more was written"),
    };
    telemetry.shutdown();
    let report = report?;
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.has_drift() && report.repair.is_none() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
