//! Table definitions: `GET EntityDefinitions` (with `$filter` and `$select`) and
//! `GET EntityDefinitions(LogicalName='contact')`, answered from the configured tables the way Dataverse
//! answers its `EntityMetadata` entity type. Microsoft's clients read these before any table operation
//! (the entity set name, the primary id and name attributes), so the answers carry those properties with
//! the values Dataverse gives the same table.

use serde_json::{Map, Value, json};

use crate::config::TableConfig;
use crate::error::ApiError;
use crate::odata::{DefinitionKey, DefinitionPart, query_pairs, select_list, unsupported_option};
use crate::response::ApiResponse;
use crate::schema;
use crate::store::{Store, Table};
use crate::values::Guid;

/// The `EntityMetadata` properties the emulator serves, in the order a full answer lists them.
pub const PROPERTIES: &[&str] = &[
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntitySetName",
    "LogicalCollectionName",
    "CollectionSchemaName",
    "PrimaryIdAttribute",
    "PrimaryNameAttribute",
    "ObjectTypeCode",
    "OwnershipType",
    "TableType",
    "IsCustomEntity",
    "IsActivity",
    "IsIntersect",
    "IsManaged",
    "IsPrivate",
    "IsLogicalEntity",
    "HasNotes",
    "HasActivities",
    "IsKnowledgeManagementEnabled",
    "DisplayName",
    "DisplayCollectionName",
];

