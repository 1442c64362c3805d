//! The gateway's settings, with their documented defaults and the checks that reject combinations
//! that parse but cannot work. Loaded by `common::config::load` (file, `GATEWAY_*` variables,
//! `--set` flags); see the README for the full table.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use common::config::{
    ConfigArgs, ConfigError, HumanDuration, KafkaSettings, RegistrySettings, Secret, Settings,
};
use common::{
    kafka::TopicSettings, retry::BackoffSettings, stripe::StripeSettings, telemetry::TelemetrySettings,
};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Stripe gives up on a delivery after about this long; every answer must come well before.
pub const STRIPE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a record carries beside the raw body, at most: the verified `Stripe-Signature` header
/// (headers over 8 KiB are refused before verification), the fields copied out of the body (ids,
/// type, API version), the Avro and Confluent framing, the trace headers, and librdkafka's
/// per-message framing. The producer's `message.max.bytes` is derived as `limits.max_body` plus
/// this, so every body the gateway accepts fits in a record.
pub const RECORD_OVERHEAD: usize = 16 * 1024;

/// The librdkafka property that bounds one record, checked at enqueue.
pub const MESSAGE_MAX_BYTES: &str = "message.max.bytes";

/// librdkafka's upper bound on `message.max.bytes`.
const MESSAGE_MAX_BYTES_CEILING: usize = 1_000_000_000;

/// Everything the gateway can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on (`GATEWAY_LISTEN`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The broker (`KAFKA_BOOTSTRAP_SERVERS`, `GATEWAY_KAFKA__…`).
    pub kafka: KafkaSettings,
    /// The schema registry (`SCHEMA_REGISTRY_URL`, `GATEWAY_REGISTRY__…`).
    pub registry: RegistrySettings,
    /// Logs and traces (`RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `GATEWAY_TELEMETRY__…`).
    pub telemetry: TelemetrySettings,
    /// Topic every verified event is written to. Default `stripe.events`.
    pub topic: String,
    /// Creating the topic at start-up when it does not exist: the `topics` section every stage
    /// shares (replication factor defaults to the cluster's own).
    pub topics: TopicSettings,
    /// Signature verification.
    pub webhook: WebhookSettings,
    /// Request limits and time budgets.
    pub limits: Limits,
    /// Memory of recently accepted event ids.
    pub dedup: DedupSettings,
    /// Retry delays of the start-up steps (creating the topic, registering the schema) while the
    /// broker or registry is away. Default 100 ms growing to 30 s.
    pub backoff: BackoffSettings,
    /// Source addresses allowed to post webhooks (IPs or CIDR ranges). Empty (default): any.
    /// Stripe publishes its webhook IPs at <https://stripe.com/files/ips/ips_webhooks.txt>.
    pub allow_ips: IpList,
    /// Proxies whose `X-Forwarded-For` is believed when checking `allow_ips`. Empty (default):
    /// the header is ignored and the peer address is the client.
    pub trusted_proxies: IpList,
    /// Serve HTTPS directly (rustls). Off by default: normally a proxy or load balancer terminates
    /// TLS.
    pub tls: TlsSettings,
    /// Event types to write (`customer.updated`, `customer.*`, `*`). Empty (default): all.
    /// Others are answered 200 and not written; prefer choosing events on the Stripe endpoint.
    pub event_types: StringList,
    /// Stripe's API, for `gateway backfill` (`STRIPE_API_KEY`, `STRIPE_API_BASE`,
    /// `GATEWAY_STRIPE__…`). Not used by the webhook server.
    pub stripe: StripeSettings,
    /// `gateway backfill`'s own settings.
    pub backfill: BackfillSettings,
}

