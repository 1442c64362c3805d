//! Helpers shared by the component tests: Stripe events to feed in, an enricher run in-process,
//! and readers that check what came out, all against the harness's real broker and registry.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::config::HumanDuration;
use common::{kafka::TopicSettings, retry::BackoffSettings};
use enricher::EnricherConfig;
pub use harness::inspect::{DEADLINE, Record as Raw, metric, scrape, wait_metric};
use harness::{TestEnv, unique};
use opentelemetry::Context;
use rdkafka::{
    message::{Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use schemas::{Codec, Customer, StripeEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Broker, registry and the clients a test uses to feed and read topics.
pub struct Env {
    pub env: TestEnv,
    pub codec: Codec,
    pub producer: Arc<FutureProducer>,
}

impl std::ops::Deref for Env {
    type Target = TestEnv;

    /// The harness's inspection helpers (watermarks, commits, read-back) on this test's broker.
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

impl Env {
    pub async fn start() -> Env {
        let env = TestEnv::start().await.expect("broker and registry start");
        let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
        let producer =
            common::kafka::producer(&env.kafka_settings(), "enricher-test", Duration::from_secs(30)).unwrap();
        Env {
            env,
            codec,
            producer: Arc::new(producer),
        }
    }

    /// An input topic with `partitions` partitions and the names of its output, DLQ and group.
    pub async fn topics(&self, partitions: i32) -> Topics {
        let input = unique("stripe.events");
        self.env.create_topic(&input, partitions).await.unwrap();
        Topics {
            dlq: format!("{input}.dlq"),
            output: unique("customers.normalized"),
            group: unique("enricher"),
            input,
        }
    }

    /// A configuration for these topics, tuned for quick tests (short lag interval, backoff and
    /// grace period). The enricher creates its output and dead-letter topics.
    pub fn config(&self, t: &Topics) -> EnricherConfig {
        let mut c = EnricherConfig {
            kafka: self.env.kafka_settings(),
            registry: self.env.registry_settings(),
            group: t.group.clone(),
            input_topic: t.input.clone(),
            output_topic: t.output.clone(),
            topics: TopicSettings {
                partitions: 3,
                replication_factor: 1,
                ..TopicSettings::default()
            },
            backoff: BackoffSettings {
                initial: HumanDuration::millis(50),
                max: HumanDuration::secs(1),
            },
            ..EnricherConfig::default()
        };
        c.registry.timeout = HumanDuration::secs(2);
        c.consumer.shutdown_grace = HumanDuration::secs(5);
        c.consumer.lag_interval = HumanDuration::millis(200);
        c
    }

    /// The environment a separately started `enricher` process needs for these topics.
    pub fn process_env(&self, t: &Topics, listen: SocketAddr) -> Vec<(String, String)> {
        [
            ("KAFKA_BOOTSTRAP_SERVERS", self.env.broker.bootstrap_servers()),
            ("SCHEMA_REGISTRY_URL", self.env.registry.url()),
            ("ENRICHER_LISTEN", listen.to_string()),
            ("ENRICHER_GROUP", t.group.clone()),
            ("ENRICHER_INPUT_TOPIC", t.input.clone()),
            ("ENRICHER_OUTPUT_TOPIC", t.output.clone()),
            ("ENRICHER_TOPICS__PARTITIONS", "3".into()),
            ("ENRICHER_TOPICS__REPLICATION_FACTOR", "1".into()),
            ("ENRICHER_CONSUMER__LAG_INTERVAL", "200ms".into()),
            ("RUST_LOG", "info,rdkafka=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Encodes `events` for `topic` (needs the registry), keyed by their object id.
    pub async fn encode_all(&self, topic: &str, events: &[StripeEvent]) -> Vec<Encoded> {
        let mut out = Vec::new();
        for event in events {
            out.push(Encoded {
                event_id: event.event_id.clone(),
                key: event.object_id.clone().unwrap_or_default(),
                payload: self.codec.encode(topic, event).await.unwrap(),
            });
        }
        out
    }

    /// Produces `events` keyed by their object id, each with a fresh trace context, optionally
    /// with a record timestamp each; waits for every acknowledgement. Returns where each landed
    /// and the `traceparent` it carried.
    pub async fn produce(
        &self,
        topic: &str,
        events: &[StripeEvent],
        timestamps: Option<&[i64]>,
    ) -> Vec<Sent> {
        let encoded = self.encode_all(topic, events).await;
        self.send_encoded(topic, &encoded, timestamps).await
    }

    /// Produces already encoded records (no registry needed).
    pub async fn send_encoded(
        &self,
        topic: &str,
        records: &[Encoded],
        timestamps: Option<&[i64]>,
    ) -> Vec<Sent> {
        let mut pending = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let headers = common::kafka::trace_headers(&Context::new());
            let traceparent = header(&headers, "traceparent").unwrap();
            let mut record = FutureRecord::to(topic)
                .key(&r.key)
                .payload(&r.payload)
                .headers(headers);
            if let Some(ts) = timestamps {
                record = record.timestamp(ts[i]);
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| e).unwrap();
            pending.push((r.event_id.clone(), traceparent, delivery));
        }
        let mut sent = Vec::new();
        for (event_id, traceparent, delivery) in pending {
            let d = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
            sent.push(Sent {
                event_id,
                traceparent,
                partition: d.partition,
            });
        }
        sent
    }

    /// Produces raw bytes (a poison record) and returns its partition and offset.
    pub async fn produce_raw(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        partition: i32,
    ) -> (i32, i64) {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key).partition(partition);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        let d = self.producer.send_result(record).map_err(|(e, _)| e).unwrap();
        let d = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        (d.partition, d.offset)
    }

    /// Produces one event to a given partition (for tests that need one partition's order).
    pub async fn produce_to(&self, topic: &str, event: &StripeEvent, partition: i32) -> (i32, i64) {
        let payload = self.codec.encode(topic, event).await.unwrap();
        let key = event.object_id.clone().unwrap_or_default();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition(partition)
            .headers(common::kafka::trace_headers(&Context::new()));
        let d = self.producer.send_result(record).map_err(|(e, _)| e).unwrap();
        let d = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        (d.partition, d.offset)
    }

    /// Every customer change on `topic`, decoded.
    pub async fn read_customers(&self, topic: &str) -> Vec<Out> {
        let mut out = Vec::new();
        for raw in self.read_all(topic).await {
            let customer: Customer = self.codec.decode(raw.payload.as_deref().unwrap()).await.unwrap();
            out.push(Out { raw, customer });
        }
        out
    }
}

pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

/// An input record ready to produce.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub event_id: String,
    pub key: String,
    pub payload: Vec<u8>,
}

/// Where an input event landed.
#[derive(Debug, Clone)]
pub struct Sent {
    pub event_id: String,
    pub traceparent: String,
    pub partition: i32,
}

#[derive(Debug, Clone)]
pub struct Out {
    pub raw: Raw,
    pub customer: Customer,
}

fn header(headers: &OwnedHeaders, key: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The trace id of a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

/// A Stripe event of `event_type` about customer `customer_id`; `seq` makes its content and
/// `created` distinct.
pub fn customer_event(event_id: &str, event_type: &str, customer_id: &str, seq: i64) -> StripeEvent {
    let body = serde_json::json!({
        "id": event_id,
        "object": "event",
        "api_version": "2025-04-30.basil",
        "created": 1_700_000_000 + seq,
        "type": event_type,
        "livemode": false,
        "data": { "object": {
            "id": customer_id,
            "object": "customer",
            "name": format!("  Ada   Lovelace {seq}"),
            "email": format!(" Ada.{seq}@Example.COM "),
            "phone": "+44 20 7946 0958",
            "address": { "line1": "1 Main St", "city": "London", "country": "gb" },
            "metadata": { "seq": seq.to_string() }
        }},
        "request": { "id": null, "idempotency_key": null }
    });
    stripe_event(
        event_id,
        event_type,
        customer_id,
        seq,
        serde_json::to_vec_pretty(&body).unwrap(),
    )
}

/// A `StripeEvent` record with the given raw body.
pub fn stripe_event(
    event_id: &str,
    event_type: &str,
    object_id: &str,
    seq: i64,
    raw_body: Vec<u8>,
) -> StripeEvent {
    StripeEvent {
        event_id: event_id.into(),
        event_type: event_type.into(),
        created: 1_700_000_000 + seq,
        api_version: Some("2025-04-30.basil".into()),
        livemode: false,
        account: None,
        object_id: Some(object_id.into()),
        object_type: Some(
            if event_type.starts_with("customer.") {
                "customer"
            } else {
                "invoice"
            }
            .into(),
        ),
        request_id: None,
        idempotency_key: None,
        raw_body,
        signature_header: "t=1700000000,v1=00".into(),
        received_at: 1_700_000_000_000 + seq,
        source: Some("webhook".into()),
    }
}

/// A stream of changes to `customers` customers: each is created, updated `updates` times, and
/// (every third one) deleted. Interleaved across customers, as real traffic is.
pub fn customer_stream(prefix: &str, customers: usize, updates: usize) -> Vec<StripeEvent> {
    let mut per_customer: Vec<Vec<StripeEvent>> = Vec::new();
    let mut seq = 0;
    for c in 0..customers {
        let id = format!("cus_{prefix}{c}");
        let mut events = Vec::new();
        let mut push = |t: &str, events: &mut Vec<StripeEvent>| {
            seq += 1;
            events.push(customer_event(
                &format!("evt_{prefix}{c}_{}", events.len()),
                t,
                &id,
                seq,
            ));
        };
        push("customer.created", &mut events);
        for _ in 0..updates {
            push("customer.updated", &mut events);
        }
        if c % 3 == 0 {
            push("customer.deleted", &mut events);
        }
        per_customer.push(events);
    }
    // Round-robin over customers so each partition sees many keys interleaved.
    let mut out = Vec::new();
    let longest = per_customer.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for events in &per_customer {
            if let Some(e) = events.get(i) {
                out.push(e.clone());
            }
        }
    }
    out
}

/// An enricher running in this process.
pub struct Running {
    pub ops: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(config: EnricherConfig) -> Running {
        // Logs only when asked for (`RUST_LOG=…`), for debugging a failing test.
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let settings = common::telemetry::TelemetrySettings {
                log: filter,
                ..Default::default()
            };
            std::mem::forget(common::telemetry::init("enricher-test", &settings));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(enricher::run(config, listener, shutdown.clone()));
        Running { ops, shutdown, task }
    }

    /// Graceful stop: finishes what is in hand, commits, leaves the group.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the enricher stops within the deadline")
            .unwrap()
            .unwrap();
    }

    pub async fn metrics(&self) -> String {
        scrape(self.ops).await.unwrap_or_default()
    }

    /// Waits until the metric `series` reaches at least `min`.
    pub async fn wait_metric(&self, series: &str, min: f64) -> f64 {
        wait_metric(self.ops, series, min).await
    }
}

/// Runs the `enricher` binary to completion with `args` and `env`; returns (success, stdout,
/// stderr).
pub async fn enricher_command(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(harness::workspace_bin("enricher").unwrap());
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("enricher command finishes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
