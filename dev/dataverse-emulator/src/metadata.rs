//! Table definitions: `GET EntityDefinitions` (with `$filter` and `$select`) and
//! `GET EntityDefinitions(LogicalName='contact')`, answered from the configured tables the way Dataverse
//! answers its `EntityMetadata` entity type. Microsoft's clients read these before any table operation
//! (the entity set name, the primary id and name attributes), so the answers carry those properties with
//! the values Dataverse gives the same table.

use serde_json::{Map, Value, json};

use crate::config::TableConfig;
use crate::error::ApiError;
use crate::odata::{DefinitionKey, query_pairs, select_list, unsupported_option};
use crate::response::ApiResponse;
use crate::store::Store;
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

fn unknown_property(name: &str) -> ApiError {
    ApiError::UnknownProperty {
        entity: "EntityMetadata".to_owned(),
        column: name.to_owned(),
    }
}

/// `$select` and `$filter` of a definitions query.
#[derive(Debug, Default)]
struct Options {
    select: Option<Vec<String>>,
    filter: Option<Expr>,
}

fn parse_options(raw: Option<&str>) -> Result<Options, ApiError> {
    let mut options = Options::default();
    for (name, value) in query_pairs(raw)? {
        match name.as_str() {
            "$select" => {
                let names = select_list(&value, |property| {
                    if PROPERTIES.contains(&property) {
                        Ok(())
                    } else {
                        Err(unknown_property(property))
                    }
                })?;
                options.select = Some(names);
            }
            "$filter" => options.filter = Some(parse_filter(&value)?),
            "$expand" => {
                return Err(ApiError::NotSupported(
                    "The $expand query option on EntityDefinitions".to_owned(),
                ));
            }
            other if other.starts_with('$') => return Err(unsupported_option(other)),
            _ => {}
        }
    }
    Ok(options)
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

fn definitions(store: &Store) -> Vec<Map<String, Value>> {
    store
        .entity_sets()
        .filter_map(|set| store.table(set).ok())
        .map(|table| definition(&table.config))
        .collect()
}

/// `GET EntityDefinitions[?$filter=…&$select=…]`: every matching definition, no paging; a filter that
/// names no configured table answers an empty `value`.
pub fn query(store: &Store, base: &str, raw_query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let options = parse_options(raw_query)?;
    let select = options.select.as_deref();
    let values: Vec<Value> = definitions(store)
        .iter()
        .filter(|d| options.filter.as_ref().is_none_or(|f| f.matches(d)))
        .map(|d| Value::Object(project(d, select)))
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
    let options = parse_options(raw_query)?;
    if options.filter.is_some() {
        return Err(ApiError::BadUrl(
            "The query option $filter cannot be applied to a single entity.".to_owned(),
        ));
    }
    let found = definitions(store).into_iter().find(|d| match key {
        DefinitionKey::LogicalName(name) => d["LogicalName"].as_str() == Some(name.as_str()),
        DefinitionKey::MetadataId(id) => d["MetadataId"].as_str().and_then(Guid::parse) == Some(*id),
    });
    let Some(found) = found else {
        return Err(ApiError::DefinitionNotFound(match key {
            DefinitionKey::LogicalName(name) => {
                format!(
                    "The entity with a name = '{name}' with namemapping = 'Logical' was not found in the MetadataCache."
                )
            }
            DefinitionKey::MetadataId(id) => {
                format!("The entity with a id = '{id}' was not found in the MetadataCache.")
            }
        }));
    };
    let select = options.select.as_deref();
    let mut body = Map::new();
    body.insert(
        "@odata.context".to_owned(),
        Value::String(context(base, select, true)),
    );
    body.extend(project(&found, select));
    Ok(ApiResponse::odata(http::StatusCode::OK).odata_json(&Value::Object(body)))
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

fn parse_filter(text: &str) -> Result<Expr, ApiError> {
    let tokens = lex(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(filter_error(format!("unexpected token in '{text}'.")));
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
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
                if !PROPERTIES.contains(&property.as_str()) {
                    return Err(unknown_property(&property));
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
        let check = |text: &str| parse_filter(text).expect(text).matches(&d);
        assert!(check("LogicalName eq 'contact'"));
        assert!(!check("LogicalName eq 'account'"));
        assert!(check("LogicalName eq 'account' or EntitySetName eq 'contacts'"));
        assert!(check(
            "OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'"
        ));
        assert!(check("not (IsCustomEntity eq true) and ObjectTypeCode eq 2"));
        assert!(check("LogicalName ne 'o''brien'"));
        assert!(matches!(
            parse_filter("Nope eq 'x'"),
            Err(ApiError::UnknownProperty { .. })
        ));
        assert!(matches!(parse_filter("LogicalName eq"), Err(ApiError::BadUrl(_))));
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