/// Settings of `gateway backfill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillSettings {
    /// Compacted topic holding each backfill's progress (the last event written, by window), so
    /// an interrupted backfill continues where it stopped. Default `stripe.events.backfill`.
    pub checkpoint_topic: String,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        BackfillSettings {
            checkpoint_topic: "stripe.events.backfill".into(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            telemetry: TelemetrySettings::default(),
            topic: schemas::topics::STRIPE_EVENTS.to_string(),
            topics: TopicSettings::default(),
            webhook: WebhookSettings::default(),
            limits: Limits::default(),
            dedup: DedupSettings::default(),
            backoff: BackoffSettings::default(),
            allow_ips: IpList::default(),
            trusted_proxies: IpList::default(),
            tls: TlsSettings::default(),
            event_types: StringList::default(),
            stripe: StripeSettings::default(),
            backfill: BackfillSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Endpoint signing secrets (`whsec_…`); any one verifies. Give two while rolling a secret.
    /// `GATEWAY_WEBHOOK__SECRETS=whsec_a,whsec_b` (or `[whsec_a, whsec_b]`), or
    /// `STRIPE_WEBHOOK_SECRET` for a single one. Required.
    #[serde(deserialize_with = "secrets")]
    pub secrets: Vec<Secret>,
    /// How old a signature may be. Default 300 s, as in Stripe's libraries.
    pub tolerance: HumanDuration,
    /// How far in the future a signature's timestamp may be. Default 300 s: a symmetric window
    /// (as stripe-php does) absorbs clock skew but keeps a captured request from being replayable
    /// for longer than `tolerance` after it was signed.
    pub future_tolerance: HumanDuration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secrets: Vec::new(),
            tolerance: HumanDuration::secs(300),
            future_tolerance: HumanDuration::secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted body, bytes. Default 1 MiB (Stripe events are a few KiB).
    pub max_body: usize,
    /// Verified webhook requests being written at once; more are answered 503 at once. Default
    /// 256. Taken only once the body is read and its signature verified, so slow or unsigned
    /// uploads never hold one.
    pub max_in_flight: usize,
    /// A client must send a request's headers within this; then the connection is closed.
    /// Default 10 s.
    pub header_read_timeout: HumanDuration,
    /// A client must send the whole body within this, from the end of its headers; then 408.
    /// Default 10 s. Must be less than `request_timeout`.
    pub body_read_timeout: HumanDuration,
    /// Bound on one webhook request, body upload included; then 503. Default 15 s. Must be under
    /// Stripe's 30 s.
    pub request_timeout: HumanDuration,
    /// Bound on writing one event (schema lookup and broker acknowledgement); then 503. Also the
    /// producer's delivery timeout. Default 10 s. Must be under `request_timeout`.
    pub produce_timeout: HumanDuration,
    /// On shutdown, how long in-flight requests and the producer get to finish. Default 20 s; at
    /// least `request_timeout`.
    pub shutdown_timeout: HumanDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            max_in_flight: 256,
            header_read_timeout: HumanDuration::secs(10),
            body_read_timeout: HumanDuration::secs(10),
            request_timeout: HumanDuration::secs(15),
            produce_timeout: HumanDuration::secs(10),
            shutdown_timeout: HumanDuration::secs(20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSettings {
    /// Most event ids remembered. Default 100000 (a few MiB); 0 turns the memory off.
    pub capacity: usize,
    /// How long an accepted id is remembered. Default 24 h.
    pub ttl: HumanDuration,
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings {
            capacity: 100_000,
            ttl: HumanDuration::secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. With `key`, turns HTTPS on. Default: unset.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default: unset.
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

impl Settings for GatewayConfig {
    const ENV_PREFIX: &'static str = "GATEWAY_";
    const EXTRA_ENV: &'static [(&'static str, &'static str)] = common::stripe::STRIPE_ENV;

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_shared()?;
        if self.webhook.secrets.is_empty() {
            return Err(ConfigError::invalid(
                "webhook.secrets",
                "at least one webhook signing secret is required (GATEWAY_WEBHOOK__SECRETS or STRIPE_WEBHOOK_SECRET)",
            ));
        }
        if self
            .webhook
            .secrets
            .iter()
            .any(|s| s.is_empty() || s.expose().chars().any(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "webhook.secrets",
                "a secret is empty or contains whitespace",
            ));
        }
        if self.webhook.tolerance.0.is_zero() {
            return Err(ConfigError::invalid("webhook.tolerance", "must be above zero"));
        }
        self.validate_server()
    }
}

impl GatewayConfig {
    /// What the server and `backfill` both need: broker, registry.
    fn validate_shared(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.registry.validate("registry")?;
        if self.topic.trim().is_empty() {
            return Err(ConfigError::invalid("topic", "must not be empty"));
        }
        Ok(())
    }

    /// Settings for `gateway backfill`: broker, registry, topics and Stripe's API; no webhook
    /// secret is needed.
    pub fn load_for_backfill(args: &ConfigArgs) -> Result<Self, ConfigError> {
        Self::load_for_backfill_from(args, std::env::vars())
    }

    /// As [`GatewayConfig::load_for_backfill`], with the environment given explicitly.
    pub fn load_for_backfill_from(
        args: &ConfigArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let c: GatewayConfig = common::config::extract(args, env)?;
        c.validate_shared()?;
        c.topics.validate("topics")?;
        c.stripe.validate("stripe")?;
        if c.backfill.checkpoint_topic.trim().is_empty() {
            return Err(ConfigError::invalid(
                "backfill.checkpoint_topic",
                "must not be empty",
            ));
        }
        Ok(c)
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if self.topic.trim().is_empty() {
            return Err(ConfigError::invalid("topic", "must not be empty"));
        }
        self.topics.validate("topics")?;
        let l = &self.limits;
        if l.max_body < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_body",
                "must be at least 1024 bytes",
            ));
        }
        self.validate_record_size()?;
        if l.max_in_flight == 0 {
            return Err(ConfigError::invalid("limits.max_in_flight", "must be at least 1"));
        }
        if l.header_read_timeout.0.is_zero() {
            return Err(ConfigError::invalid(
                "limits.header_read_timeout",
                "must be above zero",
            ));
        }
        if l.body_read_timeout.0.is_zero() {
            return Err(ConfigError::invalid(
                "limits.body_read_timeout",
                "must be above zero",
            ));
        }
        if l.body_read_timeout >= l.request_timeout {
            return Err(ConfigError::invalid(
                "limits.body_read_timeout",
                format!("must be less than limits.request_timeout ({})", l.request_timeout),
            ));
        }
        if l.produce_timeout.0.is_zero() {
            return Err(ConfigError::invalid(
                "limits.produce_timeout",
                "must be above zero",
            ));
        }
        if l.produce_timeout >= l.request_timeout {
            return Err(ConfigError::invalid(
                "limits.produce_timeout",
                format!("must be less than limits.request_timeout ({})", l.request_timeout),
            ));
        }
        if l.request_timeout.0 >= STRIPE_TIMEOUT {
            return Err(ConfigError::invalid(
                "limits.request_timeout",
                "must be less than 30s, Stripe's own timeout",
            ));
        }
        if l.shutdown_timeout < l.request_timeout {
            return Err(ConfigError::invalid(
                "limits.shutdown_timeout",
                format!(
                    "must be at least limits.request_timeout ({}), so in-flight requests can finish",
                    l.request_timeout
                ),
            ));
        }
        self.backoff.validate("backoff")?;
        if self.dedup.capacity > 0 && self.dedup.ttl.0.is_zero() {
            return Err(ConfigError::invalid("dedup.ttl", "must be above zero"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::invalid(
                "tls",
                "set both tls.cert and tls.key, or neither",
            ));
        }
        if self.event_types.0.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid("event_types", "contains an empty entry"));
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Loads settings from every source, with `STRIPE_WEBHOOK_SECRET` as an alias for
    /// `GATEWAY_WEBHOOK__SECRETS` when the latter is not set.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        Self::load_from(args, std::env::vars())
    }

    /// As [`GatewayConfig::load`], with the environment given explicitly.
    pub fn load_from(
        args: &ConfigArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        let has_prefixed = env.iter().any(|(k, _)| k == "GATEWAY_WEBHOOK__SECRETS");
        if !has_prefixed
            && let Some((_, secret)) = env
                .iter()
                .find(|(k, v)| k == "STRIPE_WEBHOOK_SECRET" && !v.is_empty())
        {
            env.push(("GATEWAY_WEBHOOK__SECRETS".into(), secret.clone()));
        }
        common::config::load_from(args, env)
    }

    pub fn produce_timeout(&self) -> Duration {
        self.limits.produce_timeout.into()
    }

    /// The largest record the producer takes (librdkafka's `message.max.bytes`): the user's
    /// `kafka.properties.message.max.bytes` when set, else `limits.max_body` plus
    /// [`RECORD_OVERHEAD`].
    pub fn message_max_bytes(&self) -> usize {
        self.user_message_max_bytes()
            .and_then(Result::ok)
            .unwrap_or_else(|| self.limits.max_body.saturating_add(RECORD_OVERHEAD))
    }

    /// The Kafka settings the producer is created with: `kafka`, plus the derived
    /// `message.max.bytes` unless the user set it.
    pub fn producer_kafka(&self) -> KafkaSettings {
        let mut kafka = self.kafka.clone();
        kafka
            .properties
            .entry(MESSAGE_MAX_BYTES.to_string())
            .or_insert_with(|| self.message_max_bytes().to_string());
        kafka
    }

    fn user_message_max_bytes(&self) -> Option<Result<usize, std::num::ParseIntError>> {
        self.kafka
            .properties
            .get(MESSAGE_MAX_BYTES)
            .map(|v| v.trim().parse::<usize>())
    }

    /// A body of `limits.max_body` bytes must fit in one record, or a verified event could be
    /// refused on every delivery until Stripe gives up on it.
    fn validate_record_size(&self) -> Result<(), ConfigError> {
        let setting = format!("kafka.properties.{MESSAGE_MAX_BYTES}");
        let needed = self.limits.max_body.saturating_add(RECORD_OVERHEAD);
        match self.user_message_max_bytes() {
            None if needed > MESSAGE_MAX_BYTES_CEILING => Err(ConfigError::invalid(
                "limits.max_body",
                format!(
                    "a record must hold the body plus {RECORD_OVERHEAD} bytes, and librdkafka's \
                     {MESSAGE_MAX_BYTES} is at most {MESSAGE_MAX_BYTES_CEILING}"
                ),
            )),
            None => Ok(()),
            Some(Err(_)) => Err(ConfigError::invalid(setting, "must be a number of bytes")),
            Some(Ok(set)) if set < needed => Err(ConfigError::invalid(
                setting,
                format!(
                    "{set} is too small for limits.max_body ({}): a record holds the body plus up \
                     to {RECORD_OVERHEAD} bytes, so it must be at least {needed}; raise it, lower \
                     limits.max_body, or leave it unset to have it derived",
                    self.limits.max_body
                ),
            )),
            Some(Ok(_)) => Ok(()),
        }
    }
}

