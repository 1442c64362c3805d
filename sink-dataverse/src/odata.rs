//! The small pieces of the OData/Dataverse wire format the sink needs: alternate-key URLs, the
//! error body, and the throttling headers (`Retry-After`, `x-ms-dop-hint`). Pure.

use std::time::Duration;

/// `contacts(new_stripecustomerid='cus_123')`: a row addressed by its alternate key. Quotes in
/// the value are doubled (OData string literals) and everything outside the unreserved set is
/// percent-encoded, so any customer id makes a valid URL that names exactly that id.
pub fn key_path(table: &str, key_column: &str, value: &str) -> String {
    let literal = value.replace('\'', "''");
    format!("{table}({key_column}='{}')", encode(&literal))
}

/// Percent-encodes a URL path fragment, keeping unreserved characters and the quote (legal in a
/// path, and the literal's delimiter).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'\'') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?$select=a,b,c`.
pub fn select_query(columns: &[&str]) -> String {
    format!("?$select={}", columns.join(","))
}

/// The Web API error body: `{"error": {"code": "0x…", "message": "…"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Reads a Web API error body; empty fields when the body is something else (a proxy's HTML).
pub fn error_body(body: &[u8]) -> ErrorBody {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut message = field("message");
    if message.is_empty() && error.is_none() {
        // Not an OData error: keep a short, printable excerpt for the logs.
        message = String::from_utf8_lossy(&body[..body.len().min(200)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_string();
    }
    ErrorBody {
        code: field("code"),
        message,
    }
}

/// `Retry-After`: delta seconds (Dataverse's form; fractions accepted), the `hh:mm:ss` TimeSpan
/// form some Dataverse clients report, or an HTTP date. Never panics: absurd values saturate at
/// `Duration::MAX` (callers cap them), negative, not-a-number and malformed values are `None`.
pub fn retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    if let [h, m, s] = value.split(':').collect::<Vec<_>>()[..]
        && let (Ok(h), Ok(m), Some(s)) = (
            h.trim().parse::<u64>(),
            m.trim().parse::<u64>(),
            s.trim().parse::<f64>().ok().and_then(seconds),
        )
    {
        let whole = h
            .checked_mul(3600)
            .and_then(|h| m.checked_mul(60).and_then(|m| h.checked_add(m)))
            .map_or(Duration::MAX, Duration::from_secs);
        return Some(whole.saturating_add(s));
    }
    let date = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = date - now;
    Some(if delta.is_positive() {
        Duration::try_from(delta).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    })
}

/// Non-negative, finite seconds as a duration, saturating above `Duration::MAX`.
fn seconds(secs: f64) -> Option<Duration> {
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// `x-ms-dop-hint`: Dataverse's recommended degree of parallelism.
pub fn dop_hint(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|n| *n > 0)
}

/// A number in a rate-limit header (`1199.97`, `1,199.97`, `42`); `None` when it is not one.
pub fn header_number(value: &str) -> Option<f64> {
    let cleaned: String = value.trim().chars().filter(|c| *c != ',').collect();
    cleaned.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_header_numbers() {
        assert_eq!(header_number("1199.97"), Some(1199.97));
        assert_eq!(header_number(" 1,199,725.00 "), Some(1_199_725.0));
        assert_eq!(header_number("42"), Some(42.0));
        assert_eq!(header_number("-1"), None);
        assert_eq!(header_number("lots"), None);
        assert_eq!(header_number("NaN"), None);
    }

    #[test]
    fn key_paths_quote_and_encode() {
        assert_eq!(
            key_path("contacts", "new_stripecustomerid", "cus_NffrFeUfNV2Hib"),
            "contacts(new_stripecustomerid='cus_NffrFeUfNV2Hib')"
        );
        assert_eq!(key_path("contacts", "k", "o'neil"), "contacts(k='o''neil')");
        assert_eq!(
            key_path("contacts", "k", "a b/c?d#e%"),
            "contacts(k='a%20b%2Fc%3Fd%23e%25')"
        );
        assert_eq!(key_path("contacts", "k", "é"), "contacts(k='%C3%A9')");
        assert_eq!(select_query(&["a", "b"]), "?$select=a,b");
    }

    #[test]
    fn error_bodies() {
        let e = error_body(br#"{"error":{"code":"0x80044331","message":"A validation error occurred."}}"#);
        assert_eq!(e.code, "0x80044331");
        assert_eq!(e.message, "A validation error occurred.");
        let e = error_body(b"<html>\n<body>Bad Gateway</body></html>");
        assert_eq!(e.code, "");
        assert_eq!(e.message, "<html> <body>Bad Gateway</body></html>");
        assert_eq!(error_body(b""), ErrorBody::default());
    }

    #[test]
    fn retry_after_forms() {
        let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        assert_eq!(retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(" 0.5 ", now), Some(Duration::from_millis(500)));
        assert_eq!(retry_after("00:01:05", now), Some(Duration::from_secs(65)));
        assert_eq!(
            retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("", now), None);
        assert_eq!(retry_after("NaN", now), None);
        assert_eq!(retry_after("inf", now), None);
        assert_eq!(retry_after("00:00:-1", now), None);
    }

    #[test]
    fn absurd_retry_after_values_saturate_instead_of_panicking() {
        let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        assert_eq!(retry_after("1e20", now), Some(Duration::MAX));
        assert_eq!(retry_after("1e308", now), Some(Duration::MAX));
        assert_eq!(retry_after("99999999999999999999:00:00", now), None);
        assert_eq!(
            retry_after("18446744073709551615:59:59", now),
            Some(Duration::MAX)
        );
        assert_eq!(retry_after("0:0:1e300", now), Some(Duration::MAX));
        assert_eq!(
            retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).map(|d| d > Duration::from_secs(1 << 37)),
            Some(true)
        );
        assert_eq!(dop_hint("12"), Some(12));
        assert_eq!(dop_hint("0"), None);
        assert_eq!(dop_hint("x"), None);
    }

    proptest::proptest! {
        /// Whatever a server or proxy sends, parsing never panics, and the value is either
        /// refused or a duration.
        #[test]
        fn any_retry_after_parses_without_panicking(value in ".{0,40}", secs in proptest::num::f64::ANY) {
            let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
            let _ = retry_after(&value, now);
            let parsed = retry_after(&secs.to_string(), now);
            proptest::prop_assert_eq!(parsed.is_some(), secs.is_finite() && secs >= 0.0);
            let _ = retry_after(&format!("{}:{}:{}", value.len(), secs, value), now);
        }
    }
}
