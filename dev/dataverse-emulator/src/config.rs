//! Configuration: the tables served, the clients allowed to get tokens, the service protection limits,
//! simulated latency and fault injection. Every field has a documented default (see `README.md`);
//! a file (TOML, or JSON when the name ends in `.json`) overrides any subset of them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::values::Guid;

/// Columns every row has and no write changes; a table cannot declare them.
pub const SYSTEM_COLUMNS: &[&str] = &["createdon", "modifiedon", "versionnumber"];

/// Everything the emulator needs to start. `Config::default()` is the documented default set-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Tables served under `/api/data/v9.2/`. Default: one `contacts` table (see [`TableConfig::contacts`]).
    pub tables: Vec<TableConfig>,
    /// Application (client) ids allowed to get a token, each with its secret.
    /// Default: `sink-dataverse` → `local-secret`.
    pub clients: BTreeMap<String, Secret>,
    /// Lifetime of an access token in seconds (Entra ID issues tokens for about an hour). Default 3600.
    pub token_lifetime_secs: u64,
    /// Service protection limits, per client id.
    pub limits: LimitsConfig,
    /// Simulated server-side processing time per operation.
    pub latency: LatencyConfig,
    /// Faults active from start-up; the admin API changes them at run time.
    pub faults: FaultConfig,
    /// Snapshot file for persistence; `None` keeps everything in memory.
    pub persist_path: Option<PathBuf>,
    /// Largest accepted request body in bytes; larger bodies get 413. Default 16 MiB.
    pub max_body_bytes: usize,
    /// How long the index of an alternate key created through `POST …/Keys` takes to build.
    pub key_index: KeyIndexConfig,
}

/// The background index job of a new alternate key: `Pending` for `pending_ms`, then `InProgress` for
/// `build_ms`, then `Active` (or `Failed` when existing rows share key values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyIndexConfig {
    /// Time in `Pending`, in milliseconds. Default 1000.
    pub pending_ms: u64,
    /// Time in `InProgress`, in milliseconds. Default 2000.
    pub build_ms: u64,
}

impl Default for KeyIndexConfig {
    fn default() -> Self {
        Self {
            pending_ms: 1000,
            build_ms: 2000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut clients = BTreeMap::new();
        clients.insert("sink-dataverse".to_owned(), Secret::new("local-secret"));
        Self {
            tables: vec![TableConfig::contacts()],
            clients,
            token_lifetime_secs: 3600,
            limits: LimitsConfig::default(),
            latency: LatencyConfig::default(),
            faults: FaultConfig::default(),
            persist_path: None,
            max_body_bytes: 16 * 1024 * 1024,
            key_index: KeyIndexConfig::default(),
        }
    }
}

impl Config {
    /// Reads a configuration file over the defaults: JSON when the name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let config: Config = if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
        } else {
            use figment::providers::{Format, Toml};
            figment::Figment::from(Toml::string(&text))
                .extract()
                .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
        };
        Ok(config)
    }

    /// Checks the settings that serde cannot; the error names the offending setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.tables.is_empty() {
            bail!("tables: at least one table is required");
        }
        if self.clients.is_empty() {
            bail!("clients: at least one client id is required");
        }
        if self.token_lifetime_secs == 0 {
            bail!("token_lifetime_secs must be at least 1");
        }
        self.limits.validate()?;
        self.faults.validate("faults")?;
        let mut sets = std::collections::BTreeSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            table.validate(&format!("tables[{i}]"))?;
            if !sets.insert(table.entity_set.as_str()) {
                bail!("tables[{i}].entity_set: '{}' is declared twice", table.entity_set);
            }
        }
        Ok(())
    }
}

/// A client secret: compared, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for comparison.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One table (entity set) and its columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The entity set name used in URLs, e.g. `contacts`.
    pub entity_set: String,
    /// The entity logical name used in messages, e.g. `contact`.
    pub logical_name: String,
    /// The primary key column (a GUID), e.g. `contactid`.
    pub primary_key: String,
    /// Writable and readable columns by logical name.
    pub columns: BTreeMap<String, ColumnConfig>,
    /// Alternate keys: each a set of columns whose values are unique across the table.
    #[serde(default)]
    pub alternate_keys: Vec<AlternateKeyConfig>,
    /// Computed, read-only columns: the named column holds the non-empty source values joined by a space
    /// (how `fullname` follows `firstname` and `lastname`). Writes to a computed column are ignored.
    #[serde(default)]
    pub computed: BTreeMap<String, Vec<String>>,
}

