//! The registry's state: schemas by id, subjects with their versions, compatibility
//! configuration; and its persistence to one JSON file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::compat::{self, Compatibility, Incompatibility, Previous};
use crate::error::RegistryError;

/// Name of the state file inside the data directory.
pub const STATE_FILE: &str = "schema-registry.json";

/// The largest id or version Confluent hands out (Java `int`).
const MAX_ID: u32 = i32::MAX as u32;

/// The only schema type supported.
pub const AVRO: &str = "AVRO";

/// A schema as submitted, parsed and normalised.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// The text as submitted; returned verbatim by the read endpoints.
    pub text: String,
    pub schema: Arc<Schema>,
    /// Identity of the schema: two submissions with the same key get the same id.
    pub key: String,
}

/// Parse an Avro schema. Errors are 42201.
pub fn parse_avro(text: &str) -> Result<ParsedSchema, RegistryError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(RegistryError::InvalidSchema("(empty)".to_owned()));
    }
    let parsed = std::panic::catch_unwind(|| Schema::parse_str(trimmed));
    let schema = match parsed {
        Ok(Ok(schema)) => schema,
        Ok(Err(err)) => {
            return Err(RegistryError::InvalidSchema(format!("{trimmed}, details: {err}")));
        }
        Err(_) => {
            return Err(RegistryError::InvalidSchema(format!(
                "{trimmed}, details: the schema could not be parsed"
            )));
        }
    };
    let key = identity_key(&schema);
    Ok(ParsedSchema {
        text: text.to_owned(),
        schema: Arc::new(schema),
        key,
    })
}

/// The schema's normalised JSON: whitespace and key order do not matter, but names,
/// field order, defaults, docs, aliases and properties of named types and fields do
/// (like Confluent, which compares Avro's normalised `toString`). Falls back to the
/// Parsing Canonical Form should serialisation ever fail.
fn identity_key(schema: &Schema) -> String {
    serde_json::to_string(schema).unwrap_or_else(|_| schema.canonical_form())
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    Latest,
    Number(u32),
}

impl VersionSel {
    /// `latest`, `-1` or 1..=2^31-1; anything else is 42202.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionSel::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_ID).contains(&n) => Ok(VersionSel::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSchema {
    pub schema: String,
    #[serde(default = "avro_type")]
    pub schema_type: String,
}

fn avro_type() -> String {
    AVRO.to_owned()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionEntry {
    pub version: u32,
    pub id: u32,
    #[serde(default)]
    pub deleted: bool,
}

/// What is written to disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {
    #[serde(default = "format_version")]
    format: u32,
    /// The next id to hand out; ids are never reused.
    next_id: u32,
    /// Set with `PUT /config`; when absent the start-up default applies.
    #[serde(default)]
    global_compatibility: Option<Compatibility>,
    #[serde(default)]
    schemas: BTreeMap<u32, StoredSchema>,
    /// Versions of each subject, ascending.
    #[serde(default)]
    subjects: BTreeMap<String, Vec<VersionEntry>>,
    #[serde(default)]
    subject_compatibility: BTreeMap<String, Compatibility>,
}

fn format_version() -> u32 {
    1
}

impl Default for Data {
    fn default() -> Self {
        Data {
            format: format_version(),
            next_id: 1,
            global_compatibility: None,
            schemas: BTreeMap::new(),
            subjects: BTreeMap::new(),
            subject_compatibility: BTreeMap::new(),
        }
    }
}

/// The state plus indexes derived from it.
#[derive(Debug, Clone)]
pub struct Registry {
    data: Data,
    default_compatibility: Compatibility,
    /// Parsed schemas by id, for compatibility checks.
    parsed: HashMap<u32, Arc<Schema>>,
    /// Identity key -> id.
    by_key: HashMap<String, u32>,
    /// The state file; `None` keeps everything in memory.
    file: Option<PathBuf>,
}

impl Registry {
    pub fn in_memory(default_compatibility: Compatibility) -> Self {
        Registry {
            data: Data::default(),
            default_compatibility,
            parsed: HashMap::new(),
            by_key: HashMap::new(),
            file: None,
        }
    }

