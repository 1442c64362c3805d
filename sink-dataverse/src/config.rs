//! The sink's settings, with their documented defaults and the checks that reject combinations
//! that parse but cannot work. Loaded by `common::config::load` (file, `SINK_*` variables,
//! `--set` flags); the README has the full table.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::config::{ConfigError, HumanDuration, KafkaSettings, RegistrySettings, Secret, Settings};
pub use common::consume::ConsumerSettings;
use common::{kafka::TopicSettings, retry::BackoffSettings, telemetry::TelemetrySettings};
use serde::{Deserialize, Serialize};

/// The stage's name: its client ids, metric prefix and dead-letter `dlq.stage` header.
pub const STAGE: &str = "sink-dataverse";

/// Dataverse refuses more than 52 concurrent requests per user and web server
/// (`0x80072326`); the sink never plans to exceed it.
pub const MAX_CONCURRENCY_LIMIT: usize = 52;

/// Dataverse accepts at most 1000 operations in one `$batch`.
pub const MAX_BATCH_OPERATIONS: usize = 1000;

/// Everything the sink can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics` (`SINK_LISTEN`). Default `127.0.0.1:9102`.
    pub listen: SocketAddr,
    /// The broker (`KAFKA_BOOTSTRAP_SERVERS`, `SINK_KAFKA__…`).
    pub kafka: KafkaSettings,
    /// The schema registry (`SCHEMA_REGISTRY_URL`, `SINK_REGISTRY__…`).
    pub registry: RegistrySettings,
    /// Logs and traces (`RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `SINK_TELEMETRY__…`).
    pub telemetry: TelemetrySettings,
    /// Consumer group. Default `sink-dataverse`.
    pub group: String,
    /// Static group membership (Kafka's `group.instance.id`): unique per instance and stable
    /// across its restarts (a pod name, say). A restarted instance takes its partitions back at
    /// once instead of waiting for the group to notice the old process is gone. Default unset:
    /// dynamic membership.
    pub instance_id: Option<String>,
    /// Topic of normalised customer changes. Default `customers.normalized`.
    pub input_topic: String,
    /// Where records Dataverse refuses go. Default `<input_topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Whether and how the dead-letter topic is created at start-up.
    pub topics: TopicSettings,
    /// Where and how to write.
    pub dataverse: DataverseSettings,
    /// Customer field → contact column. An empty column name leaves the field unwritten.
    pub mapping: Mapping,
    /// Concurrent HTTP requests to Dataverse, at most (1–52). The sink halves this on a 429 and
    /// ramps back up; `x-ms-dop-hint` lowers it further when Dataverse sends one. Default 8.
    pub max_concurrency: usize,
    /// Operations per `$batch` request (1–1000); 1 sends every operation as its own request.
    /// Default 50.
    pub batch_size: usize,
    /// How long an operation may wait for others to share its `$batch`. Default `5ms`.
    pub linger: HumanDuration,
    /// Contacts whose last read or written row (etag and the guard's columns) the sink keeps, so
    /// an update of a known contact needs no read; least recently used first out. About 200
    /// bytes each plus the customer id and event ids: the default 100000 stays under 30 MiB.
    /// 0 turns the cache off (every change reads first). A stale entry costs a 412 and a read,
    /// never a wrong row. Default 100000.
    pub contact_cache_entries: usize,
    /// Bound on one HTTP request to Dataverse or the token endpoint. Default `30s`.
    pub request_timeout: HumanDuration,
    /// Retry delays for transient failures (Dataverse, the broker, the registry).
    pub backoff: BackoffSettings,
    /// How a 429 from Dataverse is honoured.
    pub throttle: ThrottleSettings,
    /// How long a dead letter may wait for the broker's acknowledgement before it is sent again.
    /// Default `30s`.
    pub produce_timeout: HumanDuration,
    /// Consumer loop tuning.
    pub consumer: ConsumerSettings,
    /// `sink-dataverse provision`.
    pub provision: ProvisionSettings,
}

/// How `sink-dataverse provision` creates the columns and key (its flags override these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionSettings {
    /// Publisher prefix of the columns created (`SINK_PROVISION__PUBLISHER_PREFIX`). Default: the
    /// prefix of `dataverse.alternate_key` (`new`).
    pub publisher_prefix: Option<String>,
    /// How often the key's index status is read while it builds. Default `2s`.
    pub poll_interval: HumanDuration,
    /// How long to wait for the key's index at most. Default `1h`.
    pub timeout: HumanDuration,
}