impl TableConfig {
    /// The default `contacts` table: the commonly mapped contact columns, the Stripe columns the sink
    /// uses, and `statecode`/`statuscode`. `new_stripecustomerid` is an alternate key.
    pub fn contacts() -> Self {
        let string = |max: usize| ColumnConfig::new(ColumnType::String).max_length(max);
        let mut columns = BTreeMap::new();
        for (name, max) in [
            ("firstname", 50),
            ("lastname", 50),
            ("fullname", 160),
            ("emailaddress1", 100),
            ("telephone1", 50),
            ("mobilephone", 50),
            ("address1_line1", 250),
            ("address1_line2", 250),
            ("address1_city", 80),
            ("address1_stateorprovince", 50),
            ("address1_postalcode", 20),
            ("address1_country", 80),
            ("new_stripecustomerid", 100),
        ] {
            columns.insert(name.to_owned(), string(max));
        }
        columns.insert(
            "description".to_owned(),
            ColumnConfig::new(ColumnType::Memo).max_length(2000),
        );
        columns.insert(
            "new_stripeeventcreated".to_owned(),
            // Unix seconds outgrow a whole number (Int32) in 2038: a Big Integer column, as the
            // sink's README asks of real environments.
            ColumnConfig::new(ColumnType::BigInt),
        );
        columns.insert(
            "new_stripeeventrank".to_owned(),
            ColumnConfig::new(ColumnType::Integer),
        );
        columns.insert("new_stripeeventids".to_owned(), string(1000));
        columns.insert(
            "new_stripedeleted".to_owned(),
            ColumnConfig::new(ColumnType::Boolean).default_value(Value::Bool(false)),
        );
        columns.insert(
            "statecode".to_owned(),
            ColumnConfig::new(ColumnType::Choice)
                .options(&[0, 1])
                .default_value(Value::from(0)),
        );
        columns.insert(
            "statuscode".to_owned(),
            ColumnConfig::new(ColumnType::Choice)
                .options(&[1, 2])
                .default_value(Value::from(1)),
        );
        let mut computed = BTreeMap::new();
        computed.insert(
            "fullname".to_owned(),
            vec!["firstname".to_owned(), "lastname".to_owned()],
        );
        Self {
            entity_set: "contacts".to_owned(),
            logical_name: "contact".to_owned(),
            primary_key: "contactid".to_owned(),
            columns,
            alternate_keys: vec![AlternateKeyConfig {
                name: "new_stripecustomerid_key".to_owned(),
                columns: vec!["new_stripecustomerid".to_owned()],
            }],
            computed,
        }
    }

    /// The `contacts` table as a fresh environment has it: [`TableConfig::contacts`] without the
    /// Stripe columns the sink uses and without the alternate key, for provisioning them through the
    /// metadata API.
    pub fn bare_contacts() -> Self {
        let mut table = Self::contacts();
        table.columns.retain(|name, _| !name.starts_with("new_"));
        table.alternate_keys.clear();
        table
    }

    fn validate(&self, at: &str) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.entity_set.is_empty()
            || !self
                .entity_set
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!(
                "{at}.entity_set: '{}' must be a non-empty identifier",
                self.entity_set
            );
        }
        if self.columns.contains_key(&self.primary_key) {
            bail!(
                "{at}.columns: the primary key '{}' must not be declared as a column",
                self.primary_key
            );
        }
        for reserved in SYSTEM_COLUMNS {
            if self.columns.contains_key(*reserved) {
                bail!("{at}.columns: '{reserved}' is a system column and cannot be declared");
            }
        }
        for (name, column) in &self.columns {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("{at}.columns: '{name}' is not a valid column name");
            }
            column.validate(&format!("{at}.columns.{name}"))?;
        }
        for (k, key) in self.alternate_keys.iter().enumerate() {
            if key.columns.is_empty() {
                bail!("{at}.alternate_keys[{k}].columns: at least one column is required");
            }
            for column in &key.columns {
                match self.columns.get(column) {
                    None => bail!("{at}.alternate_keys[{k}].columns: unknown column '{column}'"),
                    Some(c) if !c.kind.can_be_key() => {
                        bail!("{at}.alternate_keys[{k}].columns: '{column}' has a type that cannot be a key")
                    }
                    Some(_) => {}
                }
                if self.computed.contains_key(column) {
                    bail!("{at}.alternate_keys[{k}].columns: '{column}' is computed and cannot be a key");
                }
            }
        }
        for (name, sources) in &self.computed {
            if !self.columns.get(name).is_some_and(|c| c.kind.is_text()) {
                bail!("{at}.computed: '{name}' must be declared as a string column");
            }
            for source in sources {
                if !self.columns.contains_key(source) || self.computed.contains_key(source) {
                    bail!("{at}.computed.{name}: '{source}' must be a declared, non-computed column");
                }
            }
        }
        Ok(())
    }
}

