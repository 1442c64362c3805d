//! OData URL parsing: the resource path (entity set, key segment by primary or alternate key), the query
//! options (`$select`, `$filter`, `$top`, `$count`, `$orderby`) and the `$filter` subset, with its
//! evaluation against rows. Errors carry the messages a client needs to fix its URL.

use std::cmp::Ordering;

use serde_json::Value;

use crate::config::ColumnType;
use crate::error::ApiError;
use crate::store::{Row, Store, Table, Target};
use crate::values::Guid;

/// Web API versions served; all behave as v9.2 (answers echo the version the request used).
pub const VERSIONS: &[&str] = &["v9.0", "v9.1", "v9.2"];

/// Splits `/api/data/<version>/<rest>` into the version and the rest; `None` off the service root.
pub fn split_service_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/data/")?;
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    VERSIONS.contains(&version).then_some((version, rest))
}

/// The path under the service root (`/api/data/v9.2/`) that a request names.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// The service document.
    ServiceRoot,
    /// `$batch`.
    Batch,
    /// `$metadata`.
    Metadata,
    /// The `WhoAmI` function.
    WhoAmI,
    /// An entity set: `contacts`.
    EntitySet { set: String },
    /// The row count of an entity set: `contacts/$count`.
    EntitySetCount { set: String },
    /// One row: `contacts(<guid>)` or `contacts(<key>=<value>,…)`.
    Entity {
        set: String,
        target: Target,
        segment: String,
    },
    /// A bulk action bound to an entity set: `contacts/Microsoft.Dynamics.CRM.CreateMultiple`.
    BulkAction { set: String, action: BulkAction },
    /// Table definitions: `EntityDefinitions`, or one of them with `key`.
    EntityDefinitions { key: Option<DefinitionKey> },
    /// A table's columns or keys: `EntityDefinitions(LogicalName='contact')/Attributes`, or one of
    /// them with `item` (`Attributes(LogicalName='x')`, `Keys(<MetadataId>)`).
    DefinitionPart {
        table: DefinitionKey,
        part: DefinitionPart,
        item: Option<DefinitionKey>,
    },
    /// One column of one row: `contacts(<key>)/lastname`.
    Property {
        set: String,
        target: Target,
        segment: String,
        column: String,
    },
}

/// The bulk operation messages, bound to an entity set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// `CreateMultiple`: creates every record, answers their ids.
    Create,
    /// `UpdateMultiple`: updates existing records.
    Update,
    /// `UpsertMultiple`: creates or updates each record.
    Upsert,
}

impl BulkAction {
    /// The action named by a path segment such as `Microsoft.Dynamics.CRM.CreateMultiple`.
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment.strip_prefix("Microsoft.Dynamics.CRM.")? {
            "CreateMultiple" => Some(Self::Create),
            "UpdateMultiple" => Some(Self::Update),
            "UpsertMultiple" => Some(Self::Upsert),
            _ => None,
        }
    }

    /// The action's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "CreateMultiple",
            Self::Update => "UpdateMultiple",
            Self::Upsert => "UpsertMultiple",
        }
    }
}

/// How `EntityDefinitions(…)` names a table definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionKey {
    /// `LogicalName='contact'`.
    LogicalName(String),
    /// A bare `MetadataId` GUID, or `MetadataId=<guid>`.
    MetadataId(Guid),
}

/// The collections under a table definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefinitionPart {
    /// `Attributes`: `AttributeMetadata`.
    Attributes,
    /// `Keys`: `EntityKeyMetadata`.
    Keys,
}

/// Parses `(LogicalName='x')` or `(<MetadataId>)`.
fn parse_definition_key(inner: &str, whole: &str) -> Result<DefinitionKey, ApiError> {
    let bad_key = || {
        syntax_error(format!(
            "'{whole}' is not a valid key; use (LogicalName='<name>') or (<MetadataId>)."
        ))
    };
    let (name, value) = inner.split_once('=').unwrap_or(("", inner));
    match name.trim() {
        "LogicalName" => {
            let value = value.trim();
            let text = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(bad_key)?;
            Ok(DefinitionKey::LogicalName(text.replace("''", "'")))
        }
        "" | "MetadataId" => Ok(DefinitionKey::MetadataId(
            Guid::parse(value.trim()).ok_or_else(bad_key)?,
        )),
        _ => Err(bad_key()),
    }
}

/// Parses what follows a table definition's key: `/Attributes`, `/Keys`, optionally with one item.
fn parse_definition_part(table: DefinitionKey, after: &str) -> Result<Resource, ApiError> {
    let segment = after.trim_start_matches('/');
    let name_end = segment.find('(').unwrap_or(segment.len());
    let part = match &segment[..name_end] {
        "Attributes" => DefinitionPart::Attributes,
        "Keys" => DefinitionPart::Keys,
        other => {
            return Err(ApiError::NotSupported(format!(
                "The path segment '{other}' after a table definition"
            )));
        }
    };
    let rest = &segment[name_end..];
    let item = if rest.is_empty() {
        None
    } else {
        let close =
            matching_paren(rest).ok_or_else(|| syntax_error(format!("unbalanced key in '{segment}'.")))?;
        if !rest[close + 1..].is_empty() {
            return Err(ApiError::NotSupported(format!(
                "The path segment '{}' after a column or key definition",
                rest[close + 1..].trim_start_matches('/')
            )));
        }
        Some(parse_definition_key(rest[1..close].trim(), segment)?)
    };
    Ok(Resource::DefinitionPart { table, part, item })
}

