//! Component tests: the gateway as a library (and once as its binary) against a real broker and
//! the workspace's schema registry, started by the harness. Each test owns its broker, registry,
//! topic and consumer group, and waits on conditions with deadlines.
//!
//! Needs the registry binary (`cargo build -p schema-registry --bins`) and the Tansu broker
//! (`bash scripts/setup.sh`). The TLS fixtures in `fixtures/` are a throw-away test CA and a leaf
//! for `localhost`/`127.0.0.1`, made with `openssl` (see `tls_fixture_note`).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use common::config::{HumanDuration, Secret};
use gateway::{GatewayConfig, WEBHOOK_PATH, signature};
use harness::{TestEnv, unique, wait_until};
use rdkafka::{
    Message,
    consumer::{Consumer, DefaultConsumerContext, StreamConsumer},
    message::Headers,
};
use schemas::{Codec, StripeEvent};
use tokio::{io::AsyncBufReadExt, net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

mod send;

const SECRET: &str = "whsec_component_tests";

fn event_body(id: &str, customer: &str) -> String {
    // Pretty-printed on purpose: the raw bytes, whitespace included, must survive unchanged.
    format!(
        "{{\n  \"id\": \"{id}\",\n  \"object\": \"event\",\n  \"api_version\": \"2025-04-30.basil\",\n  \
         \"created\": 1700000000,\n  \"data\": {{\n    \"object\": {{\n      \"id\": \"{customer}\",\n      \
         \"object\": \"customer\",\n      \"email\": null\n    }}\n  }},\n  \"livemode\": false,\n  \
         \"request\": {{\"id\": null, \"idempotency_key\": null}},\n  \"type\": \"customer.updated\"\n}}"
    )
}

/// A gateway running in-process on its own port.
struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
    scheme: &'static str,
}

fn config(env: &TestEnv, topic: &str) -> GatewayConfig {
    let mut c = GatewayConfig {
        kafka: env.kafka_settings(),
        registry: env.registry_settings(),
        topic: topic.to_string(),
        topics: common::kafka::TopicSettings {
            partitions: 1,
            replication_factor: 1,
            ..Default::default()
        },
        ..GatewayConfig::default()
    };
    c.registry.timeout = HumanDuration::secs(2);
    c.webhook.secrets = vec![Secret::new("whsec_old_secret"), Secret::new(SECRET)];
    c.limits.produce_timeout = HumanDuration::secs(3);
    c.limits.request_timeout = HumanDuration::secs(5);
    c.limits.shutdown_timeout = HumanDuration::secs(8);
    // librdkafka's own debug contexts on demand, e.g. `GATEWAY_IT_KAFKA_DEBUG=eos,msg`.
    if let Ok(contexts) = std::env::var("GATEWAY_IT_KAFKA_DEBUG") {
        c.kafka.properties.insert("debug".into(), contexts);
    }
    c
}

