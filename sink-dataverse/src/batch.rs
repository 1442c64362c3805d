//! The `$batch` wire format (OData 4.0 `multipart/mixed`, as Dataverse documents it), written by
//! hand because the sink needs only a small part of it: independent requests (no change sets;
//! with `Prefer: odata.continue-on-error` one failure does not stop its neighbours), each with a
//! `Content-ID`, and the answers matched back by `Content-ID` or position. Pure.

/// One request inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRequest {
    pub method: &'static str,
    /// Absolute URL of the resource.
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    /// JSON body, for writes.
    pub body: Option<String>,
}

/// One answer inside a batch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartResponse {
    pub content_id: Option<String>,
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl PartResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fresh boundary, `batch_<random>`.
pub fn new_boundary() -> String {
    format!("batch_{:032x}", rand::random::<u128>())
}

/// The batch body for `parts`; part *i* carries `Content-ID: i+1`.
pub fn render(boundary: &str, parts: &[PartRequest]) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        out.push_str(&format!("--{boundary}\r\n"));
        out.push_str("Content-Type: application/http\r\n");
        out.push_str("Content-Transfer-Encoding: binary\r\n");
        out.push_str(&format!("Content-ID: {}\r\n\r\n", i + 1));
        out.push_str(&format!("{} {} HTTP/1.1\r\n", part.method, part.url));
        for (name, value) in &part.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if part.body.is_some() {
            out.push_str("Content-Type: application/json; type=entry\r\n");
        }
        out.push_str("\r\n");
        if let Some(body) = &part.body {
            out.push_str(body);
        }
        out.push_str("\r\n");
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let mut pieces = content_type.split(';');
    let media = pieces.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    pieces
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
}

/// Reads a batch response into its answers, in order. Answers inside a change set are listed in
/// place of the change set.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<PartResponse>, String> {
    let boundary = boundary_of(content_type).ok_or_else(|| {
        format!("the batch response has content type `{content_type}`, not multipart/mixed")
    })?;
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    parse_into(&text, &boundary, &mut out)?;
    Ok(out)
}

fn parse_into(text: &str, boundary: &str, out: &mut Vec<PartResponse>) -> Result<(), String> {
    for part in split_parts(text, boundary)? {
        let (headers, content) = split_headers(part);
        let content_type = find(&headers, "content-type").unwrap_or("");
        if let Some(inner) = boundary_of(content_type) {
            parse_into(content, &inner, out)?;
            continue;
        }
        let content_id = find(&headers, "content-id").map(str::to_string);
        let content = content.trim_start_matches(['\r', '\n']);
        let (status_line, rest) = content.split_once('\n').unwrap_or((content, ""));
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("`{}` is not an HTTP status line", status_line.trim()))?;
        let (inner_headers, body) = split_headers(rest);
        let content_id = content_id.or_else(|| find(&inner_headers, "content-id").map(str::to_string));
        out.push(PartResponse {
            content_id,
            status,
            headers: inner_headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
            body: body.trim_end_matches(['\r', '\n']).as_bytes().to_vec(),
        });
    }
    Ok(())
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The parts between the delimiters; the line break before a delimiter belongs to it.
fn split_parts<'t>(text: &'t str, boundary: &str) -> Result<Vec<&'t str>, String> {
    let delimiter = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == delimiter || bare == close {
            if let Some(s) = start {
                let part = &text[s..pos];
                let part = part.strip_suffix('\n').unwrap_or(part);
                parts.push(part.strip_suffix('\r').unwrap_or(part));
            }
            if bare == close {
                return Ok(parts);
            }
            start = Some(pos + line.len());
        }
        pos += line.len();
    }
    Err(format!("the closing delimiter `{close}` is missing"))
}