/// Parses the path after `EntityDefinitions`: nothing, or one key segment.
fn parse_definitions(rest: &str) -> Result<Resource, ApiError> {
    if rest.is_empty() {
        return Ok(Resource::EntityDefinitions { key: None });
    }
    let bad_key = || {
        syntax_error(format!(
            "'EntityDefinitions{rest}' is not a valid key; use EntityDefinitions(LogicalName='<name>') or EntityDefinitions(<MetadataId>)."
        ))
    };
    let Some(inner) = rest.strip_prefix('(') else {
        return Err(ApiError::ResourceNotFound(
            rest.trim_start_matches('/').to_owned(),
        ));
    };
    let close = matching_paren(rest).ok_or_else(bad_key)?;
    let after = &rest[close + 1..];
    if !after.is_empty() {
        let table = parse_definition_key(inner[..close - 1].trim(), rest)?;
        return parse_definition_part(table, after);
    }
    let inner = inner[..close - 1].trim();
    let (name, value) = inner.split_once('=').unwrap_or(("", inner));
    let key = match name.trim() {
        "LogicalName" => {
            let value = value.trim();
            let text = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(bad_key)?;
            DefinitionKey::LogicalName(text.replace("''", "'"))
        }
        "" | "MetadataId" => DefinitionKey::MetadataId(Guid::parse(value.trim()).ok_or_else(bad_key)?),
        _ => return Err(bad_key()),
    };
    Ok(Resource::EntityDefinitions { key: Some(key) })
}

/// Decodes `%XX` escapes; with `plus_is_space`, `+` becomes a space (query strings).
pub fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::BadUrl(format!("Invalid percent-encoding in '{text}'.")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::BadUrl(format!("The URL '{text}' is not valid UTF-8.")))
}

/// Parses a decoded path relative to the service root.
pub fn parse_path(path: &str, store: &Store) -> Result<Resource, ApiError> {
    let path = path.trim_end_matches('/');
    match path {
        "" => return Ok(Resource::ServiceRoot),
        "$batch" => return Ok(Resource::Batch),
        "$metadata" => return Ok(Resource::Metadata),
        "WhoAmI" | "WhoAmI()" => return Ok(Resource::WhoAmI),
        _ => {}
    }
    let name_end = path.find(['(', '/']).unwrap_or(path.len());
    let set = &path[..name_end];
    if set == "EntityDefinitions" {
        return parse_definitions(&path[name_end..]);
    }
    let table = store.table(set)?;
    let rest = &path[name_end..];
    if rest.is_empty() {
        return Ok(Resource::EntitySet { set: set.to_owned() });
    }
    if rest == "/$count" {
        return Ok(Resource::EntitySetCount { set: set.to_owned() });
    }
    if let Some(action) = rest.strip_prefix('/').and_then(BulkAction::from_segment) {
        return Ok(Resource::BulkAction {
            set: set.to_owned(),
            action,
        });
    }
    if let Some(after_slash) = rest.strip_prefix('/') {
        return Err(ApiError::ResourceNotFound(
            after_slash.split('/').next().unwrap_or("").to_owned(),
        ));
    }
    let close = matching_paren(rest).ok_or_else(|| {
        ApiError::BadUrl(format!(
            "Bad Request - Error in query syntax: unbalanced key segment in '{path}'."
        ))
    })?;
    let inner = &rest[1..close];
    let after = &rest[close + 1..];
    let target = parse_key(inner, table)?;
    let segment = format!("{set}({inner})");
    if after.is_empty() {
        return Ok(Resource::Entity {
            set: set.to_owned(),
            target,
            segment,
        });
    }
    let column = after.strip_prefix('/').unwrap_or(after);
    if table.config.columns.contains_key(column) {
        return Ok(Resource::Property {
            set: set.to_owned(),
            target,
            segment,
            column: column.to_owned(),
        });
    }
    if column.starts_with('$') || column.contains('/') || table.property_type(column).is_some() {
        return Err(ApiError::NotSupported(format!(
            "The path segment '{column}' after a key"
        )));
    }
    Err(ApiError::ResourceNotFound(column.to_owned()))
}

/// Index of the `)` that closes the `(` at the start of `text`, skipping quoted literals.
fn matching_paren(text: &str) -> Option<usize> {
    let mut in_string = false;
    for (i, c) in text.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            ')' if !in_string => return Some(i),
            _ => {}
        }
    }
    None
}

fn syntax_error(detail: impl std::fmt::Display) -> ApiError {
    ApiError::BadUrl(format!("Bad Request - Error in query syntax: {detail}"))
}

