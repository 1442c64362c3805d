//! The `sink-dataverse` command: the shared stage command line (`run`, `print-config`, `replay`)
//! around [`sink_dataverse::run`], and `provision`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use sink_dataverse::{SinkConfig, provision::SinkCommand};

#[tokio::main]
async fn main() -> ExitCode {
    common::stage::main_with::<SinkConfig, SinkCommand, _, _, _, _>(
        "Writes each change from customers.normalized to a Dataverse contact, exactly once in effect.",
        sink_dataverse::run,
        |config, command| async move {
            match command {
                SinkCommand::Provision(args) => sink_dataverse::provision::run(config, args).await,
            }
        },
    )
    .await
}
