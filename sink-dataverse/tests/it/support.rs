//! Helpers shared by the component tests: customer changes to feed in, the sink run in-process
//! (or its process environment), the emulator's admin API, and readers for offsets, dead letters
//! and metrics.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use common::config::{HumanDuration, Secret};
use dataverse_emulator::Running;
pub use harness::inspect::DEADLINE;
use harness::{TestEnv, unique, wait_until};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{Codec, Customer, CustomerOp};
use serde_json::Value;
use sink_dataverse::{SinkConfig, config::DataverseSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "00000000-0000-0000-0000-00000000c0de";

/// Broker, registry and the clients a test uses to feed and read topics.
pub struct Env {
    pub env: TestEnv,
    pub codec: Codec,
    pub producer: Arc<FutureProducer>,
}

/// The names one test uses.
#[derive(Debug, Clone)]
pub struct Topics {
    pub input: String,
    pub dlq: String,
    pub group: String,
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
        init_logs();
        let env = TestEnv::start().await.expect("broker and registry start");
        let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
        let producer =
            common::kafka::producer(&env.kafka_settings(), "sink-test", Duration::from_secs(30)).unwrap();
        Env {
            env,
            codec,
            producer: Arc::new(producer),
        }
    }

    pub async fn topics(&self, partitions: i32) -> Topics {
        let input = unique("customers.normalized");
        self.env.create_topic(&input, partitions).await.unwrap();
        Topics {
            dlq: format!("{input}.dlq"),
            group: unique("sink-dataverse"),
            input,
        }
    }

    /// A configuration for these topics and this emulator, tuned for quick tests.
    pub fn config(&self, t: &Topics, emu: &Running) -> SinkConfig {
        let mut c = SinkConfig {
            kafka: self.env.kafka_settings(),
            registry: self.env.registry_settings(),
            group: t.group.clone(),
            input_topic: t.input.clone(),
            dlq_topic: Some(t.dlq.clone()),
            dataverse: dataverse_settings(emu),
            request_timeout: HumanDuration::secs(5),
            ..SinkConfig::default()
        };
        c.backoff.initial = HumanDuration::millis(50);
        c.backoff.max = HumanDuration::secs(1);
        c.topics.replication_factor = 1;
        c.consumer.lag_interval = HumanDuration::millis(200);
        c.consumer.store_interval = HumanDuration::millis(100);
        c.consumer.shutdown_grace = HumanDuration::secs(5);
        c.registry.timeout = HumanDuration::secs(2);
        c
    }

    /// The environment a separately started `sink-dataverse` process needs.
    pub fn process_env(&self, t: &Topics, emu: &Running, listen: SocketAddr) -> Vec<(String, String)> {
        [
            ("KAFKA_BOOTSTRAP_SERVERS", self.env.broker.bootstrap_servers()),
            ("SCHEMA_REGISTRY_URL", self.env.registry.url()),
            ("SINK_LISTEN", listen.to_string()),
            ("SINK_GROUP", t.group.clone()),
            ("SINK_INPUT_TOPIC", t.input.clone()),
            ("SINK_DLQ_TOPIC", t.dlq.clone()),
            ("SINK_DATAVERSE__ENVIRONMENT_URL", emu.url()),
            ("SINK_DATAVERSE__TOKEN_URL", emu.token_url(TENANT)),
            ("SINK_DATAVERSE__CLIENT_ID", "sink-dataverse".into()),
            ("SINK_DATAVERSE__CLIENT_SECRET", "local-secret".into()),
            ("SINK_CONSUMER__LAG_INTERVAL", "200ms".into()),
            ("SINK_BACKOFF__MAX", "1s".into()),
            ("SINK_TOPICS__REPLICATION_FACTOR", "1".into()),
            ("RUST_LOG", "info,rdkafka=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub async fn encode(&self, topic: &str, change: &Customer) -> Vec<u8> {
        self.codec.encode(topic, change).await.unwrap()
    }

    /// Produces `changes` keyed by customer id, all enqueued at once; waits for every
    /// acknowledgement. Returns where each landed.
    pub async fn produce(&self, topic: &str, changes: &[Customer]) -> Vec<(i32, i64)> {
        let mut encoded = Vec::new();
        for c in changes {
            encoded.push((c.customer_id.clone(), self.encode(topic, c).await));
        }
        let mut pending = Vec::new();
        for (key, payload) in &encoded {
            let headers = common::kafka::trace_headers(&common::kafka::current_context());
            let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        let mut out = Vec::new();
        for d in pending {
            let d = d.await.unwrap().map_err(|(e, _)| e).unwrap();
            out.push((d.partition, d.offset));
        }
        out
    }

    /// Produces raw bytes to a partition (a poison record).
    pub async fn produce_raw(&self, topic: &str, key: &str, payload: &[u8], partition: i32) -> (i32, i64) {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .partition(partition);
        let d = self.producer.send_result(record).map_err(|(e, _)| e).unwrap();
        let d = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        (d.partition, d.offset)
    }
}

/// Logs to the test output when `RUST_LOG` asks for them.
pub fn init_logs() {
    if let Ok(log) = std::env::var("RUST_LOG") {
        let settings = common::telemetry::TelemetrySettings {
            log,
            ..Default::default()
        };
        let _ = common::telemetry::init("sink-dataverse-test", &settings);
    }
}

/// Dataverse settings pointing at the emulator with its default client.
pub fn dataverse_settings(emu: &Running) -> DataverseSettings {
    DataverseSettings {
        environment_url: emu.url(),
        tenant_id: TENANT.into(),
        client_id: "sink-dataverse".into(),
        client_secret: Secret::new("local-secret"),
        token_url: Some(emu.token_url(TENANT)),
        ..DataverseSettings::default()
    }
}

/// A full customer change.
pub fn upsert(id: &str, created: i64, first_name: &str) -> Customer {
    let mut c = Customer::deletion(
        id,
        format!("evt_{id}_{created}_{first_name}"),
        "customer.updated",
        created,
        false,
    );
    c.op = CustomerOp::Upsert;
    c.email = Some(format!("{}@example.com", first_name.to_lowercase()));
    c.first_name = Some(first_name.to_string());
    c.last_name = Some(format!("Of-{id}"));
    c.full_name = Some(format!("{first_name} Of-{id}"));
    c.phone = Some("+14155550100".into());
    c.description = Some(format!("customer {id}"));
    c.address_line1 = Some("1 Market St".into());
    c.address_city = Some("San Francisco".into());
    c.address_state = Some("CA".into());
    c.address_postal_code = Some("94105".into());
    c.address_country_code = Some("US".into());
    c.address_country_name = Some("United States of America".into());
    c
}

/// `upsert`, as the customer's `customer.created` event.
pub fn create(id: &str, created: i64, first_name: &str) -> Customer {
    let mut c = upsert(id, created, first_name);
    c.source_event_type = "customer.created".into();
    c.source_event_id = format!("evt_{id}_{created}_created");
    c
}

pub fn delete(id: &str, created: i64) -> Customer {
    Customer::deletion(
        id,
        format!("evt_{id}_{created}_del"),
        "customer.deleted",
        created,
        false,
    )
}

/// The sink run in-process, with its own ops listener and shutdown token.
pub struct Sink {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Sink {
    pub async fn start(config: SinkConfig) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(sink_dataverse::run(config, listener, shutdown.clone()));
        Sink {
            addr,
            shutdown,
            handle,
        }
    }

    /// Shuts down and returns how long it took.
    pub async fn stop(self) -> Duration {
        let start = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the sink stops within its grace period")
            .unwrap()
            .unwrap();
        start.elapsed()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric(self.addr, series).await
    }
}

/// The value of one series on a `/metrics` page (0 when absent), e.g.
/// `sink_dataverse_writes_total{outcome="created"}`.
pub use harness::inspect::metric_at as metric;

/// Waits until a series reaches `at_least`.
pub async fn wait_metric(addr: SocketAddr, series: &str, at_least: f64) {
    harness::inspect::wait_metric(addr, series, at_least).await;
}

/// The emulator's admin API.
pub struct Admin {
    pub url: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn of(emu: &Running) -> Admin {
        Admin {
            url: emu.url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_admin/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every contact, by Stripe customer id.
    pub async fn contacts(&self) -> HashMap<String, Value> {
        let table: Value = self
            .http
            .get(format!("{}/_admin/tables/contacts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        table["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["new_stripecustomerid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    row.clone(),
                )
            })
            .collect()
    }

    pub async fn set_faults(&self, faults: Value) {
        let response = self
            .http
            .post(format!("{}/_admin/faults", self.url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    pub async fn expire_tokens(&self) {
        let response = self
            .http
            .post(format!("{}/_admin/tokens/expire", self.url))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// Waits until `n` contacts exist.
    pub async fn wait_contacts(&self, n: usize) -> HashMap<String, Value> {
        wait_until(&format!("{n} contacts"), DEADLINE, || async {
            let contacts = self.contacts().await;
            (contacts.len() >= n).then_some(contacts)
        })
        .await
        .unwrap()
    }
}

/// Checks that a contact holds exactly `change` (the default mapping) and is active.
pub fn assert_contact(row: &Value, change: &Customer) {
    let id = &change.customer_id;
    let expect = [
        ("emailaddress1", change.email.as_deref()),
        ("firstname", change.first_name.as_deref()),
        ("lastname", change.last_name.as_deref()),
        ("telephone1", change.phone.as_deref()),
        ("description", change.description.as_deref()),
        ("address1_line1", change.address_line1.as_deref()),
        ("address1_line2", change.address_line2.as_deref()),
        ("address1_city", change.address_city.as_deref()),
        ("address1_stateorprovince", change.address_state.as_deref()),
        ("address1_postalcode", change.address_postal_code.as_deref()),
        ("address1_country", change.address_country_name.as_deref()),
    ];
    for (column, value) in expect {
        assert_eq!(row[column].as_str(), value, "{id}: column {column} in {row}");
    }
    assert_eq!(
        row["new_stripeeventcreated"], change.source_event_created,
        "{id}: {row}"
    );
    assert_eq!(row["new_stripedeleted"], false, "{id}: {row}");
    assert_eq!(row["statecode"], 0, "{id}: {row}");
}

/// Checks that a contact is a tombstone of a delete at `created`.
pub fn assert_tombstone(row: &Value, created: i64) {
    assert_eq!(row["new_stripedeleted"], true, "{row}");
    assert_eq!(row["statecode"], 1, "{row}");
    assert_eq!(row["statuscode"], 2, "{row}");
    assert_eq!(row["new_stripeeventcreated"], created, "{row}");
}