/// Parses the inside of a key segment against a table: a bare GUID, `pk=<guid>`, or the columns of
/// exactly one declared alternate key.
pub fn parse_key(inner: &str, table: &Table) -> Result<Target, ApiError> {
    let tokens = lex(inner).map_err(|detail| {
        syntax_error(format!(
            "'{inner}' is not a valid key ({detail}); use a GUID or <column>=<value> pairs of an alternate key of '{}'.",
            table.config.logical_name
        ))
    })?;
    let config = &table.config;
    if let [Token::Guid(id)] = tokens.as_slice() {
        return Ok(Target::Id(*id));
    }
    if tokens.len() == 1 {
        return Err(syntax_error(format!(
            "'{inner}' is not a valid key: use a GUID or <column>=<value> pairs of an alternate key of '{}'.",
            config.logical_name
        )));
    }
    let mut pairs: Vec<(String, Token)> = Vec::new();
    let mut iter = tokens.into_iter().peekable();
    loop {
        let (Some(Token::Ident(name)), Some(Token::Eq), Some(value)) =
            (iter.next(), iter.next(), iter.next())
        else {
            return Err(syntax_error(format!(
                "'{inner}' is not a list of <column>=<value> pairs."
            )));
        };
        if !value.is_literal() {
            return Err(syntax_error(format!("the value of '{name}' is not a literal.")));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(syntax_error(format!("'{name}' appears twice in the key.")));
        }
        pairs.push((name, value));
        match iter.next() {
            None => break,
            Some(Token::Comma) => continue,
            Some(_) => {
                return Err(syntax_error(format!(
                    "expected ',' between key values in '{inner}'."
                )));
            }
        }
    }
    if let [(name, value)] = pairs.as_slice()
        && *name == config.primary_key
    {
        return match value {
            Token::Guid(id) => Ok(Target::Id(*id)),
            _ => Err(syntax_error(format!("the primary key '{name}' takes a GUID."))),
        };
    }
    let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    // Only a key whose index is built can name a row; one still building is not part of the service
    // model yet, and Dataverse refuses it like any other column that is not a key.
    let key = config
        .alternate_keys
        .iter()
        .enumerate()
        .position(|(k, alternate)| {
            let mut columns: Vec<&str> = alternate.columns.iter().map(String::as_str).collect();
            columns.sort_unstable();
            columns == names && table.key_active(k)
        });
    let Some(key) = key else {
        return Err(ApiError::InvalidKey {
            entity: config.logical_name.clone(),
        });
    };
    let mut values = Vec::new();
    for column in &config.alternate_keys[key].columns {
        let Some((_, token)) = pairs.iter().find(|(n, _)| n == column) else {
            return Err(syntax_error("incomplete key."));
        };
        let kind = table.property_type(column).unwrap_or(ColumnType::String);
        let value = literal_for(column, kind, token)?;
        if value.is_null() {
            return Err(syntax_error(format!(
                "the key value of '{column}' cannot be null."
            )));
        }
        values.push(value);
    }
    Ok(Target::Key { key, values })
}

/// Converts a literal to the JSON value of a column type, or explains the mismatch.
fn literal_for(column: &str, kind: ColumnType, token: &Token) -> Result<Value, ApiError> {
    let mismatch = || {
        ApiError::BadUrl(format!(
            "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for the property '{column}'.",
            kind.edm(),
            token.edm()
        ))
    };
    Ok(match (kind, token) {
        (_, Token::Null) => Value::Null,
        (ColumnType::String | ColumnType::Memo, Token::Str(s)) => Value::String(s.clone()),
        (ColumnType::Integer | ColumnType::Choice | ColumnType::BigInt, Token::Int(i)) => Value::from(*i),
        (ColumnType::Decimal, Token::Int(i)) => Value::from(*i),
        (ColumnType::Decimal, Token::Decimal(d)) => serde_json::Number::from_f64(*d)
            .map(Value::Number)
            .ok_or_else(mismatch)?,
        (ColumnType::Boolean, Token::Bool(b)) => Value::Bool(*b),
        (ColumnType::Guid, Token::Guid(g)) => Value::String(g.to_string()),
        (ColumnType::DateTime, Token::DateTime(d) | Token::Str(d)) => Value::String(d.clone()),
        _ => return Err(mismatch()),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Decimal(f64),
    Bool(bool),
    Null,
    Guid(Guid),
    DateTime(String),
    LParen,
    RParen,
    Comma,
    Eq,
}

impl Token {
    fn is_literal(&self) -> bool {
        matches!(
            self,
            Token::Str(_)
                | Token::Int(_)
                | Token::Decimal(_)
                | Token::Bool(_)
                | Token::Null
                | Token::Guid(_)
                | Token::DateTime(_)
        )
    }

    fn edm(&self) -> &'static str {
        match self {
            Token::Str(_) => "Edm.String",
            Token::Int(_) => "Edm.Int32",
            Token::Decimal(_) => "Edm.Decimal",
            Token::Bool(_) => "Edm.Boolean",
            Token::Guid(_) => "Edm.Guid",
            Token::DateTime(_) => "Edm.DateTimeOffset",
            _ => "null",
        }
    }
}

/// Splits key segments and `$filter` text into tokens; the error is a detail for the caller's message.
fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '=' => {
                tokens.push(Token::Eq);
                i += 1;
            }
            '\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!("unterminated string literal in '{text}'"));
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            value.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            value.push(other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(value));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.' | ':' | '+'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                tokens.push(classify(&word, text)?);
            }
            other => {
                return Err(format!("unexpected character '{other}' in '{text}'"));
            }
        }
    }
    Ok(tokens)
}