impl Gateway {
    async fn start(config: GatewayConfig) -> Gateway {
        // Logs on demand: `GATEWAY_IT_LOG=debug cargo test … -- --nocapture`.
        if let Ok(log) = std::env::var("GATEWAY_IT_LOG") {
            let settings = common::telemetry::TelemetrySettings {
                log,
                ..Default::default()
            };
            std::mem::forget(common::telemetry::init("gateway-it", &settings).unwrap());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let scheme = if config.tls.enabled() { "https" } else { "http" };
        let task = tokio::spawn(gateway::run(config, listener, shutdown.clone()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let gw = Gateway {
            addr,
            shutdown,
            task,
            http,
            scheme,
        };
        let health = gw.url("/healthz");
        let client = gw.http.clone();
        wait_until("the gateway to answer /healthz", Duration::from_secs(30), || {
            let request = client.get(&health).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await
        .unwrap();
        gw
    }

    async fn start_ready(config: GatewayConfig) -> Gateway {
        let gw = Gateway::start(config).await;
        gw.wait_ready(true).await;
        gw
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    async fn ready(&self) -> bool {
        self.http
            .get(self.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn wait_ready(&self, ready: bool) {
        wait_until(
            &format!("/readyz to say ready={ready}"),
            Duration::from_secs(60),
            || async move { (self.ready().await == ready).then_some(()) },
        )
        .await
        .unwrap();
    }

    /// Posts `body` signed now; returns the status, the `Retry-After` header and the JSON body.
    async fn post(&self, body: &str) -> (u16, Option<String>, serde_json::Value) {
        let header = signature::signature_header(SECRET, signature::now_unix(), body.as_bytes());
        let response = self
            .http
            .post(self.url(WEBHOOK_PATH))
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", header)
            .body(body.to_string())
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let json = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, retry_after, json)
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Cancels and waits for `run` to return, failing past `deadline`.
    async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        tokio::time::timeout(deadline, self.task)
            .await
            .expect("the gateway stops within its deadline")
            .unwrap()
            .unwrap();
    }
}

/// One consumed record, decoded.
struct Record {
    key: Option<String>,
    event: StripeEvent,
    traceparent: Option<String>,
}

/// Reads `topic` from the beginning until the record of `sentinel` (an event posted last)
/// arrives, and returns everything read before and including it.
async fn read_until(env: &TestEnv, topic: &str, sentinel: &str) -> Vec<Record> {
    let codec = Codec::new(&env.registry_settings().codec_config()).unwrap();
    let consumer: StreamConsumer = common::kafka::consumer(
        &env.kafka_settings(),
        "gateway-it",
        &unique("gateway-it"),
        DefaultConsumerContext,
    )
    .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{sentinel} not read within the deadline"))
            .unwrap();
        let event: StripeEvent = codec.decode(message.payload().unwrap()).await.unwrap();
        let traceparent = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        });
        let done = event.event_id == sentinel;
        records.push(Record {
            key: message.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
            event,
            traceparent,
        });
        if done {
            return records;
        }
    }
}

fn count(records: &[Record], event_id: &str) -> usize {
    records.iter().filter(|r| r.event.event_id == event_id).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_becomes_exactly_one_decodable_record() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;

    let body = event_body("evt_component_1", "cus_component_1");
    let (status, _, json) = gw.post(&body).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"received": true, "id": "evt_component_1"})
    );
    assert_eq!(gw.post(&event_body("evt_sentinel", "cus_x")).await.0, 200);

    let records = read_until(&env, &topic, "evt_sentinel").await;
    assert_eq!(count(&records, "evt_component_1"), 1);
    let r = &records[0];
    assert_eq!(r.key.as_deref(), Some("cus_component_1"));
    assert_eq!(r.event.raw_body, body.as_bytes(), "raw bytes intact");
    assert_eq!(r.event.event_type, "customer.updated");
    assert_eq!(r.event.object_id.as_deref(), Some("cus_component_1"));
    assert_eq!(r.event.api_version.as_deref(), Some("2025-04-30.basil"));
    assert!(r.event.signature_header.starts_with("t="));
    let traceparent = r.traceparent.as_deref().expect("a traceparent header");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(traceparent.starts_with("00-"));
    // Anyone holding the secret can re-verify the stored event.
    let verifier = gateway::Verifier::new([SECRET], Duration::from_secs(3600), Duration::from_secs(60));
    verifier
        .verify(
            Some(r.event.signature_header.as_bytes()),
            r.event.raw_body.clone().into(),
            std::time::SystemTime::now(),
        )
        .expect("the stored header verifies the stored body");

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="accepted"} 2"#),
        "{metrics}"
    );
    gw.stop(Duration::from_secs(15)).await;
}

/// A signed event of exactly `size` bytes: `event_body` with a padded metadata value.
fn event_of_size(id: &str, customer: &str, size: usize) -> String {
    let base = event_body(id, customer).replacen("\"email\": null", "\"metadata\": {\"pad\": \"\"}", 1);
    let pad = size.checked_sub(base.len()).expect("size above the base event");
    let body = base.replacen("\"pad\": \"\"", &format!("\"pad\": \"{}\"", "x".repeat(pad)), 1);
    assert_eq!(body.len(), size);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_near_the_body_limit_is_stored_and_one_over_it_is_413() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let c = config(&env, &topic);
    assert_eq!(c.limits.max_body, 1 << 20);
    let gw = Gateway::start_ready(c).await;

    // Over librdkafka's default `message.max.bytes` (1000000) once framed: refused on every
    // delivery unless the producer's limit is derived from the body limit.
    let body = event_of_size("evt_large", "cus_large", 990 * 1024);
    let (status, _, json) = gw.post(&body).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["id"], "evt_large");

    let over = event_of_size("evt_over", "cus_large", (1 << 20) + 1);
    let (status, retry_after, json) = gw.post(&over).await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(json["error"], "Request body is larger than 1048576 bytes");
    assert!(retry_after.is_none());
    over_limit_on_one_connection(gw.addr, &over).await;

    assert_eq!(gw.post(&event_body("evt_sentinel", "cus_x")).await.0, 200);
    let records = read_until(&env, &topic, "evt_sentinel").await;
    assert_eq!(count(&records, "evt_over"), 0);
    let stored = records
        .iter()
        .find(|r| r.event.event_id == "evt_large")
        .expect("the large event is in the topic");
    assert_eq!(stored.event.raw_body, body.as_bytes(), "raw bytes intact");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="too_large"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_events_too_large_total 0"), "{metrics}");
    gw.stop(Duration::from_secs(15)).await;
}

