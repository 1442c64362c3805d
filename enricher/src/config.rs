//! The enricher's settings: every key with its documented default, loaded through
//! [`common::config::load`] (defaults, TOML file, standard and `ENRICHER_` variables, `--set`
//! flags) and validated at start-up with errors that name the setting.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use common::{
    config::{ConfigError, HumanDuration, KafkaSettings, RegistrySettings, Settings},
    consume::ConsumerSettings,
    kafka::TopicSettings,
    retry::BackoffSettings,
    telemetry::TelemetrySettings,
};
use schemas::topics;
use serde::{Deserialize, Serialize};

use crate::normalize::{CUSTOMER_CREATED, CUSTOMER_DELETED, CUSTOMER_UPDATED, is_customer_event};

/// Everything the enricher can be told. See `enricher/README.md` for the table of keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnricherConfig {
    /// Address of the ops HTTP server (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    pub kafka: KafkaSettings,
    pub registry: RegistrySettings,
    pub telemetry: TelemetrySettings,
    /// Consumer group; every instance of one deployment shares it, so they split the partitions.
    pub group: String,
    /// Static group membership (Kafka's `group.instance.id`): unique per instance and stable
    /// across its restarts (a pod name, say). A restarted instance takes its partitions back at
    /// once instead of waiting for the group to notice the old process is gone; an instance that
    /// stops keeps its partitions until the session times out. Unset: dynamic membership.
    pub instance_id: Option<String>,
    /// Where raw Stripe events are read from.
    pub input_topic: String,
    /// Where normalised customer changes are written.
    pub output_topic: String,
    /// Where records that can never be processed go; `<input_topic>.dlq` when unset.
    pub dlq_topic: Option<String>,
    /// Event types turned into customer changes; every other type is skipped (counted, and its
    /// offset still advances). Only customer events can be normalised, so this can only narrow
    /// the default set (e.g. leave out `customer.deleted` to never propagate deletions).
    pub event_types: BTreeSet<String>,
    /// Whether and how the input, output and dead-letter topics are created at start-up.
    pub topics: TopicSettings,
    /// Tuning of the commit-after-success consumer loop, and how often lag is measured.
    pub consumer: ConsumerSettings,
    /// How long one output record may wait for the broker's acknowledgement (librdkafka
    /// `message.timeout.ms`, retries included) before it is produced again.
    pub produce_timeout: HumanDuration,
    /// Retry delays for transient failures (broker, registry).
    pub backoff: BackoffSettings,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        EnricherConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            telemetry: TelemetrySettings::default(),
            group: "enricher".into(),
            instance_id: None,
            input_topic: topics::STRIPE_EVENTS.into(),
            output_topic: topics::CUSTOMERS_NORMALIZED.into(),
            dlq_topic: None,
            event_types: [CUSTOMER_CREATED, CUSTOMER_UPDATED, CUSTOMER_DELETED]
                .into_iter()
                .map(String::from)
                .collect(),
            topics: TopicSettings::default(),
            consumer: ConsumerSettings::default(),
            produce_timeout: HumanDuration::secs(30),
            backoff: BackoffSettings::default(),
        }
    }
}

impl EnricherConfig {
    /// The dead-letter topic: the configured one, else `<input_topic>.dlq`.
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| topics::dlq_for(&self.input_topic))
    }
}

fn nonblank(setting: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(setting, "must not be empty"));
    }
    if value.trim() != value {
        return Err(ConfigError::invalid(
            setting,
            "must not start or end with white space",
        ));
    }
    Ok(())
}

impl Settings for EnricherConfig {
    const ENV_PREFIX: &'static str = "ENRICHER_";

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.registry.validate("registry")?;
        nonblank("group", &self.group)?;
        nonblank("input_topic", &self.input_topic)?;
        nonblank("output_topic", &self.output_topic)?;
        if let Some(dlq) = &self.dlq_topic {
            nonblank("dlq_topic", dlq)?;
        }
        if let Some(id) = &self.instance_id {
            nonblank("instance_id", id)?;
        }
        let dlq = self.dlq_topic();
        if self.output_topic == self.input_topic {
            return Err(ConfigError::invalid(
                "output_topic",
                "must differ from input_topic",
            ));
        }
        if dlq == self.input_topic || dlq == self.output_topic {
            return Err(ConfigError::invalid(
                "dlq_topic",
                "must differ from input_topic and output_topic",
            ));
        }
        if self.event_types.is_empty() {
            return Err(ConfigError::invalid(
                "event_types",
                "must name at least one event type",
            ));
        }
        if let Some(bad) = self.event_types.iter().find(|t| !is_customer_event(t)) {
            return Err(ConfigError::invalid(
                "event_types",
                format!(
                    "`{bad}` is not a customer change; choose from {CUSTOMER_CREATED}, {CUSTOMER_UPDATED}, {CUSTOMER_DELETED}"
                ),
            ));
        }
        self.topics.validate("topics")?;
        self.consumer.validate("consumer")?;
        if self.produce_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("produce_timeout", "must be at least 100ms"));
        }
        self.backoff.validate("backoff")
    }
}

