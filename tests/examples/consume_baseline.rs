//! The enricher benchmark's baseline (see `scripts/bench.sh enricher`): the plainest loop that
//! does the enricher's I/O. It consumes `stripe.events` with the consumer the stages use
//! (`common::kafka::consumer`: offsets stored explicitly, committed in the background by
//! librdkafka), decodes each value with `schemas::Codec` from the registry, re-encodes the
//! decoded `StripeEvent` for the output topic and produces it with the stages' producer settings
//! (`common::kafka::producer`), and stores a record's offset only after its delivery report
//! (deliveries are awaited in the order the records were read, so a stored offset never passes
//! an unfinished record). No normalisation, dead letters, retries, pauses or tracing. It runs
//! until stopped; `drain wait` times it by its group's commits.
//!
//! `cargo run --release -p harness --example consume_baseline -- --bootstrap 127.0.0.1:9092
//!  --registry http://127.0.0.1:8081 --group bench-baseline --output bench.baseline.out`

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use clap::Parser;
use common::{
    config::KafkaSettings,
    kafka::{self, TopicSpec},
};
use rdkafka::{
    Message,
    consumer::{Consumer, DefaultConsumerContext},
    producer::FutureRecord,
};
use schemas::{Codec, RegistryConfig, StripeEvent};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry: String,
    #[arg(long, default_value = "stripe.events")]
    input: String,
    #[arg(long, default_value = "bench.baseline.out")]
    output: String,
    #[arg(long, default_value = "bench-baseline")]
    group: String,
    /// Deliveries awaited at once, at most (records read ahead of their offsets being stored).
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = KafkaSettings {
        bootstrap_servers: args.bootstrap.clone(),
        properties: BTreeMap::new(),
    };
    kafka::ensure_topics(&settings, &[TopicSpec::new(&args.output, 6)], "topics").await?;
    let codec = Codec::new(&RegistryConfig::new(&args.registry))?;
    codec.prepare::<StripeEvent>(&args.output).await?;
    let producer = kafka::producer(&settings, "bench-baseline", Duration::from_secs(30))?;
    let consumer = Arc::new(kafka::consumer(
        &settings,
        "bench-baseline",
        &args.group,
        DefaultConsumerContext,
    )?);
    consumer.subscribe(&[&args.input])?;

    let (tx, mut rx) = tokio::sync::mpsc::channel(args.in_flight);
    let storer = {
        let (consumer, topic) = (consumer.clone(), args.input.clone());
        tokio::spawn(async move {
            while let Some((partition, offset, delivery)) = rx.recv().await {
                let delivery: rdkafka::producer::DeliveryFuture = delivery;
                match delivery.await {
                    Ok(Ok(_)) => consumer.store_offset(&topic, partition, offset)?,
                    Ok(Err((e, _))) => anyhow::bail!("delivery failed: {e}"),
                    Err(_) => anyhow::bail!("the producer dropped a delivery"),
                }
            }
            Ok(())
        })
    };

    loop {
        let message = consumer.recv().await?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let event: StripeEvent = codec.decode(payload).await?;
        let value = codec.encode(&args.output, &event).await?;
        let key = message.key().unwrap_or_default();
        let headers = message.headers().map(rdkafka::message::BorrowedHeaders::detach);
        let delivery = loop {
            let mut record = FutureRecord::to(&args.output).key(key).payload(&value);
            if let Some(h) = &headers {
                record = record.headers(h.clone());
            }
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                // The local queue is full: let deliveries drain, then try again.
                Err((_, _)) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        if tx
            .send((message.partition(), message.offset(), delivery))
            .await
            .is_err()
        {
            break;
        }
    }
    storer.await?
}