/// One column's type and constraints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// The column type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Longest accepted text, in characters (string and memo columns). Default 100 for string, 2000 for memo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Value given on create when the body does not set the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Accepted values of a choice column; `None` accepts any whole number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<i64>>,
}

impl ColumnConfig {
    /// A column of the given type with no constraints.
    pub fn new(kind: ColumnType) -> Self {
        Self {
            kind,
            max_length: None,
            default: None,
            options: None,
        }
    }

    /// Whether a value has the JSON type its column needs (`null` always does); the error says why not.
    pub fn check_value_type(&self, value: &Value) -> Result<(), String> {
        let ok = match (self.kind, value) {
            (_, Value::Null) => true,
            (ColumnType::String | ColumnType::Memo, Value::String(_)) => true,
            (ColumnType::Integer | ColumnType::Choice, Value::Number(n)) => {
                n.as_i64().is_some_and(|i| i32::try_from(i).is_ok())
            }
            (ColumnType::BigInt, Value::Number(n)) => n.as_i64().is_some(),
            (ColumnType::Decimal, Value::Number(_)) => true,
            (ColumnType::Boolean, Value::Bool(_)) => true,
            (ColumnType::Guid, Value::String(s)) => Guid::parse(s).is_some(),
            (ColumnType::DateTime, Value::String(s)) => looks_like_date(s),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {} but got {value}", self.kind.edm()))
        }
    }

    /// Sets the maximum text length.
    pub fn max_length(mut self, max: usize) -> Self {
        self.max_length = Some(max);
        self
    }

    /// Sets the value given on create.
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// Sets the accepted choice values.
    pub fn options(mut self, options: &[i64]) -> Self {
        self.options = Some(options.to_vec());
        self
    }

    /// The effective maximum text length.
    pub fn effective_max_length(&self) -> usize {
        self.max_length.unwrap_or(match self.kind {
            ColumnType::Memo => 2000,
            _ => 100,
        })
    }

    fn validate(&self, at: &str) -> anyhow::Result<()> {
        if let Some(default) = &self.default
            && let Err(reason) = self.check_value_type(default)
        {
            anyhow::bail!("{at}.default: {reason}");
        }
        if self.options.is_some() && self.kind != ColumnType::Choice {
            anyhow::bail!("{at}.options: only choice columns take options");
        }
        Ok(())
    }
}

/// Whether text starts with a `YYYY-MM-DD` date.
fn looks_like_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// Column types, named as in Dataverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Single line of text (`Edm.String`).
    String,
    /// Multiple lines of text (`Edm.String`).
    Memo,
    /// Whole number (`Edm.Int32`).
    Integer,
    /// Big integer (`Edm.Int64`).
    BigInt,
    /// Decimal or floating point number (`Edm.Decimal`/`Edm.Double`).
    Decimal,
    /// Yes/No (`Edm.Boolean`).
    Boolean,
    /// Date and time as ISO 8601 text (`Edm.DateTimeOffset`).
    DateTime,
    /// Unique identifier (`Edm.Guid`).
    Guid,
    /// Choice / option set (`Edm.Int32`).
    Choice,
}

impl ColumnType {
    /// The EDM type name used in error messages.
    pub fn edm(self) -> &'static str {
        match self {
            Self::String | Self::Memo => "Edm.String",
            Self::Integer | Self::Choice => "Edm.Int32",
            Self::BigInt => "Edm.Int64",
            Self::Decimal => "Edm.Decimal",
            Self::Boolean => "Edm.Boolean",
            Self::DateTime => "Edm.DateTimeOffset",
            Self::Guid => "Edm.Guid",
        }
    }

    /// Whether an alternate key may hold a column of this type.
    pub fn can_be_key(self) -> bool {
        !matches!(self, Self::Memo | Self::Boolean)
    }

    /// Whether values are text (compared without regard to case, as Dataverse's collation does).
    pub fn is_text(self) -> bool {
        matches!(self, Self::String | Self::Memo)
    }
}

/// An alternate key: columns whose combined values identify at most one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternateKeyConfig {
    /// The key's name, used in error messages.
    pub name: String,
    /// The key's columns.
    pub columns: Vec<String>,
}