/// The fixed `MetadataId`s of the standard tables, as every Dataverse environment has them; other
/// tables get a stable id derived from their logical name.
fn metadata_id(logical_name: &str) -> String {
    match logical_name {
        "account" => "70816501-edb9-4740-a16c-6a5efbc05d84".to_owned(),
        "contact" => "608861bc-50a4-4c5f-a02c-21fe1943e2cf".to_owned(),
        other => {
            // FNV-1a over the name, twice with different offsets, shaped as a version 4 GUID.
            let hash = |seed: u64| {
                other.bytes().fold(seed, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                })
            };
            let bits =
                (u128::from(hash(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(hash(0x8422_2325_cbf2_9ce4));
            Guid::version4(bits).to_string()
        }
    }
}

/// `new_thing` → `new_Thing`, `contact` → `Contact`: how Dataverse shapes schema names.
fn schema_name(logical: &str) -> String {
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

fn label(text: &str, id: &str) -> Value {
    let localized = json!({
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": true,
        "MetadataId": id,
        "HasChanged": null,
    });
    json!({ "LocalizedLabels": [localized.clone()], "UserLocalizedLabel": localized })
}

/// The primary name column: the computed name when the table has one (`fullname` on contacts), else a
/// `name` column, else none.
fn primary_name(table: &TableConfig) -> Value {
    if let Some(name) = table.computed.keys().next() {
        return Value::String(name.clone());
    }
    if table.columns.contains_key("name") {
        return Value::String("name".to_owned());
    }
    Value::Null
}

/// Every served property of one table's definition.
fn definition(table: &TableConfig) -> Map<String, Value> {
    let logical = table.logical_name.as_str();
    let id = metadata_id(logical);
    let custom = logical.contains('_');
    let object_type_code = match logical {
        "account" => 1,
        "contact" => 2,
        other => 10_000 + other.bytes().map(u64::from).sum::<u64>() % 10_000,
    };
    let schema = schema_name(logical);
    let collection_schema = schema_name(&table.entity_set);
    let values = [
        ("MetadataId", Value::String(id.clone())),
        ("LogicalName", Value::String(logical.to_owned())),
        ("SchemaName", Value::String(schema.clone())),
        ("EntitySetName", Value::String(table.entity_set.clone())),
        ("LogicalCollectionName", Value::String(table.entity_set.clone())),
        ("CollectionSchemaName", Value::String(collection_schema.clone())),
        ("PrimaryIdAttribute", Value::String(table.primary_key.clone())),
        ("PrimaryNameAttribute", primary_name(table)),
        ("ObjectTypeCode", Value::from(object_type_code)),
        ("OwnershipType", Value::String("UserOwned".to_owned())),
        ("TableType", Value::String("Standard".to_owned())),
        ("IsCustomEntity", Value::Bool(custom)),
        ("IsActivity", Value::Bool(false)),
        ("IsIntersect", Value::Bool(false)),
        ("IsManaged", Value::Bool(!custom)),
        ("IsPrivate", Value::Bool(false)),
        ("IsLogicalEntity", Value::Bool(false)),
        ("HasNotes", Value::Bool(true)),
        ("HasActivities", Value::Bool(true)),
        ("IsKnowledgeManagementEnabled", Value::Bool(false)),
        ("DisplayName", label(&schema, &id)),
        ("DisplayCollectionName", label(&collection_schema, &id)),
    ];
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A metadata entity type: its name in errors and the properties served.
#[derive(Debug, Clone, Copy)]
struct Kind {
    entity: &'static str,
    properties: &'static [&'static str],
}

const ENTITY: Kind = Kind {
    entity: "EntityMetadata",
    properties: PROPERTIES,
};
const ATTRIBUTE: Kind = Kind {
    entity: "AttributeMetadata",
    properties: schema::ATTRIBUTE_PROPERTIES,
};
const KEY: Kind = Kind {
    entity: "EntityKeyMetadata",
    properties: schema::KEY_PROPERTIES,
};

fn unknown_property(kind: Kind, name: &str) -> ApiError {
    ApiError::UnknownProperty {
        entity: kind.entity.to_owned(),
        column: name.to_owned(),
    }
}

/// `$select`, `$filter` and (on table definitions) `$expand` of a definitions query.
#[derive(Debug, Default)]
struct Options {
    select: Option<Vec<String>>,
    filter: Option<Expr>,
    /// `$expand=Attributes($select=…),Keys(…)`: the collections to include, with their own options.
    expand: Vec<(DefinitionPart, Options)>,
}

fn parse_select(kind: Kind, value: &str) -> Result<Vec<String>, ApiError> {
    select_list(value, |property| {
        if kind.properties.contains(&property) {
            Ok(())
        } else {
            Err(unknown_property(kind, property))
        }
    })
}

fn parse_options(kind: Kind, raw: Option<&str>) -> Result<Options, ApiError> {
    let mut options = Options::default();
    for (name, value) in query_pairs(raw)? {
        match name.as_str() {
            "$select" => options.select = Some(parse_select(kind, &value)?),
            "$filter" => options.filter = Some(parse_filter(kind, &value)?),
            "$expand" if kind.entity == ENTITY.entity => options.expand = parse_expand(&value)?,
            "$expand" => {
                return Err(ApiError::NotSupported(format!(
                    "The $expand query option on {}",
                    kind.entity
                )));
            }
            other if other.starts_with('$') => return Err(unsupported_option(other)),
            _ => {}
        }
    }
    Ok(options)
}

/// `Attributes($select=LogicalName;$filter=…),Keys`: items split on top-level commas, nested options
/// on `;`.
fn parse_expand(value: &str) -> Result<Vec<(DefinitionPart, Options)>, ApiError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let mut pieces = Vec::new();
    for (i, c) in value.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    for piece in pieces {
        let piece = piece.trim();
        let (name, nested) = match piece.find('(') {
            Some(open) if piece.ends_with(')') => (&piece[..open], &piece[open + 1..piece.len() - 1]),
            _ => (piece, ""),
        };
        let (part, kind) = match name.trim() {
            "Attributes" => (DefinitionPart::Attributes, ATTRIBUTE),
            "Keys" => (DefinitionPart::Keys, KEY),
            other => {
                return Err(ApiError::NotSupported(format!(
                    "$expand of '{other}' on EntityDefinitions"
                )));
            }
        };
        let mut options = Options::default();
        for option in nested.split(';').map(str::trim).filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("$select", v)) => options.select = Some(parse_select(kind, v)?),
                Some(("$filter", v)) => options.filter = Some(parse_filter(kind, v)?),
                _ => return Err(unsupported_option(option)),
            }
        }
        items.push((part, options));
    }
    Ok(items)
}

