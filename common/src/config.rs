//! Typed settings, read in this order (later wins): the stage's documented defaults, a TOML file
//! (`--config FILE` or `<PREFIX>CONFIG`), the standard environment variables
//! (`KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_SERVICE_NAME`, `RUST_LOG`), the stage's prefixed variables (`GATEWAY_LISTEN`,
//! `GATEWAY_KAFKA__BOOTSTRAP_SERVERS`, …; `__` separates sections), and `--set key=value` flags
//! (`--set kafka.bootstrap_servers=host:9092`). Unknown keys are errors, so a typo never passes
//! silently; every error names the setting.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
    value::Value,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The command-line half of configuration, flattened into each stage's CLI.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML file with settings (see the stage's `print-config` for every key and its default).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set kafka.bootstrap_servers=127.0.0.1:9092`. Repeatable.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE", value_parser = parse_assignment)]
    pub set: Vec<(String, String)>,
}

fn parse_assignment(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// A configuration that could not be used. The message names the setting and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Parse(String),
    #[error("invalid setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// A stage's settings: every field has a documented default (`Default`), and `validate` rejects
/// combinations that parse but cannot work.
pub trait Settings: Serialize + DeserializeOwned + Default {
    /// Prefix of this stage's environment variables, e.g. `GATEWAY_`.
    const ENV_PREFIX: &'static str;

    /// Unprefixed variables this stage also reads, with the setting each feeds (e.g.
    /// `common::stripe::STRIPE_ENV` for `STRIPE_API_KEY`); applied after the standard ones.
    const EXTRA_ENV: &'static [(&'static str, &'static str)] = &[];

    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The standard environment variables and the setting each one feeds.
const STANDARD_ENV: &[(&str, &str)] = &[
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("SCHEMA_REGISTRY_URL", "registry.url"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ("RUST_LOG", "telemetry.log"),
];

/// Loads, merges and validates a stage's settings from all sources.
pub fn load<T: Settings>(args: &ConfigArgs) -> Result<T, ConfigError> {
    load_from(args, std::env::vars())
}

/// As [`load`], with the environment given explicitly (for tests).
pub fn load_from<T: Settings>(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let settings: T = extract(args, env)?;
    settings.validate()?;
    Ok(settings)
}

/// As [`load_from`] without [`Settings::validate`], for a command that checks only the settings
/// it uses (a stage's one-off job, such as the gateway's `backfill`, needs no webhook secret).
pub fn extract<T: Settings>(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let mut figment = Figment::from(Serialized::defaults(T::default()));

    let file = args
        .config
        .clone()
        .or_else(|| env.get(&format!("{}CONFIG", T::ENV_PREFIX)).map(PathBuf::from));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path,
                message: "not found or not a file".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(&path));
    }

    for (var, key) in STANDARD_ENV.iter().chain(T::EXTRA_ENV) {
        if let Some(value) = env.get(*var).filter(|v| !v.is_empty()) {
            figment = figment.merge((*key, parse_value(value)));
        }
    }

    // Prefixed variables. Figment's own Env provider reads the process environment; the explicit
    // map keeps tests hermetic, so the same mapping is applied by hand.
    let config_var = format!("{}CONFIG", T::ENV_PREFIX);
    for (var, value) in &env {
        if var == &config_var {
            continue;
        }
        if let Some(rest) = var.strip_prefix(T::ENV_PREFIX) {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            figment = merge_setting(figment, &key, value);
        }
    }

    for (key, value) in &args.set {
        figment = merge_setting(figment, key, value);
    }

    figment.extract().map_err(|e| ConfigError::Parse(describe(e)))
}

/// Merges one `key=value` setting. Keys under a `properties` map (librdkafka names such as
/// `kafka.properties.linger.ms`) keep their dots and their string values.
fn merge_setting(figment: Figment, key: &str, value: &str) -> Figment {
    if let Some((section, property)) = key.split_once(".properties.") {
        let mut dict = figment::value::Dict::new();
        dict.insert(property.to_string(), Value::from(value.to_string()));
        return figment.merge((format!("{section}.properties"), dict));
    }
    figment.merge((key, parse_value(value)))
}

/// Parses a flag or variable the way figment parses environment values: `8080` is a number,
/// `true` a boolean, `[a, b]` an array, anything else a string.
fn parse_value(raw: &str) -> Value {
    raw.parse::<Value>()
        .unwrap_or_else(|_| Value::from(raw.to_string()))
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            let mut line = e.kind.to_string();
            if !key.is_empty() {
                line = format!("setting `{key}`: {line}");
            }
            if let Some(source) = source {
                line.push_str(&format!(" (from {source})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Renders effective settings as TOML, with secrets masked; for `print-config`.
pub fn render<T: Serialize>(settings: &T) -> String {
    toml::to_string_pretty(settings).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
}

/// A secret setting (webhook secret, client secret): readable by the code that needs it, never
/// printed by `Debug`, logs or `print-config`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call only where it is used, never to log or display it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "********" })
    }
}

/// A duration written as a humane string in settings: `250ms`, `5s`, `2m`, `1h`, or bare seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as 500ms, 5s, 2m"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("`{s}` is not a non-negative duration"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(HumanDuration(Duration::from_secs(n))),
            Raw::Float(n) if n.is_finite() && n >= 0.0 => Ok(HumanDuration(Duration::from_secs_f64(n))),
            Raw::Float(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a non-negative duration"
            ))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Settings for reaching Kafka, shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]` (`KAFKA_BOOTSTRAP_SERVERS`).
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, applied last (e.g. `security.protocol`, `sasl.*`). Values of
    /// secret properties (see [`is_secret_property`]) are masked when printed.
    #[serde(serialize_with = "serialize_properties")]
    pub properties: BTreeMap<String, String>,
}

