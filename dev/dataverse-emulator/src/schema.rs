//! Table definitions that change at run time, as Dataverse's metadata API changes them: the
//! `AttributeMetadata` of every column (`EntityDefinitions(LogicalName='contact')/Attributes`) and the
//! `EntityKeyMetadata` of every alternate key (`…/Keys`), whose index is built in the background
//! (`Pending` → `InProgress` → `Active`, or `Failed`). Pure: the store holds these beside each table,
//! `metadata` answers the HTTP requests with them.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{ColumnConfig, ColumnType, TableConfig};
use crate::error::ApiError;
use crate::values::Guid;

/// What Dataverse keeps of a column beyond its type: its id, names and requirement level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnMeta {
    /// `MetadataId`.
    pub id: Guid,
    /// `SchemaName`, e.g. `new_StripeCustomerId` (the logical name is its lower case).
    pub schema_name: String,
    /// The `DisplayName` label.
    pub display_name: String,
    /// `RequiredLevel.Value`: `None`, `Recommended`, `ApplicationRequired` or `SystemRequired`.
    pub required_level: String,
    /// `IsCustomAttribute`: created through the API rather than part of the table's configuration.
    pub custom: bool,
}

impl ColumnMeta {
    /// The metadata of a configured column: a stable id from the table and column names.
    pub fn configured(table: &str, column: &str) -> Self {
        Self {
            id: stable_id(&format!("{table}.{column}")),
            schema_name: schema_name(column),
            display_name: schema_name(column),
            required_level: "None".to_owned(),
            // Custom columns carry a publisher prefix (`new_…`); standard ones such as
            // `address1_city` only look alike.
            custom: column
                .split_once('_')
                .is_some_and(|(prefix, _)| !prefix.chars().any(|c| c.is_ascii_digit())),
        }
    }
}

/// `EntityKeyIndexStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Created; the index job has not started.
    Pending,
    /// The index is being built.
    InProgress,
    /// The key can be used.
    Active,
    /// The index could not be built (existing rows share key values).
    Failed,
}

impl KeyStatus {
    /// The enum member's name, as the Web API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Active => "Active",
            Self::Failed => "Failed",
        }
    }
}

/// What Dataverse keeps of an alternate key beyond its columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// `MetadataId`.
    pub id: Guid,
    /// `SchemaName` (the logical name is its lower case).
    pub schema_name: String,
    /// The `DisplayName` label.
    pub display_name: String,
    /// `EntityKeyIndexStatus`.
    pub status: KeyStatus,
    /// When the key was created through the API: the index job's clock. `None` for configured keys.
    #[serde(skip)]
    pub created: Option<Instant>,
}

impl KeyState {
    /// A configured key: active from start-up.
    pub fn configured(table: &str, name: &str) -> Self {
        Self {
            id: stable_id(&format!("{table}/key/{name}")),
            schema_name: name.to_owned(),
            display_name: name.to_owned(),
            status: KeyStatus::Active,
            created: None,
        }
    }

    /// The status the index job has reached at `now` (terminal states stay), before the build itself
    /// is judged: past `pending + build` the caller builds the index and decides Active or Failed.
    pub fn due(&self, now: Instant, timing: &KeyIndexTiming) -> KeyStatus {
        match (self.status, self.created) {
            (KeyStatus::Active | KeyStatus::Failed, _) | (_, None) => self.status,
            (_, Some(created)) => {
                let elapsed = now.saturating_duration_since(created);
                if elapsed < timing.pending {
                    KeyStatus::Pending
                } else if elapsed < timing.pending + timing.build {
                    KeyStatus::InProgress
                } else {
                    KeyStatus::Active
                }
            }
        }
    }
}

/// How long a new key's index job waits, then builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIndexTiming {
    /// Time in `Pending`.
    pub pending: Duration,
    /// Time in `InProgress`.
    pub build: Duration,
}