/// The answer's view of one definition: the selected properties (all without `$select`), and always
/// `MetadataId`, as Dataverse returns it.
fn project(definition: &Map<String, Value>, select: Option<&[String]>) -> Map<String, Value> {
    let Some(select) = select else {
        return definition.clone();
    };
    let mut out = Map::new();
    for name in select {
        out.insert(name.clone(), definition.get(name).cloned().unwrap_or(Value::Null));
    }
    if !out.contains_key("MetadataId") {
        out.insert("MetadataId".to_owned(), definition["MetadataId"].clone());
    }
    out
}

fn context(base: &str, select: Option<&[String]>, entity: bool) -> String {
    let columns = select.map(|s| format!("({})", s.join(","))).unwrap_or_default();
    let suffix = if entity { "/$entity" } else { "" };
    format!("{base}$metadata#EntityDefinitions{columns}{suffix}")
}

fn definitions(store: &Store) -> Vec<(Map<String, Value>, &Table)> {
    store
        .entity_sets()
        .filter_map(|set| store.table(set).ok())
        .map(|table| (definition(&table.config), table))
        .collect()
}

/// Every column's `AttributeMetadata`.
fn attributes(table: &Table) -> Vec<Map<String, Value>> {
    table
        .attributes()
        .into_iter()
        .map(|(name, kind)| {
            schema::attribute_json(
                &table.config,
                &name,
                kind,
                table.config.columns.get(&name),
                &table.column_meta(&name),
            )
        })
        .collect()
}

/// Every key's `EntityKeyMetadata`.
fn keys(table: &Table) -> Vec<Map<String, Value>> {
    table
        .config
        .alternate_keys
        .iter()
        .zip(table.key_states())
        .map(|(key, state)| schema::key_json(&table.config, &key.columns, state))
        .collect()
}

fn part_items(table: &Table, part: DefinitionPart) -> Vec<Map<String, Value>> {
    match part {
        DefinitionPart::Attributes => attributes(table),
        DefinitionPart::Keys => keys(table),
    }
}

/// A collection's items as an answer shows them: filtered, projected (`@odata.type` kept).
fn shown(items: Vec<Map<String, Value>>, options: &Options) -> Vec<Value> {
    items
        .iter()
        .filter(|d| options.filter.as_ref().is_none_or(|f| f.matches(d)))
        .map(|d| {
            let mut out = project(d, options.select.as_deref());
            if let Some(t) = d.get("@odata.type") {
                out.insert("@odata.type".into(), t.clone());
            }
            Value::Object(out)
        })
        .collect()
}

/// One definition as an answer shows it, with its expanded collections.
fn shown_definition(definition: &Map<String, Value>, table: &Table, options: &Options) -> Map<String, Value> {
    let mut out = project(definition, options.select.as_deref());
    for (part, nested) in &options.expand {
        let name = match part {
            DefinitionPart::Attributes => "Attributes",
            DefinitionPart::Keys => "Keys",
        };
        out.insert(
            name.to_owned(),
            Value::Array(shown(part_items(table, *part), nested)),
        );
    }
    out
}

/// `GET EntityDefinitions[?$filter=…&$select=…&$expand=…]`: every matching definition, no paging; a
/// filter that names no configured table answers an empty `value`.
pub fn query(store: &Store, base: &str, raw_query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let options = parse_options(ENTITY, raw_query)?;
    let select = options.select.as_deref();
    let values: Vec<Value> = definitions(store)
        .iter()
        .filter(|(d, _)| options.filter.as_ref().is_none_or(|f| f.matches(d)))
        .map(|(d, table)| Value::Object(shown_definition(d, table, &options)))
        .collect();
    let body = json!({ "@odata.context": context(base, select, false), "value": values });
    Ok(ApiResponse::odata(http::StatusCode::OK).odata_json(&body))
}

