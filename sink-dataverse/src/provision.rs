//! `sink-dataverse provision`: the columns and the alternate key the sink needs on its table,
//! created through the Web API's metadata endpoints (`EntityDefinitions(LogicalName='contact')/
//! Attributes` and `/Keys`), and the same check at the sink's start-up.
//!
//! What is needed comes from the configuration, never from a second list: the alternate key column,
//! the guard's columns (event time, rank, applied ids, the deleted flag), `statecode`/`statuscode`
//! when deletes deactivate, and every mapped column. [`plan`] compares that with the table's
//! definition, read in one request ([`schema_path`]), and is pure; [`run`] and [`startup_check`]
//! do the I/O.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{config::HumanDuration, retry::Verdict};
use serde_json::{Value, json};

use crate::{
    client::{Method, Operation, ProbeError, Transport},
    config::{DeleteMode, SinkConfig},
    error::WriteError,
    mapping::{Columns, MAX_EVENT_IDS_LEN},
};

/// The sink's own commands, beside `run`, `print-config` and `replay`.
#[derive(Debug, clap::Subcommand)]
pub enum SinkCommand {
    /// Create the columns and the alternate key the sink needs on its Dataverse table (from the
    /// configuration), then wait until the key's index is active. Changes nothing that exists.
    Provision(ProvisionArgs),
}

/// `sink-dataverse provision` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ProvisionArgs {
    /// Only report what exists and what is missing; exit non-zero when the sink could not run.
    #[arg(long)]
    pub check: bool,
    /// The publisher prefix of the columns to create [setting `provision.publisher_prefix`;
    /// default: the prefix of `dataverse.alternate_key`, e.g. `new`].
    #[arg(long)]
    pub publisher_prefix: Option<String>,
    /// How often the key's index status is read while it builds [setting
    /// `provision.poll_interval`, default 2s].
    #[arg(long)]
    pub poll_interval: Option<HumanDuration>,
    /// How long to wait for the key's index at most; on a large table it can take hours [setting
    /// `provision.timeout`, default 1h].
    #[arg(long)]
    pub timeout: Option<HumanDuration>,
}

/// A column type the sink needs, and how provisioning creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Single line of text of at most this many characters.
    Text(u32),
    /// Multiple lines of text of at most this many characters.
    Memo(u32),
    /// Whole number (Int32).
    Integer,
    /// Big integer (Int64).
    BigInt,
    /// Yes/No.
    Boolean,
    /// A standard choice column (`statecode`, `statuscode`): never created, only checked.
    Standard(&'static str),
}

impl ColumnKind {
    /// The `AttributeType` provisioning creates.
    pub fn attribute_type(self) -> &'static str {
        match self {
            ColumnKind::Text(_) => "String",
            ColumnKind::Memo(_) => "Memo",
            ColumnKind::Integer => "Integer",
            ColumnKind::BigInt => "BigInt",
            ColumnKind::Boolean => "Boolean",
            ColumnKind::Standard(t) => t,
        }
    }

    /// Whether an existing column of `attribute_type` serves.
    fn accepts(self, attribute_type: &str) -> bool {
        match self {
            ColumnKind::Text(_) | ColumnKind::Memo(_) => matches!(attribute_type, "String" | "Memo"),
            ColumnKind::Integer | ColumnKind::BigInt => matches!(attribute_type, "Integer" | "BigInt"),
            ColumnKind::Boolean => attribute_type == "Boolean",
            ColumnKind::Standard(t) => attribute_type == t,
        }
    }

    fn describe(self) -> String {
        match self {
            ColumnKind::Text(n) => format!("String({n})"),
            ColumnKind::Memo(n) => format!("Memo({n})"),
            other => other.attribute_type().to_string(),
        }
    }
}

/// One column the sink uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    /// Logical name.
    pub column: String,
    /// The setting that names it, for messages.
    pub setting: String,
    pub kind: ColumnKind,
    /// The display name a created column gets.
    pub label: String,
}