impl Default for ProvisionSettings {
    fn default() -> Self {
        ProvisionSettings {
            publisher_prefix: None,
            poll_interval: HumanDuration::secs(2),
            timeout: HumanDuration::secs(3600),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            telemetry: TelemetrySettings::default(),
            group: "sink-dataverse".into(),
            instance_id: None,
            input_topic: schemas::topics::CUSTOMERS_NORMALIZED.into(),
            dlq_topic: None,
            topics: TopicSettings::default(),
            dataverse: DataverseSettings::default(),
            mapping: Mapping::default(),
            max_concurrency: 8,
            batch_size: 50,
            linger: HumanDuration::millis(5),
            contact_cache_entries: 100_000,
            request_timeout: HumanDuration::secs(30),
            backoff: BackoffSettings::default(),
            throttle: ThrottleSettings::default(),
            produce_timeout: HumanDuration::secs(30),
            consumer: ConsumerSettings::default(),
            provision: ProvisionSettings::default(),
        }
    }
}

/// How a `customer.deleted` reaches Dataverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Keep the contact as a tombstone: `statecode` 1 (inactive), `statuscode` 2, the deleted
    /// column `true` and the event time, so a late, older update cannot bring it back. A delete
    /// for a contact that does not exist yet leaves an inactive tombstone row. The default.
    #[default]
    Deactivate,
    /// Remove the row (`DELETE`; 404 counts as done). Leaves nothing behind, so a late, older
    /// `customer.updated` arriving after the delete creates the contact again.
    Delete,
}

/// Where Dataverse is, how to authenticate, and which table and columns hold the contacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataverseSettings {
    /// Environment URL, e.g. `https://org.crm.dynamics.com`. Required.
    pub environment_url: String,
    /// Entra ID tenant (directory) id. Required unless `token_url` is set.
    pub tenant_id: String,
    /// Application (client) id of the app registration. Required.
    pub client_id: String,
    /// Client secret of the app registration (`SINK_DATAVERSE__CLIENT_SECRET`). Required; never
    /// printed or logged.
    pub client_secret: Secret,
    /// OAuth 2.0 token endpoint. Default
    /// `https://login.microsoftonline.com/<tenant_id>/oauth2/v2.0/token`; set it for sovereign
    /// clouds or the emulator.
    pub token_url: Option<String>,
    /// Scope asked for. Default `<environment_url>/.default`.
    pub scope: Option<String>,
    /// Web API path under the environment URL. Default `/api/data/v9.2`.
    pub api_path: String,
    /// Entity set written. Default `contacts`.
    pub table: String,
    /// Alternate key column holding the Stripe customer id. Default `new_stripecustomerid`.
    pub alternate_key: String,
    /// Whole-number column holding the source event's `created` (unix seconds): the staleness
    /// guard. Default `new_stripeeventcreated`.
    pub created_column: String,
    /// Yes/No column set on deletion (the tombstone). Default `new_stripedeleted`.
    pub deleted_column: String,
    /// Whole-number column holding the applied event's place in a customer's life (0
    /// `customer.created`, 1 `customer.updated`, 2 `customer.deleted`): orders events of the same
    /// second. Default `new_stripeeventrank`.
    pub rank_column: String,
    /// Text column (at least 1,000 characters) holding the ids of the events applied at the stored
    /// second, so a redelivered one is recognised. Default `new_stripeeventids`.
    pub event_ids_column: String,
    /// `deactivate` (default) or `delete`.
    pub delete_mode: DeleteMode,
}

impl Default for DataverseSettings {
    fn default() -> Self {
        DataverseSettings {
            environment_url: String::new(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            token_url: None,
            scope: None,
            api_path: "/api/data/v9.2".into(),
            table: "contacts".into(),
            alternate_key: "new_stripecustomerid".into(),
            created_column: "new_stripeeventcreated".into(),
            deleted_column: "new_stripedeleted".into(),
            rank_column: "new_stripeeventrank".into(),
            event_ids_column: "new_stripeeventids".into(),
            delete_mode: DeleteMode::Deactivate,
        }
    }
}

impl DataverseSettings {
    /// The environment URL without a trailing slash.
    pub fn environment(&self) -> &str {
        self.environment_url.trim_end_matches('/')
    }