fn classify(word: &str, text: &str) -> Result<Token, String> {
    if let Some(id) = Guid::parse(word) {
        return Ok(Token::Guid(id));
    }
    match word {
        "true" => return Ok(Token::Bool(true)),
        "false" => return Ok(Token::Bool(false)),
        "null" => return Ok(Token::Null),
        _ => {}
    }
    let first = word.chars().next().unwrap_or('_');
    if first.is_ascii_alphabetic() || first == '_' {
        if word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Ok(Token::Ident(word.to_owned()));
        }
        return Err(format!("'{word}' is not a valid name or literal in '{text}'"));
    }
    if let Ok(i) = word.parse::<i64>() {
        return Ok(Token::Int(i));
    }
    if word.len() >= 10 && word.as_bytes()[4] == b'-' && word.as_bytes()[7] == b'-' {
        return Ok(Token::DateTime(word.to_owned()));
    }
    if word.contains('.')
        && let Ok(d) = word.parse::<f64>()
    {
        return Ok(Token::Decimal(d));
    }
    Err(format!("'{word}' is not a valid literal in '{text}'"))
}

/// Query options of a `GET` (or of a write with `Prefer: return=representation`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryOptions {
    /// `$select`: the properties to return.
    pub select: Option<Vec<String>>,
    /// `$filter`.
    pub filter: Option<Filter>,
    /// `$top`.
    pub top: Option<usize>,
    /// `$count=true`.
    pub count: bool,
    /// `$orderby`: property and descending flag.
    pub orderby: Vec<(String, bool)>,
    /// `$skiptoken`: where the previous page of this query ended.
    pub skiptoken: Option<PageCookie>,
}

/// Dataverse's page size when the client asks for none, and the largest it honours
/// (`Prefer: odata.maxpagesize` above it is ignored).
pub const MAX_PAGE_SIZE: usize = 5000;

/// The paging cookie of a `@odata.nextLink`, in Dataverse's shape: the `$skiptoken` value is
/// `<cookie pagenumber="2" pagingcookie="…" istracking="False" />`, whose `pagingcookie` is itself a
/// percent-encoded `<cookie page="1"><contactid last="{GUID}" first="{GUID}" /></cookie>` naming
/// the primary keys of the previous page's last and first rows. The next page starts after `last`
/// in primary-key order, so rows created or deleted between requests neither repeat nor shift
/// other rows out of the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCookie {
    /// The page this cookie asks for (2 for the second).
    pub page: usize,
    /// Primary key of the previous page's last row.
    pub last: Guid,
    /// Primary key of the previous page's first row.
    pub first: Guid,
}

impl PageCookie {
    /// The `$skiptoken` value (not yet percent-encoded for the URL).
    pub fn render(&self, primary_key: &str) -> String {
        let inner = format!(
            "<cookie page=\"{}\"><{primary_key} last=\"{{{}}}\" first=\"{{{}}}\" /></cookie>",
            self.page - 1,
            self.last.to_string().to_uppercase(),
            self.first.to_string().to_uppercase(),
        );
        format!(
            "<cookie pagenumber=\"{}\" pagingcookie=\"{}\" istracking=\"False\" />",
            self.page,
            percent_encode(&inner)
        )
    }

    /// Reads a decoded `$skiptoken` value.
    pub fn parse(value: &str, primary_key: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::BadUrl(format!(
                "The $skiptoken '{value}' is not a paging cookie from a previous page."
            ))
        };
        let page = attribute(value, "pagenumber")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p >= 2)
            .ok_or_else(bad)?;
        let inner = attribute(value, "pagingcookie").ok_or_else(bad)?;
        let inner = percent_decode(inner, false).map_err(|_| bad())?;
        let element = inner
            .split_once(&format!("<{primary_key} "))
            .map(|(_, rest)| rest)
            .ok_or_else(bad)?;
        let guid = |name: &str| {
            attribute(element, name)
                .map(|g| g.trim_start_matches('{').trim_end_matches('}'))
                .and_then(Guid::parse)
        };
        let last = guid("last").ok_or_else(bad)?;
        let first = guid("first").ok_or_else(bad)?;
        Ok(PageCookie { page, last, first })
    }
}

/// The value of `name="…"` in an XML-ish attribute list.
fn attribute<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("{name}=\""))? + name.len() + 2;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The decoded `name=value` pairs of a raw query string, in order.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name, true)?, percent_decode(value, true)?))
        })
        .collect()
}