/// Every column the configuration makes the sink read or write, with the setting naming it.
pub fn requirements(config: &SinkConfig) -> Vec<Required> {
    let columns = Columns::from_config(config);
    let max_ids = u32::try_from(MAX_EVENT_IDS_LEN).unwrap_or(u32::MAX);
    let mut out = vec![
        own(
            &columns.alternate_key,
            "dataverse.alternate_key",
            ColumnKind::Text(100),
            "Stripe customer id",
        ),
        own(
            &columns.created,
            "dataverse.created_column",
            ColumnKind::BigInt,
            "Stripe event time",
        ),
        own(
            &columns.rank,
            "dataverse.rank_column",
            ColumnKind::Integer,
            "Stripe event rank",
        ),
        own(
            &columns.event_ids,
            "dataverse.event_ids_column",
            ColumnKind::Text(max_ids),
            "Stripe event ids",
        ),
        own(
            &columns.deleted,
            "dataverse.deleted_column",
            ColumnKind::Boolean,
            "Stripe deleted",
        ),
    ];
    if columns.delete_mode == DeleteMode::Deactivate {
        out.push(own(
            "statecode",
            "dataverse.delete_mode",
            ColumnKind::Standard("State"),
            "Status",
        ));
        out.push(own(
            "statuscode",
            "dataverse.delete_mode",
            ColumnKind::Standard("Status"),
            "Status Reason",
        ));
    }
    for (field, column) in config.mapping.columns() {
        if column.is_empty() {
            continue;
        }
        // Stripe metadata values hold up to 500 characters; descriptions can be longer.
        let kind = if field == "description" {
            ColumnKind::Memo(2000)
        } else {
            ColumnKind::Text(500)
        };
        let label = format!("Stripe {}", field.replace(['_', '.'], " "));
        out.push(own(&column, &format!("mapping.{field}"), kind, &label));
    }
    out
}

fn own(column: &str, setting: &str, kind: ColumnKind, label: &str) -> Required {
    Required {
        column: column.to_string(),
        setting: setting.to_string(),
        kind,
        label: label.to_string(),
    }
}

/// What the table has, as the metadata read answered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// The entity's logical name (`contact`).
    pub logical_name: String,
    /// Column logical name → `AttributeType`.
    pub attributes: BTreeMap<String, String>,
    pub keys: Vec<KeyInfo>,
}

/// One alternate key of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub schema_name: String,
    pub attributes: Vec<String>,
    /// `EntityKeyIndexStatus`: `Pending`, `InProgress`, `Active` or `Failed`.
    pub status: String,
}

/// The one read that tells everything: the table by entity set name, with its columns and keys.
pub fn schema_path(entity_set: &str) -> String {
    format!(
        "EntityDefinitions?$filter=EntitySetName eq '{entity_set}'&$select=LogicalName,EntitySetName\
         &$expand=Attributes($select=LogicalName,AttributeType),Keys($select=SchemaName,KeyAttributes,EntityKeyIndexStatus)"
    )
}

/// Reads the answer to [`schema_path`]; `None` when no table has that entity set name.
pub fn parse_schema(body: &Value) -> Option<Schema> {
    let definition = body.get("value")?.as_array()?.first()?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let attributes = definition
        .get("Attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| (text(a, "LogicalName"), text(a, "AttributeType")))
        .collect();
    let keys = definition
        .get("Keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|k| KeyInfo {
            schema_name: text(k, "SchemaName"),
            attributes: k
                .get("KeyAttributes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect(),
            status: text(k, "EntityKeyIndexStatus"),
        })
        .collect();
    Some(Schema {
        logical_name: text(definition, "LogicalName"),
        attributes,
        keys,
    })
}

/// The state of one required column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnState {
    Present,
    /// Missing; provisioning creates it.
    Missing,
    /// Missing, and provisioning will not create it: the reason.
    Unfixable(String),
    /// Exists with a type that cannot hold the values.
    WrongType(String),
}