/// Sends `body` (over the limit) on a raw connection while reading, then a health check on the
/// same connection: the 413 must arrive whole, and the connection must still serve, because the
/// gateway reads an oversized body to its end (within bounds) instead of resetting the sender.
async fn over_limit_on_one_connection(addr: SocketAddr, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let request = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nstripe-signature: t=1,v1=00\r\n\r\n{body}",
        body.len()
    );
    let writer = tokio::spawn(async move {
        write.write_all(request.as_bytes()).await.unwrap();
        write
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let first = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf))
            .await
            .expect("the 413 within 10 s")
            .expect("no connection reset");
        assert!(
            n > 0,
            "closed before the whole 413: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = complete_response(&answer) {
            break String::from_utf8_lossy(&answer[..end]).into_owned();
        }
    };
    assert!(first.starts_with("HTTP/1.1 413"), "{first}");
    assert!(first.contains("larger than 1048576 bytes"), "{first}");
    let mut write = writer.await.expect("the whole body was accepted by the gateway");
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let second = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf))
            .await
            .expect("the health answer within 10 s")
            .expect("no connection reset");
        assert!(n > 0, "the connection was closed after the 413");
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = complete_response(&answer) {
            break String::from_utf8_lossy(&answer[..end]).into_owned();
        }
    };
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

