//! A transport-neutral answer: the Web API executor produces it, and it becomes either an HTTP response
//! (top-level requests) or one part of a `$batch` multipart body.

use axum::response::IntoResponse;
use http::{HeaderName, HeaderValue, StatusCode, header};

/// Status, headers and body of one answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// Headers in the order they are written.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body; empty for 204.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// An answer with a status and no headers or body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// An OData answer: the status plus `OData-Version: 4.0`.
    pub fn odata(status: StatusCode) -> Self {
        let mut response = Self::new(status);
        response.push(HeaderName::from_static("odata-version"), "4.0");
        response
    }

    /// Adds a header.
    pub fn push(&mut self, name: HeaderName, value: &str) {
        self.headers.push((name, header_value(value)));
    }

    /// Sets a JSON body with the given content type.
    pub fn json_body(mut self, value: &serde_json::Value, content_type: &str) -> Self {
        self.push(header::CONTENT_TYPE, content_type);
        // Serialising a `Value` cannot fail: its keys are strings.
        self.body = serde_json::to_vec(value).unwrap_or_default();
        self
    }

    /// Sets an OData JSON body (`application/json; odata.metadata=minimal`).
    pub fn odata_json(self, value: &serde_json::Value) -> Self {
        self.json_body(value, "application/json; odata.metadata=minimal")
    }

    /// The first value of a header, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.to_str().ok())
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> axum::response::Response {
        let mut response = axum::response::Response::new(axum::body::Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// A header value built from text that may hold bytes a header cannot; such bytes become `?`.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        let cleaned: String = text
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .collect();
        // Only visible ASCII and spaces remain, which a header value always accepts.
        HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("?"))
    })
}
