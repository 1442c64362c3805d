//! The rows: tables with their alternate-key indexes, row versions, and the write operations (create,
//! update, upsert, delete) with Dataverse's rules. Pure and synchronous: callers hold the store lock for
//! one operation or one whole change set, and undo a failed change set through the [`Undo`] log.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::time::Instant;

use crate::config::{
    AlternateKeyConfig, ColumnConfig, ColumnType, Config, RejectValue, SYSTEM_COLUMNS, TableConfig,
};
use crate::error::ApiError;
use crate::schema::{ColumnMeta, KeyIndexTiming, KeyState, KeyStatus, NewColumn, NewKey};
use crate::values::{Guid, iso_now};

/// One row: its id, row version and column values (every declared column, `null` when unset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Primary key.
    pub id: Guid,
    /// Row version; the `@odata.etag` is `W/"<version>"`.
    pub version: u64,
    /// `createdon`.
    pub created_on: String,
    /// `modifiedon`.
    pub modified_on: String,
    /// Column values by logical name.
    pub values: BTreeMap<String, Value>,
}

impl Row {
    /// The `@odata.etag` value.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// How a request names one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// By primary key.
    Id(Guid),
    /// By an alternate key: its index in the table's keys, and the values in the key's column order.
    Key { key: usize, values: Vec<Value> },
}

/// Conditional headers of a write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// `If-Match`.
    pub if_match: Option<IfMatch>,
    /// `If-None-Match: *`.
    pub if_none_match_any: bool,
}

/// The value of an `If-Match` header.
#[derive(Debug, Clone, PartialEq)]
pub enum IfMatch {
    /// `*`: the row must exist.
    Any,
    /// One or more entity tags; the row's must be among them. Held without `W/` and quotes.
    Etags(Vec<String>),
}

impl IfMatch {
    /// Parses a header value; `None` for an empty value.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        if value == "*" {
            return Some(Self::Any);
        }
        Some(Self::Etags(value.split(',').map(normalize_etag).collect()))
    }
}

/// Strips the weak marker and quotes of an entity tag.
pub fn normalize_etag(tag: &str) -> String {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"').to_owned()
}

/// One entry of a change set's undo log: the row as it was before a write.
#[derive(Debug)]
pub struct Undo {
    set: String,
    id: Guid,
    previous: Option<Row>,
}

/// What a write did, for the answer and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new row.
    Created,
    /// An existing row changed.
    Updated,
}

/// One table: its configuration (with the columns and keys added through the metadata API), rows and
/// alternate-key indexes.
#[derive(Debug)]
pub struct Table {
    /// The table's configuration.
    pub config: TableConfig,
    rows: BTreeMap<Guid, Row>,
    /// Row version → row id: answers change-tracking queries (`versionnumber gt N`) without a
    /// scan of every row.
    by_version: BTreeMap<u64, Guid>,
    /// One index per alternate key: normalised key values → row id. Only an `Active` key's index is
    /// kept; a key still building has an empty one.
    indexes: Vec<HashMap<String, Guid>>,
    /// The metadata of every declared column, by logical name.
    meta: BTreeMap<String, ColumnMeta>,
    /// The state of every alternate key, in `config.alternate_keys` order.
    keys: Vec<KeyState>,
}

impl Table {
    fn new(config: TableConfig) -> Self {
        let indexes = config.alternate_keys.iter().map(|_| HashMap::new()).collect();
        let logical = config.logical_name.clone();
        let meta = config
            .columns
            .keys()
            .map(|c| (c.clone(), ColumnMeta::configured(&logical, c)))
            .collect();
        let keys = config
            .alternate_keys
            .iter()
            .map(|k| KeyState::configured(&logical, &k.name))
            .collect();
        Self {
            config,
            rows: BTreeMap::new(),
            by_version: BTreeMap::new(),
            indexes,
            meta,
            keys,
        }
    }

    /// Whether alternate key `key` can be used (its index is built).
    pub fn key_active(&self, key: usize) -> bool {
        self.keys.get(key).is_some_and(|k| k.status == KeyStatus::Active)
    }

    /// The state of every alternate key, in declaration order.
    pub fn key_states(&self) -> &[KeyState] {
        &self.keys
    }

    /// The metadata of a column: declared, or the primary key or a system column.
    pub fn column_meta(&self, name: &str) -> ColumnMeta {
        self.meta
            .get(name)
            .cloned()
            .unwrap_or_else(|| ColumnMeta::configured(&self.config.logical_name, name))
    }

    /// Every readable column (primary key, declared columns, system columns) with its type.
    pub fn attributes(&self) -> Vec<(String, ColumnType)> {
        let mut out = vec![(self.config.primary_key.clone(), ColumnType::Guid)];
        out.extend(self.config.columns.iter().map(|(n, c)| (n.clone(), c.kind)));
        out.extend(
            SYSTEM_COLUMNS
                .iter()
                .filter_map(|c| self.property_type(c).map(|t| ((*c).to_owned(), t))),
        );
        out
    }