/// The names of a `$select` list, each checked by `check`.
pub fn select_list(
    value: &str,
    mut check: impl FnMut(&str) -> Result<(), ApiError>,
) -> Result<Vec<String>, ApiError> {
    value
        .split(',')
        .map(str::trim)
        .map(|name| check(name).map(|()| name.to_owned()))
        .collect()
}

/// The error for a system query option a resource does not take.
pub fn unsupported_option(name: &str) -> ApiError {
    ApiError::BadUrl(format!("The query parameter {name} is not supported"))
}

/// Parses a raw query string against a table.
pub fn parse_query(raw: Option<&str>, table: &Table) -> Result<QueryOptions, ApiError> {
    let mut options = QueryOptions::default();
    for (name, value) in query_pairs(raw)? {
        match name.as_str() {
            "$select" => {
                let columns = select_list(&value, |column| check_property(table, column).map(|_| ()))?;
                options.select = Some(columns);
            }
            "$filter" => options.filter = Some(parse_filter(&value, table)?),
            "$top" => {
                let top = value.trim().parse::<usize>().map_err(|_| {
                    ApiError::BadUrl(format!("Invalid value '{value}' for $top query option found."))
                })?;
                options.top = Some(top);
            }
            "$count" => {
                options.count = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::BadUrl(format!(
                            "'{value}' is not a valid count option: use true or false."
                        )));
                    }
                }
            }
            "$orderby" => {
                for item in value.split(',').map(str::trim) {
                    let mut words = item.split_whitespace();
                    let column = words.next().unwrap_or("");
                    check_property(table, column)?;
                    let descending = match words.next() {
                        None | Some("asc") => false,
                        Some("desc") => true,
                        Some(other) => {
                            return Err(syntax_error(format!("'{other}' in $orderby; use asc or desc.")));
                        }
                    };
                    options.orderby.push((column.to_owned(), descending));
                }
            }
            "$skiptoken" => {
                options.skiptoken = Some(PageCookie::parse(&value, &table.config.primary_key)?);
            }
            "$expand" | "$apply" | "$search" => {
                return Err(ApiError::NotSupported(format!("The {name} query option")));
            }
            other if other.starts_with('$') => return Err(unsupported_option(other)),
            _ => {}
        }
    }
    Ok(options)
}

fn check_property(table: &Table, column: &str) -> Result<ColumnType, ApiError> {
    table
        .property_type(column)
        .ok_or_else(|| ApiError::UnknownProperty {
            entity: table.config.logical_name.clone(),
            column: column.to_owned(),
        })
}

/// A parsed `$filter`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `a and b`.
    And(Box<Filter>, Box<Filter>),
    /// `a or b`.
    Or(Box<Filter>, Box<Filter>),
    /// `not a`.
    Not(Box<Filter>),
    /// `column op literal`.
    Compare {
        column: String,
        kind: ColumnType,
        op: CompareOp,
        value: Value,
    },
    /// `contains(column,'x')`, `startswith(…)`, `endswith(…)`.
    Text {
        column: String,
        function: TextFunction,
        argument: String,
    },
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

/// String functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFunction {
    /// `contains`
    Contains,
    /// `startswith`
    StartsWith,
    /// `endswith`
    EndsWith,
}

/// Parses a `$filter` expression against a table.
pub fn parse_filter(text: &str, table: &Table) -> Result<Filter, ApiError> {
    let tokens = lex(text).map_err(|detail| syntax_error(format!("{detail}.")))?;
    let mut parser = FilterParser {
        tokens,
        pos: 0,
        table,
        text,
    };
    let filter = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(syntax_error(format!(
            "unexpected '{}' in $filter '{text}'.",
            parser.describe()
        )));
    }
    Ok(filter)
}

struct FilterParser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    table: &'a Table,
    text: &'a str,
}

