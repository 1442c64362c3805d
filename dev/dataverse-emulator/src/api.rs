//! One Web API operation against the store: routing by method and resource, conditional headers,
//! `Prefer: return=representation`, and the documented answers (status codes, `OData-EntityId`,
//! `@odata.context`). Synchronous: the caller holds the store lock. Used for top-level requests and for
//! each operation of a `$batch`.

use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::bulk;
use crate::error::ApiError;
use crate::metadata;
use crate::odata::{self, BulkAction, Resource};
use crate::response::ApiResponse;
use crate::store::{Conditions, IfMatch, Store, Target, Undo, WriteOutcome, normalize_etag};

/// One Web API request, with its path already relative to the service root and percent-decoded.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path under `/api/data/v9.2/`.
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// The kind of operation, for latency and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `POST` to an entity set.
    Create,
    /// `GET` of one row.
    Retrieve,
    /// `GET` of a set (or anything else read-only).
    Query,
    /// `PATCH`.
    Update,
    /// `DELETE`.
    Delete,
}

impl OpKind {
    /// Classifies a request from its method and path, before it is parsed.
    pub fn of(method: &Method, path: &str) -> Self {
        match *method {
            Method::POST if path.ends_with(".UpdateMultiple") || path.ends_with(".UpsertMultiple") => {
                Self::Update
            }
            Method::POST => Self::Create,
            Method::PATCH | Method::PUT => Self::Update,
            Method::DELETE => Self::Delete,
            _ if path.contains('(') && !path.starts_with("WhoAmI") => Self::Retrieve,
            _ => Self::Query,
        }
    }
}

/// Counts of row writes, for the admin counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Rows created.
    pub created: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Columns and keys created through the metadata API.
    pub definitions: u64,
}

impl Writes {
    /// Whether anything changed (and must be persisted).
    pub fn any(&self) -> bool {
        self.records() > 0 || self.definitions > 0
    }

    /// Rows written, at least 1: what an operation costs in execution time (a bulk action pays for
    /// each of its records).
    pub fn cost(&self) -> u32 {
        u32::try_from(self.records()).unwrap_or(u32::MAX).max(1)
    }

    fn records(&self) -> u64 {
        self.created + self.updated + self.deleted
    }
}

/// The answer to one operation and what it changed.
#[derive(Debug)]
pub struct Outcome {
    /// The answer.
    pub response: ApiResponse,
    /// Rows written.
    pub writes: Writes,
    /// `contacts(<guid>)` of the row created or updated, for `Content-ID` references in a change set.
    pub entity_path: Option<String>,
}

/// Where answers point: the service root URL, and whether the answer is a `$batch` part.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `http://host/api/data/v9.2/`.
    pub base_url: &'a str,
    /// Inside `$batch`, creates also answer with `Location`, as the documented batch responses show.
    pub in_batch: bool,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a `Prefer` header asks for this preference.
pub fn prefers(headers: &HeaderMap, preference: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(preference))
}

/// The page size a `Prefer: odata.maxpagesize=N` asks for, when Dataverse honours it (1–5000;
/// larger values are ignored, as documented).
pub fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("odata.maxpagesize")
                .then(|| value.trim().trim_matches('"').parse::<usize>().ok())
                .flatten()
        })
        .find(|n| (1..=odata::MAX_PAGE_SIZE).contains(n))
}

/// The `@odata.nextLink` of a page: the request's own query options (minus an earlier
/// `$skiptoken`) and the cookie of the next page.
fn next_link(base: &str, set: &str, query: Option<&str>, cookie: &str) -> String {
    let mut pairs: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            odata::percent_decode(name, true).map_or(true, |n| n != "$skiptoken")
        })
        .collect();
    let token = format!("$skiptoken={}", odata::percent_encode(cookie));
    pairs.push(&token);
    format!("{base}{set}?{}", pairs.join("&"))
}

fn conditions(headers: &HeaderMap) -> Conditions {
    let if_match = header_str(headers, "if-match").and_then(IfMatch::parse);
    // Microsoft's own samples send `If-None-Match: null` on every request; it means no condition.
    let if_none_match_any = header_str(headers, "if-none-match").is_some_and(|v| v.trim() == "*");
    Conditions {
        if_match,
        if_none_match_any,
    }
}

