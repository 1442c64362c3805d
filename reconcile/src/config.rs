//! [`ReconcileConfig`]: every setting with its default, read like the stages' settings
//! (defaults < `--config FILE` < standard variables < `RECONCILE_*` < `--set`), validated before
//! anything is read. The Dataverse table, key and mapping use the sink's own types and checks:
//! give the reconciliation the same values as the sink, or it compares against other columns.

use std::time::Duration;

use common::stripe::{KeyMode, STRIPE_ENV, StripeSettings};
use common::{
    config::{ConfigError, HumanDuration, KafkaSettings, RegistrySettings, Settings},
    retry::BackoffSettings,
    telemetry::TelemetrySettings,
};
use serde::{Deserialize, Serialize};
use sink_dataverse::config::{DataverseSettings, Mapping, SinkConfig, ThrottleSettings};

/// The largest page Dataverse serves (`Prefer: odata.maxpagesize` above it is ignored).
pub const MAX_DATAVERSE_PAGE: usize = 5000;
/// Stripe requests per second by default: well below Stripe's limits (25 per second in test
/// mode, 100 live, per account), which the account's other users share.
pub const STRIPE_REQUESTS_PER_SECOND: f64 = 10.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Where corrective records are produced (`KAFKA_BOOTSTRAP_SERVERS`).
    pub kafka: KafkaSettings,
    /// The schema registry the enricher and sink use (`SCHEMA_REGISTRY_URL`).
    pub registry: RegistrySettings,
    /// Logs (stderr; stdout carries the report).
    pub telemetry: TelemetrySettings,
    /// The topic the sink reads, where `--repair` writes. Default `customers.normalized`.
    pub output_topic: String,
    /// How long a corrective record may wait for the broker's acknowledgement. Default `30s`.
    pub produce_timeout: HumanDuration,
    /// Stripe's API (`common::stripe`): `api_key` (`STRIPE_API_KEY`), `base_url`
    /// (`STRIPE_API_BASE`), `page_size`, `requests_per_second`, `max_retries`, `timeout`,
    /// `backoff`.
    pub stripe: StripeSettings,
    /// The Dataverse environment, table and guard columns: the sink's values.
    pub dataverse: DataverseSettings,
    /// Customer field → contact column: the sink's values.
    pub mapping: Mapping,
    /// Contacts per Dataverse page (`Prefer: odata.maxpagesize`), 1–5000. Default 500.
    pub dataverse_page_size: usize,
    /// Dataverse requests started per second, at most. Default 5: the reconciliation shares
    /// the service protection budget with the sink when both use one application user.
    pub dataverse_requests_per_second: f64,
    /// Bound on each Dataverse request. Default `30s`.
    pub request_timeout: HumanDuration,
    /// How Dataverse's 429 `Retry-After` is honoured (the sink's settings).
    pub throttle: ThrottleSettings,
    /// Delays between attempts after a transient failure (Dataverse, Kafka, the registry).
    pub backoff: BackoffSettings,
    /// Attempts per Dataverse request (or record produced) before the run fails. Default 8.
    pub max_attempts: u32,
    /// Whether `--repair` also writes a corrective deletion for contacts Stripe does not know
    /// (404 on `GET /v1/customers/{id}`). Default true; turn off when Dataverse holds contacts
    /// of another Stripe account or mode.
    pub repair_unknown: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            telemetry: TelemetrySettings {
                log: "warn,reconcile=info".into(),
                ..TelemetrySettings::default()
            },
            output_topic: schemas::topics::CUSTOMERS_NORMALIZED.into(),
            produce_timeout: HumanDuration::secs(30),
            stripe: StripeSettings {
                requests_per_second: STRIPE_REQUESTS_PER_SECOND,
                ..StripeSettings::default()
            },
            dataverse: DataverseSettings::default(),
            mapping: Mapping::default(),
            dataverse_page_size: 500,
            dataverse_requests_per_second: 5.0,
            request_timeout: HumanDuration::secs(30),
            throttle: ThrottleSettings::default(),
            backoff: BackoffSettings::default(),
            max_attempts: 8,
            repair_unknown: true,
        }
    }
}

impl Settings for ReconcileConfig {
    const ENV_PREFIX: &'static str = "RECONCILE_";
    const EXTRA_ENV: &'static [(&'static str, &'static str)] = STRIPE_ENV;

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.registry.validate("registry")?;
        if self.output_topic.trim().is_empty() {
            return Err(ConfigError::invalid("output_topic", "must not be empty"));
        }
        if self.produce_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("produce_timeout", "must be at least 100ms"));
        }
        self.stripe.validate("stripe")?;
        if self.dataverse_requests_per_second.is_nan() || self.dataverse_requests_per_second <= 0.0 {
            return Err(ConfigError::invalid(
                "dataverse_requests_per_second",
                "must be a number above 0",
            ));
        }
        if !(1..=MAX_DATAVERSE_PAGE).contains(&self.dataverse_page_size) {
            return Err(ConfigError::invalid(
                "dataverse_page_size",
                format!(
                    "{} is outside 1–{MAX_DATAVERSE_PAGE} (Dataverse's page limit)",
                    self.dataverse_page_size
                ),
            ));
        }
        if self.request_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("request_timeout", "must be at least 100ms"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid("max_attempts", "must be at least 1"));
        }
        self.backoff.validate("backoff")?;
        if self.dataverse.client_secret.is_empty() {
            return Err(ConfigError::invalid(
                "dataverse.client_secret",
                "required (RECONCILE_DATAVERSE__CLIENT_SECRET)",
            ));
        }
        let sink = self.as_sink();
        sink.validate_dataverse()?;
        sink.validate_columns()
    }
}

