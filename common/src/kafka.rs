//! Kafka clients with the pipeline's guarantees built in, topic creation, and W3C trace context
//! carried in record headers.
//!
//! Creating a client and fetching metadata block the calling thread; from async code, build
//! clients before entering the hot path or inside `spawn_blocking`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, OwnedHeaders},
    producer::FutureProducer,
};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, KafkaSettings};

/// Properties common to every client, then the user's overrides.
pub fn client_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", client_id)
        // Fail fast on a dead broker address instead of retrying DNS forever in the background.
        .set("socket.connection.setup.timeout.ms", "10000");
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    config
}

/// An idempotent producer that waits for all in-sync replicas (`acks=all`): a delivery report
/// means the record is durable and was written once. `delivery_timeout` bounds how long a record
/// may wait for that report (librdkafka's `message.timeout.ms`), retries included.
pub fn producer(
    settings: &KafkaSettings,
    client_id: &str,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    producer_config(settings, client_id, delivery_timeout).create()
}

/// The configuration [`producer`] uses.
pub fn producer_config(
    settings: &KafkaSettings,
    client_id: &str,
    delivery_timeout: Duration,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        );
    // User properties override the defaults above, but never the guarantees.
    for (k, v) in client_config(settings, client_id).config_map() {
        config.set(k, v);
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// The group timing and fetch settings every consuming stage starts from, as one choice (each can
/// be overridden through `kafka.properties.<name>`):
///
/// * `session.timeout.ms` 45 s and `heartbeat.interval.ms` 3 s (librdkafka's own defaults): a
///   member's session must outlast the slowest answer its broker gives under load, because a
///   missed session revokes every partition and restarts the work. A crashed member is noticed
///   after 45 s; a restarted one with a stable `instance_id` (static membership) takes its
///   partitions back at once, which is how quick failover is had without a short session.
/// * `max.poll.interval.ms` stays at librdkafka's 300 s: the loop polls continuously whatever the
///   handler does (slow partitions are paused, not waited for).
/// * Fetch sizes stay at librdkafka's (`max.partition.fetch.bytes` 1 MiB, `fetch.max.bytes`
///   50 MiB): a backlog is read in few, large answers.
/// * `queued.min.messages` 1000 per partition (librdkafka: 100000) bounds what librdkafka
///   prefetches beside the records the loop holds (`consumer.max_queued_per_partition`), so memory
///   stays small whatever the backlog.
/// * `fetch.queue.backoff.ms` 10 ms (librdkafka: 1 s): when a fetch answer overfills that
///   prefetch bound (one 1 MiB answer is several thousand small records), librdkafka waits this
///   long before it fetches the partition again. At 1 s the loop sat idle most of a backlog
///   drain waiting for its next records (`BENCHMARKS.md`, *drain*).
/// * `fetch.wait.max.ms` 100 ms (librdkafka: 500 ms): how long a broker may hold a fetch that has
///   no new records. Kafka answers as soon as a record arrives (`fetch.min.bytes` 1), so there it
///   only sets how often an idle partition is asked again; a broker that holds the fetch for the
///   whole wait (the local Tansu broker does) adds it to every record's latency at each consuming
///   stage.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "45000"),
    ("heartbeat.interval.ms", "3000"),
    ("queued.min.messages", "1000"),
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.wait.max.ms", "100"),
];

/// A consumer-group member that never commits an offset the application has not stored.
/// Offsets are stored explicitly (`enable.auto.offset.store=false`) only once a record is
/// finished, and librdkafka commits stored offsets in the background, on partition revoke and on
/// close. Assignment is cooperative-sticky, so a rebalance moves only the partitions it must.
/// Timing and fetch sizes start from [`CONSUMER_DEFAULTS`].
pub fn consumer<C: ConsumerContext + 'static>(
    settings: &KafkaSettings,
    client_id: &str,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("group.id", group_id)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in CONSUMER_DEFAULTS {
        config.set(*k, *v);
    }
    for (k, v) in client_config(settings, client_id).config_map() {
        config.set(k, v);
    }
    config.set("enable.auto.offset.store", "false");
    config.create_with_context(context)
}