fn json_body(request: &Request<'_>, set: &str) -> Result<Map<String, Value>, ApiError> {
    if let Some(content_type) = header_str(request.headers, "content-type")
        && !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return Err(ApiError::MalformedBody(format!(
            "The Content-Type '{content_type}' is not supported; send the entity as application/json."
        )));
    }
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(format!(
            "Error identified in Payload provided by the user for Entity :'{set}'. The request body is empty; a JSON object is required."
        )));
    }
    match serde_json::from_slice::<Value>(request.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::MalformedBody(format!(
            "Error identified in Payload provided by the user for Entity :'{set}'. The request body must be a JSON object, not {}.",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ))),
        Err(e) => Err(ApiError::MalformedBody(format!(
            "Error identified in Payload provided by the user for Entity :'{set}'. The request body is not valid JSON: {e}."
        ))),
    }
}

fn context_url(base: &str, set: &str, select: Option<&[String]>, entity: bool) -> String {
    let columns = select.map(|s| format!("({})", s.join(","))).unwrap_or_default();
    let suffix = if entity { "/$entity" } else { "" };
    format!("{base}$metadata#{set}{columns}{suffix}")
}

/// Runs one operation. Writes record their undo entries in `undo`.
pub fn execute(
    store: &mut Store,
    ctx: &Context<'_>,
    request: &Request<'_>,
    undo: &mut Vec<Undo>,
) -> Result<Outcome, ApiError> {
    // Key index jobs run in the background in Dataverse: here they catch up before each operation.
    store.advance_keys(std::time::Instant::now());
    let resource = odata::parse_path(request.path, store)?;
    let method = request.method;
    let plain = |response: ApiResponse| Outcome {
        response,
        writes: Writes::default(),
        entity_path: None,
    };
    match resource {
        Resource::ServiceRoot if method == Method::GET => {
            let sets: Vec<Value> = store
                .entity_sets()
                .map(|s| json!({"name": s, "kind": "EntitySet", "url": s}))
                .collect();
            let body = json!({"@odata.context": format!("{}$metadata", ctx.base_url), "value": sets});
            Ok(plain(ApiResponse::odata(StatusCode::OK).odata_json(&body)))
        }
        Resource::WhoAmI if method == Method::GET => {
            let body = json!({
                "@odata.context": format!("{}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", ctx.base_url),
                "BusinessUnitId": "00000000-0000-0000-0000-00000000b0b0",
                "UserId": "00000000-0000-0000-0000-00000000a11c",
                "OrganizationId": "00000000-0000-0000-0000-00000000a6a6",
            });
            Ok(plain(ApiResponse::odata(StatusCode::OK).odata_json(&body)))
        }
        Resource::BulkAction { set, action } if method == Method::POST => {
            let body = json_body(request, &set)?;
            let done = bulk::run(store, &set, action, body, undo)?;
            let writes = Writes {
                created: done.created,
                updated: done.updated,
                ..Writes::default()
            };
            let response = if action == BulkAction::Create {
                let ids: Vec<String> = done.ids.iter().map(ToString::to_string).collect();
                let body = json!({
                    "@odata.context": format!("{}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", ctx.base_url),
                    "Ids": ids,
                });
                ApiResponse::odata(StatusCode::OK).odata_json(&body)
            } else {
                // The documented answer of UpdateMultiple and UpsertMultiple: no body.
                ApiResponse::odata(StatusCode::NO_CONTENT)
            };
            Ok(Outcome {
                response,
                writes,
                entity_path: None,
            })
        }
        Resource::EntityDefinitions { key } if method == Method::GET => {
            let response = match key {
                None => metadata::query(store, ctx.base_url, request.query)?,
                Some(key) => metadata::retrieve(store, ctx.base_url, &key, request.query)?,
            };
            Ok(plain(response))
        }
        Resource::DefinitionPart { table, part, item } if method == Method::GET => Ok(plain(
            metadata::read_part(store, ctx.base_url, &table, part, item.as_ref(), request.query)?,
        )),
        Resource::DefinitionPart {
            table,
            part,
            item: None,
        } if method == Method::POST => {
            let body = json_body(request, "EntityDefinitions")?;
            let response = metadata::create_part(
                store,
                ctx.base_url,
                &table,
                part,
                &body,
                std::time::Instant::now(),
            )?;
            Ok(Outcome {
                response,
                writes: Writes {
                    definitions: 1,
                    ..Writes::default()
                },
                entity_path: None,
            })
        }
        Resource::Metadata => Err(ApiError::NotSupported("The $metadata document".to_owned())),
        Resource::Batch => Err(ApiError::MalformedBatch(
            "A batch request cannot contain another batch.".to_owned(),
        )),
        Resource::EntitySet { set } if method == Method::GET => {
            let table = store.table(&set)?;
            let options = odata::parse_query(request.query, table)?;
            let page_size = max_page_size(request.headers);
            let page = odata::run_page(table, &options, page_size);
            let select = options.select.as_deref();
            let values: Vec<Value> = page
                .rows
                .into_iter()
                .map(|row| Value::Object(table.row_json(row, select)))
                .collect();
            let mut body = Map::new();
            body.insert(
                "@odata.context".into(),
                Value::String(context_url(ctx.base_url, &set, select, false)),
            );
            if options.count {
                body.insert("@odata.count".into(), Value::from(page.total));
            }
            body.insert("value".into(), Value::Array(values));
            if let Some(next) = page.next {
                let link = next_link(
                    ctx.base_url,
                    &set,
                    request.query,
                    &next.render(&table.config.primary_key),
                );
                body.insert("@odata.nextLink".into(), Value::String(link));
            }
            let mut response = ApiResponse::odata(StatusCode::OK).odata_json(&Value::Object(body));
            if let Some(size) = page_size {
                response.push(
                    HeaderName::from_static("preference-applied"),
                    &format!("odata.maxpagesize={size}"),
                );
            }
            Ok(plain(response))
        }
        Resource::EntitySetCount { set } if method == Method::GET => {
            let table = store.table(&set)?;
            let mut response = ApiResponse::odata(StatusCode::OK);
            response.push(header::CONTENT_TYPE, "text/plain");
            response.body = table.len().min(5000).to_string().into_bytes();
            Ok(plain(response))
        }
        Resource::EntitySet { set } if method == Method::POST => {
            let options = odata::parse_query(request.query, store.table(&set)?)?;
            let body = json_body(request, &set)?;
            let id = store.create(&set, body, undo)?;
            let entity_path = format!("{set}({id})");
            let writes = Writes {
                created: 1,
                ..Writes::default()
            };
            let response = if prefers(request.headers, "return=representation") {
                let table = store.table(&set)?;
                let row = store.retrieve(&set, &Target::Id(id))?;
                representation(
                    ctx,
                    table,
                    &set,
                    row,
                    options.select.as_deref(),
                    StatusCode::CREATED,
                )
            } else {
                let mut response = ApiResponse::odata(StatusCode::NO_CONTENT);
                let url = format!("{}{entity_path}", ctx.base_url);
                if ctx.in_batch {
                    response.push(header::LOCATION, &url);
                }
                response.push(HeaderName::from_static("odata-entityid"), &url);
                response
            };
            Ok(Outcome {
                response,
                writes,
                entity_path: Some(entity_path),
            })
        }
        Resource::Entity { set, target, .. } if method == Method::GET => {
            let table = store.table(&set)?;
            let options = odata::parse_query(request.query, table)?;
            let row = store.retrieve(&set, &target)?;
            if let Some(tag) = header_str(request.headers, "if-none-match")
                && tag.trim() != "null"
                && tag
                    .split(',')
                    .any(|t| normalize_etag(t) == row.version.to_string())
            {
                return Ok(plain(ApiResponse::odata(StatusCode::NOT_MODIFIED)));
            }
            let select = options.select.as_deref();
            let mut body = table.row_json(row, select);
            body.insert(
                "@odata.context".into(),
                Value::String(context_url(ctx.base_url, &set, select, true)),
            );
            Ok(plain(
                ApiResponse::odata(StatusCode::OK).odata_json(&Value::Object(body)),
            ))
        }
        Resource::Entity { set, target, segment } if method == Method::PATCH => {
            let options = odata::parse_query(request.query, store.table(&set)?)?;
            let body = json_body(request, &set)?;
            let (id, outcome) = store.upsert(&set, &target, body, &conditions(request.headers), undo)?;
            let writes = match outcome {
                WriteOutcome::Created => Writes {
                    created: 1,
                    ..Writes::default()
                },
                WriteOutcome::Updated => Writes {
                    updated: 1,
                    ..Writes::default()
                },
            };
            let response = if prefers(request.headers, "return=representation") {
                let status = if outcome == WriteOutcome::Created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let table = store.table(&set)?;
                let row = store.retrieve(&set, &Target::Id(id))?;
                representation(ctx, table, &set, row, options.select.as_deref(), status)
            } else {
                // The documented answer names the row the way the request did.
                let named = match target {
                    Target::Id(_) => format!("{set}({id})"),
                    Target::Key { .. } => segment,
                };
                let mut response = ApiResponse::odata(StatusCode::NO_CONTENT);
                response.push(
                    HeaderName::from_static("odata-entityid"),
                    &format!("{}{named}", ctx.base_url),
                );
                response
            };
            Ok(Outcome {
                response,
                writes,
                entity_path: Some(format!("{set}({id})")),
            })
        }
        Resource::Entity { set, target, .. } if method == Method::DELETE => {
            store.delete(&set, &target, &conditions(request.headers), undo)?;
            Ok(Outcome {
                response: ApiResponse::odata(StatusCode::NO_CONTENT),
                writes: Writes {
                    deleted: 1,
                    ..Writes::default()
                },
                entity_path: None,
            })
        }
        Resource::Property {
            set,
            target,
            segment,
            column,
        } if method == Method::GET => {
            let table = store.table(&set)?;
            let row = store.retrieve(&set, &target)?;
            let value = table.property(row, &column);
            if value.is_null() {
                return Ok(plain(ApiResponse::odata(StatusCode::NO_CONTENT)));
            }
            let body = json!({
                "@odata.context": format!("{}$metadata#{segment}/{column}", ctx.base_url),
                "value": value,
            });
            Ok(plain(ApiResponse::odata(StatusCode::OK).odata_json(&body)))
        }
        Resource::Property {
            set, target, column, ..
        } if method == Method::PUT || method == Method::DELETE => {
            // A single-column update: the row must exist, as with `If-Match: *`.
            let value = if method == Method::PUT {
                let mut body = json_body(request, &set)?;
                body.remove("value").ok_or_else(|| {
                    ApiError::MalformedBody(format!(
                        "A single-property update takes a body of the form {{\"value\": …}} for '{column}'."
                    ))
                })?
            } else {
                Value::Null
            };
            let mut update = Map::new();
            update.insert(column, value);
            let mut conditions = conditions(request.headers);
            conditions.if_match.get_or_insert(IfMatch::Any);
            let (id, _) = store.upsert(&set, &target, update, &conditions, undo)?;
            Ok(Outcome {
                response: ApiResponse::odata(StatusCode::NO_CONTENT),
                writes: Writes {
                    updated: 1,
                    ..Writes::default()
                },
                entity_path: Some(format!("{set}({id})")),
            })
        }
        _ => Err(ApiError::MethodNotAllowed(method.to_string())),
    }
}

fn representation(
    ctx: &Context<'_>,
    table: &crate::store::Table,
    set: &str,
    row: &crate::store::Row,
    select: Option<&[String]>,
    status: StatusCode,
) -> ApiResponse {
    let mut body = table.row_json(row, select);
    body.insert(
        "@odata.context".into(),
        Value::String(context_url(ctx.base_url, set, select, true)),
    );
    let mut response = ApiResponse::odata(status);
    response.push(header::ETAG, &row.etag());
    response.push(
        HeaderName::from_static("preference-applied"),
        "return=representation",
    );
    response.odata_json(&Value::Object(body))
}