/// `GET EntityDefinitions(LogicalName='contact')` or `EntityDefinitions(<MetadataId>)`: one definition,
/// or 404 when no table has that name or id.
pub fn retrieve(
    store: &Store,
    base: &str,
    key: &DefinitionKey,
    raw_query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let options = parse_options(ENTITY, raw_query)?;
    if options.filter.is_some() {
        return Err(ApiError::BadUrl(
            "The query option $filter cannot be applied to a single entity.".to_owned(),
        ));
    }
    let found = definitions(store).into_iter().find(|(d, _)| match key {
        DefinitionKey::LogicalName(name) => d["LogicalName"].as_str() == Some(name.as_str()),
        DefinitionKey::MetadataId(id) => d["MetadataId"].as_str().and_then(Guid::parse) == Some(*id),
    });
    let Some((found, table)) = found else {
        return Err(entity_not_found(key));
    };
    let select = options.select.as_deref();
    let mut body = Map::new();
    body.insert(
        "@odata.context".to_owned(),
        Value::String(context(base, select, true)),
    );
    body.extend(shown_definition(&found, table, &options));
    Ok(ApiResponse::odata(http::StatusCode::OK).odata_json(&Value::Object(body)))
}

fn entity_not_found(key: &DefinitionKey) -> ApiError {
    ApiError::DefinitionNotFound(match key {
        DefinitionKey::LogicalName(name) => format!(
            "The entity with a name = '{name}' with namemapping = 'Logical' was not found in the MetadataCache."
        ),
        DefinitionKey::MetadataId(id) => {
            format!("The entity with a id = '{id}' was not found in the MetadataCache.")
        }
    })
}

/// The table a definition key names.
fn table_of<'s>(store: &'s Store, key: &DefinitionKey) -> Result<&'s Table, ApiError> {
    let found = match key {
        DefinitionKey::LogicalName(name) => store.table_by_logical_name(name),
        DefinitionKey::MetadataId(id) => store
            .entity_sets()
            .filter_map(|s| store.table(s).ok())
            .find(|t| Guid::parse(&metadata_id(&t.config.logical_name)) == Some(*id)),
    };
    found.ok_or_else(|| entity_not_found(key))
}

fn part_name(part: DefinitionPart) -> &'static str {
    match part {
        DefinitionPart::Attributes => "Attributes",
        DefinitionPart::Keys => "Keys",
    }
}

/// `GET EntityDefinitions(…)/Attributes[(…)]` or `…/Keys[(…)]`, with `$select` and `$filter`.
pub fn read_part(
    store: &Store,
    base: &str,
    table: &DefinitionKey,
    part: DefinitionPart,
    item: Option<&DefinitionKey>,
    raw_query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let kind = match part {
        DefinitionPart::Attributes => ATTRIBUTE,
        DefinitionPart::Keys => KEY,
    };
    let options = parse_options(kind, raw_query)?;
    let found = table_of(store, table)?;
    let logical = &found.config.logical_name;
    let items = part_items(found, part);
    let columns = options
        .select
        .as_ref()
        .map(|s| format!("({})", s.join(",")))
        .unwrap_or_default();
    let context = format!(
        "{base}$metadata#EntityDefinitions('{logical}')/{}{columns}",
        part_name(part)
    );
    let Some(item) = item else {
        let body = json!({ "@odata.context": context, "value": shown(items, &options) });
        return Ok(ApiResponse::odata(http::StatusCode::OK).odata_json(&body));
    };
    if options.filter.is_some() {
        return Err(ApiError::BadUrl(
            "The query option $filter cannot be applied to a single entity.".to_owned(),
        ));
    }
    let one = items.into_iter().find(|d| match item {
        DefinitionKey::LogicalName(name) => d["LogicalName"].as_str() == Some(name.as_str()),
        DefinitionKey::MetadataId(id) => d["MetadataId"].as_str().and_then(Guid::parse) == Some(*id),
    });
    let Some(one) = one else {
        let what = match part {
            DefinitionPart::Attributes => "attribute",
            DefinitionPart::Keys => "entity key",
        };
        return Err(ApiError::DefinitionNotFound(match item {
            DefinitionKey::LogicalName(name) => {
                format!("Could not find {what} with name '{name}' on entity '{logical}'.")
            }
            DefinitionKey::MetadataId(id) => {
                format!("Could not find {what} with id '{id}' on entity '{logical}'.")
            }
        }));
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(format!("{context}/$entity")),
    );
    let mut values = shown(vec![one], &options);
    if let Some(Value::Object(map)) = values.pop() {
        body.extend(map);
    }
    Ok(ApiResponse::odata(http::StatusCode::OK).odata_json(&Value::Object(body)))
}