    /// Adds a column (`POST …/Attributes`): every row gets it as `null` (or its default on later
    /// creates). A name the table already has is Dataverse's `DuplicateAttributeSchemaName`.
    pub fn add_column(&mut self, new: NewColumn) -> Result<Guid, ApiError> {
        let name = new.logical_name;
        if self.property_type(&name).is_some() {
            return Err(ApiError::DuplicateAttribute(name));
        }
        for row in self.rows.values_mut() {
            row.values.insert(name.clone(), Value::Null);
        }
        let id = new.meta.id;
        self.config.columns.insert(name.clone(), new.column);
        self.meta.insert(name, new.meta);
        Ok(id)
    }

    /// Adds an alternate key (`POST …/Keys`) in `Pending`; its index is built later by
    /// [`Table::advance_keys`]. Its columns must exist and be of a type a key can hold.
    pub fn add_key(&mut self, new: NewKey, now: Instant) -> Result<Guid, ApiError> {
        let entity = self.config.logical_name.clone();
        for column in &new.columns {
            match self.config.columns.get(column) {
                None => {
                    return Err(ApiError::InvalidArgument(format!(
                        "The key attribute '{column}' does not exist on entity '{entity}'."
                    )));
                }
                Some(c) if !c.kind.can_be_key() || self.config.computed.contains_key(column) => {
                    return Err(ApiError::InvalidArgument(format!(
                        "The attribute '{column}' of entity '{entity}' cannot be part of a key: only text, whole number, decimal, date and time, choice and lookup columns can."
                    )));
                }
                Some(_) => {}
            }
        }
        if self
            .keys
            .iter()
            .any(|k| k.schema_name.eq_ignore_ascii_case(&new.schema_name))
        {
            return Err(ApiError::InvalidArgument(format!(
                "An entity key with the name '{}' already exists on entity '{entity}'.",
                new.schema_name
            )));
        }
        let mut wanted = new.columns.clone();
        wanted.sort();
        if self.config.alternate_keys.iter().any(|k| {
            let mut columns = k.columns.clone();
            columns.sort();
            columns == wanted
        }) {
            return Err(ApiError::InvalidArgument(format!(
                "Entity '{entity}' already has a key with the attributes {}.",
                new.columns.join(",")
            )));
        }
        if self.keys.len() >= 10 {
            return Err(ApiError::InvalidArgument(format!(
                "Entity '{entity}' already has the maximum of 10 keys."
            )));
        }
        let state = KeyState {
            id: Guid::new_random(),
            schema_name: new.schema_name.clone(),
            display_name: new.display_name,
            status: KeyStatus::Pending,
            created: Some(now),
        };
        let id = state.id;
        self.config.alternate_keys.push(AlternateKeyConfig {
            name: new.schema_name,
            columns: new.columns,
        });
        self.indexes.push(HashMap::new());
        self.keys.push(state);
        Ok(id)
    }

    /// Moves every building key's index job on to where it is at `now`. A job that finishes builds
    /// the index; rows sharing key values make it `Failed`, as Dataverse's job fails on them.
    pub fn advance_keys(&mut self, now: Instant, timing: &KeyIndexTiming) {
        for k in 0..self.keys.len() {
            let due = self.keys[k].due(now, timing);
            if due == self.keys[k].status {
                continue;
            }
            if due != KeyStatus::Active {
                self.keys[k].status = due;
                continue;
            }
            let mut index = HashMap::new();
            let mut duplicate = None;
            for row in self.rows.values() {
                if let Some(normalized) = self.key_from_values(k, &row.values)
                    && index.insert(normalized.clone(), row.id).is_some()
                {
                    duplicate = Some(normalized);
                    break;
                }
            }
            if let Some(values) = duplicate {
                tracing::warn!(
                    key = %self.keys[k].schema_name,
                    values = %values.replace('\u{1f}', ","),
                    "alternate key index failed: rows share key values"
                );
                self.keys[k].status = KeyStatus::Failed;
            } else {
                self.indexes[k] = index;
                self.keys[k].status = KeyStatus::Active;
            }
        }
    }

