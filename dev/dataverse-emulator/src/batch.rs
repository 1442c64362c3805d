//! The `$batch` wire format (OData 4.0 §11.7, as Dataverse documents it): parsing a `multipart/mixed`
//! body into requests and change sets, resolving inner URLs and `Content-ID` references, and writing the
//! `batchresponse_…`/`changesetresponse_…` multipart answer. Execution lives in the server module.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::error::ApiError;
use crate::odata::percent_decode;
use crate::response::ApiResponse;

/// The most operations one batch may hold, change set members included.
pub const MAX_OPERATIONS: usize = 1000;

/// One operation of a batch.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `Content-ID`, from the part headers or the inner request headers.
    pub content_id: Option<String>,
    /// The inner method.
    pub method: Method,
    /// The inner URL as written.
    pub url: String,
    /// The inner headers.
    pub headers: HeaderMap,
    /// The inner body.
    pub body: Vec<u8>,
}

/// A top-level item: a lone request or an atomic change set.
#[derive(Debug, Clone)]
pub enum Item {
    /// A request on its own.
    Single(Operation),
    /// Requests that succeed or fail together.
    ChangeSet(Vec<Operation>),
}

fn malformed(detail: impl std::fmt::Display) -> ApiError {
    ApiError::MalformedBatch(format!("The batch request body is malformed: {detail}"))
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut pieces = content_type.split(';');
    let media = pieces.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    pieces
        .find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        })
        .filter(|b| !b.is_empty())
}

/// Parses a batch body.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Item>, ApiError> {
    let content_type = content_type.ok_or_else(|| {
        malformed("the request has no Content-Type; use multipart/mixed; boundary=\"batch_<id>\"")
    })?;
    let boundary = boundary(content_type).ok_or_else(|| {
        malformed(format!(
            "the Content-Type '{content_type}' must be multipart/mixed with a boundary parameter"
        ))
    })?;
    let text = std::str::from_utf8(body).map_err(|_| malformed("the body is not valid UTF-8"))?;
    let mut items = Vec::new();
    for (index, part) in split_parts(text, &boundary)?.into_iter().enumerate() {
        let (headers, content) =
            split_headers(part).map_err(|e| malformed(format!("part {}: {e}", index + 1)))?;
        let part_type = find(&headers, "content-type")
            .ok_or_else(|| malformed(format!("part {} has no Content-Type header", index + 1)))?;
        if let Some(changeset) = boundary_of_changeset(part_type) {
            let mut operations = Vec::new();
            for (j, member) in split_parts(content, &changeset)?.into_iter().enumerate() {
                let (member_headers, member_content) = split_headers(member)
                    .map_err(|e| malformed(format!("change set part {}: {e}", j + 1)))?;
                let member_type = find(&member_headers, "content-type").unwrap_or("");
                if boundary_of_changeset(member_type).is_some() {
                    return Err(malformed("change sets cannot be nested"));
                }
                let operation = operation(&member_headers, member_content)
                    .map_err(|e| malformed(format!("change set part {}: {e}", j + 1)))?;
                if operation.method == Method::GET {
                    return Err(malformed("GET requests are not allowed inside a change set"));
                }
                operations.push(operation);
            }
            items.push(Item::ChangeSet(operations));
        } else {
            let operation =
                operation(&headers, content).map_err(|e| malformed(format!("part {}: {e}", index + 1)))?;
            items.push(Item::Single(operation));
        }
    }
    Ok(items)
}

/// The number of operations, change set members included.
pub fn operation_count(items: &[Item]) -> usize {
    items
        .iter()
        .map(|item| match item {
            Item::Single(_) => 1,
            Item::ChangeSet(members) => members.len(),
        })
        .sum()
}