    /// The token endpoint in effect.
    pub fn token_endpoint(&self) -> String {
        match &self.token_url {
            Some(url) if !url.trim().is_empty() => url.trim().to_string(),
            _ => format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant_id.trim()
            ),
        }
    }

    /// The scope in effect.
    pub fn scope(&self) -> String {
        match &self.scope {
            Some(scope) if !scope.trim().is_empty() => scope.trim().to_string(),
            _ => format!("{}/.default", self.environment()),
        }
    }

    /// `https://org.crm.dynamics.com/api/data/v9.2/`: the base every request path is joined to.
    pub fn api_base(&self) -> String {
        format!("{}/{}/", self.environment(), self.api_path.trim_matches('/'))
    }
}

/// Customer field → contact column. Every field listed is written on each upsert, `null` when
/// the customer has no value, so the contact always mirrors the latest Stripe state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mapping {
    /// Default `emailaddress1`.
    pub email: String,
    /// Default `firstname`.
    pub first_name: String,
    /// Default `lastname`.
    pub last_name: String,
    /// Default empty (Dataverse computes `fullname` from first and last name).
    pub full_name: String,
    /// Default `telephone1`.
    pub phone: String,
    /// Default `description`.
    pub description: String,
    /// Default `address1_line1`.
    pub address_line1: String,
    /// Default `address1_line2`.
    pub address_line2: String,
    /// Default `address1_city`.
    pub address_city: String,
    /// Default `address1_stateorprovince`.
    pub address_state: String,
    /// Default `address1_postalcode`.
    pub address_postal_code: String,
    /// Default empty (the country name is written instead).
    pub address_country_code: String,
    /// Default `address1_country`.
    pub address_country_name: String,
    /// Stripe metadata key → column, e.g. `{ segment = "new_segment" }`. Default none.
    pub metadata: BTreeMap<String, String>,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            email: "emailaddress1".into(),
            first_name: "firstname".into(),
            last_name: "lastname".into(),
            full_name: String::new(),
            phone: "telephone1".into(),
            description: "description".into(),
            address_line1: "address1_line1".into(),
            address_line2: "address1_line2".into(),
            address_city: "address1_city".into(),
            address_state: "address1_stateorprovince".into(),
            address_postal_code: "address1_postalcode".into(),
            address_country_code: String::new(),
            address_country_name: "address1_country".into(),
            metadata: BTreeMap::new(),
        }
    }
}

/// How throttling (429) is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleSettings {
    /// Successful requests at the current concurrency before it grows by one, after a 429 cut
    /// it. Default 20.
    pub ramp_up_after: u32,
    /// Pause when a 429 carries no usable `Retry-After`. Default `5s`.
    pub default_retry_after: HumanDuration,
    /// Longest `Retry-After` honoured; longer values are cut to this. Default `300s` (the
    /// service protection window).
    pub max_retry_after: HumanDuration,
    /// Dataverse's service protection window, which its `x-ms-ratelimit-*-remaining` headers
    /// describe. With the execution time they report, it fixes how many requests can be in
    /// flight for good (budget ÷ window: 1,200 s ÷ 300 s = 4). Change it only for an emulator
    /// with a shrunk window. Default `300s`.
    pub window: HumanDuration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            ramp_up_after: 20,
            default_retry_after: HumanDuration::secs(5),
            max_retry_after: HumanDuration::secs(300),
            window: HumanDuration::secs(300),
        }
    }
}

impl SinkConfig {
    /// The dead-letter topic in effect.
    pub fn dlq_topic(&self) -> String {
        match &self.dlq_topic {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => schemas::topics::dlq_for(&self.input_topic),
        }
    }
}