/// A GUID derived from a name, shaped as version 4: the same name always gets the same id.
pub fn stable_id(name: &str) -> Guid {
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    Guid::version4((u128::from(hash(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(hash(0x8422_2325_cbf2_9ce4)))
}

/// `new_thing` → `new_Thing`, `contact` → `Contact`: how Dataverse shapes schema names.
pub fn schema_name(logical: &str) -> String {
    fn capitalise(text: &str) -> String {
        let mut chars = text.chars();
        chars
            .next()
            .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    }
    match logical.split_once('_') {
        Some((prefix, rest)) => format!("{prefix}_{}", capitalise(rest)),
        None => capitalise(logical),
    }
}

/// A `Label` as Dataverse answers it.
pub fn label(text: &str, id: &Guid) -> Value {
    let localized = json!({
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": false,
        "MetadataId": id.to_string(),
        "HasChanged": null,
    });
    json!({ "LocalizedLabels": [localized.clone()], "UserLocalizedLabel": localized })
}

/// The `AttributeMetadata` (base type) properties the emulator serves and accepts in `$select`/`$filter`.
pub const ATTRIBUTE_PROPERTIES: &[&str] = &[
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntityLogicalName",
    "AttributeType",
    "AttributeTypeName",
    "IsCustomAttribute",
    "IsPrimaryId",
    "IsPrimaryName",
    "IsValidForCreate",
    "IsValidForRead",
    "IsValidForUpdate",
    "RequiredLevel",
    "DisplayName",
];

/// The `EntityKeyMetadata` properties the emulator serves and accepts in `$select`/`$filter`.
pub const KEY_PROPERTIES: &[&str] = &[
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntityLogicalName",
    "KeyAttributes",
    "EntityKeyIndexStatus",
    "DisplayName",
    "AsyncJob",
    "IsManaged",
];

/// `(AttributeType, AttributeTypeName, derived type)` of a column.
fn attribute_type(name: &str, kind: ColumnType) -> (&'static str, &'static str, &'static str) {
    match (name, kind) {
        ("statecode", ColumnType::Choice) => ("State", "StateType", "StateAttributeMetadata"),
        ("statuscode", ColumnType::Choice) => ("Status", "StatusType", "StatusAttributeMetadata"),
        (_, ColumnType::String) => ("String", "StringType", "StringAttributeMetadata"),
        (_, ColumnType::Memo) => ("Memo", "MemoType", "MemoAttributeMetadata"),
        (_, ColumnType::Integer) => ("Integer", "IntegerType", "IntegerAttributeMetadata"),
        (_, ColumnType::BigInt) => ("BigInt", "BigIntType", "BigIntAttributeMetadata"),
        (_, ColumnType::Decimal) => ("Decimal", "DecimalType", "DecimalAttributeMetadata"),
        (_, ColumnType::Boolean) => ("Boolean", "BooleanType", "BooleanAttributeMetadata"),
        (_, ColumnType::DateTime) => ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
        (_, ColumnType::Guid) => (
            "Uniqueidentifier",
            "UniqueidentifierType",
            "UniqueIdentifierAttributeMetadata",
        ),
        (_, ColumnType::Choice) => ("Picklist", "PicklistType", "PicklistAttributeMetadata"),
    }
}

/// One column's `AttributeMetadata`, with the derived type's properties (`MaxLength`, `DefaultValue`)
/// and `@odata.type` naming that type, as a collection answer lists it.
pub fn attribute_json(
    table: &TableConfig,
    name: &str,
    kind: ColumnType,
    column: Option<&ColumnConfig>,
    meta: &ColumnMeta,
) -> Map<String, Value> {
    let (attribute_type, type_name, derived) = attribute_type(name, kind);
    let primary_id = name == table.primary_key;
    let system = crate::config::SYSTEM_COLUMNS.contains(&name);
    let computed = table.computed.contains_key(name);
    let mut out = Map::new();
    out.insert(
        "@odata.type".into(),
        Value::String(format!("#Microsoft.Dynamics.CRM.{derived}")),
    );
    let values = [
        ("MetadataId", Value::String(meta.id.to_string())),
        ("LogicalName", Value::String(name.to_owned())),
        ("SchemaName", Value::String(meta.schema_name.clone())),
        ("EntityLogicalName", Value::String(table.logical_name.clone())),
        ("AttributeType", Value::String(attribute_type.to_owned())),
        ("AttributeTypeName", json!({ "Value": type_name })),
        ("IsCustomAttribute", Value::Bool(meta.custom)),
        ("IsPrimaryId", Value::Bool(primary_id)),
        (
            "IsPrimaryName",
            Value::Bool(table.computed.keys().next().is_some_and(|c| c == name)),
        ),
        ("IsValidForCreate", Value::Bool(!system && !computed)),
        ("IsValidForRead", Value::Bool(true)),
        (
            "IsValidForUpdate",
            Value::Bool(!system && !computed && !primary_id),
        ),
        (
            "RequiredLevel",
            json!({
                "Value": meta.required_level,
                "CanBeChanged": true,
                "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
            }),
        ),
        ("DisplayName", label(&meta.display_name, &meta.id)),
    ];
    out.extend(values.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if let Some(column) = column {
        if kind.is_text() {
            out.insert("MaxLength".into(), Value::from(column.effective_max_length()));
        }
        if let Some(default) = &column.default {
            out.insert("DefaultValue".into(), default.clone());
        }
    }
    out
}

/// One key's `EntityKeyMetadata`.
pub fn key_json(table: &TableConfig, columns: &[String], state: &KeyState) -> Map<String, Value> {
    let values = [
        ("MetadataId", Value::String(state.id.to_string())),
        ("LogicalName", Value::String(state.schema_name.to_lowercase())),
        ("SchemaName", Value::String(state.schema_name.clone())),
        ("EntityLogicalName", Value::String(table.logical_name.clone())),
        ("KeyAttributes", json!(columns)),
        (
            "EntityKeyIndexStatus",
            Value::String(state.status.as_str().to_owned()),
        ),
        ("DisplayName", label(&state.display_name, &state.id)),
        ("AsyncJob", Value::Null),
        ("IsManaged", Value::Bool(false)),
    ];
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(message.into())
}

/// The text of a `Label` body (`{"LocalizedLabels":[{"Label":"…","LanguageCode":1033}]}`).
fn label_text(body: &Map<String, Value>, property: &str) -> Result<String, ApiError> {
    body.get(property)
        .and_then(|l| l.get("LocalizedLabels"))
        .and_then(Value::as_array)
        .and_then(|labels| labels.iter().find_map(|l| l.get("Label")?.as_str()))
        .filter(|text| !text.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            invalid(format!(
                "{property} is required: a Label with at least one LocalizedLabel."
            ))
        })
}

/// A `SchemaName` of a custom component: a customization prefix, `_`, then letters, digits and `_`.
fn custom_schema_name(body: &Map<String, Value>, what: &str) -> Result<String, ApiError> {
    let name = body
        .get("SchemaName")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("SchemaName is required to create {what}.")))?;
    let valid_chars = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    let prefixed = name
        .split_once('_')
        .is_some_and(|(prefix, rest)| !prefix.is_empty() && !rest.is_empty());
    if !valid_chars || !prefixed {
        return Err(invalid(format!(
            "The SchemaName '{name}' is not valid: it must start with a customization prefix and '_' (e.g. new_), followed by letters, digits or '_'."
        )));
    }
    Ok(name.to_owned())
}

/// A column to add, read from a `POST …/Attributes` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    pub logical_name: String,
    pub column: ColumnConfig,
    pub meta: ColumnMeta,
}