/// The state of the alternate key over the key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// No key holds exactly the key column: provisioning creates this one.
    Missing { schema_name: String },
    /// A key exists, in this index status.
    Exists { schema_name: String, status: String },
}

/// The comparison of what the sink needs with what the table has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub table: String,
    pub prefix: String,
    pub columns: Vec<(Required, ColumnState)>,
    pub key_column: String,
    pub key: KeyState,
}

impl Plan {
    /// Columns provisioning creates.
    pub fn to_create(&self) -> Vec<&Required> {
        self.columns
            .iter()
            .filter(|(_, s)| *s == ColumnState::Missing)
            .map(|(r, _)| r)
            .collect()
    }

    /// What provisioning cannot fix, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .columns
            .iter()
            .filter_map(|(r, s)| match s {
                ColumnState::Unfixable(why) => Some(format!("{} ({}): {why}", r.column, r.setting)),
                ColumnState::WrongType(found) => Some(format!(
                    "{} ({}) is {found}, the sink needs {}",
                    r.column,
                    r.setting,
                    r.kind.describe()
                )),
                _ => None,
            })
            .collect();
        if let KeyState::Exists { schema_name, status } = &self.key
            && status == "Failed"
        {
            out.push(format!(
                "the alternate key {schema_name} failed to build its index (rows share a value of {}?): fix the data, then reactivate it (ReactivateEntityKey) or delete it and run provision again",
                self.key_column
            ));
        }
        out
    }

    /// Whether the sink can run: every column there with a usable type, the key active.
    pub fn ready(&self) -> bool {
        self.columns.iter().all(|(_, s)| *s == ColumnState::Present)
            && matches!(&self.key, KeyState::Exists { status, .. } if status == "Active")
    }

    /// What is missing, for the sink's start-up message.
    pub fn missing(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .columns
            .iter()
            .filter(|(_, s)| *s != ColumnState::Present)
            .map(|(r, s)| match s {
                ColumnState::WrongType(found) => format!(
                    "column {} ({}) has type {found}, needs {}",
                    r.column,
                    r.setting,
                    r.kind.describe()
                ),
                _ => format!("column {} ({})", r.column, r.setting),
            })
            .collect();
        match &self.key {
            KeyState::Missing { .. } => out.push(format!(
                "the alternate key over {} (dataverse.alternate_key)",
                self.key_column
            )),
            KeyState::Exists { schema_name, status } if status != "Active" => out.push(format!(
                "an active alternate key over {} ({schema_name} is {status})",
                self.key_column
            )),
            KeyState::Exists { .. } => {}
        }
        out
    }

    /// The readable table `--check` and `provision` print.
    pub fn render(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            "WHAT".into(),
            "NAME".into(),
            "TYPE / SETTING".into(),
            "STATE".into(),
        ]];
        for (r, s) in &self.columns {
            let state = match s {
                ColumnState::Present => "present".to_string(),
                ColumnState::Missing => "MISSING (provision creates it)".to_string(),
                ColumnState::Unfixable(why) => format!("MISSING ({why})"),
                ColumnState::WrongType(found) => format!("WRONG TYPE ({found})"),
            };
            rows.push([
                "column".into(),
                r.column.clone(),
                format!("{} {}", r.kind.describe(), r.setting),
                state,
            ]);
        }
        let (name, state) = match &self.key {
            KeyState::Missing { schema_name } => {
                (schema_name.clone(), "MISSING (provision creates it)".to_string())
            }
            KeyState::Exists { schema_name, status } if status == "Active" => {
                (schema_name.clone(), "present, Active".into())
            }
            KeyState::Exists { schema_name, status } => {
                (schema_name.clone(), format!("NOT ACTIVE ({status})"))
            }
        };
        rows.push(["key".into(), name, format!("({})", self.key_column), state]);
        let widths: Vec<usize> = (0..3)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "Dataverse table {} (publisher prefix {}_):\n",
            self.table, self.prefix
        );
        for row in rows {
            let _ = writeln!(
                out,
                "  {:w0$}  {:w1$}  {:w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        }
        out
    }
}