/// How a stage creates the topics it needs: the `topics` section every stage shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Create the stage's topics at start-up when they do not exist (existing topics are left
    /// as they are). Default `true`; turn off where topics are managed elsewhere.
    pub create: bool,
    /// Partitions of a topic created here. Default 6.
    pub partitions: i32,
    /// Replication factor of a topic created here. Default -1: the cluster's own default
    /// (`default.replication.factor`, KIP-464). A broker that refuses -1 fails start-up with a
    /// message naming this setting; set it explicitly there (3 on a production cluster).
    pub replication_factor: i32,
    /// `min.insync.replicas` of a topic created here with a replication factor above 1. Default
    /// unset: replication factor − 1 (2 of 3), so an `acks=all` write survives one broker's
    /// loss. With replication factor -1 the cluster's own `min.insync.replicas` applies.
    pub min_insync_replicas: Option<i32>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            create: true,
            partitions: 6,
            replication_factor: -1,
            min_insync_replicas: None,
        }
    }
}

impl TopicSettings {
    /// Rejects settings that parse but cannot work; `section` names them in the error.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.partitions) {
            return Err(ConfigError::invalid(
                format!("{section}.partitions"),
                "must be between 1 and 10000",
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(ConfigError::invalid(
                format!("{section}.replication_factor"),
                "must be -1 (the cluster's default) or at least 1",
            ));
        }
        if let Some(min) = self.min_insync_replicas {
            if min < 1 {
                return Err(ConfigError::invalid(
                    format!("{section}.min_insync_replicas"),
                    "must be at least 1",
                ));
            }
            if self.replication_factor > 0 && min > self.replication_factor {
                return Err(ConfigError::invalid(
                    format!("{section}.min_insync_replicas"),
                    format!("must not exceed {section}.replication_factor"),
                ));
            }
        }
        Ok(())
    }

    /// The `min.insync.replicas` a created topic gets, if any.
    pub fn min_insync(&self) -> Option<i32> {
        match (self.replication_factor, self.min_insync_replicas) {
            (rf, _) if rf <= 1 => None,
            (_, Some(min)) => Some(min),
            (rf, None) => Some(rf - 1),
        }
    }

    /// The spec of topic `name` under these settings.
    pub fn spec(&self, name: impl Into<String>) -> TopicSpec {
        let mut config = BTreeMap::new();
        if let Some(min) = self.min_insync() {
            config.insert("min.insync.replicas".to_string(), min.to_string());
        }
        TopicSpec {
            name: name.into(),
            partitions: self.partitions,
            replication: self.replication_factor,
            config,
        }
    }
}

/// A topic the pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// -1: the cluster's default.
    pub replication: i32,
    /// Topic configuration set at creation (`min.insync.replicas`, `max.message.bytes`, …).
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with one replica: for tests and single-broker development setups.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: 1,
            config: BTreeMap::new(),
        }
    }
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker refuses the settings: retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// The broker could not be asked (unreachable, timed out): retry.
    #[error("creating topics: {0}")]
    Unavailable(KafkaError),
}

/// Creates the topics that do not exist yet; existing topics are left as they are. Logs what was
/// created and with which settings. `section` names the settings in a refusal
/// (`topics.replication_factor`).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
    section: &str,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings, "pipeline-admin")
        .create()
        .map_err(TopicError::Unavailable)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication));
            for (k, v) in &t.config {
                topic = topic.set(k, v);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(TopicError::Unavailable)?;
    for (result, spec) in results.into_iter().zip(topics) {
        match result {
            Ok(topic) => tracing::info!(
                topic,
                partitions = spec.partitions,
                replication_factor = spec.replication,
                config = ?spec.config,
                "topic created"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code @ RDKafkaErrorCode::InvalidReplicationFactor)) if spec.replication == -1 => {
                return Err(TopicError::Refused(format!(
                    "invalid setting `{section}.replication_factor`: the broker refuses -1 (the cluster's default replication) for topic {topic} ({code}); set {section}.replication_factor explicitly"
                )));
            }
            Err((
                topic,
                code @ (RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            )) => {
                return Err(TopicError::Refused(format!(
                    "the broker refuses to create topic {topic} with {section}.partitions = {}, {section}.replication_factor = {}, config {:?}: {code}",
                    spec.partitions, spec.replication, spec.config
                )));
            }
            Err((topic, code)) => {
                tracing::warn!(topic, %code, "topic creation failed");
                return Err(TopicError::Unavailable(KafkaError::AdminOp(code)));
            }
        }
    }
    Ok(())
}