/// The length of the first complete response in `bytes` (headers plus `content-length` bytes).
fn complete_response(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

/// How a slow client's connection ended.
#[derive(Debug, PartialEq, Eq)]
enum SlowEnd {
    /// The gateway answered with this status line's code.
    Status(u16),
    /// The gateway closed the connection without an answer.
    Closed,
}

/// A client that sends `head` at once, then one byte of `trickle` every 100 ms, until the gateway
/// answers or closes. Returns how it ended and after how long.
async fn slow_client(addr: SocketAddr, head: String, trickle: u8) -> (SlowEnd, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[trickle]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf)).await {
            Err(_) => panic!("a slow client was held for 30 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break SlowEnd::Closed,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if let Some(line) = answer
                    .split(|b| *b == b'\n')
                    .next()
                    .filter(|_| answer.contains(&b'\n'))
                {
                    let line = String::from_utf8_lossy(line);
                    let code = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    break SlowEnd::Status(code);
                }
            }
        }
    };
    let elapsed = started.elapsed();
    writer.abort();
    (end, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_are_cut_off_and_never_starve_signed_events() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let mut c = config(&env, &topic);
    // Far fewer slots than slow clients: a slot held by an upload would starve the sender.
    c.limits.max_in_flight = 8;
    c.limits.body_read_timeout = HumanDuration::secs(2);
    c.limits.header_read_timeout = HumanDuration::secs(2);
    let gw = Gateway::start_ready(c).await;

    // 200 clients declaring a 1 MiB body and trickling it, and 10 trickling their headers.
    let body_head = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         content-length: 1048576\r\nstripe-signature: t={},v1=00\r\n\r\n",
        signature::now_unix()
    );
    let header_head = format!("POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: gateway\r\nx-slow: ");
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(tokio::spawn(slow_client(gw.addr, body_head.clone(), b' ')));
    }
    let mut slow_headers = Vec::new();
    for _ in 0..10 {
        slow_headers.push(tokio::spawn(slow_client(gw.addr, header_head.clone(), b'a')));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile Stripe's deliveries are answered, each promptly.
    for i in 0..20 {
        let started = std::time::Instant::now();
        let (status, _, json) = gw
            .post(&event_body(&format!("evt_beside_slow_{i}"), "cus_s"))
            .await;
        assert_eq!(status, 200, "delivery {i} beside slow senders: {json}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    for task in slow {
        let (end, elapsed) = task.await.unwrap();
        assert_eq!(end, SlowEnd::Status(408), "after {elapsed:?}");
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(8),
            "cut off after the body read timeout, not {elapsed:?}"
        );
    }
    for task in slow_headers {
        let (end, elapsed) = task.await.unwrap();
        assert!(matches!(end, SlowEnd::Closed | SlowEnd::Status(408)), "{end:?}");
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(8),
            "cut off after the header read timeout, not {elapsed:?}"
        );
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="body_timeout"} 200"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_requests_total{outcome="accepted"} 20"#),
        "{metrics}"
    );
    gw.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_is_one_record() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;

    let body = event_body("evt_twice", "cus_twice");
    assert_eq!(gw.post(&body).await.0, 200);
    let (status, _, json) = gw.post(&body).await;
    assert_eq!(status, 200);
    assert_eq!(json["duplicate"], true);

    // Concurrent deliveries of a new event: single-flight, one write.
    let body = event_body("evt_concurrent", "cus_twice");
    let (a, b, c) = tokio::join!(gw.post(&body), gw.post(&body), gw.post(&body));
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));

    assert_eq!(gw.post(&event_body("evt_sentinel", "cus_x")).await.0, 200);
    let records = read_until(&env, &topic, "evt_sentinel").await;
    assert_eq!(count(&records, "evt_twice"), 1);
    assert_eq!(count(&records, "evt_concurrent"), 1);
    assert_eq!(records.len(), 3);
    assert!(gw.metrics().await.contains("gateway_duplicates_total 3"));
    gw.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_the_answer_is_503_and_the_retry_lands() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;
    assert_eq!(gw.post(&event_body("evt_before", "cus_o")).await.0, 200);

    env.broker.stop();
    let body = event_body("evt_during_outage", "cus_outage");
    for _ in 0..2 {
        let (status, retry_after, json) = gw.post(&body).await;
        assert_eq!(status, 503, "never 200 without the broker: {json}");
        assert!(retry_after.is_some());
        assert_eq!(json["error"], "Event could not be stored; retry later");
    }
    gw.wait_ready(false).await;

    env.broker.start_again().await.unwrap();
    // Stripe retries; so does this test, until the broker takes the write.
    let answers = std::sync::Mutex::new(Vec::new());
    let (gw_ref, body_ref, answers_ref) = (&gw, &body, &answers);
    wait_until(
        "a retried delivery to be acknowledged",
        Duration::from_secs(90),
        || async move {
            let (status, _, _) = gw_ref.post(body_ref).await;
            answers_ref.lock().unwrap().push(status);
            (status == 200).then_some(())
        },
    )
    .await
    .unwrap();
    let answers = answers.into_inner().unwrap();
    assert!(answers.iter().all(|s| *s == 200 || *s == 503), "{answers:?}");
    gw.wait_ready(true).await;

    assert_eq!(gw.post(&event_body("evt_sentinel", "cus_x")).await.0, 200);
    let records = read_until(&env, &topic, "evt_sentinel").await;
    assert_eq!(count(&records, "evt_before"), 1);
    // At least once; more only if a timed-out attempt reached the broker after all (then the
    // downstream idempotence absorbs it).
    assert!(count(&records, "evt_during_outage") >= 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_write_failures_total{dependency="kafka"}"#),
        "{metrics}"
    );
    gw.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_at_start_up_delays_readiness_not_start() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    env.registry.stop();
    let gw = Gateway::start(config(&env, &topic)).await;
    assert!(!gw.ready().await);
    // Readiness says what start-up is waiting for.
    let gw_ref = &gw;
    wait_until(
        "/readyz to name the failing step",
        Duration::from_secs(30),
        || async move {
            let text = gw_ref
                .http
                .get(gw_ref.url("/readyz"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("registering the schema").then_some(())
        },
    )
    .await
    .unwrap();
    let body = event_body("evt_registry", "cus_registry");
    let (status, retry_after, _) = gw.post(&body).await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());

    env.registry.start_again().await.unwrap();
    gw.wait_ready(true).await;
    let (status, _, json) = gw.post(&body).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(gw.post(&event_body("evt_sentinel", "cus_x")).await.0, 200);
    let records = read_until(&env, &topic, "evt_sentinel").await;
    assert_eq!(count(&records, "evt_registry"), 1);
    gw.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_registry_refuses_stops_the_start_with_the_reason() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    // The subject already holds a schema this build's record cannot evolve from.
    let other = r#"{"type":"record","name":"Other","fields":[{"name":"only","type":"string"}]}"#;
    let registered = reqwest::Client::new()
        .post(format!("{}/subjects/{topic}-value/versions", env.registry.url()))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": other }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        gateway::run(config(&env, &topic), listener, CancellationToken::new()),
    )
    .await
    .expect("the start fails instead of retrying forever");
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("setting `registry`"), "{err}");
    assert!(err.contains(&topic), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_requests_and_stops_within_its_deadline() {
    let mut env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let gw = Gateway::start_ready(config(&env, &topic)).await;
    env.broker.stop();

    // A request that cannot finish quickly: the broker is gone.
    let in_flight = {
        let http = gw.http.clone();
        let url = gw.url(WEBHOOK_PATH);
        let body = event_body("evt_in_flight", "cus_sd");
        let header = signature::signature_header(SECRET, signature::now_unix(), body.as_bytes());
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .header("stripe-signature", header)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let gw_ref = &gw;
    wait_until(
        "the request to be in flight",
        Duration::from_secs(10),
        || async move {
            gw_ref
                .metrics()
                .await
                .contains("gateway_in_flight_requests 1")
                .then_some(())
        },
    )
    .await
    .unwrap();

    let addr = gw.addr;
    let started = std::time::Instant::now();
    gw.stop(Duration::from_secs(15)).await;
    // Within the configured 8 s, plus a little for the last flush.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let status = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(status, 503, "not durable, so not acknowledged");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_serves_webhooks_over_https() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures");
    let mut c = config(&env, &topic);
    c.tls.cert = Some(format!("{fixtures}/cert.pem").into());
    c.tls.key = Some(format!("{fixtures}/key.pem").into());
    let mut gw = Gateway::start_ready_tls(c, &format!("{fixtures}/ca.pem")).await;
    let (status, _, json) = gw.post(&event_body("evt_tls", "cus_tls")).await;
    assert_eq!(status, 200, "{json}");
    // Plain HTTP to the TLS port gets nowhere.
    gw.scheme = "http";
    assert!(gw.http.get(gw.url("/healthz")).send().await.is_err());
    gw.stop(Duration::from_secs(15)).await;
}

impl Gateway {
    async fn start_ready_tls(config: GatewayConfig, ca: &str) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::run(config, listener, shutdown.clone()));
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let gw = Gateway {
            addr,
            shutdown,
            task,
            http,
            scheme: "https",
        };
        gw.wait_ready(true).await;
        gw
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_address_serves_and_stops_on_sigterm() {
    let env = TestEnv::start().await.unwrap();
    let topic = unique("stripe.events");
    let bin = env!("CARGO_BIN_EXE_gateway");
    let vars = [
        ("GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", env.broker.bootstrap_servers()),
        ("SCHEMA_REGISTRY_URL", env.registry.url()),
        ("GATEWAY_TOPIC", topic.clone()),
        ("GATEWAY_TOPICS__PARTITIONS", "1".to_string()),
        ("GATEWAY_TOPICS__REPLICATION_FACTOR", "1".to_string()),
        ("STRIPE_WEBHOOK_SECRET", SECRET.to_string()),
        ("RUST_LOG", "info".to_string()),
    ];

    // print-config shows the effective settings, never the secret.
    let printed = tokio::process::Command::new(bin)
        .arg("print-config")
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(text.contains(&format!("topic = \"{topic}\"")), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // A bad setting is named and stops the start.
    let bad = tokio::process::Command::new(bin)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GATEWAY_LIMITS__PRODUCE_TIMEOUT", "60s")
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert!(stderr.contains("limits.produce_timeout"), "{stderr}");

    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the start-up line within the deadline")
        .unwrap()
        .expect("a line on stdout");
    let url = line
        .strip_prefix("gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let http = reqwest::Client::new();
    wait_until("the binary to be ready", Duration::from_secs(60), || {
        let request = http.get(format!("{url}/readyz")).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await
    .unwrap();
    let body = event_body("evt_binary", "cus_binary");
    let header = signature::signature_header(SECRET, signature::now_unix(), body.as_bytes());
    let response = http
        .post(format!("{url}{WEBHOOK_PATH}"))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exits within the shutdown deadline")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// How the TLS fixtures were made (kept for when they need replacing):
/// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca-key.pem
/// -out ca.pem -days 36500 -subj "/CN=gateway test CA" -addext basicConstraints=critical,CA:TRUE`,
/// then a `localhost` leaf with `subjectAltName=DNS:localhost,IP:127.0.0.1` signed by it
/// (`openssl req -new …` and `openssl x509 -req -CA ca.pem …`); the CA key was discarded.
#[test]
fn tls_fixture_note() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(std::path::Path::new(fixtures).join(f).is_file(), "{f}");
    }
}
