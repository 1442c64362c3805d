//! The one error type of the service and its mapping to Confluent's error responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::json::sr_json;

/// Everything a request can fail with. Each variant maps to the HTTP status and
/// `error_code` that Confluent Schema Registry uses for the same situation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404 / 40401
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 404 / 40402
    #[error("Version {0} not found.")]
    VersionNotFound(u32),
    /// 404 / 40403, for a schema id that does not exist.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(u32),
    /// 404 / 40403, for a schema that is not registered under a subject.
    #[error("Schema not found")]
    SchemaNotFound,
    /// 404 / 40404
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 404 / 40405
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 404 / 40406
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: u32 },
    /// 404 / 40407
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: u32 },
    /// 404 / 40408
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// 409 / 409
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {details}"
    )]
    Incompatible { subject: String, details: String },
    /// 422 / 42201
    #[error("Invalid schema {0}")]
    InvalidSchema(String),
    /// 422 / 42201, for a `schemaType` other than AVRO.
    #[error("Unsupported schema type '{0}': this registry supports AVRO schemas only")]
    UnsupportedSchemaType(String),
    /// 422 / 42201, for a schema with references.
    #[error("Invalid schema: schema references are not supported by this registry")]
    ReferencesUnsupported,
    /// 422 / 42202
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 422 / 42203
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibility,
    /// 400 / 400: the body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// 422 / 422: JSON of the wrong shape (a field of the wrong type, say).
    #[error("{0}")]
    Unprocessable(String),
    /// 400 / 400: a path parameter that cannot be decoded.
    #[error("{0}")]
    BadRequest(String),
    /// 404 / 404
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    /// 405 / 405
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// 415 / 415
    #[error("HTTP 415 Unsupported Media Type")]
    UnsupportedMediaType,
    /// 500 / 50001: the state could not be written to disk (the change was not applied).
    #[error("Error while storing the registry state: {0}")]
    Store(String),
    /// 500 / 50001: no schema id left.
    #[error("Error while registering the schema: schema ids are exhausted")]
    IdsExhausted,
}

impl RegistryError {
    /// The HTTP status and Confluent `error_code`.
    pub fn codes(&self) -> (StatusCode, u32) {
        use RegistryError::*;
        match self {
            SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            SchemaIdNotFound(_) | SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            Incompatible { .. } => (StatusCode::CONFLICT, 409),
            InvalidSchema(_) | UnsupportedSchemaType(_) | ReferencesUnsupported => {
                (StatusCode::UNPROCESSABLE_ENTITY, 42201)
            }
            InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            InvalidCompatibility => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            MalformedJson(_) | BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            RouteNotFound => (StatusCode::NOT_FOUND, 404),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            Store(_) | IdsExhausted => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.codes();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        sr_json(
            status,
            &ErrorBody {
                error_code,
                message: self.to_string(),
            },
        )
    }
}