/// Asks the cluster for its metadata; for readiness probes.
pub async fn check_broker(settings: &KafkaSettings, timeout: Duration) -> Result<(), String> {
    let config = client_config(settings, "pipeline-readiness");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The W3C `traceparent`/`tracestate` headers for `cx`. A context with no valid span (tracing not
/// exported, or the first hop) gets a fresh trace id, flagged sampled so that a later stage that
/// does export records its spans under it: every record can be followed downstream.
pub fn trace_headers(cx: &Context) -> OwnedHeaders {
    let cx = if cx.span().span_context().is_valid() {
        cx.clone()
    } else {
        let trace_id = TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes());
        let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(sc)
    };
    let mut carrier = HeaderCarrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let mut headers = OwnedHeaders::new_with_capacity(carrier.0.len());
    let mut entries: Vec<_> = carrier.0.into_iter().collect();
    entries.sort();
    for (key, value) in &entries {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// The trace context carried by a record's headers (empty when there is none).
pub fn context_from_headers<H: Headers>(headers: Option<&H>) -> Context {
    let mut carrier = HeaderCarrier(HashMap::new());
    if let Some(headers) = headers {
        for h in headers.iter() {
            if let (Some(value), true) = (h.value, matches!(h.key, "traceparent" | "tracestate"))
                && let Ok(value) = std::str::from_utf8(value)
            {
                carrier.0.insert(h.key.to_string(), value.to_string());
            }
        }
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The trace context of the current `tracing` span (valid only when spans are exported).
pub fn current_context() -> Context {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current().context()
}

/// A span for processing one consumed record, with OpenTelemetry's messaging attributes: span
/// kind `consumer`, name `process <topic>`, `messaging.system` `kafka`,
/// `messaging.operation.type`/`.name` `process`, `messaging.destination.name` (the topic),
/// `messaging.destination.partition.id`, `messaging.kafka.offset`,
/// `messaging.consumer.group.name` and `messaging.kafka.message.key` (when the key is UTF-8).
/// Its parent is the trace context in the record's headers, so it joins the producer's trace.
///
/// `process_span!("enrich", &record, group, event_id = tracing::field::Empty)`: the span's
/// `tracing` name (what logs show), the record, the group, then the stage's own fields. The
/// attributes are fields of the one span a stage opens per record anyway; with export off they
/// cost what any span field costs.
#[macro_export]
macro_rules! process_span {
    ($name:literal, $record:expr, $group:expr $(, $($field:tt)+)?) => {{
        let record: &$crate::consume::Record = $record;
        let span = ::tracing::info_span!(
            $name,
            otel.name = %::std::format_args!("process {}", record.topic),
            otel.kind = "consumer",
            messaging.system = $crate::kafka::MESSAGING_SYSTEM,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %record.topic,
            messaging.destination.partition.id = %record.partition,
            messaging.kafka.offset = record.offset,
            messaging.consumer.group.name = %$group,
            messaging.kafka.message.key = record.key_str(),
            $($($field)+)?
        );
        $crate::kafka::follow_record(&span, record);
        span
    }};
}

/// `messaging.system` on every Kafka span.
pub const MESSAGING_SYSTEM: &str = "kafka";

/// Makes the trace context in `record`'s headers the parent of `span` (see [`process_span!`]).
/// Without span export there is nothing to join and nothing happens.
pub fn follow_record(span: &tracing::Span, record: &crate::consume::Record) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = context_from_headers(record.headers.as_ref());
    if parent.span().span_context().is_valid() {
        // Fails only when spans are not exported: then there is no trace to join.
        let _ = span.set_parent(parent);
    }
}

/// A span for producing one record to `topic` under `parent`, with OpenTelemetry's messaging
/// attributes: span kind `producer`, name `send <topic>`, `messaging.system` `kafka`,
/// `messaging.operation.type`/`.name` `send`, `messaging.destination.name`,
/// `messaging.kafka.message.key`, and, once [`sent`] reports the broker's acknowledgement,
/// `messaging.destination.partition.id` and `messaging.kafka.offset`. The record's headers come
/// from [`send_headers`], so the consumer's span is this span's child.
pub fn send_span(parent: &tracing::Span, topic: &str, key: &str) -> tracing::Span {
    tracing::info_span!(
        parent: parent,
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = MESSAGING_SYSTEM,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        messaging.kafka.message.key = key,
    )
}

/// Records on a [`send_span`] where the record landed (status ok), or that an attempt failed
/// (status error, until a retry succeeds).
pub fn sent<E>(span: &tracing::Span, result: &Result<crate::producer::Written, E>) {
    match result {
        Ok(written) => {
            span.record(
                "messaging.destination.partition.id",
                tracing::field::display(written.partition),
            );
            span.record("messaging.kafka.offset", written.offset);
            // Final: an attempt that failed before and was retried ends as a success.
            span.record("otel.status_code", "ok");
        }
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
}

/// The trace headers of a record produced under `span` (a [`send_span`]). With spans exported
/// they carry `span`'s context; without, `upstream` (the context the stage received, if any), so
/// the trace id still follows the record downstream.
pub fn send_headers(span: &tracing::Span, upstream: &Context) -> OwnedHeaders {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        trace_headers(&cx)
    } else {
        trace_headers(upstream)
    }
}

struct HeaderCarrier(HashMap<String, String>);

impl Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for HeaderCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_topics_survive_one_brokers_loss_when_replicated() {
        let spec = |replication_factor, min_insync_replicas| {
            TopicSettings {
                replication_factor,
                min_insync_replicas,
                ..TopicSettings::default()
            }
            .spec("t")
        };
        let min = |s: TopicSpec| s.config.get("min.insync.replicas").cloned();
        assert_eq!(min(spec(3, None)), Some("2".into()));
        assert_eq!(min(spec(3, Some(3))), Some("3".into()));
        assert_eq!(min(spec(1, None)), None, "one replica: nothing to require");
        assert_eq!(min(spec(-1, None)), None, "the cluster's default applies");
        let s = spec(3, None);
        assert_eq!((s.partitions, s.replication), (6, 3));

        let invalid = |settings: TopicSettings| settings.validate("topics").unwrap_err().to_string();
        let base = TopicSettings::default();
        assert!(
            invalid(TopicSettings {
                replication_factor: 0,
                ..base.clone()
            })
            .contains("topics.replication_factor")
        );
        assert!(
            invalid(TopicSettings {
                partitions: 0,
                ..base.clone()
            })
            .contains("topics.partitions")
        );
        assert!(
            invalid(TopicSettings {
                replication_factor: 2,
                min_insync_replicas: Some(3),
                ..base
            })
            .contains("topics.min_insync_replicas")
        );
    }

    #[test]
    fn trace_context_roundtrips_through_headers() {
        let headers = trace_headers(&Context::new());
        let parent = headers
            .iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value)
            .unwrap();
        let parent = std::str::from_utf8(parent).unwrap();
        assert_eq!(parent.len(), 55, "{parent}");
        assert!(parent.starts_with("00-"));

        let cx = context_from_headers(Some(&headers));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert!(
            sc.is_sampled(),
            "a stage that exports records spans under a fresh trace id"
        );
        assert!(parent.contains(&sc.trace_id().to_string()));

        // Passing it on keeps the trace id.
        let again = trace_headers(&cx);
        let cx2 = context_from_headers(Some(&again));
        assert_eq!(cx2.span().span_context().trace_id(), sc.trace_id());
    }

    /// Finished spans, collected from a tracer provider that exports nowhere else.
    #[derive(Debug, Clone, Default)]
    struct Collected(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanProcessor for Collected {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    impl Collected {
        /// Runs `f` with spans exported to this collector, then returns them.
        fn run(f: impl FnOnce()) -> Vec<opentelemetry_sdk::trace::SpanData> {
            use opentelemetry::trace::TracerProvider as _;
            use tracing_subscriber::layer::SubscriberExt;
            let collected = Collected::default();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(collected.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
            tracing::subscriber::with_default(subscriber, f);
            collected.0.lock().unwrap().clone()
        }
    }

    fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn record_with(headers: Option<OwnedHeaders>) -> crate::consume::Record {
        crate::consume::Record {
            topic: "customers.normalized".into(),
            partition: 2,
            offset: 41,
            key: Some(b"cus_1".to_vec()),
            payload: None,
            headers,
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_process_span_joins_the_producers_trace_with_the_messaging_attributes() {
        let upstream = trace_headers(&Context::new());
        let upstream_cx = context_from_headers(Some(&upstream));
        let upstream_sc = upstream_cx.span().span_context().clone();
        let record = record_with(Some(upstream));
        let spans = Collected::run(|| {
            let span = crate::process_span!("change", &record, "sink-group", customer_id = "cus_1");
            drop(span);
        });
        let [span] = &spans[..] else {
            panic!("one span: {spans:?}")
        };
        assert_eq!(span.name, "process customers.normalized");
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(span.span_context.trace_id(), upstream_sc.trace_id());
        assert_eq!(span.parent_span_id, upstream_sc.span_id());
        assert!(span.parent_span_is_remote);
        for (key, value) in [
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "process"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", "customers.normalized"),
            ("messaging.destination.partition.id", "2"),
            ("messaging.kafka.offset", "41"),
            ("messaging.consumer.group.name", "sink-group"),
            ("messaging.kafka.message.key", "cus_1"),
            ("customer_id", "cus_1"),
        ] {
            assert_eq!(attribute(span, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(
            attribute(span, "otel.name"),
            None,
            "a span setting, not an attribute"
        );

        // A record without trace context starts a trace of its own.
        let spans = Collected::run(|| drop(crate::process_span!("enrich", &record_with(None), "g")));
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        assert!(spans[0].span_context.is_valid());
    }

    #[test]
    fn a_send_span_is_the_parent_of_what_consumes_its_record() {
        let record = record_with(None);
        let mut headers = None;
        let spans = Collected::run(|| {
            let process = crate::process_span!("enrich", &record, "enricher");
            let send = send_span(&process, "customers.normalized", "cus_1");
            headers = Some(send_headers(&send, &Context::new()));
            sent::<()>(
                &send,
                &Ok(crate::producer::Written {
                    partition: 1,
                    offset: 7,
                }),
            );
            let failed = send_span(&process, "customers.normalized", "cus_2");
            sent(&failed, &Err(()));
            let retried = send_span(&process, "customers.normalized", "cus_3");
            sent(&retried, &Err(()));
            sent::<()>(
                &retried,
                &Ok(crate::producer::Written {
                    partition: 0,
                    offset: 1,
                }),
            );
        });
        let by_name = |key: &str| {
            spans
                .iter()
                .find(|s| attribute(s, "messaging.kafka.message.key").as_deref() == Some(key))
                .unwrap_or_else(|| panic!("no span for {key}: {spans:?}"))
        };
        let process = spans
            .iter()
            .find(|s| s.span_kind == opentelemetry::trace::SpanKind::Consumer)
            .unwrap();
        let send = by_name("cus_1");
        assert_eq!(send.name, "send customers.normalized");
        assert_eq!(send.span_kind, opentelemetry::trace::SpanKind::Producer);
        assert_eq!(send.parent_span_id, process.span_context.span_id());
        assert_eq!(send.span_context.trace_id(), process.span_context.trace_id());
        for (key, value) in [
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "send"),
            ("messaging.operation.name", "send"),
            ("messaging.destination.name", "customers.normalized"),
            ("messaging.destination.partition.id", "1"),
            ("messaging.kafka.offset", "7"),
        ] {
            assert_eq!(attribute(send, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(send.status, opentelemetry::trace::Status::Ok);
        assert_eq!(by_name("cus_2").status, opentelemetry::trace::Status::error(""));
        assert_eq!(
            by_name("cus_3").status,
            opentelemetry::trace::Status::Ok,
            "a retry that succeeds ends the span as a success"
        );

        // The produced record carries the send span's context: the next stage is its child.
        let next = context_from_headers(headers.as_ref());
        assert_eq!(next.span().span_context().span_id(), send.span_context.span_id());
        assert_eq!(
            next.span().span_context().trace_id(),
            send.span_context.trace_id()
        );
    }

    #[test]
    fn without_export_the_upstream_trace_id_is_passed_on() {
        let upstream = trace_headers(&Context::new());
        let upstream_cx = context_from_headers(Some(&upstream));
        let record = record_with(Some(upstream));
        // No OpenTelemetry layer: the spans exist for logs only.
        let subscriber = tracing_subscriber::registry();
        let headers = tracing::subscriber::with_default(subscriber, || {
            let process = crate::process_span!("enrich", &record, "enricher");
            let send = send_span(&process, "t", "k");
            send_headers(&send, &upstream_cx)
        });
        let next = context_from_headers(Some(&headers));
        assert_eq!(
            next.span().span_context().trace_id(),
            upstream_cx.span().span_context().trace_id()
        );
    }

    #[test]
    fn no_headers_means_no_context() {
        let cx = context_from_headers::<OwnedHeaders>(None);
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn user_properties_cannot_weaken_the_producer() {
        let mut settings = KafkaSettings::default();
        settings.properties.insert("acks".into(), "1".into());
        settings.properties.insert("linger.ms".into(), "50".into());
        let config = producer_config(&settings, "t", Duration::from_secs(5));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("message.timeout.ms"), Some("5000"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}
