//! The gateway benchmark's baseline: a plain rdkafka producer writing the records the gateway
//! writes, with nothing of the gateway around it (no HTTP, no verification per request, no
//! producer replacement). Same broker, same producer settings (`common::kafka::producer`:
//! idempotent, `acks=all`, `linger.ms` 5), same record (the loadgen's event, verified, parsed and
//! encoded through the schema registry once per event before the clock starts, with the trace
//! headers the gateway adds), and `--concurrency` records in flight, each awaited on its delivery
//! future from `send_result` as the gateway awaits its delivery report. Prints the loadgen's
//! report (latency from enqueue to delivery report) and its `BENCH {json}` line.
//!
//! `cargo run --release -p gateway --example producer_baseline -- --bootstrap 127.0.0.1:9092
//!  --registry http://127.0.0.1:8081 --events 20000 --concurrency 32`

#[allow(dead_code)]
mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use common::{
    config::KafkaSettings,
    kafka::{self, TopicSpec},
};
use gateway::{VerifiedEvent, Verifier, signature};
use rdkafka::{message::OwnedHeaders, producer::FutureRecord};
use schemas::{Codec, RegistryConfig, StripeEvent};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry: String,
    /// The topic to write (created with `--partitions` if missing); the value subject is
    /// `<topic>-value`, registered with the `StripeEvent` schema.
    #[arg(long, default_value = "bench.producer")]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Records in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Distinct customers the events are spread over (the record key).
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Stop sending after this long, whatever is left.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    #[arg(long, default_value = "producer")]
    label: String,
}

struct Record {
    key: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.concurrency > 0 && args.events > 0,
        "events and concurrency must be positive"
    );
    let settings = KafkaSettings {
        bootstrap_servers: args.bootstrap.clone(),
        properties: BTreeMap::new(),
    };
    kafka::ensure_topics(
        &settings,
        &[TopicSpec::new(&args.topic, args.partitions)],
        "topics",
    )
    .await?;
    let codec = Codec::new(&RegistryConfig::new(&args.registry))?;
    codec.prepare::<StripeEvent>(&args.topic).await?;

    // The gateway's record for each event: verified and parsed from the signed body, encoded by
    // the codec, keyed by customer, with fresh trace headers.
    let secret = "whsec_producer_baseline";
    let verifier = Verifier::new([secret], Duration::from_secs(300), Duration::from_secs(300));
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let t = signature::now_unix();
    let customers = args.customers.max(1);
    let mut records = Vec::with_capacity(args.events);
    for n in 0..args.events {
        let customer = format!("cus_load_{}", n % customers);
        let body = support::event(&format!("evt_base_{run}_{n}"), &customer, n, n / customers);
        let header = signature::signature_header(secret, t, body.as_bytes());
        let verified = verifier.verify(
            Some(header.as_bytes()),
            body.into_bytes().into(),
            std::time::SystemTime::now(),
        )?;
        let event = VerifiedEvent::parse(verified, 0)?;
        records.push(Record {
            key: event.key().to_string(),
            payload: codec.encode(&args.topic, event.record()).await?,
            headers: kafka::trace_headers(&kafka::current_context()),
        });
    }
    let bytes: usize = records.iter().map(|r| r.key.len() + r.payload.len()).sum();
    eprintln!("record size (key + value, mean): {} bytes", bytes / records.len());

    let producer = kafka::producer(&settings, "bench-producer", Duration::from_secs(30))?;
    // The producer's connections and idempotent session are set up before the clock starts (the
    // gateway's are, by its start-up and the warm-up): one record, awaited.
    let first = &records[0];
    producer
        .send(
            FutureRecord::to(&args.topic)
                .key(&first.key)
                .payload(&first.payload)
                .headers(first.headers.clone()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("the warm-up record failed: {e}"))?;
    let records = Arc::new(records);
    let next = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Mutex::new(support::histogram()));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (producer, records, next, latency, statuses, topic) = (
                producer.clone(),
                records.clone(),
                next.clone(),
                latency.clone(),
                statuses.clone(),
                args.topic.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= records.len() || Instant::now() > deadline {
                        return;
                    }
                    let r = &records[i];
                    let sent = Instant::now();
                    let record = FutureRecord::to(&topic)
                        .key(&r.key)
                        .payload(&r.payload)
                        .headers(r.headers.clone());
                    let outcome = match producer.send_result(record) {
                        Ok(delivery) => match delivery.await {
                            Ok(Ok(_)) => "delivered".to_string(),
                            Ok(Err((e, _))) => format!("failed: {e}"),
                            Err(_) => "canceled".to_string(),
                        },
                        Err((e, _)) => format!("refused: {e}"),
                    };
                    support::record(&mut latency.lock().unwrap(), sent.elapsed());
                    *statuses.lock().unwrap().entry(outcome).or_default() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    let latency = latency.lock().unwrap().clone();
    let statuses = statuses.lock().unwrap().clone();
    let done: usize = statuses.values().sum();
    let ok = statuses.get("delivered").copied().unwrap_or(0);
    println!("topic        {}", args.topic);
    println!(
        "records      {done} of {} (concurrency {})",
        args.events, args.concurrency
    );
    println!("outcomes     {statuses:?}");
    println!("elapsed      {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput   {:.0} records/s",
        done as f64 / elapsed.as_secs_f64()
    );
    println!("{}", support::latency_line("latency ms", &latency));
    support::print_machine_line(&json!({
        "label": args.label,
        "mode": "closed",
        "concurrency": args.concurrency,
        "events": args.events,
        "done": done,
        "ok": ok,
        "statuses": statuses,
        "elapsed_s": elapsed.as_secs_f64(),
        "throughput": done as f64 / elapsed.as_secs_f64(),
        "latency_ms": support::percentiles(&latency),
    }));
    Ok(())
}