/// Service protection limits, evaluated per client id over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Turns all three limits on or off. Default on.
    pub enabled: bool,
    /// Length of the sliding window in milliseconds. Default 300 000 (5 minutes).
    pub window_ms: u64,
    /// Requests accepted per window before 429 `0x80072322`. Default 6000.
    pub max_requests: u64,
    /// Combined execution time per window, in milliseconds, before 429 `0x80072321`. Default 1 200 000.
    pub max_execution_time_ms: u64,
    /// Requests in flight at once before 429 `0x80072326`. Default 52.
    pub max_concurrent: u64,
    /// How much each request sent while throttled adds to the wait, in milliseconds. Default 1000.
    pub penalty_ms: u64,
    /// Upper bound of a `Retry-After` value, in seconds. Default 300.
    pub max_retry_after_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_ms: 300_000,
            max_requests: 6000,
            max_execution_time_ms: 1_200_000,
            max_concurrent: 52,
            penalty_ms: 1000,
            max_retry_after_secs: 300,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.window_ms == 0 {
            bail!("limits.window_ms must be at least 1");
        }
        if self.max_requests == 0 {
            bail!("limits.max_requests must be at least 1");
        }
        if self.max_execution_time_ms == 0 {
            bail!("limits.max_execution_time_ms must be at least 1");
        }
        if self.max_concurrent == 0 {
            bail!("limits.max_concurrent must be at least 1");
        }
        if self.max_retry_after_secs == 0 {
            bail!("limits.max_retry_after_secs must be at least 1");
        }
        Ok(())
    }
}

/// Simulated server processing time per operation, in milliseconds. An operation without its own value
/// takes `default_ms`. Inside `$batch`, each operation takes its own time, so a batch costs the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// Time of any operation without its own value. Default 0.
    pub default_ms: u64,
    /// `POST` to an entity set.
    pub create_ms: Option<u64>,
    /// `GET` of one row.
    pub retrieve_ms: Option<u64>,
    /// `GET` of an entity set (a query).
    pub query_ms: Option<u64>,
    /// `PATCH` (update or upsert).
    pub update_ms: Option<u64>,
    /// `DELETE`.
    pub delete_ms: Option<u64>,
}

/// Faults injected into Web API requests (`/api/data/…`), never into the token or admin endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction (0.0–1.0) of requests answered with one of `error_statuses` instead of being processed.
    pub error_rate: f64,
    /// Statuses used by `error_rate` and `fail_next`, picked at random. Default `[500, 503]`.
    pub error_statuses: Vec<u16>,
    /// Fraction of requests whose connection is closed before they are processed (no answer at all).
    pub drop_rate: f64,
    /// Fraction of requests that are processed (and persisted) but whose connection is then closed
    /// without an answer: the client cannot tell whether the write happened.
    pub drop_after_apply_rate: f64,
    /// Time added to every request, in milliseconds (counts as execution time, like a slow server).
    pub added_latency_ms: u64,
    /// The next N requests answer with an error status (deterministic counterpart of `error_rate`).
    pub fail_next: u32,
    /// The next N requests lose their connection before being processed.
    pub drop_next: u32,
    /// Throttles every client for this long (from when the faults are set), answering 429 with the
    /// given kind's error code and a `Retry-After` of the time left.
    pub force_throttle: Option<ForceThrottle>,
    /// Writes refused the way a synchronous plug-in refuses them (400 `0x80040265`): a create or
    /// upsert (alone, in a `$batch` or a bulk message) setting `column` to text containing
    /// `contains` fails, and keeps failing until the rule is removed, like a business rule the
    /// data breaks until an administrator changes it.
    pub reject_values: Vec<RejectValue>,
}

/// A business rule that refuses certain column values (see [`FaultConfig::reject_values`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectValue {
    /// Entity set the rule applies to; every table when unset.
    #[serde(default)]
    pub entity_set: Option<String>,
    /// Column whose value is checked.
    pub column: String,
    /// Text the value must contain to be refused (case-insensitive; empty refuses every text
    /// value of the column).
    #[serde(default)]
    pub contains: String,
    /// The message of the refusal, as a plug-in's `InvalidPluginExecutionException` gives it.
    /// Default: "The value of '<column>' is not accepted.".
    #[serde(default)]
    pub message: Option<String>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_statuses: vec![500, 503],
            drop_rate: 0.0,
            drop_after_apply_rate: 0.0,
            added_latency_ms: 0,
            fail_next: 0,
            drop_next: 0,
            force_throttle: None,
            reject_values: Vec::new(),
        }
    }
}