    /// Load the state from `dir` (creating the directory if needed).
    pub async fn open(dir: &Path, default_compatibility: Compatibility) -> anyhow::Result<Self> {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        let file = dir.join(STATE_FILE);
        let data = match tokio::fs::read(&file).await {
            Ok(bytes) => serde_json::from_slice::<Data>(&bytes)
                .with_context(|| format!("reading registry state from {}", file.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", file.display()));
            }
        };
        let mut registry = Registry::in_memory(default_compatibility);
        registry.file = Some(file);
        registry.load(data);
        Ok(registry)
    }

    fn load(&mut self, mut data: Data) {
        let max_id = data.schemas.keys().next_back().copied().unwrap_or(0);
        data.next_id = data.next_id.max(max_id.saturating_add(1));
        for versions in data.subjects.values_mut() {
            versions.sort_by_key(|v| v.version);
        }
        for (id, stored) in &data.schemas {
            match parse_avro(&stored.schema) {
                Ok(parsed) => {
                    self.by_key.entry(parsed.key).or_insert(*id);
                    self.parsed.insert(*id, parsed.schema);
                }
                Err(err) => {
                    tracing::warn!(id, error = %err, "stored schema does not parse; it is served but not checked");
                }
            }
        }
        self.data = data;
    }

    /// Write the state file (temporary file, then rename). A no-op in memory.
    pub async fn persist(&self) -> Result<(), RegistryError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.data).map_err(|e| RegistryError::Store(e.to_string()))?;
        let tmp = file.with_extension("json.tmp");
        write_synced(&tmp, &bytes)
            .await
            .map_err(|e| RegistryError::Store(format!("{}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, file)
            .await
            .map_err(|e| RegistryError::Store(format!("{}: {e}", file.display())))?;
        Ok(())
    }

    // ----- configuration -----

    pub fn global_compatibility(&self) -> Compatibility {
        self.data
            .global_compatibility
            .unwrap_or(self.default_compatibility)
    }

    pub fn set_global_compatibility(&mut self, level: Compatibility) {
        self.data.global_compatibility = Some(level);
    }

    /// Back to the start-up default; returns the level that was in force.
    pub fn reset_global_compatibility(&mut self) -> Compatibility {
        let old = self.global_compatibility();
        self.data.global_compatibility = None;
        old
    }

    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.data.subject_compatibility.get(subject).copied()
    }

    pub fn set_subject_compatibility(&mut self, subject: &str, level: Compatibility) {
        self.data.subject_compatibility.insert(subject.to_owned(), level);
    }

    pub fn delete_subject_compatibility(&mut self, subject: &str) -> Result<Compatibility, RegistryError> {
        self.data
            .subject_compatibility
            .remove(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))
    }

    /// The level that applies to `subject`.
    pub fn effective_compatibility(&self, subject: &str) -> Compatibility {
        self.subject_compatibility(subject)
            .unwrap_or_else(|| self.global_compatibility())
    }

    // ----- reads -----