/// Reads a `POST EntityDefinitions(…)/Attributes` body: the derived type from `@odata.type`, then its
/// properties (`SchemaName`, `DisplayName`, `RequiredLevel`, `MaxLength`, a Boolean's `OptionSet` and
/// `DefaultValue`).
pub fn parse_new_column(body: &Map<String, Value>) -> Result<NewColumn, ApiError> {
    let odata_type = body.get("@odata.type").and_then(Value::as_str).ok_or_else(|| {
        invalid("The @odata.type of the attribute is required, e.g. Microsoft.Dynamics.CRM.StringAttributeMetadata.")
    })?;
    let derived = odata_type
        .trim_start_matches('#')
        .strip_prefix("Microsoft.Dynamics.CRM.")
        .unwrap_or(odata_type);
    let (kind, attribute_type, max_length) = match derived {
        "StringAttributeMetadata" => (ColumnType::String, "String", Some((100, 4000))),
        "MemoAttributeMetadata" => (ColumnType::Memo, "Memo", Some((2000, 1_048_576))),
        "IntegerAttributeMetadata" => (ColumnType::Integer, "Integer", None),
        "BigIntAttributeMetadata" => (ColumnType::BigInt, "BigInt", None),
        "DecimalAttributeMetadata" => (ColumnType::Decimal, "Decimal", None),
        "BooleanAttributeMetadata" => (ColumnType::Boolean, "Boolean", None),
        "DateTimeAttributeMetadata" => (ColumnType::DateTime, "DateTime", None),
        other if other.ends_with("AttributeMetadata") => {
            return Err(ApiError::NotSupported(format!(
                "Creating a column of type {other}"
            )));
        }
        other => {
            return Err(invalid(format!("'{other}' is not an attribute metadata type.")));
        }
    };
    if let Some(given) = body.get("AttributeType").and_then(Value::as_str)
        && given != attribute_type
    {
        return Err(invalid(format!(
            "AttributeType '{given}' does not match the @odata.type {derived}."
        )));
    }
    let schema_name = custom_schema_name(body, "a column")?;
    let display_name = label_text(body, "DisplayName")?;
    let required_level = match body.get("RequiredLevel").and_then(|r| r.get("Value")) {
        None | Some(Value::Null) => "None".to_owned(),
        Some(Value::String(level))
            if matches!(
                level.as_str(),
                "None" | "Recommended" | "ApplicationRequired" | "SystemRequired"
            ) =>
        {
            level.clone()
        }
        Some(other) => {
            return Err(invalid(format!(
                "RequiredLevel {other} is not one of None, Recommended, ApplicationRequired, SystemRequired."
            )));
        }
    };
    let mut column = ColumnConfig::new(kind);
    if let Some((default, max)) = max_length {
        let length = match body.get("MaxLength") {
            None | Some(Value::Null) => default,
            Some(value) => value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| invalid(format!("MaxLength {value} is outside 1–{max}.")))?,
        };
        column = column.max_length(length);
    }
    if kind == ColumnType::Boolean {
        let options = body.get("OptionSet");
        let has = |option: &str| {
            options
                .and_then(|o| o.get(option))
                .and_then(|o| o.get("Value"))
                .and_then(Value::as_i64)
                .is_some()
        };
        if !has("TrueOption") || !has("FalseOption") {
            return Err(invalid(
                "A Boolean column needs an OptionSet with a TrueOption and a FalseOption.",
            ));
        }
        let default = match body.get("DefaultValue") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(format!(
                    "DefaultValue {other} of a Boolean column must be true or false."
                )));
            }
        };
        column = column.default_value(Value::Bool(default));
    }
    let logical_name = schema_name.to_lowercase();
    Ok(NewColumn {
        meta: ColumnMeta {
            id: Guid::new_random(),
            schema_name,
            display_name,
            required_level,
            custom: true,
        },
        logical_name,
        column,
    })
}