/// `POST EntityDefinitions(…)/Attributes` or `…/Keys`: creates a column (at once) or a key (its index
/// built in the background), answering 204 with `OData-EntityId` naming it, as documented.
pub fn create_part(
    store: &mut Store,
    base: &str,
    table: &DefinitionKey,
    part: DefinitionPart,
    body: &Map<String, Value>,
    now: std::time::Instant,
) -> Result<ApiResponse, ApiError> {
    let logical = table_of(store, table)?.config.logical_name.clone();
    let target = store
        .table_by_logical_name_mut(&logical)
        .ok_or_else(|| entity_not_found(table))?;
    let id = match part {
        DefinitionPart::Attributes => target.add_column(schema::parse_new_column(body)?)?,
        DefinitionPart::Keys => target.add_key(schema::parse_new_key(body)?, now)?,
    };
    let mut response = ApiResponse::odata(http::StatusCode::NO_CONTENT);
    response.push(
        http::HeaderName::from_static("odata-entityid"),
        &format!(
            "{base}EntityDefinitions(LogicalName='{logical}')/{}({id})",
            part_name(part)
        ),
    );
    Ok(response)
}

/// The `$filter` subset metadata queries use: `eq`/`ne` comparisons of a property with a literal
/// (text, number, boolean, `null`, or an enum such as `Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'`),
/// combined with `and`, `or`, `not` and parentheses.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare {
        property: String,
        equal: bool,
        value: Value,
    },
}

