//! Every way a webhook request can fail, and the one place each becomes an HTTP answer. The
//! variant decides the status; the body is a short, stable `{"error": "…"}`; the internal cause
//! is logged here, once, and never sent.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{event::BodyError, metrics::Outcome, publish::PublishError, signature::SignatureError};

/// Seconds Stripe (or anyone) is asked to wait before retrying a 503. Stripe uses its own
/// schedule; the header is for other clients and proxies.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The signature did not verify: 400 with stripe-python's wording.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The verified body is not a Stripe event: 400.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The body could not be read (client went away, broken chunking): 400.
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// The body did not arrive within `limits.body_read_timeout`: 408, and the connection is
    /// closed.
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Over `limits.max_body`: 413.
    #[error("request body is over {limit} bytes")]
    TooLarge { limit: usize },
    /// Not `application/json`: 415.
    #[error("content type is not application/json")]
    UnsupportedMediaType,
    /// Not POST: 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Source address not in `allow_ips`: 403.
    #[error("source address {0} is not allowed")]
    Forbidden(String),
    /// The verified event's record is over the producer's or the broker's record limit: 413.
    /// Retrying cannot help; counted in `gateway_events_too_large_total`.
    #[error("event record is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    /// Kafka or the registry could not take the write: 503, Stripe retries.
    #[error("event could not be written: {0}")]
    Unavailable(PublishError),
    /// `limits.max_in_flight` reached: 503.
    #[error("too many requests in flight")]
    Overloaded,
    /// `limits.request_timeout` passed: 503.
    #[error("request did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

impl From<PublishError> for GatewayError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::TooLarge { size, limit } => GatewayError::RecordTooLarge { size, limit },
            e => GatewayError::Unavailable(e),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Signature(_) | GatewayError::Body(_) | GatewayError::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::TooLarge { .. } | GatewayError::RecordTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Unavailable(_) | GatewayError::Overloaded | GatewayError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            GatewayError::Signature(_) => Outcome::BadSignature,
            GatewayError::Body(_) | GatewayError::BodyRead(_) => Outcome::BadRequest,
            GatewayError::TooLarge { .. } | GatewayError::RecordTooLarge { .. } => Outcome::TooLarge,
            GatewayError::BodyTimeout(_) => Outcome::BodyTimeout,
            GatewayError::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            GatewayError::MethodNotAllowed => Outcome::MethodNotAllowed,
            GatewayError::Forbidden(_) => Outcome::Forbidden,
            GatewayError::Unavailable(_) => Outcome::Unavailable,
            GatewayError::Overloaded => Outcome::Overloaded,
            GatewayError::Timeout(_) => Outcome::Timeout,
        }
    }

    /// What the caller is told: stable, short, nothing internal.
    fn public_message(&self) -> String {
        match self {
            GatewayError::Signature(e) => e.to_string(),
            GatewayError::Body(e) => e.to_string(),
            GatewayError::BodyRead(_) => "Request body could not be read".into(),
            GatewayError::TooLarge { limit } => format!("Request body is larger than {limit} bytes"),
            GatewayError::RecordTooLarge { size, limit } => format!(
                "Event is too large to store: its record would be {size} bytes, over the broker limit of {limit} bytes"
            ),
            GatewayError::BodyTimeout(_) => "Request body was not received in time".into(),
            GatewayError::UnsupportedMediaType => "Content-Type must be application/json".into(),
            GatewayError::MethodNotAllowed => "Method not allowed; use POST".into(),
            GatewayError::Forbidden(_) => "Source address is not allowed".into(),
            GatewayError::Unavailable(_) => "Event could not be stored; retry later".into(),
            GatewayError::Overloaded => "Too many requests in flight; retry later".into(),
            GatewayError::Timeout(_) => "Request timed out; retry later".into(),
        }
    }

    fn log(&self) {
        let outcome = self.outcome().as_str();
        match self {
            GatewayError::Signature(e) => {
                tracing::warn!(outcome, reason = e.reason(), error = ?e, "webhook signature rejected");
            }
            GatewayError::Body(e) => {
                tracing::warn!(
                    outcome,
                    reason = e.reason(),
                    "verified body is not a Stripe event"
                );
            }
            GatewayError::Unavailable(e) => tracing::error!(
                outcome,
                dependency = e.dependency(),
                error = %e,
                cause = ?std::error::Error::source(e).map(ToString::to_string),
                "event not written; answering 503 so Stripe retries"
            ),
            GatewayError::Timeout(_) => tracing::warn!(outcome, error = %self, "answering 503"),
            GatewayError::RecordTooLarge { size, limit } => tracing::error!(
                outcome,
                size,
                limit,
                "verified event too large for the broker; answering 413 (raise limits.max_body \
                 and the topic's max.message.bytes to store it)"
            ),
            // Counted in the metrics; a line per refused request would add to the overload.
            GatewayError::Overloaded => tracing::debug!(outcome, "answering 503"),
            GatewayError::BodyTimeout(_) => tracing::debug!(outcome, "answering 408"),
            _ => tracing::info!(outcome, error = %self, "webhook request refused"),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.public_message() })),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            GatewayError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            // The rest of the body may still be on its way; the connection cannot be reused.
            GatewayError::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}