/// A key to add, read from a `POST EntityDefinitions(…)/Keys` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub schema_name: String,
    pub display_name: String,
    pub columns: Vec<String>,
}

/// Reads a `POST EntityDefinitions(…)/Keys` body (`SchemaName`, `DisplayName`, `KeyAttributes`); the
/// caller checks the columns against the table.
pub fn parse_new_key(body: &Map<String, Value>) -> Result<NewKey, ApiError> {
    let schema_name = custom_schema_name(body, "a key")?;
    let display_name = label_text(body, "DisplayName")?;
    let columns: Vec<String> = body
        .get("KeyAttributes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if columns.is_empty() || columns.len() > 16 {
        return Err(invalid(
            "KeyAttributes must name between 1 and 16 columns of the table.",
        ));
    }
    Ok(NewKey {
        schema_name,
        display_name,
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn display(text: &str) -> Value {
        json!({"@odata.type": "Microsoft.Dynamics.CRM.Label", "LocalizedLabels": [{"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033}]})
    }

    #[test]
    fn the_documented_string_column_is_read() {
        let new = parse_new_column(&body(json!({
            "AttributeType": "String",
            "AttributeTypeName": {"Value": "StringType"},
            "DisplayName": display("Bank Name"),
            "RequiredLevel": {"Value": "None", "CanBeChanged": true, "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"},
            "SchemaName": "new_BankName",
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "FormatName": {"Value": "Text"},
            "MaxLength": 100
        })))
        .expect("valid");
        assert_eq!(new.logical_name, "new_bankname");
        assert_eq!(new.meta.schema_name, "new_BankName");
        assert_eq!(new.meta.display_name, "Bank Name");
        assert_eq!(new.column.kind, ColumnType::String);
        assert_eq!(new.column.max_length, Some(100));
    }

    #[test]
    fn booleans_need_their_option_set_and_take_a_default() {
        let mut b = body(json!({
            "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
            "SchemaName": "new_Flag",
            "DisplayName": display("Flag"),
        }));
        assert!(matches!(parse_new_column(&b), Err(ApiError::InvalidArgument(_))));
        b.insert(
            "OptionSet".into(),
            json!({"TrueOption": {"Value": 1}, "FalseOption": {"Value": 0}, "OptionSetType": "Boolean"}),
        );
        let new = parse_new_column(&b).expect("valid");
        assert_eq!(new.column.default, Some(Value::Bool(false)));
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        for (input, needle) in [
            (
                json!({"SchemaName": "new_A", "DisplayName": display("A")}),
                "@odata.type",
            ),
            (
                json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "nounderscore", "DisplayName": display("A")}),
                "customization prefix",
            ),
            (
                json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "new_A"}),
                "DisplayName",
            ),
            (
                json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "new_A", "DisplayName": display("A"), "MaxLength": 5000}),
                "MaxLength",
            ),
            (
                json!({"@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata", "AttributeType": "String", "SchemaName": "new_A", "DisplayName": display("A")}),
                "does not match",
            ),
        ] {
            let err = parse_new_column(&body(input.clone())).expect_err("refused");
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
        assert!(matches!(
            parse_new_column(&body(
                json!({"@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata", "SchemaName": "new_A", "DisplayName": display("A")})
            )),
            Err(ApiError::NotSupported(_))
        ));
    }

    #[test]
    fn key_bodies_need_a_name_a_label_and_columns() {
        let key = parse_new_key(&body(json!({
            "SchemaName": "new_stripecustomerid_key",
            "DisplayName": display("Stripe customer"),
            "KeyAttributes": ["new_stripecustomerid"],
        })))
        .expect("valid");
        assert_eq!(key.columns, vec!["new_stripecustomerid".to_owned()]);
        let err = parse_new_key(&body(
            json!({"SchemaName": "new_k", "DisplayName": display("K"), "KeyAttributes": []}),
        ))
        .expect_err("no columns");
        assert!(err.to_string().contains("KeyAttributes"), "{err}");
    }

    #[test]
    fn a_new_key_goes_pending_then_in_progress_then_due() {
        let start = Instant::now();
        let timing = KeyIndexTiming {
            pending: Duration::from_secs(1),
            build: Duration::from_secs(2),
        };
        let key = KeyState {
            created: Some(start),
            status: KeyStatus::Pending,
            ..KeyState::configured("contact", "new_k")
        };
        assert_eq!(key.due(start, &timing), KeyStatus::Pending);
        assert_eq!(
            key.due(start + Duration::from_millis(1500), &timing),
            KeyStatus::InProgress
        );
        assert_eq!(
            key.due(start + Duration::from_secs(3), &timing),
            KeyStatus::Active
        );
        let failed = KeyState {
            status: KeyStatus::Failed,
            ..key
        };
        assert_eq!(
            failed.due(start + Duration::from_secs(9), &timing),
            KeyStatus::Failed
        );
    }
}