impl Settings for SinkConfig {
    const ENV_PREFIX: &'static str = "SINK_";

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.registry.validate("registry")?;
        for (name, value) in [("group", &self.group), ("input_topic", &self.input_topic)] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(name, "must not be empty"));
            }
        }
        if self.instance_id.as_ref().is_some_and(|id| id.trim().is_empty()) {
            return Err(ConfigError::invalid("instance_id", "must not be empty when set"));
        }
        if self.dlq_topic() == self.input_topic {
            return Err(ConfigError::invalid("dlq_topic", "must differ from input_topic"));
        }
        self.topics.validate("topics")?;
        if !(1..=MAX_CONCURRENCY_LIMIT).contains(&self.max_concurrency) {
            return Err(ConfigError::invalid(
                "max_concurrency",
                format!(
                    "{} is outside 1–{MAX_CONCURRENCY_LIMIT} (Dataverse refuses more than {MAX_CONCURRENCY_LIMIT} concurrent requests)",
                    self.max_concurrency
                ),
            ));
        }
        if !(1..=MAX_BATCH_OPERATIONS).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "batch_size",
                format!(
                    "{} is outside 1–{MAX_BATCH_OPERATIONS} (Dataverse's $batch limit)",
                    self.batch_size
                ),
            ));
        }
        if self.linger.0 > Duration::from_secs(10) {
            return Err(ConfigError::invalid("linger", "must be at most 10s"));
        }
        if self.request_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("request_timeout", "must be at least 100ms"));
        }
        self.backoff.validate("backoff")?;
        let r = &self.throttle;
        if r.window.0.is_zero() {
            return Err(ConfigError::invalid("throttle.window", "must be longer than 0s"));
        }
        if r.ramp_up_after == 0 {
            return Err(ConfigError::invalid(
                "throttle.ramp_up_after",
                "must be at least 1",
            ));
        }
        if r.default_retry_after.0.is_zero() {
            return Err(ConfigError::invalid(
                "throttle.default_retry_after",
                "must be above zero",
            ));
        }
        if r.max_retry_after < r.default_retry_after {
            return Err(ConfigError::invalid(
                "throttle.max_retry_after",
                "must be at least throttle.default_retry_after",
            ));
        }
        if self.produce_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("produce_timeout", "must be at least 100ms"));
        }
        self.consumer.validate("consumer")?;
        if self.provision.poll_interval.0 < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "provision.poll_interval",
                "must be at least 10ms",
            ));
        }
        self.validate_dataverse()?;
        self.validate_columns()
    }
}