/// Whether a librdkafka property holds a secret by its name (`sasl.password`,
/// `ssl.key.password`, `sasl.jaas.config`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`, …).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    // Where a secret lives, not the secret (`sasl.oauthbearer.token.endpoint.url`).
    if name.ends_with(".url") || name.ends_with(".location") {
        return false;
    }
    ["password", "secret", "jaas", "token", "credential", "private"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("key.pem")
        || name.ends_with(".key")
}

/// Whether a value looks like a credential whatever its property is called: a PEM block, a JWT,
/// or a long unbroken run of base64 or hex characters (which host names, paths and lists are not:
/// they carry dots, slashes, colons or commas).
pub fn looks_like_secret(value: &str) -> bool {
    let v = value.trim();
    if v.contains("-----BEGIN") || (v.starts_with("eyJ") && v.matches('.').count() == 2) {
        return true;
    }
    v.len() >= 24
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | '_' | '-'))
        && v.chars().any(|c| c.is_ascii_digit())
        && v.chars().any(|c| c.is_ascii_alphabetic())
}

fn serialize_properties<S: serde::Serializer>(
    properties: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(properties.len()))?;
    for (name, value) in properties {
        if is_secret_property(name) || looks_like_secret(value) {
            map.serialize_entry(name, "********")?;
        } else {
            map.serialize_entry(name, value)?;
        }
    }
    map.end()
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{section}.bootstrap_servers"),
                "must name at least one broker",
            ));
        }
        Ok(())
    }
}

/// Settings for reaching the schema registry, shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible registry (`SCHEMA_REGISTRY_URL`); several may be
    /// separated by commas.
    pub url: String,
    /// Bound on each registry call.
    pub timeout: HumanDuration,
    /// `register` this build's schemas at start-up, or use the subject's `latest` version.
    pub schema_mode: schemas::SchemaMode,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            url: "http://127.0.0.1:8081".into(),
            timeout: HumanDuration::secs(5),
            schema_mode: schemas::SchemaMode::Register,
        }
    }
}