    /// All rows in primary key order.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values()
    }

    /// The rows whose version is at least `floor`, in version order.
    pub fn rows_from_version(&self, floor: u64) -> impl Iterator<Item = &Row> {
        self.by_version
            .range(floor..)
            .filter_map(|(_, id)| self.rows.get(id))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The type of a readable property: a column, the primary key or a system column.
    pub fn property_type(&self, name: &str) -> Option<ColumnType> {
        if name == self.config.primary_key {
            return Some(ColumnType::Guid);
        }
        match name {
            "createdon" | "modifiedon" => Some(ColumnType::DateTime),
            "versionnumber" => Some(ColumnType::BigInt),
            _ => self.config.columns.get(name).map(|c| c.kind),
        }
    }

    /// The value of a readable property of a row.
    pub fn property(&self, row: &Row, name: &str) -> Value {
        if name == self.config.primary_key {
            return Value::String(row.id.to_string());
        }
        match name {
            "createdon" => Value::String(row.created_on.clone()),
            "modifiedon" => Value::String(row.modified_on.clone()),
            "versionnumber" => Value::from(row.version),
            _ => row.values.get(name).cloned().unwrap_or(Value::Null),
        }
    }

    /// The row as the Web API returns it: `@odata.etag`, the selected properties (all when `select` is
    /// `None`) and always the primary key.
    pub fn row_json(&self, row: &Row, select: Option<&[String]>) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("@odata.etag".to_owned(), Value::String(row.etag()));
        match select {
            Some(columns) => {
                for column in columns {
                    out.insert(column.clone(), self.property(row, column));
                }
            }
            None => {
                for column in self.config.columns.keys() {
                    out.insert(column.clone(), self.property(row, column));
                }
                for column in SYSTEM_COLUMNS {
                    out.insert((*column).to_owned(), self.property(row, column));
                }
            }
        }
        out.insert(self.config.primary_key.clone(), Value::String(row.id.to_string()));
        out
    }

    /// Finds a row by primary key or alternate key.
    pub fn find(&self, target: &Target) -> Option<&Row> {
        let id = match target {
            Target::Id(id) => *id,
            Target::Key { key, values } => {
                if !self.key_active(*key) {
                    return None;
                }
                let normalized = self.key_from_target(*key, values)?;
                *self.indexes.get(*key)?.get(&normalized)?
            }
        };
        self.rows.get(&id)
    }

    fn not_found(&self, target: &Target) -> ApiError {
        match target {
            Target::Id(id) => ApiError::RowNotFound {
                entity: self.config.logical_name.clone(),
                id: id.to_string(),
            },
            Target::Key { .. } => ApiError::KeyNotFound {
                entity: self.config.logical_name.clone(),
            },
        }
    }

    fn key_component(&self, column: &str, value: &Value) -> Option<String> {
        let kind = self.config.columns.get(column).map(|c| c.kind)?;
        match value {
            Value::Null => None,
            // Dataverse compares text keys without regard to case (its default collation), and GUIDs
            // are case-insensitive by nature.
            Value::String(s) if kind.is_text() || kind == ColumnType::Guid => Some(s.to_lowercase()),
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.as_i64().map_or_else(|| n.to_string(), |i| i.to_string())),
            other => Some(other.to_string()),
        }
    }

    fn key_from_values(&self, key: usize, values: &BTreeMap<String, Value>) -> Option<String> {
        let columns = &self.config.alternate_keys.get(key)?.columns;
        let parts: Option<Vec<String>> = columns
            .iter()
            .map(|c| self.key_component(c, values.get(c).unwrap_or(&Value::Null)))
            .collect();
        parts.map(|p| p.join("\u{1f}"))
    }

    fn key_from_target(&self, key: usize, values: &[Value]) -> Option<String> {
        let columns = &self.config.alternate_keys.get(key)?.columns;
        let parts: Option<Vec<String>> = columns
            .iter()
            .zip(values)
            .map(|(c, v)| self.key_component(c, v))
            .collect();
        parts.map(|p| p.join("\u{1f}"))
    }

    /// Fails when another row already holds any alternate key value of `values`.
    fn check_unique(&self, values: &BTreeMap<String, Value>, own: Guid) -> Result<(), ApiError> {
        for (k, key) in self.config.alternate_keys.iter().enumerate() {
            if !self.key_active(k) {
                continue;
            }
            let Some(normalized) = self.key_from_values(k, values) else {
                continue;
            };
            if let Some(holder) = self.indexes[k].get(&normalized)
                && *holder != own
            {
                let shown: Vec<String> = key
                    .columns
                    .iter()
                    .map(|c| match values.get(c) {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => "null".to_owned(),
                    })
                    .collect();
                return Err(ApiError::DuplicateKey {
                    key: key.name.clone(),
                    values: shown.join(","),
                });
            }
        }
        Ok(())
    }

    fn insert_row(&mut self, row: Row) {
        for k in 0..self.indexes.len() {
            if !self.key_active(k) {
                continue;
            }
            if let Some(normalized) = self.key_from_values(k, &row.values) {
                self.indexes[k].insert(normalized, row.id);
            }
        }
        self.by_version.insert(row.version, row.id);
        self.rows.insert(row.id, row);
    }

    fn remove_row(&mut self, id: Guid) -> Option<Row> {
        let row = self.rows.remove(&id)?;
        if self.by_version.get(&row.version) == Some(&id) {
            self.by_version.remove(&row.version);
        }
        for k in 0..self.indexes.len() {
            if !self.key_active(k) {
                continue;
            }
            if let Some(normalized) = self.key_from_values(k, &row.values)
                && self.indexes[k].get(&normalized) == Some(&id)
            {
                self.indexes[k].remove(&normalized);
            }
        }
        Some(row)
    }

    /// Checks a request body against the columns and returns the values to write. Annotations
    /// (`@odata.*`) are skipped; the primary key, system and computed columns are read-only here.
    fn writable_values(&self, body: Map<String, Value>) -> Result<BTreeMap<String, Value>, ApiError> {
        let mut out = BTreeMap::new();
        for (name, value) in body {
            if name.starts_with('@') || name == self.config.primary_key {
                continue;
            }
            if name.contains('@') {
                return Err(ApiError::NotSupported(format!(
                    "The annotation '{name}' (lookups and @odata.bind)"
                )));
            }
            if SYSTEM_COLUMNS.contains(&name.as_str()) || self.config.computed.contains_key(&name) {
                continue;
            }
            let Some(column) = self.config.columns.get(&name) else {
                return Err(ApiError::UnknownColumn {
                    entity: self.config.logical_name.clone(),
                    column: name,
                });
            };
            check_value(&self.config.logical_name, &name, column, &value)?;
            out.insert(name, value);
        }
        Ok(out)
    }

    fn recompute(&self, values: &mut BTreeMap<String, Value>) {
        for (name, sources) in &self.config.computed {
            let parts: Vec<&str> = sources
                .iter()
                .filter_map(|s| values.get(s).and_then(Value::as_str))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let value = if parts.is_empty() {
                Value::Null
            } else {
                Value::String(parts.join(" "))
            };
            values.insert(name.clone(), value);
        }
    }

    fn initial_values(&self) -> BTreeMap<String, Value> {
        self.config
            .columns
            .iter()
            .map(|(name, column)| (name.clone(), column.default.clone().unwrap_or(Value::Null)))
            .collect()
    }
}

