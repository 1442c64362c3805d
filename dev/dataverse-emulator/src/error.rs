//! The one error type of the emulator and the one place it becomes an HTTP answer: Dataverse's OData
//! error shape (`{"error":{"code":"0x…","message":"…"}}`) for the Web API, Entra ID's shape for the token
//! endpoint. Handlers, the batch executor and the admin API all answer errors through [`ApiError::render`].

use http::{HeaderName, StatusCode, header};
use serde_json::json;

use crate::config::ThrottleKind;
use crate::response::ApiResponse;
use crate::values::{Guid, iso_now};

/// Everything that can go wrong in a request. The variant decides the status, the code and the message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON, or not the JSON object expected.
    #[error("{0}")]
    MalformedBody(String),
    /// The body names a column the table does not have.
    #[error(
        "The property '{column}' does not exist on type 'Microsoft.Dynamics.CRM.{entity}'. Make sure to only use property names that are defined by the type."
    )]
    UnknownColumn { entity: String, column: String },
    /// A value has the wrong JSON type for its column.
    #[error("Cannot convert the literal '{value}' to the expected type '{edm}' for the property '{column}'.")]
    WrongType {
        column: String,
        value: String,
        edm: &'static str,
    },
    /// A value breaks a column constraint (length, choice range).
    #[error("A validation error occurred. {0}")]
    Validation(String),
    /// A URL (path, key segment or query option) that cannot be understood.
    #[error("{0}")]
    BadUrl(String),
    /// A property named in `$select`, `$filter` or `$orderby` that the table does not have.
    #[error("Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{entity}'.")]
    UnknownProperty { entity: String, column: String },
    /// A message parameter that is missing or breaks the message's rules.
    #[error("{0}")]
    InvalidArgument(String),
    /// A `$batch` body that cannot be parsed, or breaks a batch rule.
    #[error("{0}")]
    MalformedBatch(String),
    /// A path segment naming nothing the service has.
    #[error("Resource not found for the segment '{0}'.")]
    ResourceNotFound(String),
    /// No table definition with this logical name or `MetadataId`.
    #[error("{0}")]
    DefinitionNotFound(String),
    /// `POST …/Attributes` with a name the table already has (`DuplicateAttributeSchemaName`).
    #[error("An attribute with the specified name already exists. Attribute: {0}")]
    DuplicateAttribute(String),
    /// A key segment naming columns that are not an active alternate key of the table.
    #[error(
        "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.{entity}'. Ensure that the names and number of key properties match the declared or alternate key properties for the resource 'Microsoft.Dynamics.CRM.{entity}'."
    )]
    InvalidKey { entity: String },
    /// No row with this primary key.
    #[error("{entity} With Id = {id} Does Not Exist")]
    RowNotFound { entity: String, id: String },
    /// No row with these alternate key values.
    #[error("A record with the specified key values does not exist in {entity} entity")]
    KeyNotFound { entity: String },
    /// A write would give two rows the same alternate key values.
    #[error(
        "A record that has the attribute values {values} already exists. The entity key {key} requires that this set of attributes contains unique values. Select unique values and try again."
    )]
    DuplicateKey { key: String, values: String },
    /// A create with a primary key that is taken.
    #[error("Cannot insert duplicate key.")]
    DuplicateId,
    /// `If-None-Match: *` and the row exists.
    #[error("A record with matching key values already exists.")]
    AlreadyExists,
    /// `If-Match: <etag>` and the row changed since.
    #[error("The version of the existing record doesn't match the RowVersion property provided.")]
    VersionMismatch,
    /// Missing, unknown or expired bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A service protection limit was hit.
    #[error("{message}")]
    Throttled {
        kind: ThrottleKind,
        retry_after_secs: u64,
        message: String,
    },
    /// A fault injected by configuration or the admin API.
    #[error("{message}")]
    InjectedFault {
        status: StatusCode,
        message: &'static str,
    },
    /// A write refused by a business rule (a synchronous plug-in's
    /// `InvalidPluginExecutionException`), from the `reject_values` fault.
    #[error("{0}")]
    PluginRejected(String),
    /// A method the resource does not support.
    #[error("The HTTP method '{0}' is not supported on this resource.")]
    MethodNotAllowed(String),
    /// A Web API feature this emulator does not provide.
    #[error("{0} is not supported by the Dataverse emulator.")]
    NotSupported(String),
    /// A body over the configured limit.
    #[error("The request body exceeds the maximum allowed size of {0} bytes.")]
    PayloadTooLarge(usize),
    /// The token endpoint refused the request (Entra ID error shape).
    #[error("{description}")]
    Token {
        status: StatusCode,
        error: &'static str,
        aadsts: u32,
        description: String,
    },
    /// Bad input to an admin endpoint.
    #[error("{0}")]
    Admin(String),
    /// A bug or an I/O failure; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Status and Dataverse hex code of the error.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            MalformedBody(_) | UnknownColumn { .. } | WrongType { .. } => {
                (StatusCode::BAD_REQUEST, "0x80048d19")
            }
            Validation(_) => (StatusCode::BAD_REQUEST, "0x80044331"),
            BadUrl(_) | UnknownProperty { .. } => (StatusCode::BAD_REQUEST, "0x80060888"),
            MalformedBatch(_) | Admin(_) | InvalidArgument(_) => (StatusCode::BAD_REQUEST, "0x80040203"),
            ResourceNotFound(_) => (StatusCode::NOT_FOUND, "0x80060888"),
            RowNotFound { .. } | KeyNotFound { .. } => (StatusCode::NOT_FOUND, "0x80040217"),
            DefinitionNotFound(_) => (StatusCode::NOT_FOUND, "0x80041102"),
            DuplicateAttribute(_) => (StatusCode::BAD_REQUEST, "0x80047013"),
            InvalidKey { .. } => (StatusCode::BAD_REQUEST, "0x80060888"),
            DuplicateKey { .. } => (StatusCode::PRECONDITION_FAILED, "0x80060892"),
            DuplicateId | AlreadyExists => (StatusCode::PRECONDITION_FAILED, "0x80040237"),
            VersionMismatch => (StatusCode::PRECONDITION_FAILED, "0x80060882"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "0x8005f101"),
            Throttled { kind, .. } => (StatusCode::TOO_MANY_REQUESTS, kind.code()),
            InjectedFault { status, .. } => (*status, "0x80040216"),
            // ISV code aborted the operation: what a plug-in's exception becomes (400 by default).
            PluginRejected(_) => (StatusCode::BAD_REQUEST, "0x80040265"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "0x80060888"),
            NotSupported(_) => (StatusCode::NOT_IMPLEMENTED, "0x80040203"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "0x80040203"),
            Token { status, .. } => (*status, ""),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "0x80040216"),
        }
    }

    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The answer for this error: the only place an error becomes a response.
    pub fn render(&self) -> ApiResponse {
        let (status, code) = self.status_and_code();
        let mut response = ApiResponse::new(status);
        match self {
            ApiError::Token {
                error,
                aadsts,
                description,
                ..
            } => {
                // Entra ID's error body: `error`, `error_description` starting with the AADSTS number,
                // `error_codes`, and correlation fields.
                let trace = Guid::new_random().to_string();
                let body = json!({
                    "error": error,
                    "error_description": format!("AADSTS{aadsts}: {description} Trace ID: {trace}"),
                    "error_codes": [aadsts],
                    "timestamp": iso_now(),
                    "trace_id": trace,
                    "correlation_id": Guid::new_random().to_string(),
                });
                return response.json_body(&body, "application/json; charset=utf-8");
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
            }
            ApiError::Unauthorized(_) => {
                response.push(
                    header::WWW_AUTHENTICATE,
                    "Bearer authorization_uri=/common/oauth2/authorize, resource_id=/",
                );
            }
            ApiError::Throttled { retry_after_secs, .. } => {
                response.push(header::RETRY_AFTER, &retry_after_secs.to_string());
            }
            _ => {}
        }
        let message = match self {
            ApiError::Internal(_) => "An unexpected error occurred.".to_owned(),
            other => other.to_string(),
        };
        response.push(HeaderName::from_static("odata-version"), "4.0");
        response.json_body(
            &json!({ "error": { "code": code, "message": message } }),
            "application/json; odata.metadata=minimal",
        )
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        self.render().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(err: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&err.render().body).expect("json body")
    }

    #[test]
    fn every_error_has_the_odata_shape() {
        let errors = [
            ApiError::MalformedBody("x".into()),
            ApiError::UnknownColumn {
                entity: "contact".into(),
                column: "foo".into(),
            },
            ApiError::BadUrl("Bad Request - Error in query syntax.".into()),
            ApiError::RowNotFound {
                entity: "contact".into(),
                id: "1".into(),
            },
            ApiError::VersionMismatch,
            ApiError::Unauthorized("The access token has expired."),
            ApiError::Throttled {
                kind: ThrottleKind::Concurrency,
                retry_after_secs: 3,
                message: "m".into(),
            },
            ApiError::Internal("disk on fire".into()),
        ];
        for err in &errors {
            let value = body(err);
            let code = value["error"]["code"].as_str().expect("code");
            assert!(code.starts_with("0x"), "{err:?} → {value}");
            assert!(value["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(
            body(&errors[7])["error"]["message"],
            "An unexpected error occurred."
        );
    }

    #[test]
    fn throttled_carries_retry_after_and_code() {
        let err = ApiError::Throttled {
            kind: ThrottleKind::Requests,
            retry_after_secs: 7,
            message: "m".into(),
        };
        let response = err.render();
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.header("retry-after"), Some("7"));
        assert_eq!(body(&err)["error"]["code"], "0x80072322");
    }

    #[test]
    fn token_errors_have_the_entra_shape() {
        let err = ApiError::Token {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            aadsts: 7000215,
            description: "Invalid client secret provided.".into(),
        };
        let value = body(&err);
        assert_eq!(value["error"], "invalid_client");
        assert!(
            value["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("AADSTS7000215:"))
        );
        assert_eq!(value["error_codes"][0], 7000215);
    }
}