impl Expr {
    fn matches(&self, definition: &Map<String, Value>) -> bool {
        match self {
            Expr::And(a, b) => a.matches(definition) && b.matches(definition),
            Expr::Or(a, b) => a.matches(definition) || b.matches(definition),
            Expr::Not(a) => !a.matches(definition),
            Expr::Compare {
                property,
                equal,
                value,
            } => {
                let actual = definition.get(property).unwrap_or(&Value::Null);
                let same = match (actual, value) {
                    (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
                    (a, b) => a == b,
                };
                same == *equal
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Literal(Value),
    Open,
    Close,
}

fn filter_error(detail: impl std::fmt::Display) -> ApiError {
    ApiError::BadUrl(format!("Bad Request - Error in query syntax: {detail}"))
}

fn lex(text: &str) -> Result<Vec<Token>, ApiError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let quoted = |start: usize| -> Result<(String, usize), ApiError> {
        // `start` is just after the opening quote; `''` is an escaped quote.
        let mut out = String::new();
        let mut j = start;
        loop {
            match chars.get(j) {
                None => return Err(filter_error("unterminated string literal.")),
                Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                    out.push('\'');
                    j += 2;
                }
                Some('\'') => return Ok((out, j + 1)),
                Some(c) => {
                    out.push(*c);
                    j += 1;
                }
            }
        }
    };
    while i < chars.len() {
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '\'' => {
                let (text, next) = quoted(i + 1)?;
                tokens.push(Token::Literal(Value::String(text)));
                i = next;
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if chars.get(i) == Some(&'\'') {
                    // An enum literal: `Namespace.EnumType'Member'` compares as its member name.
                    let (member, next) = quoted(i + 1)?;
                    tokens.push(Token::Literal(Value::String(member)));
                    i = next;
                } else if let Ok(number) = word.parse::<i64>() {
                    tokens.push(Token::Literal(Value::from(number)));
                } else {
                    tokens.push(match word.as_str() {
                        "true" => Token::Literal(Value::Bool(true)),
                        "false" => Token::Literal(Value::Bool(false)),
                        "null" => Token::Literal(Value::Null),
                        _ => Token::Word(word),
                    });
                }
            }
            other => return Err(filter_error(format!("unexpected character '{other}'."))),
        }
    }
    Ok(tokens)
}

fn parse_filter(kind: Kind, text: &str) -> Result<Expr, ApiError> {
    let tokens = lex(text)?;
    let mut parser = Parser { tokens, at: 0, kind };
    let expr = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(filter_error(format!("unexpected token in '{text}'.")));
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    kind: Kind,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w == word)
    }

    fn or(&mut self) -> Result<Expr, ApiError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ApiError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ApiError> {
        match self.next() {
            Some(Token::Word(w)) if w == "not" => Ok(Expr::Not(Box::new(self.unary()?))),
            Some(Token::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err(filter_error("')' expected.")),
                }
            }
            Some(Token::Word(property)) => {
                if !self.kind.properties.contains(&property.as_str()) {
                    return Err(unknown_property(self.kind, &property));
                }
                let equal = match self.next() {
                    Some(Token::Word(op)) if op == "eq" => true,
                    Some(Token::Word(op)) if op == "ne" => false,
                    _ => {
                        return Err(filter_error(format!(
                            "'{property}' must be followed by eq or ne and a literal."
                        )));
                    }
                };
                match self.next() {
                    Some(Token::Literal(value)) => Ok(Expr::Compare {
                        property,
                        equal,
                        value,
                    }),
                    _ => Err(filter_error(format!("a literal is expected after '{property}'."))),
                }
            }
            _ => Err(filter_error("a comparison is expected.")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts() -> Map<String, Value> {
        definition(&TableConfig::contacts())
    }

    #[test]
    fn the_contact_definition_has_the_values_dataverse_gives_it() {
        let d = contacts();
        assert_eq!(d["LogicalName"], "contact");
        assert_eq!(d["SchemaName"], "Contact");
        assert_eq!(d["EntitySetName"], "contacts");
        assert_eq!(d["LogicalCollectionName"], "contacts");
        assert_eq!(d["PrimaryIdAttribute"], "contactid");
        assert_eq!(d["PrimaryNameAttribute"], "fullname");
        assert_eq!(d["ObjectTypeCode"], 2);
        assert_eq!(d["MetadataId"], "608861bc-50a4-4c5f-a02c-21fe1943e2cf");
        assert_eq!(PROPERTIES.len(), d.len());
    }

    #[test]
    fn filters_compare_properties_with_literals_and_enums() {
        let d = contacts();
        let check = |text: &str| parse_filter(ENTITY, text).expect(text).matches(&d);
        assert!(check("LogicalName eq 'contact'"));
        assert!(!check("LogicalName eq 'account'"));
        assert!(check("LogicalName eq 'account' or EntitySetName eq 'contacts'"));
        assert!(check(
            "OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'"
        ));
        assert!(check("not (IsCustomEntity eq true) and ObjectTypeCode eq 2"));
        assert!(check("LogicalName ne 'o''brien'"));
        assert!(matches!(
            parse_filter(ENTITY, "Nope eq 'x'"),
            Err(ApiError::UnknownProperty { .. })
        ));
        assert!(matches!(
            parse_filter(ENTITY, "LogicalName eq"),
            Err(ApiError::BadUrl(_))
        ));
    }

    #[test]
    fn custom_tables_get_a_stable_guid_and_a_prefixed_schema_name() {
        let a = metadata_id("new_thing");
        assert_eq!(a, metadata_id("new_thing"));
        assert_ne!(a, metadata_id("new_other"));
        assert!(Guid::parse(&a).is_some(), "{a}");
        assert_eq!(schema_name("new_thing"), "new_Thing");
    }
}