/// Accepts a list as a TOML array or as one comma-separated string (the environment's form).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::to_string).collect(),
        Raw::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

fn secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    string_list(d).map(|v| v.into_iter().map(Secret::new).collect())
}

/// A list of strings, written as a TOML array or a comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StringList(#[serde(deserialize_with = "string_list")] pub Vec<String>);

/// A list of IP addresses and CIDR ranges (`3.18.12.63`, `10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList(pub Vec<IpNet>);

impl IpList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for IpList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_net)
            .collect::<Result<_, _>>()
            .map(IpList)
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))
}

impl Serialize for IpList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for IpList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = string_list(d)?;
        items
            .iter()
            .map(|s| parse_net(s))
            .collect::<Result<_, _>>()
            .map(IpList)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::load_from(&ConfigArgs::default(), env(pairs))
    }

    #[test]
    fn backfill_needs_a_stripe_key_and_no_webhook_secret() {
        let backfill = |pairs: &[(&str, &str)]| {
            GatewayConfig::load_for_backfill_from(&ConfigArgs::default(), env(pairs))
        };
        let err = backfill(&[]).unwrap_err().to_string();
        assert!(
            err.contains("stripe.api_key") && err.contains("STRIPE_API_KEY"),
            "{err}"
        );
        let c = backfill(&[
            ("STRIPE_API_KEY", "rk_live_abcdef123456"),
            ("STRIPE_API_BASE", "http://127.0.0.1:12111"),
        ])
        .unwrap();
        assert_eq!(c.stripe.api_key.expose(), "rk_live_abcdef123456");
        assert_eq!(c.stripe.base_url, "http://127.0.0.1:12111");
        let printed = common::config::render(&c);
        assert!(!printed.contains("abcdef123456") && !format!("{c:?}").contains("abcdef123456"));
        // The prefixed variable works too, and the webhook server still needs its secret.
        let c = backfill(&[("GATEWAY_STRIPE__API_KEY", "sk_test_x1")]).unwrap();
        assert_eq!(c.stripe.api_key.expose(), "sk_test_x1");
        assert!(load(&[("STRIPE_API_KEY", "sk_test_x1")]).is_err());
        let err = backfill(&[("STRIPE_API_KEY", "pk_test_x1")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("publishable") && !err.contains("pk_test_x1"),
            "{err}"
        );
    }

    #[test]
    fn defaults_need_only_a_secret() {
        let err = load(&[]).unwrap_err();
        assert!(err.to_string().contains("webhook.secrets"), "{err}");
        let c = load(&[("STRIPE_WEBHOOK_SECRET", "whsec_1")]).unwrap();
        assert_eq!(c.webhook.secrets, vec![Secret::new("whsec_1")]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.topic, "stripe.events");
        assert_eq!(c.limits.max_body, 1 << 20);
        assert_eq!(c.webhook.tolerance, HumanDuration::secs(300));
        assert!(c.allow_ips.is_empty() && c.event_types.0.is_empty() && !c.tls.enabled());
    }

    #[test]
    fn secrets_as_a_comma_list_or_an_array() {
        for value in ["whsec_a,whsec_b", "[whsec_a, whsec_b]", " whsec_a , whsec_b ,"] {
            let c = load(&[("GATEWAY_WEBHOOK__SECRETS", value)]).unwrap();
            assert_eq!(
                c.webhook.secrets,
                vec![Secret::new("whsec_a"), Secret::new("whsec_b")],
                "{value}"
            );
        }
        // The prefixed variable wins over the alias.
        let c = load(&[
            ("GATEWAY_WEBHOOK__SECRETS", "whsec_new"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_alias"),
        ])
        .unwrap();
        assert_eq!(c.webhook.secrets, vec![Secret::new("whsec_new")]);
    }

    #[test]
    fn file_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            r#"
listen = "0.0.0.0:9000"
event_types = ["customer.*"]
allow_ips = ["3.18.12.63", "10.0.0.0/8"]
[webhook]
secrets = ["whsec_a", "whsec_b"]
future_tolerance = "60s"
[limits]
request_timeout = "20s"
produce_timeout = "5s"
[dedup]
capacity = 10
ttl = "1h"
[backoff]
initial = "50ms"
max = "2s"
"#,
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(file),
            set: vec![],
        };
        let c = GatewayConfig::load_from(&args, Vec::new()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.webhook.secrets.len(), 2);
        assert_eq!(c.webhook.future_tolerance, HumanDuration::secs(60));
        assert_eq!(c.event_types.0, vec!["customer.*"]);
        assert!(c.allow_ips.contains("10.1.2.3".parse().unwrap()));
        assert!(c.allow_ips.contains("3.18.12.63".parse().unwrap()));
        assert!(!c.allow_ips.contains("3.18.12.64".parse().unwrap()));
        // IPv4-mapped IPv6 peers (a dual-stack listener) match IPv4 entries.
        assert!(c.allow_ips.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(c.dedup.capacity, 10);
        assert_eq!(c.backoff.max, HumanDuration::secs(2));
    }

    #[test]
    fn bad_settings_are_named() {
        let secret = ("STRIPE_WEBHOOK_SECRET", "whsec_1");
        for (pairs, setting) in [
            (
                vec![secret, ("GATEWAY_LIMITS__PRODUCE_TIMEOUT", "15s")],
                "limits.produce_timeout",
            ),
            (
                vec![
                    secret,
                    ("GATEWAY_LIMITS__REQUEST_TIMEOUT", "30s"),
                    ("GATEWAY_LIMITS__SHUTDOWN_TIMEOUT", "40s"),
                ],
                "limits.request_timeout",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__SHUTDOWN_TIMEOUT", "5s")],
                "limits.shutdown_timeout",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__MAX_IN_FLIGHT", "0")],
                "limits.max_in_flight",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__MAX_BODY", "10")],
                "limits.max_body",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__BODY_READ_TIMEOUT", "15s")],
                "limits.body_read_timeout",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__BODY_READ_TIMEOUT", "0s")],
                "limits.body_read_timeout",
            ),
            (
                vec![secret, ("GATEWAY_LIMITS__HEADER_READ_TIMEOUT", "0s")],
                "limits.header_read_timeout",
            ),
            (
                vec![secret, ("GATEWAY_WEBHOOK__TOLERANCE", "0s")],
                "webhook.tolerance",
            ),
            (
                vec![secret, ("GATEWAY_TOPICS__PARTITIONS", "0")],
                "topics.partitions",
            ),
            (vec![secret, ("GATEWAY_TLS__CERT", "/tmp/cert.pem")], "tls"),
            (
                vec![secret, ("GATEWAY_BACKOFF__INITIAL", "0s")],
                "backoff.initial",
            ),
            (
                vec![
                    secret,
                    ("GATEWAY_BACKOFF__INITIAL", "5s"),
                    ("GATEWAY_BACKOFF__MAX", "1s"),
                ],
                "backoff.max",
            ),
            (
                vec![secret, ("GATEWAY_ALLOW_IPS", "10.0.0.0/8,not-an-ip")],
                "allow_ips",
            ),
            (vec![secret, ("GATEWAY_LISTEN", "localhost")], "listen"),
            (vec![secret, ("GATEWAY_LIMTS__MAX_BODY", "1")], "limts"),
            (
                vec![("GATEWAY_WEBHOOK__SECRETS", "whsec_a,whsec b")],
                "webhook.secrets",
            ),
        ] {
            let err = load(&pairs).unwrap_err().to_string();
            assert!(err.contains(setting), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_producer_record_limit_is_derived_from_the_body_limit() {
        let secret = ("STRIPE_WEBHOOK_SECRET", "whsec_1");
        let c = load(&[secret]).unwrap();
        let derived = (1 << 20) + RECORD_OVERHEAD;
        assert_eq!(c.message_max_bytes(), derived);
        assert_eq!(
            c.producer_kafka().properties.get(MESSAGE_MAX_BYTES),
            Some(&derived.to_string()),
            "above librdkafka's default of 1000000, so a 1 MiB body fits"
        );
        assert!(
            !c.kafka.properties.contains_key(MESSAGE_MAX_BYTES),
            "printed as set"
        );

        let c = load(&[secret, ("GATEWAY_LIMITS__MAX_BODY", "2097152")]).unwrap();
        assert_eq!(c.message_max_bytes(), (2 << 20) + RECORD_OVERHEAD);

        // A value the user set wins when it is large enough.
        let c = load(&[
            secret,
            ("GATEWAY_KAFKA__PROPERTIES__MESSAGE.MAX.BYTES", "5000000"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.message_max_bytes(), 5_000_000);
        assert_eq!(
            c.producer_kafka().properties.get(MESSAGE_MAX_BYTES).unwrap(),
            "5000000"
        );
    }

    #[test]
    fn a_record_limit_too_small_for_the_body_limit_stops_the_start() {
        let mut c = load(&[("STRIPE_WEBHOOK_SECRET", "whsec_1")]).unwrap();
        // librdkafka's default: smaller than a 1 MiB body.
        c.kafka
            .properties
            .insert(MESSAGE_MAX_BYTES.into(), "1000000".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.properties.message.max.bytes"), "{err}");
        assert!(err.contains("limits.max_body"), "{err}");
        c.kafka
            .properties
            .insert(MESSAGE_MAX_BYTES.into(), "a lot".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.properties.message.max.bytes"), "{err}");
        c.kafka.properties.clear();
        c.limits.max_body = 2_000_000_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_body"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = load(&[("GATEWAY_WEBHOOK__SECRETS", "whsec_supersecret,whsec_other")]).unwrap();
        let text = common::config::render(&c);
        assert!(!text.contains("whsec_"), "{text}");
        assert!(!format!("{c:?}").contains("whsec_"));
        // The rendered form is itself a valid configuration file (secrets aside).
        assert!(text.contains("[webhook]"), "{text}");
    }
}