impl FaultConfig {
    /// Checks ranges; the error names the setting under `at`.
    pub fn validate(&self, at: &str) -> anyhow::Result<()> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("drop_after_apply_rate", self.drop_after_apply_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{at}.{name} must be between 0.0 and 1.0, got {rate}");
            }
        }
        if (self.error_rate > 0.0 || self.fail_next > 0) && self.error_statuses.is_empty() {
            anyhow::bail!("{at}.error_statuses must name at least one status");
        }
        for status in &self.error_statuses {
            if !(400..=599).contains(status) {
                anyhow::bail!("{at}.error_statuses: {status} is not an error status");
            }
        }
        for (i, rule) in self.reject_values.iter().enumerate() {
            if rule.column.trim().is_empty() {
                anyhow::bail!("{at}.reject_values[{i}].column must name a column");
            }
        }
        Ok(())
    }
}

/// A forced throttle window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceThrottle {
    /// How long every client is throttled, in milliseconds.
    pub duration_ms: u64,
    /// Which limit the 429 answers report. Default `requests`.
    #[serde(default)]
    pub kind: ThrottleKind,
}

/// The three service protection limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKind {
    /// Number of requests in the window (`0x80072322`).
    #[default]
    Requests,
    /// Combined execution time in the window (`0x80072321`).
    ExecutionTime,
    /// Concurrent requests (`0x80072326`).
    Concurrency,
}

impl ThrottleKind {
    /// The hex error code the Web API returns.
    pub fn code(self) -> &'static str {
        match self {
            Self::Requests => "0x80072322",
            Self::ExecutionTime => "0x80072321",
            Self::Concurrency => "0x80072326",
        }
    }

    /// The label used in stats and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::ExecutionTime => "execution_time",
            Self::Concurrency => "concurrency",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = Config::default();
        config.validate().expect("defaults validate");
        assert_eq!(config.limits.max_requests, 6000);
        assert_eq!(config.limits.window_ms, 300_000);
        assert_eq!(config.limits.max_execution_time_ms, 1_200_000);
        assert_eq!(config.limits.max_concurrent, 52);
        assert_eq!(config.clients["sink-dataverse"].expose(), "local-secret");
        assert!(
            !format!("{config:?}").contains("local-secret"),
            "secrets never appear in Debug output"
        );
        let contacts = &config.tables[0];
        assert_eq!(contacts.entity_set, "contacts");
        assert_eq!(contacts.primary_key, "contactid");
        assert_eq!(
            contacts.alternate_keys[0].columns,
            vec!["new_stripecustomerid".to_owned()]
        );
        assert_eq!(
            contacts.columns["new_stripeeventcreated"].kind,
            ColumnType::BigInt
        );
        assert_eq!(contacts.columns["new_stripedeleted"].kind, ColumnType::Boolean);
    }

    #[test]
    fn toml_file_overrides_a_subset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("emulator.toml");
        std::fs::write(
            &path,
            "token_lifetime_secs = 5\n[limits]\nmax_requests = 10\n[clients]\na = \"b\"\n",
        )
        .expect("write");
        let config = Config::from_file(&path).expect("parses");
        assert_eq!(config.token_lifetime_secs, 5);
        assert_eq!(config.limits.max_requests, 10);
        assert_eq!(config.limits.max_concurrent, 52);
        assert_eq!(config.clients["a"].expose(), "b");
        assert_eq!(config.tables, vec![TableConfig::contacts()]);
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("toml example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("end of example");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("example.toml");
        std::fs::write(&path, &readme[start..end]).expect("write");
        let config = Config::from_file(&path).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.tables.len(), 1);
        assert_eq!(
            config.tables[0].alternate_keys[0].columns,
            vec!["accountnumber".to_owned()]
        );
        assert_eq!(config.latency.update_ms, Some(20));
    }

    #[test]
    fn json_file_and_validation_errors_name_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("emulator.json");
        std::fs::write(&path, r#"{"limits":{"max_concurrent":0}}"#).expect("write");
        let config = Config::from_file(&path).expect("parses");
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("limits.max_concurrent"), "{err}");

        let mut config = Config::default();
        config.tables[0].alternate_keys[0].columns = vec!["nope".into()];
        let err = config.validate().expect_err("invalid");
        assert!(
            err.to_string().contains("tables[0].alternate_keys[0].columns"),
            "{err}"
        );

        std::fs::write(&path, r#"{"limitz":{}}"#).expect("write");
        assert!(Config::from_file(&path).is_err(), "unknown settings are rejected");
    }
}