/// The publisher prefix in effect: `--publisher-prefix`, else the alternate key column's.
pub fn prefix(config: &SinkConfig, given: Option<&str>) -> anyhow::Result<String> {
    let prefix = match given {
        Some(p) => p.trim().trim_end_matches('_').to_string(),
        None => match config.dataverse.alternate_key.split_once('_') {
            Some((p, rest)) if !p.is_empty() && !rest.is_empty() => p.to_string(),
            _ => anyhow::bail!(
                "dataverse.alternate_key `{}` carries no publisher prefix (like `new_`): pass --publisher-prefix",
                config.dataverse.alternate_key
            ),
        },
    };
    anyhow::ensure!(
        !prefix.is_empty()
            && prefix.chars().all(|c| c.is_ascii_alphanumeric())
            && prefix.starts_with(|c: char| c.is_ascii_alphabetic()),
        "--publisher-prefix `{prefix}` is not a customization prefix (letters and digits, starting with a letter)"
    );
    Ok(prefix)
}

/// Compares what the sink needs with what the table has. Pure.
pub fn plan(required: &[Required], schema: &Schema, key_column: &str, prefix: &str) -> Plan {
    let with_prefix = format!("{prefix}_");
    let columns = required
        .iter()
        .map(|r| {
            let state = match schema.attributes.get(&r.column) {
                Some(found) if r.kind.accepts(found) => ColumnState::Present,
                Some(found) => ColumnState::WrongType(found.clone()),
                None if matches!(r.kind, ColumnKind::Standard(_)) => {
                    ColumnState::Unfixable("a standard column; this table does not have it".into())
                }
                None if !r.column.starts_with(&with_prefix) => ColumnState::Unfixable(format!(
                    "does not carry the publisher prefix `{with_prefix}`, so provision will not create it; fix {} or pass --publisher-prefix",
                    r.setting
                )),
                None => ColumnState::Missing,
            };
            (r.clone(), state)
        })
        .collect();
    let key = schema
        .keys
        .iter()
        .find(|k| k.attributes.len() == 1 && k.attributes[0] == key_column)
        .map_or_else(
            || KeyState::Missing {
                schema_name: format!("{key_column}_key"),
            },
            |k| KeyState::Exists {
                schema_name: k.schema_name.clone(),
                status: k.status.clone(),
            },
        );
    Plan {
        table: schema.logical_name.clone(),
        prefix: prefix.to_string(),
        columns,
        key_column: key_column.to_string(),
        key,
    }
}

fn label(text: &str) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [{
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": text,
            "LanguageCode": 1033
        }]
    })
}

/// The `POST …/Attributes` body that creates `required`, as Microsoft's examples write them.
pub fn column_body(required: &Required) -> Value {
    let (odata_type, type_name) = match required.kind {
        ColumnKind::Text(_) => ("StringAttributeMetadata", "StringType"),
        ColumnKind::Memo(_) => ("MemoAttributeMetadata", "MemoType"),
        ColumnKind::Integer => ("IntegerAttributeMetadata", "IntegerType"),
        ColumnKind::BigInt | ColumnKind::Standard(_) => ("BigIntAttributeMetadata", "BigIntType"),
        ColumnKind::Boolean => ("BooleanAttributeMetadata", "BooleanType"),
    };
    let mut body = json!({
        "@odata.type": format!("Microsoft.Dynamics.CRM.{odata_type}"),
        "AttributeType": required.kind.attribute_type(),
        "AttributeTypeName": { "Value": type_name },
        "SchemaName": required.column,
        "DisplayName": label(&required.label),
        "Description": label(&format!("Written by sink-dataverse ({}).", required.setting)),
        "RequiredLevel": {
            "Value": "None",
            "CanBeChanged": true,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"
        },
    });
    let extra = match required.kind {
        ColumnKind::Text(n) => json!({ "MaxLength": n, "FormatName": { "Value": "Text" } }),
        ColumnKind::Memo(n) => json!({ "MaxLength": n, "Format": "TextArea" }),
        ColumnKind::Integer => json!({ "MinValue": i32::MIN, "MaxValue": i32::MAX, "Format": "None" }),
        ColumnKind::Boolean => json!({
            "DefaultValue": false,
            "OptionSet": {
                "TrueOption": { "Value": 1, "Label": label("Yes") },
                "FalseOption": { "Value": 0, "Label": label("No") },
                "OptionSetType": "Boolean"
            }
        }),
        ColumnKind::BigInt | ColumnKind::Standard(_) => json!({}),
    };
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The `POST …/Keys` body of the alternate key over `column`.
pub fn key_body(schema_name: &str, column: &str) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
        "SchemaName": schema_name,
        "DisplayName": label("Stripe customer id"),
        "KeyAttributes": [column],
    })
}