fn boundary_of_changeset(content_type: &str) -> Option<String> {
    boundary(content_type)
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits a multipart body on its boundary. The line break before a delimiter belongs to the delimiter.
fn split_parts<'t>(text: &'t str, boundary: &str) -> Result<Vec<&'t str>, ApiError> {
    let delimiter = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    let mut closed = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == delimiter || bare == close {
            if let Some(s) = start {
                let part = &text[s..pos];
                let part = part.strip_suffix('\n').unwrap_or(part);
                parts.push(part.strip_suffix('\r').unwrap_or(part));
            }
            if bare == close {
                closed = true;
                break;
            }
            start = Some(pos + line.len());
        }
        pos += line.len();
    }
    if !closed {
        return Err(malformed(format!("the closing delimiter '{close}' is missing")));
    }
    Ok(parts)
}

/// Header lines as (name, value), in order.
type Headers = Vec<(String, String)>;

/// Splits header lines from the content that follows the first empty line.
fn split_headers(part: &str) -> Result<(Headers, &str), String> {
    let mut headers = Vec::new();
    let mut pos = 0;
    for line in part.split_inclusive('\n') {
        pos += line.len();
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.is_empty() {
            return Ok((headers, &part[pos..]));
        }
        let (name, value) = bare
            .split_once(':')
            .ok_or_else(|| format!("the header line '{bare}' has no ':'"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok((headers, ""))
}

fn operation(part_headers: &[(String, String)], content: &str) -> Result<Operation, String> {
    let part_type = find(part_headers, "content-type").unwrap_or("");
    if !part_type.to_ascii_lowercase().starts_with("application/http") {
        return Err(format!(
            "the Content-Type '{part_type}' must be application/http or multipart/mixed"
        ));
    }
    let content = content.trim_start_matches(['\r', '\n']);
    let (request_line, rest) = match content.split_once('\n') {
        Some((line, rest)) => (line.trim_end_matches('\r'), rest),
        None => (content, ""),
    };
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(url)) = (words.next(), words.next()) else {
        return Err(format!(
            "'{request_line}' is not a request line (METHOD URL HTTP/1.1)"
        ));
    };
    if let Some(version) = words.next()
        && !version.starts_with("HTTP/")
    {
        return Err(format!(
            "'{request_line}' is not a request line (METHOD URL HTTP/1.1)"
        ));
    }
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("'{method}' is not an HTTP method"))?;
    let (inner_headers, body) = split_headers(rest)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &inner_headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("'{name}' is not a header name"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("the value of '{name}' is not valid"))?;
        headers.append(name, value);
    }
    let content_id = find(part_headers, "content-id")
        .or_else(|| find(&inner_headers, "content-id"))
        .map(str::to_owned);
    let body = body.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
    Ok(Operation {
        content_id,
        method,
        url: url.to_owned(),
        headers,
        body,
    })
}

