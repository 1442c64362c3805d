//! The bulk operation messages bound to an entity set: `CreateMultiple`, `UpdateMultiple` and
//! `UpsertMultiple` (`POST contacts/Microsoft.Dynamics.CRM.CreateMultiple` with `{"Targets":[…]}`).
//! As on a standard Dataverse table they are one transaction: any failing record fails the whole
//! request and the caller rolls back what the earlier records wrote.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::odata::{self, BulkAction, Resource};
use crate::store::{Conditions, IfMatch, Store, Table, Target, Undo, WriteOutcome};
use crate::values::Guid;

/// What a bulk action did.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    /// Ids of the rows created (`CreateMultiple` answers them).
    pub ids: Vec<Guid>,
    /// Rows created.
    pub created: u64,
    /// Rows updated.
    pub updated: u64,
}

/// Runs a bulk action against `set` with the parsed request body. Writes record their undo entries.
pub fn run(
    store: &mut Store,
    set: &str,
    action: BulkAction,
    body: Map<String, Value>,
    undo: &mut Vec<Undo>,
) -> Result<BulkOutcome, ApiError> {
    let targets = targets(store.table(set)?, action, body)?;
    let mut outcome = BulkOutcome::default();
    // For duplicate detection: the row (UpdateMultiple) or key (UpsertMultiple) of each item so far.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, item) in targets.into_iter().enumerate() {
        let table = store.table(set)?;
        let target = resolve_target(store, table, set, &item)?;
        match action {
            BulkAction::Create => {
                let id = store.create(set, item, undo)?;
                outcome.ids.push(id);
                outcome.created += 1;
            }
            BulkAction::Update => {
                let Some(target) = target else {
                    return Err(ApiError::InvalidArgument(
                        "Entity Id must be specified for Update".to_owned(),
                    ));
                };
                // A missing row fails like `PATCH` with `If-Match: *`; a row already updated by an
                // earlier item is left alone, as documented.
                if let Some(row) = table.find(&target)
                    && seen.insert(row.id.to_string(), index).is_some()
                {
                    continue;
                }
                let conditions = Conditions {
                    if_match: Some(IfMatch::Any),
                    if_none_match_any: false,
                };
                store.upsert(set, &target, item, &conditions, undo)?;
                outcome.updated += 1;
            }
            BulkAction::Upsert => {
                let Some(target) = target else {
                    outcome.ids.push(store.create(set, item, undo)?);
                    outcome.created += 1;
                    continue;
                };
                if let Some(first) = seen.insert(describe(&target), index) {
                    return Err(ApiError::InvalidArgument(format!(
                        "Multiple records with the same primary key or alternate key values are not supported with UpsertMultiple: Targets[{index}] has the key of Targets[{first}]."
                    )));
                }
                let (id, written) = store.upsert(set, &target, item, &Conditions::default(), undo)?;
                match written {
                    WriteOutcome::Created => {
                        outcome.ids.push(id);
                        outcome.created += 1;
                    }
                    WriteOutcome::Updated => outcome.updated += 1,
                }
            }
        }
    }
    Ok(outcome)
}

/// Checks the action's parameters and the `@odata.type` of every record; returns the records.
fn targets(
    table: &Table,
    action: BulkAction,
    mut body: Map<String, Value>,
) -> Result<Vec<Map<String, Value>>, ApiError> {
    let logical = &table.config.logical_name;
    if let Some(name) = body.keys().find(|k| *k != "Targets" && !k.starts_with('@')) {
        return Err(ApiError::MalformedBody(format!(
            "The parameter '{name}' in the request payload is not a valid parameter for the operation '{}'.",
            action.name()
        )));
    }
    let targets = match body.remove("Targets") {
        None | Some(Value::Null) => {
            return Err(ApiError::InvalidArgument(
                "Required field 'Targets' is missing".to_owned(),
            ));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::MalformedBody(format!(
                "Error identified in Payload provided by the user for Entity :'{logical}'. The parameter 'Targets' must be a collection of {logical} records."
            )));
        }
    };
    if targets.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "The 'Targets' collection of {} is empty; send at least one record.",
            action.name()
        )));
    }
    let expected = format!("Microsoft.Dynamics.CRM.{logical}");
    targets
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(item) = item else {
                return Err(ApiError::MalformedBody(format!(
                    "Error identified in Payload provided by the user for Entity :'{logical}'. Targets[{i}] is not a JSON object."
                )));
            };
            match item.get("@odata.type").and_then(Value::as_str) {
                Some(kind) if kind.trim_start_matches('#') == expected => Ok(item),
                Some(kind) => Err(ApiError::MalformedBody(format!(
                    "Error identified in Payload provided by the user for Entity :'{logical}'. Targets[{i}] has @odata.type '{kind}'; every record of {} on '{}' must be of type '{expected}'.",
                    action.name(),
                    table.config.entity_set
                ))),
                None => Err(ApiError::MalformedBody(format!(
                    "Error identified in Payload provided by the user for Entity :'{logical}'. Targets[{i}] has no @odata.type annotation; set \"@odata.type\": \"{expected}\" on every record."
                ))),
            }
        })
        .collect()
}

/// The row a record names: its `@odata.id` (`contacts(new_stripecustomerid='cus_1')`, relative or
/// absolute), else its primary key, else the values of one alternate key; `None` when it names none.
fn resolve_target(
    store: &Store,
    table: &Table,
    set: &str,
    item: &Map<String, Value>,
) -> Result<Option<Target>, ApiError> {
    let config = &table.config;
    if let Some(reference) = item.get("@odata.id") {
        let Some(text) = reference.as_str() else {
            return Err(ApiError::MalformedBody(format!(
                "The @odata.id annotation must be a URL string, not {reference}."
            )));
        };
        let path = match text.find("/api/data/") {
            Some(at) => odata::split_service_path(&text[at..])
                .map(|(_, rest)| rest)
                .unwrap_or(text),
            None => text.trim_start_matches('/'),
        };
        let path = odata::percent_decode(path, false)?;
        return match odata::parse_path(&path, store)? {
            Resource::Entity {
                set: named, target, ..
            } if named == set => Ok(Some(target)),
            _ => Err(ApiError::BadUrl(format!(
                "The @odata.id '{text}' does not name a {} record of '{set}'.",
                config.logical_name
            ))),
        };
    }
    match item.get(&config.primary_key) {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            return Guid::parse(text)
                .map(|id| Some(Target::Id(id)))
                .ok_or_else(|| ApiError::WrongType {
                    column: config.primary_key.clone(),
                    value: text.clone(),
                    edm: "Edm.Guid",
                });
        }
        Some(other) => {
            return Err(ApiError::WrongType {
                column: config.primary_key.clone(),
                value: other.to_string(),
                edm: "Edm.Guid",
            });
        }
    }
    for (key, alternate) in config.alternate_keys.iter().enumerate() {
        if !table.key_active(key) {
            continue;
        }
        let values: Option<Vec<Value>> = alternate
            .columns
            .iter()
            .map(|c| item.get(c).filter(|v| !v.is_null()).cloned())
            .collect();
        if let Some(values) = values {
            return Ok(Some(Target::Key { key, values }));
        }
    }
    Ok(None)
}

/// A target as text for duplicate detection; text key values compare without regard to case, as the
/// key index does.
fn describe(target: &Target) -> String {
    match target {
        Target::Id(id) => format!("id:{id}"),
        Target::Key { key, values } => {
            let parts: Vec<String> = values
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.to_lowercase(),
                    other => other.to_string(),
                })
                .collect();
            format!("key{key}:{}", parts.join("\u{1f}"))
        }
    }
}