impl FilterParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "end of expression".to_owned(),
            Some(Token::Ident(s) | Token::Str(s) | Token::DateTime(s)) => s.clone(),
            Some(other) => format!("{other:?}"),
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Filter, ApiError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ApiError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ApiError> {
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::RParen) {
                return Err(syntax_error(format!("missing ')' in $filter '{}'.", self.text)));
            }
            return Ok(inner);
        }
        let Some(Token::Ident(name)) = self.next() else {
            self.pos = self.pos.saturating_sub(1);
            return Err(syntax_error(format!(
                "expected a property or function but found '{}' in $filter '{}'.",
                self.describe(),
                self.text
            )));
        };
        let function = match name.as_str() {
            "contains" => Some(TextFunction::Contains),
            "startswith" => Some(TextFunction::StartsWith),
            "endswith" => Some(TextFunction::EndsWith),
            _ => None,
        };
        if let Some(function) = function {
            return self.text_function(function);
        }
        if self.peek() == Some(&Token::LParen) {
            return Err(ApiError::NotSupported(format!("The $filter function '{name}'")));
        }
        let kind = check_property(self.table, &name)?;
        let op = match self.next() {
            Some(Token::Ident(op)) => match op.as_str() {
                "eq" => CompareOp::Eq,
                "ne" => CompareOp::Ne,
                "gt" => CompareOp::Gt,
                "ge" => CompareOp::Ge,
                "lt" => CompareOp::Lt,
                "le" => CompareOp::Le,
                "in" | "has" => {
                    return Err(ApiError::NotSupported(format!(
                        "The '{op}' operator (express lists with 'or')"
                    )));
                }
                _ => {
                    return Err(syntax_error(format!(
                        "'{op}' is not a comparison operator in $filter '{}'.",
                        self.text
                    )));
                }
            },
            _ => {
                return Err(syntax_error(format!(
                    "expected a comparison operator after '{name}' in $filter '{}'.",
                    self.text
                )));
            }
        };
        let literal = self.next().filter(Token::is_literal).ok_or_else(|| {
            syntax_error(format!(
                "expected a literal after '{name}' in $filter '{}'.",
                self.text
            ))
        })?;
        let value = literal_for(&name, kind, &literal)?;
        if value.is_null() && !matches!(op, CompareOp::Eq | CompareOp::Ne) {
            return Err(syntax_error(format!(
                "null can only be compared with eq or ne in $filter '{}'.",
                self.text
            )));
        }
        Ok(Filter::Compare {
            column: name,
            kind,
            op,
            value,
        })
    }

    fn text_function(&mut self, function: TextFunction) -> Result<Filter, ApiError> {
        let text = self.text;
        let err = || syntax_error(format!("expected function(property,'text') in $filter '{text}'."));
        if self.next() != Some(Token::LParen) {
            return Err(err());
        }
        let Some(Token::Ident(column)) = self.next() else {
            return Err(err());
        };
        let kind = check_property(self.table, &column)?;
        if !kind.is_text() {
            return Err(ApiError::BadUrl(format!(
                "The function requires a string property but '{column}' is {}.",
                kind.edm()
            )));
        }
        if self.next() != Some(Token::Comma) {
            return Err(err());
        }
        let Some(Token::Str(argument)) = self.next() else {
            return Err(err());
        };
        if self.next() != Some(Token::RParen) {
            return Err(err());
        }
        Ok(Filter::Text {
            column,
            function,
            argument,
        })
    }
}