impl SinkConfig {
    /// The `dataverse.*` settings on their own (also used by tools that share them).
    pub fn validate_dataverse(&self) -> Result<(), ConfigError> {
        let d = &self.dataverse;
        let url = d.environment_url.trim();
        if url.is_empty() {
            return Err(ConfigError::invalid(
                "dataverse.environment_url",
                "required, e.g. https://org.crm.dynamics.com",
            ));
        }
        if !is_http_url(url) {
            return Err(ConfigError::invalid(
                "dataverse.environment_url",
                format!("`{url}` is not an http(s) URL"),
            ));
        }
        if d.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "dataverse.client_id",
                "required: the application (client) id of the app registration",
            ));
        }
        if d.client_secret.is_empty() {
            return Err(ConfigError::invalid(
                "dataverse.client_secret",
                "required (SINK_DATAVERSE__CLIENT_SECRET)",
            ));
        }
        match &d.token_url {
            Some(token_url) if !token_url.trim().is_empty() => {
                if !is_http_url(token_url.trim()) {
                    return Err(ConfigError::invalid(
                        "dataverse.token_url",
                        format!("`{token_url}` is not an http(s) URL"),
                    ));
                }
            }
            _ => {
                if d.tenant_id.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        "dataverse.tenant_id",
                        "required unless dataverse.token_url is set",
                    ));
                }
                if !d
                    .tenant_id
                    .trim()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                {
                    return Err(ConfigError::invalid(
                        "dataverse.tenant_id",
                        "must be a tenant id (GUID) or domain name",
                    ));
                }
            }
        }
        if !d.scope().ends_with("/.default") {
            return Err(ConfigError::invalid(
                "dataverse.scope",
                "client credentials need a scope ending in /.default",
            ));
        }
        if !d.api_path.starts_with('/') || d.api_path.contains(['?', '#', ' ']) {
            return Err(ConfigError::invalid(
                "dataverse.api_path",
                "must be a path such as /api/data/v9.2",
            ));
        }
        Ok(())
    }

    /// The table, key, guard and mapped column names on their own.
    pub fn validate_columns(&self) -> Result<(), ConfigError> {
        let d = &self.dataverse;
        let mut reserved: BTreeMap<&str, &str> = BTreeMap::new();
        for (setting, name) in [
            ("dataverse.table", d.table.as_str()),
            ("dataverse.alternate_key", d.alternate_key.as_str()),
            ("dataverse.created_column", d.created_column.as_str()),
            ("dataverse.deleted_column", d.deleted_column.as_str()),
            ("dataverse.rank_column", d.rank_column.as_str()),
            ("dataverse.event_ids_column", d.event_ids_column.as_str()),
        ] {
            if !is_identifier(name) {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{name}` is not a Dataverse logical name (letters, digits, _)"),
                ));
            }
            if setting != "dataverse.table"
                && let Some(other) = reserved.insert(name, setting)
            {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{name}` is already used by {other}"),
                ));
            }
        }
        reserved.insert("statecode", "the deactivation");
        reserved.insert("statuscode", "the deactivation");
        let mut used: BTreeMap<String, String> = BTreeMap::new();
        for (field, column) in self.mapping.columns() {
            if column.is_empty() {
                continue;
            }
            let setting = format!("mapping.{field}");
            if !is_identifier(&column) {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{column}` is not a Dataverse logical name (letters, digits, _)"),
                ));
            }
            if let Some(other) = reserved.get(column.as_str()) {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{column}` is reserved for {other}"),
                ));
            }
            if let Some(other) = used.insert(column.clone(), setting.clone()) {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{column}` is already written by {other}"),
                ));
            }
        }
        Ok(())
    }
}

impl Mapping {
    /// `(field name, column)` for every mapping entry, metadata as `metadata.<key>`.
    pub fn columns(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = [
            ("email", &self.email),
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
            ("full_name", &self.full_name),
            ("phone", &self.phone),
            ("description", &self.description),
            ("address_line1", &self.address_line1),
            ("address_line2", &self.address_line2),
            ("address_city", &self.address_city),
            ("address_state", &self.address_state),
            ("address_postal_code", &self.address_postal_code),
            ("address_country_code", &self.address_country_code),
            ("address_country_name", &self.address_country_name),
        ]
        .into_iter()
        .map(|(f, c)| (f.to_string(), c.trim().to_string()))
        .collect();
        for (key, column) in &self.metadata {
            out.push((format!("metadata.{key}"), column.trim().to_string()));
        }
        out
    }
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && !url.contains(char::is_whitespace)
}

/// A Dataverse logical name: what may appear unquoted in a URL and a JSON body.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl common::stage::ConsumingStage for SinkConfig {
    const NAME: &'static str = STAGE;

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
        SinkConfig::dlq_topic(self)
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
        vec![self.dlq_topic()]
    }

    fn produce_timeout(&self) -> Duration {
        self.produce_timeout.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::{ConfigArgs, load_from};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const REQUIRED: &[(&str, &str)] = &[
        ("SINK_DATAVERSE__ENVIRONMENT_URL", "https://org.crm.dynamics.com/"),
        (
            "SINK_DATAVERSE__TENANT_ID",
            "00000000-0000-0000-0000-0000000000aa",
        ),
        ("SINK_DATAVERSE__CLIENT_ID", "app"),
        ("SINK_DATAVERSE__CLIENT_SECRET", "s3cr3t-value"),
    ];

    fn load(extra: &[(&str, &str)]) -> Result<SinkConfig, ConfigError> {
        let mut vars = env(REQUIRED);
        vars.extend(env(extra));
        load_from(&ConfigArgs::default(), vars)
    }

    #[test]
    fn defaults_with_the_required_settings() {
        let c = load(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9102");
        assert_eq!(c.group, "sink-dataverse");
        assert_eq!(c.input_topic, "customers.normalized");
        assert_eq!(c.dlq_topic(), "customers.normalized.dlq");
        assert_eq!(c.max_concurrency, 8);
        let d = &c.dataverse;
        assert_eq!(
            d.token_endpoint(),
            "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token"
        );
        assert_eq!(d.scope(), "https://org.crm.dynamics.com/.default");
        assert_eq!(d.api_base(), "https://org.crm.dynamics.com/api/data/v9.2/");
        assert_eq!(d.alternate_key, "new_stripecustomerid");
        assert_eq!(d.delete_mode, DeleteMode::Deactivate);
        assert_eq!(c.mapping.email, "emailaddress1");
        assert_eq!(c.mapping.address_country_name, "address1_country");
    }

    #[test]
    fn every_setting_has_an_environment_name() {
        let c = load(&[
            ("SINK_MAX_CONCURRENCY", "52"),
            ("SINK_BATCH_SIZE", "1"),
            ("SINK_LINGER", "0ms"),
            ("SINK_DATAVERSE__DELETE_MODE", "delete"),
            (
                "SINK_DATAVERSE__TOKEN_URL",
                "http://127.0.0.1:1/t/oauth2/v2.0/token",
            ),
            ("SINK_MAPPING__PHONE", "mobilephone"),
            ("SINK_MAPPING__METADATA__SEGMENT", "new_segment"),
            ("SINK_BACKOFF__MAX", "2s"),
            ("SINK_THROTTLE__MAX_RETRY_AFTER", "60s"),
            ("SINK_TOPICS__REPLICATION_FACTOR", "3"),
            ("SINK_CONSUMER__SHUTDOWN_GRACE", "1s"),
        ])
        .unwrap();
        assert_eq!(c.max_concurrency, 52);
        assert_eq!(c.batch_size, 1);
        assert_eq!(c.dataverse.delete_mode, DeleteMode::Delete);
        assert_eq!(
            c.dataverse.token_endpoint(),
            "http://127.0.0.1:1/t/oauth2/v2.0/token"
        );
        assert_eq!(c.mapping.phone, "mobilephone");
        assert_eq!(c.mapping.metadata["segment"], "new_segment");
        assert_eq!(c.backoff.max, HumanDuration::secs(2));
        assert_eq!(c.throttle.max_retry_after, HumanDuration::secs(60));
        assert_eq!(c.topics.replication_factor, 3);
        assert_eq!(c.consumer.loop_settings().shutdown_grace, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_setting() {
        for (vars, setting) in [
            (vec![("SINK_MAX_CONCURRENCY", "53")], "max_concurrency"),
            (vec![("SINK_MAX_CONCURRENCY", "0")], "max_concurrency"),
            (vec![("SINK_BATCH_SIZE", "1001")], "batch_size"),
            (
                vec![("SINK_DATAVERSE__ENVIRONMENT_URL", "")],
                "dataverse.environment_url",
            ),
            (
                vec![("SINK_DATAVERSE__ENVIRONMENT_URL", "org.crm.dynamics.com")],
                "dataverse.environment_url",
            ),
            (
                vec![("SINK_DATAVERSE__CLIENT_SECRET", "")],
                "dataverse.client_secret",
            ),
            (vec![("SINK_DATAVERSE__TENANT_ID", "")], "dataverse.tenant_id"),
            (vec![("SINK_DATAVERSE__SCOPE", "https://x")], "dataverse.scope"),
            (
                vec![("SINK_DATAVERSE__ALTERNATE_KEY", "new-key")],
                "dataverse.alternate_key",
            ),
            (
                vec![("SINK_MAPPING__EMAIL", "new_stripecustomerid")],
                "mapping.email",
            ),
            (vec![("SINK_MAPPING__PHONE", "firstname")], "mapping.phone"),
            (vec![("SINK_MAPPING__PHONE", "statecode")], "mapping.phone"),
            (vec![("SINK_BACKOFF__MAX", "1ms")], "backoff.max"),
            (
                vec![("SINK_THROTTLE__RAMP_UP_AFTER", "0")],
                "throttle.ramp_up_after",
            ),
            (vec![("SINK_TOPICS__PARTITIONS", "0")], "topics.partitions"),
            (vec![("SINK_DLQ_TOPIC", "customers.normalized")], "dlq_topic"),
            (
                vec![("SINK_DATAVERSE__DELETE_MODE", "purge")],
                "dataverse.delete_mode",
            ),
            (vec![("SINK_MAX_CONCURENCY", "3")], "max_concurency"),
            (vec![("SINK_INSTANCE_ID", "")], "instance_id"),
        ] {
            let err = load(&vars).expect_err(setting).to_string();
            assert!(err.contains(setting), "{vars:?}: `{err}` does not name {setting}");
        }
    }

    #[test]
    fn the_secret_never_prints() {
        let c = load(&[]).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        let rendered = common::config::render(&c);
        assert!(!rendered.contains("s3cr3t-value"), "{rendered}");
        assert!(rendered.contains("client_secret = \"********\""), "{rendered}");
    }
}