impl RegistrySettings {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ConfigError::invalid(
                format!("{section}.url"),
                "must be an http(s) URL",
            ));
        }
        for url in &urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("{section}.url"),
                    format!("`{url}` is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn codec_config(&self) -> schemas::RegistryConfig {
        schemas::RegistryConfig {
            urls: self.urls(),
            timeout: self.timeout.into(),
            mode: self.schema_mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: String,
        workers: u32,
        timeout: HumanDuration,
        secret: Secret,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        telemetry: crate::telemetry::TelemetrySettings,
    }

    impl Settings for Demo {
        const ENV_PREFIX: &'static str = "DEMO_";
        fn validate(&self) -> Result<(), ConfigError> {
            if self.workers > 52 {
                return Err(ConfigError::invalid("workers", "at most 52"));
            }
            self.kafka.validate("kafka")
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_is_defaults_file_standard_env_prefixed_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("demo.toml");
        std::fs::write(
            &file,
            "workers = 3\nlisten = \"file\"\n[kafka]\nbootstrap_servers = \"file:9092\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(file),
            set: vec![("listen".into(), "flag".into())],
        };
        let d: Demo = load_from(
            &args,
            env(&[
                ("KAFKA_BOOTSTRAP_SERVERS", "std:9092"),
                ("DEMO_WORKERS", "7"),
                ("DEMO_LISTEN", "env"),
                ("DEMO_TIMEOUT", "250ms"),
                ("SCHEMA_REGISTRY_URL", "http://reg:8081"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(d.listen, "flag");
        assert_eq!(d.workers, 7);
        assert_eq!(d.timeout, HumanDuration::millis(250));
        assert_eq!(d.kafka.bootstrap_servers, "std:9092");
        assert_eq!(d.registry.url, "http://reg:8081");
    }

    #[test]
    fn nested_prefixed_env_and_flags() {
        let args = ConfigArgs {
            config: None,
            set: vec![("kafka.properties.linger.ms".into(), "7".into())],
        };
        let d: Demo = load_from(
            &args,
            env(&[
                ("DEMO_KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2"),
                ("DEMO_KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "6000"),
            ]),
        )
        .unwrap();
        assert_eq!(d.kafka.bootstrap_servers, "a:1,b:2");
        assert_eq!(d.kafka.properties.get("linger.ms").map(String::as_str), Some("7"));
        assert_eq!(
            d.kafka.properties.get("session.timeout.ms").map(String::as_str),
            Some("6000")
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let err = load_from::<Demo>(&ConfigArgs::default(), env(&[("DEMO_WORKERS", "many")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("workers"), "{msg}");

        let err = load_from::<Demo>(&ConfigArgs::default(), env(&[("DEMO_WORKERS", "99")])).unwrap_err();
        assert_eq!(err.to_string(), "invalid setting `workers`: at most 52");

        let err = load_from::<Demo>(&ConfigArgs::default(), env(&[("DEMO_LISTNE", "x")])).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");

        let err =
            load_from::<Demo>(&ConfigArgs::default(), env(&[("DEMO_TIMEOUT", "5 parsecs")])).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");

        let args = ConfigArgs {
            config: Some("/nonexistent/x.toml".into()),
            set: vec![],
        };
        assert!(matches!(
            load_from::<Demo>(&args, env(&[])),
            Err(ConfigError::File { .. })
        ));
    }

    #[test]
    fn secrets_never_print() {
        let d: Demo = load_from(&ConfigArgs::default(), env(&[("DEMO_SECRET", "whsec_abc")])).unwrap();
        assert_eq!(d.secret.expose(), "whsec_abc");
        assert!(!format!("{d:?}").contains("whsec_abc"));
        assert!(!render(&d).contains("whsec_abc"));
    }

    #[test]
    fn secret_kafka_properties_never_print() {
        let mut d = Demo::default();
        for (name, value) in [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "pem-pass"),
            (
                "sasl.jaas.config",
                "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"p4ss\";",
            ),
            (
                "ssl.key.pem",
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            ),
            ("sasl.oauthbearer.client.secret", "s3cr3t"),
            ("sasl.oauthbearer.config", "principal=admin"),
            ("sasl.username", "$ConnectionString"),
            ("ssl.keystore.location", "/etc/kafka/client.p12"),
            // Not secret by name, but the value is a credential.
            ("custom.setting", "AKIAIOSFODNN7EXAMPLE1234abcd"),
        ] {
            d.kafka.properties.insert(name.into(), value.into());
        }
        let text = render(&d);
        for leaked in [
            "hunter2",
            "pem-pass",
            "p4ss",
            "MIIE",
            "s3cr3t",
            "AKIAIOSFODNN7EXAMPLE1234abcd",
        ] {
            assert!(!text.contains(leaked), "{leaked} printed:\n{text}");
        }
        assert!(text.contains("\"sasl.password\" = \"********\""), "{text}");
        // Plain settings stay readable.
        assert!(text.contains("/etc/kafka/client.p12"), "{text}");
        assert!(text.contains("$ConnectionString"), "{text}");
        for value in [
            "broker-1.example.com:9093,broker-2.example.com:9093",
            "SASL_SSL",
            "30000",
            "/etc/ssl/ca.pem",
        ] {
            assert!(!looks_like_secret(value), "{value}");
        }
    }

    #[test]
    fn durations_parse() {
        for (text, ms) in [
            ("500ms", 500),
            ("5s", 5000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1500),
            ("3", 3000),
        ] {
            assert_eq!(text.parse::<HumanDuration>().unwrap().0.as_millis(), ms, "{text}");
        }
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
    }
}