/// Resolves an inner URL to a decoded path under the service root and its raw query. `$<id>` refers
/// to a row created earlier in the same change set.
pub fn resolve_url(
    url: &str,
    content_ids: &HashMap<String, String>,
) -> Result<(String, Option<String>), ApiError> {
    let (raw_path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    // `$<id>` is a reference when the id is known or numeric (how Dataverse's examples number them);
    // anything else starting with `$` (`$metadata`) is an ordinary path.
    let reference = raw_path
        .strip_prefix('$')
        .map(|r| r.split_once('/').map_or((r, ""), |(i, rest)| (i, rest)));
    let reference = reference.filter(|(id, _)| {
        content_ids.contains_key(*id) || (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
    });
    let path = if let Some((id, rest)) = reference {
        let target = content_ids.get(id).ok_or_else(|| {
            ApiError::MalformedBatch(format!(
                "Content-ID Reference: '${id}' does not exist in the batch context."
            ))
        })?;
        if rest.is_empty() {
            target.clone()
        } else {
            format!("{target}/{rest}")
        }
    } else {
        let without_origin = match raw_path.split_once("://") {
            Some((_, after)) => after.find('/').map_or("/", |i| &after[i..]),
            None => raw_path,
        };
        if without_origin.starts_with('/') {
            match crate::odata::split_service_path(without_origin) {
                Some((_, rest)) => percent_decode(rest, false)?,
                None => {
                    return Err(ApiError::MalformedBatch(format!(
                        "The URL '{url}' is not under the service root /api/data/v9.2/."
                    )));
                }
            }
        } else {
            percent_decode(without_origin, false)?
        }
    };
    Ok((path, query))
}

/// One item of the answer.
#[derive(Debug)]
pub enum ResponseItem {
    /// The answer to a lone request, or the single failure answer of a change set.
    Single {
        content_id: Option<String>,
        response: ApiResponse,
    },
    /// The answers of a change set that succeeded.
    ChangeSet(Vec<(Option<String>, ApiResponse)>),
}

/// Writes the multipart answer; returns the boundary and the body.
pub fn render(items: &[ResponseItem]) -> (String, Vec<u8>) {
    let boundary = format!("batchresponse_{}", crate::values::Guid::new_random());
    let mut out = String::new();
    for item in items {
        out.push_str(&format!("--{boundary}\r\n"));
        match item {
            ResponseItem::Single { content_id, response } => {
                write_part(&mut out, content_id.as_deref(), response)
            }
            ResponseItem::ChangeSet(parts) => {
                let changeset = format!("changesetresponse_{}", crate::values::Guid::new_random());
                out.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
                ));
                for (content_id, response) in parts {
                    out.push_str(&format!("--{changeset}\r\n"));
                    write_part(&mut out, content_id.as_deref(), response);
                }
                out.push_str(&format!("--{changeset}--\r\n"));
            }
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    (boundary, out.into_bytes())
}

fn write_part(out: &mut String, content_id: Option<&str>, response: &ApiResponse) {
    out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&format!(
        "HTTP/1.1 {} {}\r\n",
        response.status.as_u16(),
        response.status.canonical_reason().unwrap_or("")
    ));
    for (name, value) in &response.headers {
        out.push_str(&format!(
            "{}: {}\r\n",
            canonical_header(name.as_str()),
            value.to_str().unwrap_or("")
        ));
    }
    out.push_str("\r\n");
    out.push_str(&String::from_utf8_lossy(&response.body));
    out.push_str("\r\n");
}

/// `odata-entityid` → `OData-EntityId`, as the documented responses spell headers.
fn canonical_header(name: &str) -> String {
    match name {
        "odata-version" => "OData-Version".to_owned(),
        "odata-entityid" => "OData-EntityId".to_owned(),
        "etag" => "ETag".to_owned(),
        other => other
            .split('-')
            .map(|w| {
                let mut chars = w.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const DOC_REQUEST: &str = "--batch_AAA123\r\nContent-Type: multipart/mixed; boundary=changeset_BBB456\r\n\r\n--changeset_BBB456\r\nContent-Type: application/http\r\nContent-Transfer-Encoding:binary\r\nContent-ID: 1\r\n\r\nPOST http://org.example/api/data/v9.2/contacts HTTP/1.1\r\nContent-Type: application/json;type=entry\r\n\r\n{\"firstname\":\"a\"}\r\n--changeset_BBB456\r\nContent-Type: application/http\r\nContent-Transfer-Encoding:binary\r\nContent-ID: 2\r\n\r\nPATCH $1 HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"lastname\":\"b\"}\r\n--changeset_BBB456--\r\n--batch_AAA123\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/contacts?$select=fullname HTTP/1.1\r\n\r\n\r\n--batch_AAA123--\r\n";

    #[test]
    fn parses_change_sets_and_lone_requests() {
        let items = parse(
            Some("multipart/mixed;boundary=batch_AAA123"),
            DOC_REQUEST.as_bytes(),
        )
        .expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!(operation_count(&items), 3);
        let Item::ChangeSet(members) = &items[0] else {
            panic!("change set first")
        };
        assert_eq!(members[0].content_id.as_deref(), Some("1"));
        assert_eq!(members[0].method, Method::POST);
        assert_eq!(members[0].body, br#"{"firstname":"a"}"#);
        assert_eq!(members[1].url, "$1");
        let Item::Single(get) = &items[1] else {
            panic!("lone request second")
        };
        assert_eq!(get.url, "/api/data/v9.2/contacts?$select=fullname");
        assert!(get.body.is_empty());
    }

    #[test]
    fn accepts_bare_line_feeds_and_quoted_boundaries() {
        let lf = DOC_REQUEST.replace("\r\n", "\n");
        let items = parse(Some("multipart/mixed; boundary=\"batch_AAA123\""), lf.as_bytes()).expect("parses");
        assert_eq!(operation_count(&items), 3);
    }

    #[test]
    fn malformed_bodies_are_explained() {
        let cases: [(&str, &str, &str); 6] = [
            ("application/json", "{}", "multipart/mixed"),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n",
                "closing delimiter",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\n\r\nGET contacts HTTP/1.1\r\n--b--",
                "no Content-Type",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: application/http\r\n\r\nnonsense\r\n--b--",
                "request line",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: text/plain\r\n\r\nGET contacts HTTP/1.1\r\n--b--",
                "application/http",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: application/http\r\n\r\nGET contacts HTTP/1.1\r\n--c--\r\n--b--",
                "GET requests are not allowed",
            ),
        ];
        for (content_type, body, needle) in cases {
            let err = parse(Some(content_type), body.as_bytes()).expect_err(needle);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn resolves_urls() {
        let mut ids = HashMap::new();
        ids.insert(
            "1".to_owned(),
            "contacts(00000000-0000-0000-0000-000000000001)".to_owned(),
        );
        let cases = [
            ("contacts", "contacts"),
            ("/api/data/v9.2/contacts", "contacts"),
            (
                "http://host:8090/api/data/v9.2/contacts(new_stripecustomerid='a%20b')",
                "contacts(new_stripecustomerid='a b')",
            ),
            ("[Organization URI]/api/data/v9.2/contacts", "contacts"),
            ("$1", "contacts(00000000-0000-0000-0000-000000000001)"),
        ];
        for (url, expected) in cases {
            let resolved = if url.starts_with('[') {
                resolve_url(&url.replace("[Organization URI]", "http://x"), &ids)
            } else {
                resolve_url(url, &ids)
            };
            assert_eq!(resolved.expect(url).0, expected, "{url}");
        }
        let (path, query) = resolve_url("contacts?$top=1", &ids).expect("query");
        assert_eq!((path.as_str(), query.as_deref()), ("contacts", Some("$top=1")));
        let err = resolve_url("$2", &ids).expect_err("unknown id");
        assert!(
            err.to_string()
                .contains("Content-ID Reference: '$2' does not exist")
        );
        assert!(resolve_url("/other/contacts", &ids).is_err());
    }

    #[test]
    fn renders_the_documented_layout() {
        let mut created = ApiResponse::odata(StatusCode::NO_CONTENT);
        created.push(
            HeaderName::from_static("odata-entityid"),
            "http://x/api/data/v9.2/contacts(1)",
        );
        let items = vec![
            ResponseItem::ChangeSet(vec![(Some("1".to_owned()), created.clone())]),
            ResponseItem::Single {
                content_id: None,
                response: created,
            },
        ];
        let (boundary, body) = render(&items);
        let text = String::from_utf8(body).expect("utf8");
        assert!(boundary.starts_with("batchresponse_"));
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Type: multipart/mixed; boundary=changesetresponse_"
        )));
        assert!(text.contains("Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nOData-EntityId: http://x/api/data/v9.2/contacts(1)\r\n\r\n\r\n--changesetresponse_"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        let reparsed = split_parts(&text, &boundary).expect("well formed");
        assert_eq!(reparsed.len(), 2);
    }
}
