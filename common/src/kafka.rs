//! Kafka clients with the pipeline's guarantees built in, topic creation, and W3C trace context
//! carried in record headers.
//!
//! Creating a client and fetching metadata block the calling thread; from async code, build
//! clients before entering the hot path or inside `spawn_blocking`.

use std::{collections::HashMap, time::Duration};

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

use crate::config::KafkaSettings;

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

/// A consumer-group member that never commits an offset the application has not stored.
/// Offsets are stored explicitly (`enable.auto.offset.store=false`) only once a record is
/// finished, and librdkafka commits stored offsets in the background, on partition revoke and on
/// close. Assignment is cooperative-sticky, so a rebalance moves only the partitions it must.
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
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    for (k, v) in client_config(settings, client_id).config_map() {
        config.set(k, v);
    }
    config.set("enable.auto.offset.store", "false");
    config.create_with_context(context)
}

/// A topic the pipeline needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: 1,
        }
    }
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings, "pipeline-admin").create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic, %code, "topic creation failed"));
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
/// exported, or the first hop) gets a fresh trace id, so every record can be followed downstream.
pub fn trace_headers(cx: &Context) -> OwnedHeaders {
    let cx = if cx.span().span_context().is_valid() {
        cx.clone()
    } else {
        let trace_id = TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes());
        let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::default(),
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
        assert!(parent.contains(&sc.trace_id().to_string()));

        // Passing it on keeps the trace id.
        let again = trace_headers(&cx);
        let cx2 = context_from_headers(Some(&again));
        assert_eq!(cx2.span().span_context().trace_id(), sc.trace_id());
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