    pub fn schema_by_id(&self, id: u32) -> Result<&StoredSchema, RegistryError> {
        self.data
            .schemas
            .get(&id)
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// Subjects with at least one visible version, sorted.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.data
            .subjects
            .iter()
            .filter(|(_, versions)| versions.iter().any(|v| include_deleted || !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The visible versions of a subject; 40401 when there are none.
    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<VersionEntry>, RegistryError> {
        let visible: Vec<VersionEntry> = self
            .data
            .subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|v| include_deleted || !v.deleted)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if visible.is_empty() {
            Err(RegistryError::SubjectNotFound(subject.to_owned()))
        } else {
            Ok(visible)
        }
    }

    pub fn version(
        &self,
        subject: &str,
        sel: VersionSel,
        include_deleted: bool,
    ) -> Result<VersionEntry, RegistryError> {
        let versions = self.versions(subject, include_deleted)?;
        let found = match sel {
            VersionSel::Latest => versions.last().copied(),
            VersionSel::Number(n) => versions.iter().find(|v| v.version == n).copied(),
        };
        found.ok_or(match sel {
            VersionSel::Number(n) => RegistryError::VersionNotFound(n),
            VersionSel::Latest => RegistryError::SubjectNotFound(subject.to_owned()),
        })
    }

    /// `(subject, version)` pairs that use schema `id`.
    pub fn usages(&self, id: u32, include_deleted: bool) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema_by_id(id)?;
        Ok(self
            .data
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |v| v.id == id && (include_deleted || !v.deleted))
                    .map(move |v| (subject.clone(), v.version))
            })
            .collect())
    }

    /// Whether `schema` is registered under `subject`.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<VersionEntry, RegistryError> {
        let versions = self.versions(subject, include_deleted)?;
        let Some(&id) = self.by_key.get(&schema.key) else {
            return Err(RegistryError::SchemaNotFound);
        };
        versions
            .iter()
            .rev()
            .find(|v| v.id == id)
            .copied()
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// Check `schema` against the subject. With `sel`, against that one version (in the
    /// direction(s) of the subject's level); without, against the live versions the level
    /// calls for (a subject without versions accepts anything).
    pub fn check(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        sel: Option<VersionSel>,
    ) -> Result<Vec<Incompatibility>, RegistryError> {
        let level = self.effective_compatibility(subject);
        match sel {
            Some(sel) => {
                let entry = self.version(subject, sel, false)?;
                let Some(old) = self.parsed.get(&entry.id) else {
                    return Ok(Vec::new());
                };
                let previous = [Previous {
                    version: entry.version,
                    schema: old,
                }];
                Ok(compat::check(level, &schema.schema, &previous))
            }
            None => Ok(self.check_live(subject, level, schema)),
        }
    }

    fn check_live(&self, subject: &str, level: Compatibility, schema: &ParsedSchema) -> Vec<Incompatibility> {
        let Some(versions) = self.data.subjects.get(subject) else {
            return Vec::new();
        };
        let previous: Vec<Previous<'_>> = versions
            .iter()
            .filter(|v| !v.deleted)
            .filter_map(|v| {
                self.parsed.get(&v.id).map(|s| Previous {
                    version: v.version,
                    schema: s,
                })
            })
            .collect();
        compat::check(level, &schema.schema, &previous)
    }

    // ----- writes: each returns whether the state changed -----

    /// Register `schema` under `subject`; returns the id and whether anything changed.
    pub fn register(&mut self, subject: &str, schema: &ParsedSchema) -> Result<(u32, bool), RegistryError> {
        let existing_id = self.by_key.get(&schema.key).copied();
        let versions = self.data.subjects.get(subject);
        if let (Some(id), Some(versions)) = (existing_id, versions)
            && versions.iter().any(|v| v.id == id && !v.deleted)
        {
            return Ok((id, false));
        }
        let level = self.effective_compatibility(subject);
        let problems = self.check_live(subject, level, schema);
        if !problems.is_empty() {
            let old_version = problems.first().map(|p| p.old_version).unwrap_or(0);
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                details: self.details(subject, old_version, level, &problems),
            });
        }
        let next_version = versions
            .and_then(|v| v.iter().map(|e| e.version).max())
            .unwrap_or(0)
            .checked_add(1)
            .filter(|v| *v <= MAX_ID)
            .ok_or(RegistryError::IdsExhausted)?;
        let id = match existing_id {
            Some(id) => id,
            None => {
                let id = self.data.next_id;
                if id == 0 || id > MAX_ID {
                    return Err(RegistryError::IdsExhausted);
                }
                self.data.next_id = id + 1;
                self.data.schemas.insert(
                    id,
                    StoredSchema {
                        schema: schema.text.clone(),
                        schema_type: AVRO.to_owned(),
                    },
                );
                self.parsed.insert(id, Arc::clone(&schema.schema));
                self.by_key.insert(schema.key.clone(), id);
                id
            }
        };
        self.data
            .subjects
            .entry(subject.to_owned())
            .or_default()
            .push(VersionEntry {
                version: next_version,
                id,
                deleted: false,
            });
        Ok((id, true))
    }

    /// Confluent's `details: [...]` text of a 409.
    fn details(
        &self,
        subject: &str,
        old_version: u32,
        level: Compatibility,
        problems: &[Incompatibility],
    ) -> String {
        let old_schema = self
            .data
            .subjects
            .get(subject)
            .and_then(|vs| vs.iter().find(|v| v.version == old_version))
            .and_then(|v| self.data.schemas.get(&v.id))
            .map(|s| s.schema.as_str())
            .unwrap_or("");
        let mut parts: Vec<String> = problems
            .iter()
            .map(|p| {
                format!(
                    "{{errorType:'{}', description:'{}'}}",
                    p.error_type, p.description
                )
            })
            .collect();
        parts.push(format!("{{oldSchemaVersion: {old_version}}}"));
        parts.push(format!("{{oldSchema: '{old_schema}'}}"));
        parts.push(format!("{{compatibility: '{level}'}}"));
        format!("[{}]", parts.join(", "))
    }

    /// `DELETE /subjects/{subject}`; returns the deleted versions.
    pub fn delete_subject(
        &mut self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, bool), RegistryError> {
        let not_found = || RegistryError::SubjectNotFound(subject.to_owned());
        let versions = self.data.subjects.get_mut(subject).ok_or_else(not_found)?;
        if versions.is_empty() {
            return Err(not_found());
        }
        if permanent {
            if versions.iter().any(|v| !v.deleted) {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            let removed = versions.iter().map(|v| v.version).collect();
            self.data.subjects.remove(subject);
            return Ok((removed, true));
        }
        if versions.iter().all(|v| v.deleted) {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
        }
        let mut deleted = Vec::new();
        for v in versions.iter_mut().filter(|v| !v.deleted) {
            v.deleted = true;
            deleted.push(v.version);
        }
        Ok((deleted, true))
    }

    /// `DELETE /subjects/{subject}/versions/{version}`; returns the deleted version.
    pub fn delete_version(
        &mut self,
        subject: &str,
        sel: VersionSel,
        permanent: bool,
    ) -> Result<(u32, bool), RegistryError> {
        // A soft-deleted version is only addressable when deleting permanently.
        let entry = match self.version(subject, sel, permanent) {
            Ok(entry) => entry,
            Err(RegistryError::VersionNotFound(n)) if self.is_soft_deleted(subject, n) => {
                return Err(RegistryError::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version: n,
                });
            }
            Err(err) => return Err(err),
        };
        let Some(versions) = self.data.subjects.get_mut(subject) else {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        };
        if permanent {
            if !entry.deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: entry.version,
                });
            }
            versions.retain(|v| v.version != entry.version);
            if versions.is_empty() {
                self.data.subjects.remove(subject);
            }
            return Ok((entry.version, true));
        }
        match versions.iter_mut().find(|v| v.version == entry.version) {
            Some(v) => {
                v.deleted = true;
                Ok((entry.version, true))
            }
            None => Err(RegistryError::VersionNotFound(entry.version)),
        }
    }

    /// Whether `version` of `subject` exists but is soft-deleted (for 40406 answers).
    pub fn is_soft_deleted(&self, subject: &str, version: u32) -> bool {
        self.data
            .subjects
            .get(subject)
            .is_some_and(|vs| vs.iter().any(|v| v.version == version && v.deleted))
    }
}

async fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = tokio::fs::File::create(path).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> ParsedSchema {
        match parse_avro(s) {
            Ok(p) => p,
            Err(e) => panic!("schema {s} should parse: {e}"),
        }
    }

    #[test]
    fn version_selector() {
        assert_eq!(VersionSel::parse("latest").ok(), Some(VersionSel::Latest));
        assert_eq!(VersionSel::parse("-1").ok(), Some(VersionSel::Latest));
        assert_eq!(VersionSel::parse("7").ok(), Some(VersionSel::Number(7)));
        assert_eq!(
            VersionSel::parse("2147483647").ok(),
            Some(VersionSel::Number(2_147_483_647))
        );
        for bad in ["0", "-2", "abc", "", "2147483648", "1.5"] {
            assert!(
                matches!(VersionSel::parse(bad), Err(RegistryError::InvalidVersion(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn identity_ignores_whitespace_and_key_order_but_not_defaults() {
        let a = parsed(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        let b =
            parsed(r#"{ "fields" : [ { "type" : "int", "name" : "a" } ], "name" : "R", "type" : "record" }"#);
        let c = parsed(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":0}]}"#);
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_eq!(parsed(r#"{"type": "string"}"#).key, parsed(r#""string""#).key);
    }

    #[test]
    fn invalid_schemas_are_42201() {
        for bad in ["", "   ", "{", r#""nosuchtype""#, r#"{"type":"record"}"#, "42"] {
            assert!(
                matches!(parse_avro(bad), Err(RegistryError::InvalidSchema(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn register_dedups_and_versions() {
        let mut r = Registry::in_memory(Compatibility::Backward);
        let s = parsed(r#""string""#);
        assert_eq!(r.register("a", &s).ok(), Some((1, true)));
        assert_eq!(r.register("a", &s).ok(), Some((1, false)));
        assert_eq!(r.register("b", &s).ok(), Some((1, true)));
        r.set_subject_compatibility("a", Compatibility::None);
        let l = parsed(r#""long""#);
        assert_eq!(r.register("a", &l).ok(), Some((2, true)));
        let versions: Vec<u32> = r
            .versions("a", false)
            .map(|v| v.iter().map(|e| e.version).collect())
            .unwrap_or_default();
        assert_eq!(versions, vec![1, 2]);
        // Soft delete then re-register: new version, same id.
        assert!(r.delete_version("a", VersionSel::Number(1), false).is_ok());
        assert_eq!(r.register("a", &s).ok(), Some((1, true)));
        assert_eq!(
            r.version("a", VersionSel::Latest, false).ok(),
            Some(VersionEntry {
                version: 3,
                id: 1,
                deleted: false
            })
        );
    }
}
