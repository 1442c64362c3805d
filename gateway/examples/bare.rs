//! A bare axum handler on the webhook path, to measure the HTTP stack alone beside the gateway:
//! it reads the body and answers the gateway's 200 shape, with no verification and no Kafka.
//!
//! `cargo run --release -p gateway --example bare -- --listen 127.0.0.1:8090`

use std::net::SocketAddr;

use axum::{Json, Router, body::Bytes, routing::post};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

async fn receive(body: Bytes) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "received": true, "bytes": body.len() }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().route(gateway::WEBHOOK_PATH, post(receive));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(common::shutdown::signal())
        .await?;
    Ok(())
}