impl common::stage::ConsumingStage for EnricherConfig {
    const NAME: &'static str = crate::STAGE;

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn kafka(&self) -> &KafkaSettings {
        &self.kafka
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn input_topic(&self) -> &str {
        &self.input_topic
    }

    fn dlq_topic(&self) -> String {
        // The inherent method: the configured topic, else `<input_topic>.dlq`.
        EnricherConfig::dlq_topic(self)
    }

    fn registry(&self) -> Option<&RegistrySettings> {
        Some(&self.registry)
    }

    fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    fn consumer(&self) -> &ConsumerSettings {
        &self.consumer
    }

    fn backoff(&self) -> &BackoffSettings {
        &self.backoff
    }

    fn topics(&self) -> &TopicSettings {
        &self.topics
    }

    fn topics_to_create(&self) -> Vec<String> {
        vec![
            self.input_topic.clone(),
            self.output_topic.clone(),
            self.dlq_topic(),
        ]
    }

    fn produce_timeout(&self) -> Duration {
        self.produce_timeout.into()
    }
}

#[cfg(test)]
mod tests {
    use common::config::{ConfigArgs, load_from};

    use super::*;

    fn load(env: &[(&str, &str)], set: &[(&str, &str)]) -> Result<EnricherConfig, ConfigError> {
        let args = ConfigArgs {
            config: None,
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        load_from(&args, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9101");
        assert_eq!(c.group, "enricher");
        assert_eq!(c.input_topic, "stripe.events");
        assert_eq!(c.output_topic, "customers.normalized");
        assert_eq!(c.dlq_topic(), "stripe.events.dlq");
        assert_eq!(c.event_types.len(), 3);
        assert!(c.topics.create);
        assert_eq!(c.topics.partitions, 6);
        assert_eq!(c.topics.replication_factor, -1, "the cluster's default");
        assert_eq!(c.consumer.max_batch, 100);
    }

    #[test]
    fn every_source_reaches_the_settings() {
        let c = load(
            &[
                ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
                ("SCHEMA_REGISTRY_URL", "http://r:8081"),
                ("ENRICHER_GROUP", "enricher-blue"),
                ("ENRICHER_INPUT_TOPIC", "in"),
                ("ENRICHER_CONSUMER__MAX_BATCH", "7"),
                ("ENRICHER_EVENT_TYPES", "[customer.created, customer.updated]"),
            ],
            &[("produce_timeout", "2s"), ("backoff.max", "5s")],
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "k:9092");
        assert_eq!(c.registry.url, "http://r:8081");
        assert_eq!(c.group, "enricher-blue");
        assert_eq!(c.dlq_topic(), "in.dlq");
        assert_eq!(c.consumer.max_batch, 7);
        assert_eq!(c.produce_timeout, HumanDuration::secs(2));
        assert_eq!(c.backoff.max, HumanDuration::secs(5));
        assert!(!c.event_types.contains(CUSTOMER_DELETED));
    }

    #[test]
    fn bad_settings_are_named() {
        for (set, setting) in [
            (("group", " "), "group"),
            (("instance_id", ""), "instance_id"),
            (("output_topic", "stripe.events"), "output_topic"),
            (("dlq_topic", "customers.normalized"), "dlq_topic"),
            (("event_types", "[invoice.paid]"), "event_types"),
            (("event_types", "[]"), "event_types"),
            (("topics.partitions", "0"), "topics.partitions"),
            (("topics.replication_factor", "0"), "topics.replication_factor"),
            (("consumer.stall_after", "0s"), "consumer.stall_after"),
            (("consumer.max_batch", "0"), "consumer.max_batch"),
            (("produce_timeout", "1ms"), "produce_timeout"),
            (("backoff.initial", "0s"), "backoff.initial"),
            (("kafka.bootstrap_servers", ""), "kafka.bootstrap_servers"),
            (("registry.url", "ftp://x"), "registry.url"),
            (("listen", "nowhere"), "listen"),
            (("lag_intervall", "1s"), "lag_intervall"),
        ] {
            let err = load(&[], &[set]).unwrap_err().to_string();
            assert!(err.contains(setting), "{set:?}: {err}");
        }
    }

    #[test]
    fn rendered_config_loads_back() {
        let c = load(&[], &[("dlq_topic", "dead")]).unwrap();
        let text = common::config::render(&c);
        assert!(text.contains("[consumer]"), "{text}");
        let back: EnricherConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
