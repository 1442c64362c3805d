//! The one error type of a Dataverse operation, whose variants decide what happens next: retry
//! (transient), read again and decide again (a lost optimistic-concurrency race), or dead-letter
//! (refused). [`classify`] sorts HTTP answers into them; it is pure and table-tested.

/// What went wrong with one operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// May succeed later: retried with backoff (throttling pauses every writer instead), never
    /// skipped. Timeouts, connection errors, 429, 5xx, 401 after one token renewal, the token
    /// endpoint being unavailable or refusing.
    #[error("{class}: {detail}")]
    Transient { class: &'static str, detail: String },
    /// 429: Dataverse's service protection limits. Every writer is already paused for
    /// `Retry-After`, so the operation is tried again as soon as the pause ends.
    #[error("throttled: {detail}")]
    Throttled { detail: String },
    /// The write's precondition no longer holds (412), or the row it was conditional on is gone
    /// (404): another writer got there first. Read again and decide again.
    #[error("precondition failed ({status} {code}): {message}")]
    Conflict {
        status: u16,
        code: String,
        message: String,
    },
    /// Dataverse refused this change, and would again: dead-letter it with the reason.
    #[error("Dataverse refused the change ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

impl WriteError {
    pub fn transient(class: &'static str, detail: impl Into<String>) -> Self {
        WriteError::Transient {
            class,
            detail: detail.into(),
        }
    }

    /// A short, stable name for metrics labels and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            WriteError::Transient { class, .. } => class,
            WriteError::Throttled { .. } => "throttled",
            WriteError::Conflict { .. } => "conflict",
            WriteError::Rejected { status, .. } => rejected_class(*status),
        }
    }
}

/// The dead-letter class of a refusal, by status. A bounded set.
pub fn rejected_class(status: u16) -> &'static str {
    match status {
        400 => "validation",
        403 => "privilege",
        404 => "not_found",
        405 | 501 => "unsupported",
        412 => "precondition",
        413 => "too_large",
        _ => "rejected",
    }
}

/// Classifies an answer that is not a success. `conditional` says the request carried `If-Match`
/// or `If-None-Match`, so a 412 (or a 404 under `If-Match`) is a lost race, not a refusal.
pub fn classify(status: u16, body: &[u8], conditional: bool) -> WriteError {
    let error = crate::odata::error_body(body);
    let detail = || {
        if error.code.is_empty() {
            format!("HTTP {status}: {}", error.message)
        } else {
            format!("HTTP {status} {}: {}", error.code, error.message)
        }
    };
    match status {
        401 => WriteError::transient("unauthorized", detail()),
        408 => WriteError::transient("timeout", detail()),
        429 => WriteError::Throttled { detail: detail() },
        // A conflicting concurrent operation inside Dataverse: it clears.
        409 => WriteError::transient("server_conflict", detail()),
        412 | 404 if conditional => WriteError::Conflict {
            status,
            code: error.code,
            message: error.message,
        },
        400..=499 => WriteError::Rejected {
            status,
            code: error.code,
            message: error.message,
        },
        500..=599 => WriteError::transient("server_error", detail()),
        _ => WriteError::transient("unexpected_status", detail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odata(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn classification_table() {
        let validation = odata(
            "0x80044331",
            "A validation error occurred. The length of 'firstname' exceeded 50.",
        );
        let cases: Vec<(u16, bool, &str)> = vec![
            (400, false, "validation"),
            (400, true, "validation"),
            (403, true, "privilege"),
            (412, false, "precondition"),
            (412, true, "conflict"),
            (404, true, "conflict"),
            (404, false, "not_found"),
            (413, true, "too_large"),
            (405, true, "unsupported"),
            (422, true, "rejected"),
            (401, true, "unauthorized"),
            (408, true, "timeout"),
            (409, true, "server_conflict"),
            (429, true, "throttled"),
            (500, true, "server_error"),
            (502, false, "server_error"),
            (503, true, "server_error"),
            (504, true, "server_error"),
            (302, true, "unexpected_status"),
        ];
        for (status, conditional, class) in cases {
            let e = classify(status, &validation, conditional);
            assert_eq!(e.class(), class, "{status} conditional={conditional}: {e:?}");
            let transient = matches!(e, WriteError::Transient { .. });
            assert_eq!(
                transient,
                matches!(status, 401 | 408 | 409 | 500..=599 | 302),
                "{status}"
            );
            assert_eq!(
                matches!(e, WriteError::Throttled { .. }),
                status == 429,
                "{status}"
            );
        }
    }

    #[test]
    fn refusals_keep_the_dataverse_code_and_message() {
        let e = classify(400, &odata("0x80044331", "too long"), true);
        assert_eq!(
            e,
            WriteError::Rejected {
                status: 400,
                code: "0x80044331".into(),
                message: "too long".into()
            }
        );
        let e = classify(503, b"<html>down</html>", true);
        assert_eq!(e.to_string(), "server_error: HTTP 503: <html>down</html>");
    }
}