/// Why the table's definition could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Could not be reached or failed; may clear.
    Unavailable(String),
    /// Refused, or no such table: the configuration is wrong.
    Refused(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Unavailable(m) | ReadError::Refused(m) => f.write_str(m),
        }
    }
}

/// Reads the table's definition (one request).
pub async fn read_schema(transport: &Transport, entity_set: &str) -> Result<Schema, ReadError> {
    let body = transport.fetch(&schema_path(entity_set)).await.map_err(|e| match e {
        ProbeError::Unavailable(m) => ReadError::Unavailable(m),
        ProbeError::Refused(m) => ReadError::Refused(format!(
            "Dataverse refused to read the table definitions (check dataverse.environment_url and the app's credentials): {m}"
        )),
    })?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ReadError::Unavailable(format!("the table definitions are not JSON: {e}")))?;
    parse_schema(&body).ok_or_else(|| {
        ReadError::Refused(format!(
            "no Dataverse table has the entity set name `{entity_set}` (dataverse.table)"
        ))
    })
}

/// The sink's start-up check: transient failures and a key still building are retried; a missing
/// column or key is fatal, with a message naming it.
pub async fn startup_check(transport: &Transport, config: &SinkConfig) -> Result<(), Verdict<String>> {
    let schema = read_schema(transport, &config.dataverse.table)
        .await
        .map_err(|e| match e {
            ReadError::Unavailable(m) => Verdict::Retry(m),
            ReadError::Refused(m) => Verdict::GiveUp(m),
        })?;
    // The prefix only decides what provision would create; any prefix serves the check.
    let prefix = prefix(config, None).unwrap_or_default();
    let plan = plan(
        &requirements(config),
        &schema,
        &config.dataverse.alternate_key,
        &prefix,
    );
    if plan.ready() {
        tracing::info!(table = %plan.table, "Dataverse has every column and an active alternate key");
        return Ok(());
    }
    let columns_fine = plan.columns.iter().all(|(_, s)| *s == ColumnState::Present);
    if let KeyState::Exists { schema_name, status } = &plan.key
        && columns_fine
        && matches!(status.as_str(), "Pending" | "InProgress")
    {
        return Err(Verdict::Retry(format!(
            "the alternate key {schema_name} is {status}: waiting for its index"
        )));
    }
    Err(Verdict::GiveUp(format!(
        "the Dataverse table {} lacks {}; run `sink-dataverse provision` to create them (`sink-dataverse provision --check` lists them)",
        plan.table,
        plan.missing().join(", ")
    )))
}