impl ReconcileConfig {
    /// The sink's view of these settings: its table, key, guard columns and mapping.
    pub fn as_sink(&self) -> SinkConfig {
        SinkConfig {
            dataverse: self.dataverse.clone(),
            mapping: self.mapping.clone(),
            ..SinkConfig::default()
        }
    }

    /// Whether the Stripe key is a live-mode key (`sk_live_…`, `rk_live_…`): the `livemode` of
    /// corrective deletions.
    pub fn livemode(&self) -> bool {
        matches!(self.stripe.mode(), Ok(KeyMode::Live))
    }
}

/// Loads and validates the settings from every source (`STRIPE_API_KEY` and `STRIPE_API_BASE`
/// included).
pub fn load(
    args: &common::config::ConfigArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ReconcileConfig, ConfigError> {
    common::config::load_from(args, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::ConfigArgs;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn valid() -> Vec<(String, String)> {
        env(&[
            ("STRIPE_API_KEY", "sk_test_123456789012345678901234"),
            (
                "RECONCILE_DATAVERSE__ENVIRONMENT_URL",
                "https://org.crm.dynamics.com",
            ),
            ("RECONCILE_DATAVERSE__TENANT_ID", "contoso.onmicrosoft.com"),
            ("RECONCILE_DATAVERSE__CLIENT_ID", "app"),
            ("RECONCILE_DATAVERSE__CLIENT_SECRET", "dv-secret-value"),
        ])
    }

    #[test]
    fn defaults_and_the_standard_stripe_key() {
        let config = load(&ConfigArgs::default(), valid()).unwrap();
        assert_eq!(config.output_topic, "customers.normalized");
        assert_eq!(config.stripe.base_url, "https://api.stripe.com");
        assert_eq!(config.stripe.requests_per_second, STRIPE_REQUESTS_PER_SECOND);
        assert_eq!(config.stripe.api_key.expose(), "sk_test_123456789012345678901234");
        assert_eq!(config.dataverse_page_size, 500);
        assert!(!config.livemode());
        assert_eq!(
            config.dataverse.alternate_key, "new_stripecustomerid",
            "the sink's default"
        );

        let mut both = valid();
        both.push(("RECONCILE_STRIPE__API_KEY".into(), "rk_live_other".into()));
        both.push(("STRIPE_API_BASE".into(), "http://127.0.0.1:12111".into()));
        let config = load(&ConfigArgs::default(), both).unwrap();
        assert_eq!(
            config.stripe.api_key.expose(),
            "rk_live_other",
            "the prefixed variable wins"
        );
        assert!(config.livemode());
        assert_eq!(config.stripe.base_url, "http://127.0.0.1:12111");
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = load(&ConfigArgs::default(), valid()).unwrap();
        let rendered = common::config::render(&config);
        assert!(!rendered.contains("sk_test_1234"), "{rendered}");
        assert!(!rendered.contains("dv-secret-value"), "{rendered}");
        assert!(rendered.contains("api_key = \"********\""), "{rendered}");
        assert!(!format!("{config:?}").contains("sk_test_1234"));
    }

    #[test]
    fn errors_name_the_setting() {
        let check = |extra: &[(&str, &str)], setting: &str| {
            let mut vars = valid();
            vars.extend(env(extra));
            let error = load(&ConfigArgs::default(), vars).unwrap_err().to_string();
            assert!(error.contains(setting), "{setting}: {error}");
        };
        check(&[("RECONCILE_STRIPE__PAGE_SIZE", "101")], "stripe.page_size");
        check(
            &[("RECONCILE_STRIPE__BASE_URL", "api.stripe.com")],
            "stripe.base_url",
        );
        check(
            &[("RECONCILE_STRIPE__REQUESTS_PER_SECOND", "-1")],
            "stripe.requests_per_second",
        );
        check(
            &[("RECONCILE_DATAVERSE_REQUESTS_PER_SECOND", "0")],
            "dataverse_requests_per_second",
        );
        check(
            &[("RECONCILE_DATAVERSE_PAGE_SIZE", "9000")],
            "dataverse_page_size",
        );
        check(&[("RECONCILE_MAX_ATTEMPTS", "0")], "max_attempts");
        check(&[("RECONCILE_MAPPING__EMAIL", "not a column")], "mapping.email");
        check(
            &[("RECONCILE_DATAVERSE__ENVIRONMENT_URL", "")],
            "dataverse.environment_url",
        );
        check(&[("RECONCILE_NO_SUCH_SETTING", "1")], "no_such_setting");

        let no_key: Vec<_> = valid()
            .into_iter()
            .filter(|(k, _)| k != "STRIPE_API_KEY")
            .collect();
        let error = load(&ConfigArgs::default(), no_key).unwrap_err().to_string();
        assert!(
            error.contains("stripe.api_key") && error.contains("STRIPE_API_KEY"),
            "{error}"
        );
    }
}