fn check_value(entity: &str, name: &str, column: &ColumnConfig, value: &Value) -> Result<(), ApiError> {
    if column.check_value_type(value).is_err() {
        let shown = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Err(ApiError::WrongType {
            column: name.to_owned(),
            value: shown,
            edm: column.kind.edm(),
        });
    }
    if let Value::String(text) = value {
        let max = column.effective_max_length();
        if column.kind.is_text() && text.chars().count() > max {
            return Err(ApiError::Validation(format!(
                "The length of the '{name}' attribute of the '{entity}' entity exceeded the maximum allowed length of '{max}'."
            )));
        }
    }
    if let (Some(options), Some(number)) = (&column.options, value.as_i64())
        && !options.contains(&number)
    {
        let accepted: Vec<String> = options.iter().map(i64::to_string).collect();
        return Err(ApiError::Validation(format!(
            "The value {number} of '{name}' on record of type '{entity}' is outside the valid range. Accepted Values: {}",
            accepted.join(",")
        )));
    }
    Ok(())
}

/// All tables and the row version counter.
#[derive(Debug)]
pub struct Store {
    tables: BTreeMap<String, Table>,
    /// Last row version handed out; shared by all tables, like SQL Server's rowversion.
    version: u64,
    /// Business rules refusing values (the `reject_values` fault), checked on every create and
    /// upsert.
    rejections: Vec<RejectValue>,
    /// How long a new alternate key's index job takes.
    timing: KeyIndexTiming,
}

/// A persisted copy of the rows and of the definitions the metadata API added.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// The row version counter.
    pub version: u64,
    /// Rows by entity set.
    pub tables: BTreeMap<String, Vec<Row>>,
    /// Columns and keys by entity set, so what was created through the API survives a restart.
    #[serde(default)]
    pub definitions: BTreeMap<String, TableDefinitions>,
}

/// A table's columns and keys with their metadata.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TableDefinitions {
    /// Every declared column, its configuration and metadata.
    pub columns: BTreeMap<String, (ColumnConfig, ColumnMeta)>,
    /// Every alternate key and its state.
    pub keys: Vec<(AlternateKeyConfig, KeyState)>,
}

#[derive(Serialize)]
struct StoreSnapshotRef<'a> {
    version: u64,
    tables: BTreeMap<&'a str, Vec<&'a Row>>,
    definitions: BTreeMap<&'a str, TableDefinitions>,
}

impl Store {
    /// Empty tables as configured.
    pub fn new(config: &Config) -> Self {
        let tables = config
            .tables
            .iter()
            .map(|t| (t.entity_set.clone(), Table::new(t.clone())))
            .collect();
        Self {
            tables,
            version: 1000,
            rejections: config.faults.reject_values.clone(),
            timing: KeyIndexTiming {
                pending: std::time::Duration::from_millis(config.key_index.pending_ms),
                build: std::time::Duration::from_millis(config.key_index.build_ms),
            },
        }
    }

    /// The table whose entity has this logical name (`contact` → `contacts`).
    pub fn table_by_logical_name(&self, logical: &str) -> Option<&Table> {
        self.tables.values().find(|t| t.config.logical_name == logical)
    }

    /// The table whose entity has this logical name, for a metadata change.
    pub fn table_by_logical_name_mut(&mut self, logical: &str) -> Option<&mut Table> {
        self.tables
            .values_mut()
            .find(|t| t.config.logical_name == logical)
    }

    /// Moves every key's index job on to `now`.
    pub fn advance_keys(&mut self, now: Instant) {
        let timing = self.timing;
        for table in self.tables.values_mut() {
            table.advance_keys(now, &timing);
        }
    }

    /// Replaces the business rules that refuse values.
    pub fn set_rejections(&mut self, rules: Vec<RejectValue>) {
        self.rejections = rules;
    }

