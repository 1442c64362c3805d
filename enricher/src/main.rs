//! The `enricher` command: the shared stage command line (`run`, `print-config`, `replay`) around
//! [`enricher::run`].

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use enricher::EnricherConfig;

#[tokio::main]
async fn main() -> ExitCode {
    common::stage::main::<EnricherConfig, _, _>(
        "Normalises Stripe customer events from stripe.events into customers.normalized.",
        enricher::run,
    )
    .await
}
