//! The sink benchmark's baseline (see `scripts/bench.sh sink`): the writer the project started
//! from. It reads `customers.normalized` with the stages' consumer, decodes each `Customer` with
//! the codec and sends one `PATCH contacts(new_stripecustomerid='<id>')` (name, email, phone)
//! per change, sequentially, with no batching, no read and no staleness guard (a delete is one
//! `DELETE`). A 429 is waited out for its `Retry-After` and sent again. A record's offset is
//! stored once its write is done. It stops after `--max-seconds` or when the topic's records
//! present at start are all written, and prints a report and a `BENCH {json}` line; the clock
//! starts at the first record, so the group join is not counted.
//!
//! `cargo run --release -p harness --example seed_writer -- --bootstrap 127.0.0.1:9092
//!  --registry http://127.0.0.1:8081 --emulator http://127.0.0.1:8090 --max-seconds 30`

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Parser;
use common::{config::KafkaSettings, kafka};
use rdkafka::{
    Message,
    consumer::{Consumer, DefaultConsumerContext},
};
use schemas::{Codec, Customer, CustomerOp, RegistryConfig};
use serde_json::{Map, Value, json};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry: String,
    /// The Dataverse emulator (or any environment URL whose token endpoint is
    /// `<url>/<tenant>/oauth2/v2.0/token`).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    emulator: String,
    #[arg(long, default_value = "local")]
    tenant: String,
    #[arg(long, default_value = "sink-dataverse")]
    client_id: String,
    #[arg(long, default_value = "local-secret")]
    client_secret: String,
    #[arg(long, default_value = "customers.normalized")]
    topic: String,
    #[arg(long, default_value = "bench-seed")]
    group: String,
    #[arg(long, default_value = "new_stripecustomerid")]
    key_column: String,
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    #[arg(long, default_value = "seed writer")]
    label: String,
}

async fn token(http: &reqwest::Client, args: &Args) -> anyhow::Result<String> {
    harness::inspect::emulator_token(
        http,
        &args.emulator,
        &args.tenant,
        &args.client_id,
        &args.client_secret,
    )
    .await
}

/// The columns the seed's writer set (the sink's default mapping of them).
fn body(c: &Customer) -> Value {
    let mut m = Map::new();
    for (column, value) in [
        ("firstname", &c.first_name),
        ("lastname", &c.last_name),
        ("emailaddress1", &c.email),
        ("telephone1", &c.phone),
    ] {
        m.insert(column.into(), value.clone().map_or(Value::Null, Value::String));
    }
    Value::Object(m)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = KafkaSettings {
        bootstrap_servers: args.bootstrap.clone(),
        properties: BTreeMap::new(),
    };
    let codec = Codec::new(&RegistryConfig::new(&args.registry))?;
    let consumer = kafka::consumer(&settings, "bench-seed", &args.group, DefaultConsumerContext)?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(30))?;
    let mut total = 0i64;
    for t in metadata.topics() {
        for p in t.partitions() {
            total += consumer
                .fetch_watermarks(&args.topic, p.id(), Duration::from_secs(30))?
                .1;
        }
    }
    consumer.subscribe(&[&args.topic])?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut bearer = token(&http, &args).await?;
    let base = format!("{}/api/data/v9.2/contacts", args.emulator.trim_end_matches('/'));

    let mut statuses = BTreeMap::<String, usize>::new();
    let (mut done, mut throttled, mut throttled_for) = (0usize, 0usize, Duration::ZERO);
    let mut started: Option<Instant> = None;
    let limit = Duration::from_secs(args.max_seconds);
    while (done as i64) < total && started.is_none_or(|s| s.elapsed() < limit) {
        let message = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => continue,
        };
        let started = *started.get_or_insert_with(Instant::now);
        let Some(payload) = message.payload() else {
            continue;
        };
        let change: Customer = codec.decode(payload).await?;
        let id = change.customer_id.replace('\'', "''");
        let url = format!("{base}({}='{id}')", args.key_column);
        let status = loop {
            let request = match change.op {
                CustomerOp::Upsert => http.patch(&url).json(&body(&change)),
                CustomerOp::Delete => http.delete(&url),
            };
            let response = request.bearer_auth(&bearer).send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            let _ = response.bytes().await;
            match status {
                429 => {
                    let wait = Duration::from_secs_f64(retry_after.unwrap_or(1.0).max(0.05));
                    throttled += 1;
                    throttled_for += wait;
                    if started.elapsed() + wait > limit {
                        break status;
                    }
                    tokio::time::sleep(wait).await;
                }
                401 => bearer = token(&http, &args).await?,
                _ => break status,
            }
        };
        if status == 429 {
            break;
        }
        *statuses.entry(status.to_string()).or_default() += 1;
        consumer.store_offset(&args.topic, message.partition(), message.offset())?;
        done += 1;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    println!("changes      {done} of {total} written");
    println!("statuses     {statuses:?}");
    println!(
        "throttled    {throttled} × 429, {:.1} s waited",
        throttled_for.as_secs_f64()
    );
    println!("elapsed      {:.2} s", elapsed.as_secs_f64());
    println!("throughput   {rate:.1} changes/s");
    println!(
        "BENCH {}",
        json!({
            "label": args.label,
            "done": done,
            "total": total,
            "statuses": statuses,
            "throttled": throttled,
            "throttled_seconds": throttled_for.as_secs_f64(),
            "elapsed_s": elapsed.as_secs_f64(),
            "throughput": rate,
        })
    );
    Ok(())
}