    /// The refusal of the first rule `body` breaks on `set`, if any.
    fn check_rejections(&self, set: &str, body: &Map<String, Value>) -> Result<(), ApiError> {
        for rule in &self.rejections {
            if rule.entity_set.as_deref().is_some_and(|s| s != set) {
                continue;
            }
            let Some(Value::String(text)) = body.get(&rule.column) else {
                continue;
            };
            if text.to_lowercase().contains(&rule.contains.to_lowercase()) {
                return Err(ApiError::PluginRejected(rule.message.clone().unwrap_or_else(
                    || format!("The value of '{}' is not accepted.", rule.column),
                )));
            }
        }
        Ok(())
    }

    /// The table behind an entity set name.
    pub fn table(&self, set: &str) -> Result<&Table, ApiError> {
        self.tables
            .get(set)
            .ok_or_else(|| ApiError::ResourceNotFound(set.to_owned()))
    }

    /// Entity set names.
    pub fn entity_sets(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    fn parts_mut(&mut self, set: &str) -> Result<(&mut Table, &mut u64), ApiError> {
        let table = self
            .tables
            .get_mut(set)
            .ok_or_else(|| ApiError::ResourceNotFound(set.to_owned()))?;
        Ok((table, &mut self.version))
    }

    /// Creates a row (`POST`). The body may carry the primary key to choose the id.
    pub fn create(
        &mut self,
        set: &str,
        body: Map<String, Value>,
        undo: &mut Vec<Undo>,
    ) -> Result<Guid, ApiError> {
        self.check_rejections(set, &body)?;
        let (table, version) = self.parts_mut(set)?;
        let id = match body.get(&table.config.primary_key) {
            None | Some(Value::Null) => Guid::new_random(),
            Some(Value::String(s)) => Guid::parse(s).ok_or_else(|| ApiError::WrongType {
                column: table.config.primary_key.clone(),
                value: s.clone(),
                edm: "Edm.Guid",
            })?,
            Some(other) => {
                return Err(ApiError::WrongType {
                    column: table.config.primary_key.clone(),
                    value: other.to_string(),
                    edm: "Edm.Guid",
                });
            }
        };
        if table.rows.contains_key(&id) {
            return Err(ApiError::DuplicateId);
        }
        let written = table.writable_values(body)?;
        insert_new(table, version, set, id, written, undo)?;
        Ok(id)
    }

    /// `PATCH`: update when the row exists, create otherwise, under the conditional headers' rules.
    /// With an alternate key, the key values in the URL fill the new row (unless the body sets them)
    /// and are never changed on an existing row.
    pub fn upsert(
        &mut self,
        set: &str,
        target: &Target,
        body: Map<String, Value>,
        conditions: &Conditions,
        undo: &mut Vec<Undo>,
    ) -> Result<(Guid, WriteOutcome), ApiError> {
        self.check_rejections(set, &body)?;
        let (table, version) = self.parts_mut(set)?;
        let existing = table.find(target).cloned();
        check_conditions(table, target, existing.as_ref(), conditions)?;
        let mut written = table.writable_values(body)?;
        match existing {
            Some(row) => {
                if let Target::Key { key, .. } = target {
                    for column in &table.config.alternate_keys[*key].columns {
                        written.remove(column);
                    }
                }
                let mut values = row.values.clone();
                values.extend(written);
                table.recompute(&mut values);
                table.check_unique(&values, row.id)?;
                *version += 1;
                let updated = Row {
                    id: row.id,
                    version: *version,
                    created_on: row.created_on.clone(),
                    modified_on: iso_now(),
                    values,
                };
                table.remove_row(row.id);
                table.insert_row(updated);
                undo.push(Undo {
                    set: set.to_owned(),
                    id: row.id,
                    previous: Some(row.clone()),
                });
                Ok((row.id, WriteOutcome::Updated))
            }
            None => {
                let id = match target {
                    Target::Id(id) => *id,
                    Target::Key { key, values } => {
                        let columns = table.config.alternate_keys[*key].columns.clone();
                        for (column, value) in columns.into_iter().zip(values.iter()) {
                            written.entry(column).or_insert_with(|| value.clone());
                        }
                        Guid::new_random()
                    }
                };
                insert_new(table, version, set, id, written, undo)?;
                Ok((id, WriteOutcome::Created))
            }
        }
    }

    /// `DELETE`: removes the row, honouring `If-Match: <etag>`.
    pub fn delete(
        &mut self,
        set: &str,
        target: &Target,
        conditions: &Conditions,
        undo: &mut Vec<Undo>,
    ) -> Result<Guid, ApiError> {
        let (table, _) = self.parts_mut(set)?;
        let existing = table.find(target).cloned();
        let Some(row) = existing else {
            return Err(table.not_found(target));
        };
        check_conditions(table, target, Some(&row), conditions)?;
        table.remove_row(row.id);
        let id = row.id;
        undo.push(Undo {
            set: set.to_owned(),
            id,
            previous: Some(row),
        });
        Ok(id)
    }

    /// The row a target names, or the Web API's 404.
    pub fn retrieve(&self, set: &str, target: &Target) -> Result<&Row, ApiError> {
        let table = self.table(set)?;
        table.find(target).ok_or_else(|| table.not_found(target))
    }

    /// Reverts writes, newest first: how a failed change set leaves no trace.
    pub fn rollback(&mut self, undo: Vec<Undo>) {
        for entry in undo.into_iter().rev() {
            if let Some(table) = self.tables.get_mut(&entry.set) {
                table.remove_row(entry.id);
                if let Some(previous) = entry.previous {
                    table.insert_row(previous);
                }
            }
        }
    }

    /// Removes every row (the version counter keeps counting, so etags never repeat).
    /// Column and key definitions stay as they are.
    pub fn clear(&mut self) {
        for table in self.tables.values_mut() {
            table.rows.clear();
            table.by_version.clear();
            for index in &mut table.indexes {
                index.clear();
            }
        }
    }

    /// Serialises all rows for the snapshot file.
    pub fn snapshot_json(&self) -> serde_json::Value {
        let snapshot = StoreSnapshotRef {
            version: self.version,
            tables: self
                .tables
                .iter()
                .map(|(set, t)| (set.as_str(), t.rows.values().collect()))
                .collect(),
            definitions: self
                .tables
                .iter()
                .map(|(set, t)| {
                    let columns = t
                        .config
                        .columns
                        .iter()
                        .map(|(name, c)| (name.clone(), (c.clone(), t.column_meta(name))))
                        .collect();
                    let keys = t
                        .config
                        .alternate_keys
                        .iter()
                        .cloned()
                        .zip(t.keys.iter().cloned())
                        .collect();
                    (set.as_str(), TableDefinitions { columns, keys })
                })
                .collect(),
        };
        serde_json::to_value(&snapshot).unwrap_or(Value::Null)
    }

    /// Loads rows from a snapshot. Columns no longer configured are dropped, new columns start as
    /// `null`, tables no longer configured are skipped; a key conflict is an error.
    /// Columns and keys the metadata API added come back first (a key whose index was still building
    /// starts its job again).
    pub fn restore(&mut self, snapshot: StoreSnapshot) -> anyhow::Result<()> {
        let mut version = snapshot.version;
        for (set, definitions) in snapshot.definitions {
            let Some(table) = self.tables.get_mut(&set) else {
                continue;
            };
            for (name, (column, meta)) in definitions.columns {
                if !table.config.columns.contains_key(&name) {
                    table.config.columns.insert(name.clone(), column);
                }
                table.meta.insert(name, meta);
            }
            for (key, mut state) in definitions.keys {
                if let Some(k) = table
                    .config
                    .alternate_keys
                    .iter()
                    .position(|c| c.name == key.name)
                {
                    table.keys[k].id = state.id;
                    continue;
                }
                if key.columns.iter().any(|c| !table.config.columns.contains_key(c)) {
                    continue;
                }
                if matches!(state.status, KeyStatus::Pending | KeyStatus::InProgress) {
                    state.status = KeyStatus::Pending;
                    state.created = Some(Instant::now());
                }
                table.config.alternate_keys.push(key);
                table.indexes.push(HashMap::new());
                table.keys.push(state);
            }
        }
        for (set, rows) in snapshot.tables {
            let Some(table) = self.tables.get_mut(&set) else {
                tracing::warn!(entity_set = %set, "snapshot table is not configured; skipped");
                continue;
            };
            for mut row in rows {
                let known: BTreeMap<String, Value> = table
                    .config
                    .columns
                    .keys()
                    .map(|c| (c.clone(), row.values.remove(c).unwrap_or(Value::Null)))
                    .collect();
                row.values = known;
                table
                    .check_unique(&row.values, row.id)
                    .map_err(|e| anyhow::anyhow!("snapshot table {set}: {e}"))?;
                version = version.max(row.version);
                table.insert_row(row);
            }
        }
        self.version = version;
        Ok(())
    }
}

fn insert_new(
    table: &mut Table,
    version: &mut u64,
    set: &str,
    id: Guid,
    written: BTreeMap<String, Value>,
    undo: &mut Vec<Undo>,
) -> Result<(), ApiError> {
    let mut values = table.initial_values();
    values.extend(written);
    table.recompute(&mut values);
    table.check_unique(&values, id)?;
    *version += 1;
    let now = iso_now();
    table.insert_row(Row {
        id,
        version: *version,
        created_on: now.clone(),
        modified_on: now,
        values,
    });
    undo.push(Undo {
        set: set.to_owned(),
        id,
        previous: None,
    });
    Ok(())
}

fn check_conditions(
    table: &Table,
    target: &Target,
    existing: Option<&Row>,
    conditions: &Conditions,
) -> Result<(), ApiError> {
    match (&conditions.if_match, existing) {
        (Some(_), None) => return Err(table.not_found(target)),
        (Some(IfMatch::Etags(tags)), Some(row)) => {
            let current = row.version.to_string();
            if !tags.iter().any(|t| t == "*" || *t == current) {
                return Err(ApiError::VersionMismatch);
            }
        }
        _ => {}
    }
    if conditions.if_none_match_any && existing.is_some() {
        return Err(ApiError::AlreadyExists);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> Store {
        Store::new(&Config::default())
    }

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn key(value: &str) -> Target {
        Target::Key {
            key: 0,
            values: vec![Value::String(value.to_owned())],
        }
    }

    #[test]
    fn upsert_creates_then_updates_and_fullname_follows() {
        let mut s = store();
        let mut undo = Vec::new();
        let (id, outcome) = s
            .upsert(
                "contacts",
                &key("cus_1"),
                body(json!({"firstname":"Ada"})),
                &Conditions::default(),
                &mut undo,
            )
            .expect("create");
        assert_eq!(outcome, WriteOutcome::Created);
        let row = s.retrieve("contacts", &Target::Id(id)).expect("row").clone();
        assert_eq!(row.values["new_stripecustomerid"], "cus_1");
        assert_eq!(row.values["fullname"], "Ada");
        assert_eq!(row.values["statecode"], 0);
        let (id2, outcome) = s
            .upsert(
                "contacts",
                &key("CUS_1"),
                body(json!({"lastname":"Lovelace","new_stripecustomerid":"other"})),
                &Conditions::default(),
                &mut undo,
            )
            .expect("update");
        assert_eq!(
            (id2, outcome),
            (id, WriteOutcome::Updated),
            "text keys ignore case"
        );
        let updated = s.retrieve("contacts", &key("cus_1")).expect("row");
        assert_eq!(updated.values["fullname"], "Ada Lovelace");
        assert_eq!(
            updated.values["new_stripecustomerid"], "cus_1",
            "key columns are not changed by upsert"
        );
        assert!(updated.version > row.version);
    }

    #[test]
    fn conditions_follow_the_documented_rules() {
        let mut s = store();
        let mut undo = Vec::new();
        let update_only = Conditions {
            if_match: Some(IfMatch::Any),
            if_none_match_any: false,
        };
        let create_only = Conditions {
            if_match: None,
            if_none_match_any: true,
        };
        let err = s
            .upsert("contacts", &key("a"), Map::new(), &update_only, &mut undo)
            .expect_err("missing");
        assert!(matches!(err, ApiError::KeyNotFound { .. }));
        s.upsert("contacts", &key("a"), Map::new(), &create_only, &mut undo)
            .expect("created");
        let err = s
            .upsert("contacts", &key("a"), Map::new(), &create_only, &mut undo)
            .expect_err("exists");
        assert!(matches!(err, ApiError::AlreadyExists));
        let row = s.retrieve("contacts", &key("a")).expect("row").clone();
        let exact = Conditions {
            if_match: IfMatch::parse(&row.etag()),
            if_none_match_any: false,
        };
        s.upsert("contacts", &key("a"), Map::new(), &exact, &mut undo)
            .expect("etag matches");
        let err = s
            .upsert("contacts", &key("a"), Map::new(), &exact, &mut undo)
            .expect_err("stale");
        assert!(matches!(err, ApiError::VersionMismatch));
        let err = s
            .delete("contacts", &key("a"), &exact, &mut undo)
            .expect_err("stale delete");
        assert!(matches!(err, ApiError::VersionMismatch));
        s.delete("contacts", &key("a"), &Conditions::default(), &mut undo)
            .expect("deleted");
        let err = s
            .delete("contacts", &key("a"), &Conditions::default(), &mut undo)
            .expect_err("gone");
        assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn alternate_keys_are_unique_and_rollback_restores_everything() {
        let mut s = store();
        let mut undo = Vec::new();
        let a = s
            .create(
                "contacts",
                body(json!({"new_stripecustomerid":"cus_a"})),
                &mut undo,
            )
            .expect("a");
        let before = s.retrieve("contacts", &Target::Id(a)).expect("a").clone();
        let err = s
            .create(
                "contacts",
                body(json!({"new_stripecustomerid":"CUS_A"})),
                &mut undo,
            )
            .expect_err("duplicate");
        assert!(matches!(err, ApiError::DuplicateKey { .. }), "{err:?}");

        let mut changeset = Vec::new();
        s.create(
            "contacts",
            body(json!({"new_stripecustomerid":"cus_b"})),
            &mut changeset,
        )
        .expect("b");
        s.upsert(
            "contacts",
            &Target::Id(a),
            body(json!({"firstname":"changed"})),
            &Conditions::default(),
            &mut changeset,
        )
        .expect("update a");
        s.delete("contacts", &Target::Id(a), &Conditions::default(), &mut changeset)
            .expect("delete a");
        s.rollback(changeset);
        assert_eq!(s.table("contacts").expect("table").len(), 1);
        assert_eq!(s.retrieve("contacts", &key("cus_a")).expect("a back"), &before);
        assert!(
            s.retrieve("contacts", &key("cus_b")).is_err(),
            "b rolled back with its index entry"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_clear_errors() {
        let mut s = store();
        let mut undo = Vec::new();
        let cases = [
            (json!({"nope": 1}), "0x80048d19", "nope"),
            (json!({"new_stripeeventcreated": "x"}), "0x80048d19", "Edm.Int64"),
            (json!({"new_stripeeventcreated": 1.5}), "0x80048d19", "Edm.Int64"),
            (
                json!({"statecode": 99_999_999_999_i64}),
                "0x80048d19",
                "Edm.Int32",
            ),
            (json!({"new_stripedeleted": "yes"}), "0x80048d19", "Edm.Boolean"),
            (
                json!({"firstname": "x".repeat(51)}),
                "0x80044331",
                "maximum allowed length of '50'",
            ),
            (json!({"statuscode": 7}), "0x80044331", "outside the valid range"),
        ];
        for (input, code, needle) in cases {
            let err = s
                .create("contacts", body(input.clone()), &mut undo)
                .expect_err("rejected");
            let response = err.render();
            let value: Value = serde_json::from_slice(&response.body).expect("json");
            assert_eq!(value["error"]["code"], code, "{input}");
            assert!(
                value["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle)),
                "{input}: {value}"
            );
        }
        assert_eq!(s.table("contacts").expect("table").len(), 0);
    }

    #[test]
    fn a_value_rule_refuses_matching_writes_until_it_is_removed() {
        let mut s = store();
        let mut undo = Vec::new();
        s.set_rejections(vec![RejectValue {
            entity_set: Some("contacts".into()),
            column: "emailaddress1".into(),
            contains: "@blocked.example".into(),
            message: Some("Email domain blocked.example is not allowed.".into()),
        }]);
        let blocked = json!({"emailaddress1": "ada@BLOCKED.example"});
        for attempt in [
            s.create("contacts", body(blocked.clone()), &mut undo).map(|_| ()),
            s.upsert(
                "contacts",
                &key("cus_1"),
                body(blocked.clone()),
                &Conditions::default(),
                &mut undo,
            )
            .map(|_| ()),
        ] {
            let response = attempt.expect_err("refused").render();
            assert_eq!(response.status, http::StatusCode::BAD_REQUEST);
            let value: Value = serde_json::from_slice(&response.body).expect("json");
            assert_eq!(value["error"]["code"], "0x80040265");
            assert_eq!(
                value["error"]["message"],
                "Email domain blocked.example is not allowed."
            );
        }
        // Other values pass; so does the refused one once the rule is gone.
        s.create(
            "contacts",
            body(json!({"emailaddress1": "grace@example.com"})),
            &mut undo,
        )
        .expect("accepted");
        s.set_rejections(Vec::new());
        s.upsert(
            "contacts",
            &key("cus_1"),
            body(blocked),
            &Conditions::default(),
            &mut undo,
        )
        .expect("accepted after the rule is removed");
        assert_eq!(s.table("contacts").expect("table").len(), 2);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut s = store();
        let mut undo = Vec::new();
        let id = s
            .create(
                "contacts",
                body(json!({"new_stripecustomerid":"cus_x"})),
                &mut undo,
            )
            .expect("x");
        let json = s.snapshot_json();
        let snapshot: StoreSnapshot = serde_json::from_value(json).expect("snapshot");
        let mut restored = store();
        restored.restore(snapshot).expect("restore");
        assert_eq!(restored.retrieve("contacts", &key("cus_x")).expect("row").id, id);
        let next = restored.create("contacts", Map::new(), &mut undo).expect("y");
        assert!(
            restored
                .retrieve("contacts", &Target::Id(next))
                .expect("y")
                .version
                > 1001
        );
    }

    #[test]
    fn columns_and_keys_created_at_run_time_survive_a_snapshot() {
        let config = Config {
            tables: vec![TableConfig::bare_contacts()],
            ..Config::default()
        };
        let mut s = Store::new(&config);
        let table = s.table_by_logical_name_mut("contact").expect("contact");
        let column = crate::schema::parse_new_column(&body(json!({
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "new_Code",
            "DisplayName": {"LocalizedLabels": [{"Label": "Code", "LanguageCode": 1033}]},
        })))
        .expect("column");
        table.add_column(column).expect("added");
        let long_ago = Instant::now() - std::time::Duration::from_secs(60);
        table
            .add_key(
                NewKey {
                    schema_name: "new_code_key".into(),
                    display_name: "Code".into(),
                    columns: vec!["new_code".into()],
                },
                long_ago,
            )
            .expect("key");
        s.advance_keys(Instant::now());
        let mut undo = Vec::new();
        s.create("contacts", body(json!({"new_code": "a1"})), &mut undo)
            .expect("row");
        let snapshot: StoreSnapshot = serde_json::from_value(s.snapshot_json()).expect("snapshot");
        let mut restored = Store::new(&config);
        restored.restore(snapshot).expect("restore");
        let table = restored.table("contacts").expect("table");
        assert_eq!(table.column_meta("new_code").schema_name, "new_Code");
        assert!(table.key_active(0), "{:?}", table.key_states());
        let row = restored
            .retrieve(
                "contacts",
                &Target::Key {
                    key: 0,
                    values: vec![json!("A1")],
                },
            )
            .expect("found by the restored key");
        assert_eq!(row.values["new_code"], "a1");
    }
}
