//! Responses in the registry's JSON content type, shared by the handlers and the error mapping.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A JSON response with the registry's content type.
pub(crate) fn sr_json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => raw_json(status, bytes),
        Err(err) => {
            tracing::error!(error = %err, "could not serialise a response");
            let body = br#"{"error_code":50001,"message":"Error while serialising the response"}"#;
            raw_json(StatusCode::INTERNAL_SERVER_ERROR, body.to_vec())
        }
    }
}

pub(crate) fn raw_json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}