/// Header lines up to the first empty line, and what follows.
fn split_headers(part: &str) -> (Vec<(String, String)>, &str) {
    let mut headers = Vec::new();
    let mut pos = 0;
    for line in part.split_inclusive('\n') {
        pos += line.len();
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.is_empty() {
            return (headers, &part[pos..]);
        }
        if let Some((name, value)) = bare.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    (headers, "")
}

/// Matches the answers of a batch to its `n` operations, one to one: by `Content-ID` when the
/// answers carry it (in any order), by position when none does (Dataverse answers in request
/// order). Anything else (a part too many or too few, an id missing from some answers, an id
/// unknown or given twice) is an error: the whole batch is then retried, so no operation is ever
/// given another's answer.
pub fn match_answers(parts: Vec<PartResponse>, n: usize) -> Result<Vec<PartResponse>, String> {
    if parts.len() != n {
        return Err(format!(
            "the batch response has {} answers for {n} operations",
            parts.len()
        ));
    }
    let with_id = parts.iter().filter(|p| p.content_id.is_some()).count();
    if with_id == 0 {
        return Ok(parts);
    }
    if with_id != n {
        return Err(format!(
            "{} of {n} answers in the batch response carry no Content-ID",
            n - with_id
        ));
    }
    let mut slots: Vec<Option<PartResponse>> = (0..n).map(|_| None).collect();
    for part in parts {
        let id = part.content_id.as_deref().unwrap_or_default().trim().to_string();
        let slot = id
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| format!("the batch response answers an unknown Content-ID `{id}`"))?;
        if slot.is_some() {
            return Err(format!("the batch response answers Content-ID {id} twice"));
        }
        *slot = Some(part);
    }
    // n answers, n distinct ids within 1..=n: every slot is filled.
    Ok(slots.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: Option<&str>, status: u16) -> PartResponse {
        PartResponse {
            content_id: id.map(str::to_string),
            status,
            headers: Vec::new(),
            body: status.to_string().into_bytes(),
        }
    }

    #[test]
    fn answers_are_matched_one_to_one_or_the_batch_fails() {
        let statuses =
            |r: Result<Vec<PartResponse>, String>| r.map(|v| v.iter().map(|p| p.status).collect::<Vec<_>>());
        // By id, whatever the order; by position when no answer carries an id.
        assert_eq!(
            statuses(match_answers(
                vec![
                    answer(Some("2"), 204),
                    answer(Some("1"), 200),
                    answer(Some(" 3 "), 429)
                ],
                3
            )),
            Ok(vec![200, 204, 429])
        );
        assert_eq!(
            statuses(match_answers(vec![answer(None, 200), answer(None, 404)], 2)),
            Ok(vec![200, 404])
        );
        // Every other shape fails the whole batch, with the reason.
        let fails = |parts, n, why: &str| {
            let e = match_answers(parts, n).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        fails(vec![answer(Some("1"), 200)], 2, "1 answers for 2 operations");
        fails(
            vec![
                answer(Some("1"), 200),
                answer(Some("2"), 200),
                answer(Some("3"), 200),
            ],
            2,
            "3 answers",
        );
        fails(
            vec![answer(Some("1"), 200), answer(Some("1"), 204)],
            2,
            "Content-ID 1 twice",
        );
        fails(
            vec![answer(Some("1"), 200), answer(Some("3"), 204)],
            2,
            "unknown Content-ID `3`",
        );
        fails(
            vec![answer(Some("1"), 200), answer(Some("0"), 204)],
            2,
            "unknown Content-ID `0`",
        );
        fails(
            vec![answer(Some("1"), 200), answer(Some("x"), 204)],
            2,
            "unknown Content-ID `x`",
        );
        fails(
            vec![answer(Some("1"), 200), answer(None, 204)],
            2,
            "1 of 2 answers",
        );
    }

    #[test]
    fn renders_independent_requests_with_content_ids() {
        let parts = vec![
            PartRequest {
                method: "GET",
                url: "https://org/api/data/v9.2/contacts(k='a')?$select=x".into(),
                headers: vec![("Accept", "application/json".into())],
                body: None,
            },
            PartRequest {
                method: "PATCH",
                url: "https://org/api/data/v9.2/contacts(k='b')".into(),
                headers: vec![("If-Match", "W/\"7\"".into())],
                body: Some("{\"x\":1}".into()),
            },
        ];
        let text = render("batch_1", &parts);
        assert_eq!(
            text,
            "--batch_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n\
             GET https://org/api/data/v9.2/contacts(k='a')?$select=x HTTP/1.1\r\nAccept: application/json\r\n\r\n\r\n\
             --batch_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n\
             PATCH https://org/api/data/v9.2/contacts(k='b') HTTP/1.1\r\nIf-Match: W/\"7\"\r\nContent-Type: application/json; type=entry\r\n\r\n{\"x\":1}\r\n\
             --batch_1--\r\n"
        );
    }

    /// The shape of Dataverse's documented batch responses, including a change set.
    #[test]
    fn parses_answers_in_order() {
        let body = "--batchresponse_AAA\r\n\
            Content-Type: application/http\r\n\
            Content-Transfer-Encoding: binary\r\n\
            Content-ID: 1\r\n\r\n\
            HTTP/1.1 200 OK\r\n\
            Content-Type: application/json; odata.metadata=minimal\r\n\
            OData-Version: 4.0\r\n\r\n\
            {\"@odata.etag\":\"W/\\\"5\\\"\"}\r\n\
            --batchresponse_AAA\r\n\
            Content-Type: multipart/mixed; boundary=changesetresponse_BBB\r\n\r\n\
            --changesetresponse_BBB\r\n\
            Content-Type: application/http\r\n\
            Content-Transfer-Encoding: binary\r\n\
            Content-ID: 2\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\
            OData-Version: 4.0\r\n\r\n\r\n\
            --changesetresponse_BBB--\r\n\
            --batchresponse_AAA\r\n\
            Content-Type: application/http\r\n\
            Content-Transfer-Encoding: binary\r\n\r\n\
            HTTP/1.1 400 Bad Request\r\n\
            Content-Type: application/json\r\n\r\n\
            {\"error\":{\"code\":\"0x80044331\",\"message\":\"bad\"}}\r\n\
            --batchresponse_AAA--\r\n";
        let parts = parse("multipart/mixed; boundary=batchresponse_AAA", body.as_bytes()).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].status, parts[0].content_id.as_deref()),
            (200, Some("1"))
        );
        assert_eq!(parts[0].body, br#"{"@odata.etag":"W/\"5\""}"#);
        assert_eq!(parts[0].header("odata-version"), Some("4.0"));
        assert_eq!(
            (parts[1].status, parts[1].content_id.as_deref()),
            (204, Some("2"))
        );
        assert!(parts[1].body.is_empty());
        assert_eq!((parts[2].status, parts[2].content_id.as_deref()), (400, None));
        assert!(String::from_utf8_lossy(&parts[2].body).contains("0x80044331"));

        let lf = body.replace("\r\n", "\n");
        assert_eq!(
            parse("multipart/mixed;boundary=\"batchresponse_AAA\"", lf.as_bytes()).unwrap(),
            parts
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(parse("application/json", b"{}").is_err());
        assert!(
            parse(
                "multipart/mixed; boundary=b",
                b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n"
            )
            .is_err()
        );
        assert!(parse("multipart/mixed; boundary=b", b"--b\r\n\r\nnonsense\r\n--b--\r\n").is_err());
    }
}