impl Filter {
    /// Whether a row matches.
    /// The lowest row version a matching row can have, when the filter requires
    /// `versionnumber gt N` or `ge N` on every match (at its top level or under `and`).
    pub fn version_floor(&self) -> Option<u64> {
        match self {
            Filter::And(a, b) => match (a.version_floor(), b.version_floor()) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            },
            Filter::Compare {
                column, op, value, ..
            } if column == "versionnumber" => {
                let n = value.as_u64()?;
                match op {
                    CompareOp::Gt => n.checked_add(1),
                    CompareOp::Ge => Some(n),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    pub fn matches(&self, table: &Table, row: &Row) -> bool {
        match self {
            Filter::And(a, b) => a.matches(table, row) && b.matches(table, row),
            Filter::Or(a, b) => a.matches(table, row) || b.matches(table, row),
            Filter::Not(a) => !a.matches(table, row),
            Filter::Compare {
                column,
                kind,
                op,
                value,
            } => {
                let actual = table.property(row, column);
                match (value.is_null(), actual.is_null()) {
                    (true, is_null) => (*op == CompareOp::Eq) == is_null,
                    // SQL semantics: a comparison with a missing value is never true.
                    (false, true) => false,
                    (false, false) => {
                        let ordering = compare_values(*kind, &actual, value);
                        match op {
                            CompareOp::Eq => ordering == Ordering::Equal,
                            CompareOp::Ne => ordering != Ordering::Equal,
                            CompareOp::Gt => ordering == Ordering::Greater,
                            CompareOp::Ge => ordering != Ordering::Less,
                            CompareOp::Lt => ordering == Ordering::Less,
                            CompareOp::Le => ordering != Ordering::Greater,
                        }
                    }
                }
            }
            Filter::Text {
                column,
                function,
                argument,
            } => {
                let Some(actual) = table.property(row, column).as_str().map(str::to_lowercase) else {
                    return false;
                };
                let argument = argument.to_lowercase();
                match function {
                    TextFunction::Contains => actual.contains(&argument),
                    TextFunction::StartsWith => actual.starts_with(&argument),
                    TextFunction::EndsWith => actual.ends_with(&argument),
                }
            }
        }
    }
}

/// Orders two values of a column type; text without regard to case, `null` first.
pub fn compare_values(kind: ColumnType, a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) if kind.is_text() || kind == ColumnType::Guid => {
            x.to_lowercase().cmp(&y.to_lowercase())
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

/// One page of a query's answer.
#[derive(Debug)]
pub struct Page<'t> {
    /// The rows of this page.
    pub rows: Vec<&'t Row>,
    /// Every row matching the filter, for `@odata.count`.
    pub total: usize,
    /// Where the next page starts, when there are more rows (the `@odata.nextLink`).
    pub next: Option<PageCookie>,
}

/// Runs a query: filter, order, count, `$top`, and paging. `page_size` is what the client asked
/// for with `Prefer: odata.maxpagesize` (already bounded to [`MAX_PAGE_SIZE`]). With `$top` the
/// answer is those rows and no next page; otherwise at most `page_size` rows (5000 by default),
/// resuming after the `$skiptoken`'s last row, with a cookie for the next page when more remain.
pub fn run_page<'t>(table: &'t Table, options: &QueryOptions, page_size: Option<usize>) -> Page<'t> {
    let keep = |row: &&Row| options.filter.as_ref().is_none_or(|f| f.matches(table, row));
    let mut rows: Vec<&Row> = match options.filter.as_ref().and_then(Filter::version_floor) {
        // A change-tracking query reads only the newer rows, then restores primary-key order.
        Some(floor) => {
            let mut rows: Vec<&Row> = table.rows_from_version(floor).filter(keep).collect();
            rows.sort_by_key(|r| r.id);
            rows
        }
        None => table.rows().filter(keep).collect(),
    };
    if !options.orderby.is_empty() {
        rows.sort_by(|a, b| {
            for (column, descending) in &options.orderby {
                let kind = table.property_type(column).unwrap_or(ColumnType::String);
                let ordering = compare_values(kind, &table.property(a, column), &table.property(b, column));
                let ordering = if *descending { ordering.reverse() } else { ordering };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    }
    let total = rows.len();
    if let Some(top) = options.top {
        rows.truncate(top.min(MAX_PAGE_SIZE));
        return Page {
            rows,
            total,
            next: None,
        };
    }
    let size = page_size.unwrap_or(MAX_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    let (page, start) = match &options.skiptoken {
        None => (1, 0),
        // Rows come in primary-key order: resume after the last one seen.
        Some(cookie) if options.orderby.is_empty() => {
            (cookie.page, rows.partition_point(|r| r.id <= cookie.last))
        }
        // Ordered by columns: the page number says how many rows came before.
        Some(cookie) => (
            cookie.page,
            (cookie.page - 1).saturating_mul(size).min(rows.len()),
        ),
    };
    let rest = rows.split_off(start);
    let more = rest.len() > size;
    let rows: Vec<&Row> = rest.into_iter().take(size).collect();
    let next = match (more, rows.first(), rows.last()) {
        (true, Some(first), Some(last)) => Some(PageCookie {
            page: page + 1,
            last: last.id,
            first: first.id,
        }),
        _ => None,
    };
    Page { rows, total, next }
}

/// Runs a query and returns its first page's rows and the count before `$top`.
#[cfg(test)]
fn run_query<'t>(table: &'t Table, options: &QueryOptions) -> (Vec<&'t Row>, usize) {
    let page = run_page(table, options, None);
    (page.rows, page.total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::Conditions;
    use serde_json::json;

    fn store_with_rows() -> Store {
        let mut store = Store::new(&Config::default());
        let mut undo = Vec::new();
        for (id, first, created) in [
            ("cus_1", "Ada", 10),
            ("cus_2", "Grace", 20),
            ("cus_3", "Alan", 30),
        ] {
            let body = json!({"firstname": first, "new_stripeeventcreated": created});
            let Value::Object(body) = body else {
                unreachable!("object literal")
            };
            store
                .upsert(
                    "contacts",
                    &Target::Key {
                        key: 0,
                        values: vec![json!(id)],
                    },
                    body,
                    &Conditions::default(),
                    &mut undo,
                )
                .expect("row");
        }
        store
    }

    fn query(store: &Store, raw: &str) -> Result<Vec<String>, ApiError> {
        let table = store.table("contacts")?;
        let options = parse_query(Some(raw), table)?;
        let (rows, _) = run_query(table, &options);
        Ok(rows
            .iter()
            .map(|r| r.values["new_stripecustomerid"].as_str().unwrap_or("").to_owned())
            .collect())
    }

    #[test]
    fn key_segments() {
        let store = Store::new(&Config::default());
        let id = "00000000-0000-0000-0000-000000000001";
        assert!(matches!(
            parse_path(&format!("contacts({id})"), &store),
            Ok(Resource::Entity {
                target: Target::Id(_),
                ..
            })
        ));
        assert!(matches!(
            parse_path(&format!("contacts(contactid={id})"), &store),
            Ok(Resource::Entity {
                target: Target::Id(_),
                ..
            })
        ));
        let parsed = parse_path("contacts(new_stripecustomerid='cus_''1)')", &store).expect("alternate key");
        assert_eq!(
            parsed,
            Resource::Entity {
                set: "contacts".into(),
                target: Target::Key {
                    key: 0,
                    values: vec![json!("cus_'1)")]
                },
                segment: "contacts(new_stripecustomerid='cus_''1)')".into(),
            }
        );
        for bad in [
            "contacts(not-a-guid)",
            "contacts(new_stripecustomerid='x'",
            "contacts(new_stripecustomerid=)",
            "contacts(new_stripecustomerid=5)",
            "contacts(firstname='x')",
            "contacts(new_stripecustomerid='x',new_stripecustomerid='y')",
            "contacts('abc')",
            "contacts(new_stripecustomerid='unterminated)",
        ] {
            let err = parse_path(bad, &store).expect_err(bad);
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{bad}: {err}");
        }
        assert_eq!(
            parse_path("nothing", &store).expect_err("404").status(),
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(parse_path("$batch", &store).expect("batch"), Resource::Batch);
        assert_eq!(
            parse_path("contacts/$count", &store).expect("count"),
            Resource::EntitySetCount {
                set: "contacts".into()
            }
        );
    }

    #[test]
    fn filters() {
        let store = store_with_rows();
        assert_eq!(
            query(&store, "$filter=firstname eq 'ada'").expect("eq"),
            ["cus_1"]
        );
        assert_eq!(
            query(&store, "$filter=new_stripecustomerid eq 'cus_1' or new_stripecustomerid eq 'cus_3'&$orderby=new_stripecustomerid")
                .expect("or"),
            ["cus_1", "cus_3"]
        );
        assert_eq!(
            query(&store, "$filter=(new_stripeeventcreated gt 10 and new_stripeeventcreated le 30) and not (firstname eq 'Alan')")
                .expect("and"),
            ["cus_2"]
        );
        assert_eq!(
            query(
                &store,
                "$filter=startswith(firstname,'A')&$orderby=firstname desc"
            )
            .expect("fn"),
            ["cus_3", "cus_1"]
        );
        assert_eq!(
            query(
                &store,
                "$filter=lastname eq null&$top=1&$orderby=new_stripeeventcreated desc"
            )
            .expect("null"),
            ["cus_3"]
        );
        assert_eq!(
            query(&store, "$filter=firstname%20eq%20%27Grace%27").expect("encoded"),
            ["cus_2"]
        );
        assert_eq!(
            query(&store, "$filter=firstname+eq+'Grace'").expect("plus"),
            ["cus_2"]
        );
        for bad in [
            "$filter=nope eq 1",
            "$filter=firstname eq 1",
            "$filter=firstname eq",
            "$filter=firstname eq 'a' and",
            "$filter=(firstname eq 'a'",
            "$filter=firstname in ('a','b')",
            "$top=x",
            "$select=nope",
            "$skip=1",
        ] {
            let err = query(&store, bad).expect_err(bad);
            assert!(
                err.status().is_client_error() || err.status() == http::StatusCode::NOT_IMPLEMENTED,
                "{bad}"
            );
        }
    }

    /// Change-tracking queries are answered from the version index; whatever the writes, updates,
    /// deletes and rolled-back change sets before them, the answer (and its paging) is the same as
    /// a scan of every row.
    #[test]
    fn version_queries_answer_as_a_full_scan_does() {
        let mut store = Store::new(&Config::default());
        let mut seed: u64 = 7;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for step in 0..600 {
            let customer = format!("cus_{}", next(120));
            let target = Target::Key {
                key: 0,
                values: vec![json!(customer)],
            };
            let mut undo = Vec::new();
            match next(10) {
                0 | 1 => {
                    let _ = store.delete("contacts", &target, &Conditions::default(), &mut undo);
                }
                _ => {
                    let Value::Object(body) = json!({"firstname": format!("n{step}")}) else {
                        unreachable!("object literal")
                    };
                    store
                        .upsert("contacts", &target, body, &Conditions::default(), &mut undo)
                        .expect("upsert");
                }
            }
            if next(8) == 0 {
                store.rollback(undo);
            }
        }
        let table = store.table("contacts").unwrap();
        let newest = table.rows().map(|r| r.version).max().unwrap();
        for floor in [0, 1000, newest - 300, newest - 37, newest - 1, newest, newest + 5] {
            for filter in [
                format!("versionnumber gt {floor}"),
                format!("versionnumber ge {floor}"),
                format!("startswith(new_stripecustomerid,'cus_1') and versionnumber gt {floor}"),
                format!("versionnumber gt {floor} and versionnumber lt {}", floor + 50),
                format!("versionnumber gt {floor} or firstname eq 'n3'"),
            ] {
                for paging in [None, Some(7)] {
                    let options = parse_query(Some(&format!("$filter={filter}")), table).unwrap();
                    let mut got = Vec::new();
                    let mut page = run_page(table, &options, paging);
                    loop {
                        got.extend(page.rows.iter().map(|r| r.id));
                        let Some(cookie) = page.next.take() else { break };
                        let mut resumed = options.clone();
                        resumed.skiptoken = Some(cookie);
                        page = run_page(table, &resumed, paging);
                    }
                    let scanned: Vec<Guid> = table
                        .rows()
                        .filter(|r| options.filter.as_ref().unwrap().matches(table, r))
                        .map(|r| r.id)
                        .collect();
                    assert_eq!(got, scanned, "{filter}, page size {paging:?}");
                }
            }
        }
    }
}
