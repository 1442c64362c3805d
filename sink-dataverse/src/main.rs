//! The `sink-dataverse` command: the shared stage command line (`run`, `print-config`, `replay`)
//! around [`sink_dataverse::run`].

use std::process::ExitCode;

use sink_dataverse::SinkConfig;

#[tokio::main]
async fn main() -> ExitCode {
    common::stage::main::<SinkConfig, _, _>(
        "Writes each change from customers.normalized to a Dataverse contact, exactly once in effect.",
        sink_dataverse::run,
    )
    .await
}