/// Sends one metadata request, retrying what may clear (throttling, outages) a few times.
async fn send(transport: &Transport, op: Operation) -> anyhow::Result<crate::client::Answer> {
    let mut delay = Duration::from_millis(500);
    for attempt in 1.. {
        match transport.send_one(&op).await {
            Ok(answer) => return Ok(answer),
            Err(e @ (WriteError::Transient { .. } | WriteError::Throttled { .. })) if attempt < 8 => {
                eprintln!(
                    "  {} {} failed ({e}); trying again in {delay:?}",
                    op.method.as_str(),
                    op.path
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(anyhow::anyhow!("{} {}: {e}", op.method.as_str(), op.path)),
        }
    }
    unreachable!("the loop returns")
}

async fn post(transport: &Transport, path: String, body: Value) -> anyhow::Result<()> {
    let op = Operation {
        method: Method::Post,
        path,
        headers: Vec::new(),
        body: Some(body.to_string()),
    };
    let answer = send(transport, op.clone()).await?;
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let error = crate::odata::error_body(&answer.body);
    anyhow::bail!(
        "Dataverse refused POST {} ({} {}): {}",
        op.path,
        answer.status,
        error.code,
        error.message
    )
}

async fn read_until_read(transport: &Transport, entity_set: &str) -> anyhow::Result<Schema> {
    let mut delay = Duration::from_millis(500);
    loop {
        match read_schema(transport, entity_set).await {
            Ok(schema) => return Ok(schema),
            Err(ReadError::Refused(m)) => anyhow::bail!(m),
            Err(ReadError::Unavailable(m)) => {
                eprintln!("  reading the table definition failed ({m}); trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// `sink-dataverse provision [--check]`.
pub async fn run(config: SinkConfig, args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    let connection = crate::connect(&config)?;
    let transport: Arc<Transport> = connection.transport;
    let given = args
        .publisher_prefix
        .clone()
        .or_else(|| config.provision.publisher_prefix.clone());
    let prefix = prefix(&config, given.as_deref())?;
    let poll_interval: Duration = args
        .poll_interval
        .unwrap_or(config.provision.poll_interval)
        .into();
    let timeout: Duration = args.timeout.unwrap_or(config.provision.timeout).into();
    let required = requirements(&config);
    let key_column = config.dataverse.alternate_key.clone();
    let entity_set = config.dataverse.table.clone();
    let schema = read_until_read(&transport, &entity_set).await?;
    let plan = plan(&required, &schema, &key_column, &prefix);
    print!("{}", plan.render());
    if args.check {
        if plan.ready() {
            println!("Nothing missing: the sink can run.");
            return Ok(ExitCode::SUCCESS);
        }
        println!("The sink cannot run: {}.", plan.missing().join(", "));
        println!("Run `sink-dataverse provision` to create what is missing.");
        return Ok(ExitCode::FAILURE);
    }
    let problems = plan.problems();
    if !problems.is_empty() {
        anyhow::bail!(
            "provision cannot fix this, and changed nothing:\n  {}",
            problems.join("\n  ")
        );
    }
    let to_create = plan.to_create();
    let key_missing = matches!(plan.key, KeyState::Missing { .. });
    if to_create.is_empty() && !key_missing && plan.ready() {
        println!("Nothing to change: every column and the alternate key exist, and the key is active.");
        return Ok(ExitCode::SUCCESS);
    }
    let base = format!("EntityDefinitions(LogicalName='{}')", plan.table);
    for required in &to_create {
        post(&transport, format!("{base}/Attributes"), column_body(required))
            .await
            .with_context(|| format!("creating column {}", required.column))?;
        println!(
            "created column {} ({}) for {}",
            required.column,
            required.kind.describe(),
            required.setting
        );
    }
    let key_name = match &plan.key {
        KeyState::Missing { schema_name } => {
            post(
                &transport,
                format!("{base}/Keys"),
                key_body(schema_name, &key_column),
            )
            .await
            .with_context(|| format!("creating alternate key {schema_name}"))?;
            println!(
                "created alternate key {schema_name} ({key_column}); Dataverse builds its index in the background"
            );
            schema_name.clone()
        }
        KeyState::Exists { schema_name, .. } => schema_name.clone(),
    };
    wait_for_key(
        &transport,
        &entity_set,
        &key_column,
        &key_name,
        poll_interval,
        timeout,
    )
    .await?;
    println!("Done: the sink can run.");
    Ok(ExitCode::SUCCESS)
}

/// Polls the key's `EntityKeyIndexStatus` until `Active`, printing each change.
async fn wait_for_key(
    transport: &Transport,
    entity_set: &str,
    key_column: &str,
    key_name: &str,
    poll_interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        let schema = read_until_read(transport, entity_set).await?;
        let status = schema
            .keys
            .iter()
            .find(|k| k.attributes.len() == 1 && k.attributes[0] == key_column)
            .map(|k| k.status.clone())
            .unwrap_or_else(|| "not listed yet".to_string());
        if status != last {
            println!(
                "key {key_name}: {status} ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
            last = status.clone();
        }
        match status.as_str() {
            "Active" => return Ok(()),
            "Failed" => anyhow::bail!(
                "the index of alternate key {key_name} failed to build: rows probably share a value of {key_column}; fix them, then reactivate the key (ReactivateEntityKey) or delete it and run provision again"
            ),
            _ => {}
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the index of alternate key {key_name} is still {status} after {timeout:?} (--timeout); run provision again later, it picks up where it is"
        );
        tokio::time::sleep(poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(attributes: &[(&str, &str)], keys: Vec<KeyInfo>) -> Schema {
        Schema {
            logical_name: "contact".into(),
            attributes: attributes
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            keys,
        }
    }

    fn standard() -> Vec<(&'static str, &'static str)> {
        vec![
            ("emailaddress1", "String"),
            ("firstname", "String"),
            ("lastname", "String"),
            ("telephone1", "String"),
            ("description", "Memo"),
            ("address1_line1", "String"),
            ("address1_line2", "String"),
            ("address1_city", "String"),
            ("address1_stateorprovince", "String"),
            ("address1_postalcode", "String"),
            ("address1_country", "String"),
            ("statecode", "State"),
            ("statuscode", "Status"),
        ]
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        let mut a = standard();
        a.extend([
            ("new_stripecustomerid", "String"),
            ("new_stripeeventcreated", "BigInt"),
            ("new_stripeeventrank", "Integer"),
            ("new_stripeeventids", "String"),
            ("new_stripedeleted", "Boolean"),
        ]);
        a
    }

    fn key(status: &str) -> KeyInfo {
        KeyInfo {
            schema_name: "new_stripecustomerid_key".into(),
            attributes: vec!["new_stripecustomerid".into()],
            status: status.into(),
        }
    }

    fn plan_for(config: &SinkConfig, s: &Schema) -> Plan {
        plan(&requirements(config), s, &config.dataverse.alternate_key, "new")
    }

    #[test]
    fn the_requirements_come_from_the_configuration() {
        let mut config = SinkConfig::default();
        config
            .mapping
            .metadata
            .insert("segment".into(), "new_segment".into());
        config.mapping.description = String::new();
        let required = requirements(&config);
        let find = |c: &str| required.iter().find(|r| r.column == c).cloned();
        assert_eq!(find("new_stripeeventcreated").unwrap().kind, ColumnKind::BigInt);
        assert_eq!(find("new_stripedeleted").unwrap().kind, ColumnKind::Boolean);
        assert_eq!(find("new_stripeeventids").unwrap().kind, ColumnKind::Text(1000));
        assert_eq!(find("new_segment").unwrap().setting, "mapping.metadata.segment");
        assert!(find("statecode").is_some());
        assert!(find("description").is_none(), "an unmapped field needs no column");
        config.dataverse.delete_mode = DeleteMode::Delete;
        assert!(requirements(&config).iter().all(|r| r.column != "statecode"));
    }

    #[test]
    fn a_bare_table_needs_every_sink_column_and_the_key() {
        let config = SinkConfig::default();
        let plan = plan_for(&config, &schema(&standard(), vec![]));
        let created: Vec<&str> = plan.to_create().iter().map(|r| r.column.as_str()).collect();
        assert_eq!(
            created,
            [
                "new_stripecustomerid",
                "new_stripeeventcreated",
                "new_stripeeventrank",
                "new_stripeeventids",
                "new_stripedeleted"
            ]
        );
        assert_eq!(
            plan.key,
            KeyState::Missing {
                schema_name: "new_stripecustomerid_key".into()
            }
        );
        assert!(!plan.ready());
        assert!(plan.problems().is_empty());
        let table = plan.render();
        assert!(
            table.contains("new_stripeeventcreated") && table.contains("MISSING"),
            "{table}"
        );
    }

    #[test]
    fn a_provisioned_table_needs_nothing() {
        let config = SinkConfig::default();
        let plan = plan_for(&config, &schema(&full(), vec![key("Active")]));
        assert!(plan.to_create().is_empty());
        assert!(plan.ready());
        assert!(plan.missing().is_empty());
    }

    #[test]
    fn a_building_key_is_not_ready_and_a_failed_one_is_a_problem() {
        let config = SinkConfig::default();
        let building = plan_for(&config, &schema(&full(), vec![key("InProgress")]));
        assert!(!building.ready());
        assert!(building.to_create().is_empty());
        assert!(building.problems().is_empty());
        assert!(building.missing()[0].contains("InProgress"));
        let failed = plan_for(&config, &schema(&full(), vec![key("Failed")]));
        assert!(failed.problems()[0].contains("failed"), "{:?}", failed.problems());
    }

    #[test]
    fn columns_without_the_prefix_or_of_the_wrong_type_are_problems() {
        let mut config = SinkConfig::default();
        config.mapping.phone = "custom_phone".into();
        let mut attributes = full();
        attributes.retain(|(n, _)| *n != "new_stripeeventcreated");
        attributes.push(("new_stripeeventcreated", "String"));
        let plan = plan_for(&config, &schema(&attributes, vec![key("Active")]));
        let problems = plan.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("custom_phone") && p.contains("`new_`") && p.contains("mapping.phone"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("new_stripeeventcreated") && p.contains("BigInt"))
        );
        assert!(plan.to_create().is_empty());
    }

    #[test]
    fn the_prefix_defaults_to_the_key_columns_and_is_validated() {
        let config = SinkConfig::default();
        assert_eq!(prefix(&config, None).unwrap(), "new");
        assert_eq!(prefix(&config, Some("cr1a2_")).unwrap(), "cr1a2");
        assert!(prefix(&config, Some("1x")).is_err());
        let mut bare = SinkConfig::default();
        bare.dataverse.alternate_key = "stripeid".into();
        assert!(
            prefix(&bare, None)
                .unwrap_err()
                .to_string()
                .contains("--publisher-prefix")
        );
    }

    #[test]
    fn the_schema_answer_is_read() {
        let body = json!({"value": [{
            "LogicalName": "contact",
            "Attributes": [{"LogicalName": "firstname", "AttributeType": "String"}],
            "Keys": [{"SchemaName": "k", "KeyAttributes": ["new_stripecustomerid"], "EntityKeyIndexStatus": "Pending"}]
        }]});
        let s = parse_schema(&body).unwrap();
        assert_eq!(s.attributes["firstname"], "String");
        assert_eq!(s.keys[0].status, "Pending");
        assert!(parse_schema(&json!({"value": []})).is_none());
    }

    #[test]
    fn bodies_follow_microsofts_examples() {
        let boolean = column_body(&own(
            "new_stripedeleted",
            "s",
            ColumnKind::Boolean,
            "Stripe deleted",
        ));
        assert_eq!(
            boolean["@odata.type"],
            "Microsoft.Dynamics.CRM.BooleanAttributeMetadata"
        );
        assert_eq!(boolean["OptionSet"]["TrueOption"]["Value"], 1);
        let text = column_body(&own("new_x", "s", ColumnKind::Text(100), "X"));
        assert_eq!(text["MaxLength"], 100);
        assert_eq!(text["DisplayName"]["LocalizedLabels"][0]["Label"], "X");
        let key = key_body("new_k", "new_x");
        assert_eq!(key["KeyAttributes"], json!(["new_x"]));
    }
}
