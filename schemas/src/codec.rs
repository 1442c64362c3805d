//! The Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary datum), read
//! and written through a schema registry with `schema_registry_converter`.
//!
//! Values are written with the subject `<topic>-value`. Readers decode with the writer's schema
//! (fetched by id and cached) and resolve into this build's schema, so compatible schema
//! evolution on either side keeps working. Registry failures that retrying can fix are never
//! remembered: the converter caches some HTTP errors as final, so those caches are cleared
//! whenever a lookup fails for a reason other than "this id does not exist".

use std::{error::Error as _, sync::Arc, time::Duration};

use apache_avro::{from_value, reader::datum::GenericDatumReader};
use schema_registry_converter::{
    async_impl::{
        avro::{AvroDecoder, AvroEncoder},
        schema_registry::{SrSettings, get_all_subjects},
    },
    error::SRCError,
    schema_registry_common::{RawError, SchemaType, SubjectNameStrategy, SuppliedSchema},
};

use crate::record::AvroRecord;

/// How a writer obtains the schema id it stamps on records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// Register this build's schema under `<topic>-value` (idempotent; the registry enforces
    /// compatibility). The default.
    #[default]
    Register,
    /// Use the latest schema already registered for the subject, for registries where clients
    /// may not register.
    Latest,
}

/// Where the registry is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// One or more base URLs of Confluent-compatible registries, tried in order.
    pub urls: Vec<String>,
    /// Bound on each registry call, so a hung registry becomes a retryable error.
    pub timeout: Duration,
    pub mode: SchemaMode,
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            urls: vec![url.into()],
            timeout: Duration::from_secs(5),
            mode: SchemaMode::Register,
        }
    }
}

/// What can go wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a Confluent wire-format payload. Permanent: dead-letter.
    #[error("payload is not in the Confluent wire format: {0}")]
    Malformed(String),
    /// The registry does not know the schema id in the payload. Permanent: dead-letter.
    #[error("schema id {id} is not known to the schema registry")]
    UnknownSchema { id: u32 },
    /// The Avro datum does not decode with its writer schema, or cannot be read as this build's
    /// record type. Permanent: dead-letter.
    #[error("payload with schema id {id} does not decode: {reason}")]
    Undecodable { id: u32, reason: String },
    /// The record could not be encoded with the subject's schema. Permanent for that record.
    #[error("record does not fit the schema of subject {subject}: {reason}")]
    Encode { subject: String, reason: String },
    /// The registry refused the schema (incompatible, invalid). A deployment problem.
    #[error("schema registry rejected the schema for subject {subject}: {reason}")]
    SchemaRejected { subject: String, reason: String },
    /// The registry could not be reached or answered with a server error. Transient: retry.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The codec could not be set up (bad URL, HTTP client). Fatal at start-up.
    #[error("schema registry client configuration: {0}")]
    Config(String),
}

impl CodecError {
    /// True when the same call may succeed later; such errors must be retried, never dead-lettered.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }

    /// A short, stable name for metrics labels and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            CodecError::Malformed(_) => "malformed_payload",
            CodecError::UnknownSchema { .. } => "unknown_schema",
            CodecError::Undecodable { .. } => "undecodable",
            CodecError::Encode { .. } => "encode",
            CodecError::SchemaRejected { .. } => "schema_rejected",
            CodecError::RegistryUnavailable(_) => "registry_unavailable",
            CodecError::Config(_) => "config",
        }
    }
}

/// Splits a wire-format payload into its schema id and Avro datum.
pub fn split_wire_format(payload: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match payload {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [] => Err(CodecError::Malformed("empty payload".into())),
        [0, ..] => Err(CodecError::Malformed(format!(
            "{} bytes, shorter than the 5-byte header",
            payload.len()
        ))),
        [magic, ..] => Err(CodecError::Malformed(format!(
            "magic byte is {magic}, expected 0"
        ))),
    }
}

/// Encodes and decodes records through a schema registry. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    mode: SchemaMode,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(config: &RegistryConfig) -> Result<Self, CodecError> {
        let Some((first, rest)) = config.urls.split_first() else {
            return Err(CodecError::Config("no schema registry URL given".into()));
        };
        let mut builder = SrSettings::new_builder(first.trim_end_matches('/').to_string());
        for url in rest {
            builder.add_url(url.trim_end_matches('/').to_string());
        }
        let settings = builder
            .set_timeout(config.timeout)
            .no_proxy()
            .build()
            .map_err(|e| CodecError::Config(describe(&e)))?;
        Ok(Codec {
            inner: Arc::new(Inner {
                encoder: AvroEncoder::new(settings.clone()),
                decoder: AvroDecoder::new(settings.clone()),
                settings,
                mode: config.mode,
            }),
        })
    }

    fn strategy<T: AvroRecord>(&self, topic: &str) -> SubjectNameStrategy {
        match self.inner.mode {
            SchemaMode::Register => SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_string(),
                false,
                SuppliedSchema::new(None, SchemaType::Avro, T::SCHEMA_JSON.to_string()),
            ),
            SchemaMode::Latest => SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false),
        }
    }

    /// Registers (or looks up) the schema for `topic` now, so a writer fails at start-up rather
    /// than on its first record. Returns the schema id records will carry.
    pub async fn prepare<T: AvroRecord>(&self, topic: &str) -> Result<u32, CodecError> {
        let subject = crate::topics::value_subject(topic);
        let schema = self
            .inner
            .encoder
            .get_schema_and_id(&subject, self.strategy::<T>(topic))
            .await
            .map_err(|e| self.encoder_error(&subject, e))?;
        Ok(schema.id)
    }

    /// Encodes `record` as the value of a record on `topic`.
    pub async fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>, CodecError> {
        let subject = crate::topics::value_subject(topic);
        self.inner
            .encoder
            .encode_struct(record, &self.strategy::<T>(topic))
            .await
            .map_err(|e| self.encoder_error(&subject, e))
    }

    /// Decodes a wire-format payload into `T`, resolving the writer's schema into `T`'s.
    pub async fn decode<T: AvroRecord>(&self, payload: &[u8]) -> Result<T, CodecError> {
        let (id, mut datum) = split_wire_format(payload)?;
        let writer = self
            .inner
            .decoder
            .get_schema(id)
            .await
            .map_err(|e| self.decoder_error(id, e))?;
        let undecodable = |reason: String| CodecError::Undecodable { id, reason };
        let reader = GenericDatumReader::builder(&writer.parsed)
            .reader_schema(T::schema())
            .build()
            .map_err(|e| {
                undecodable(format!(
                    "writer schema cannot be read as {}: {e}",
                    record_name::<T>()
                ))
            })?;
        let value = reader
            .read_value(&mut datum)
            .map_err(|e| undecodable(e.to_string()))?;
        if !datum.is_empty() {
            return Err(undecodable(format!(
                "{} trailing bytes after the datum",
                datum.len()
            )));
        }
        from_value::<T>(&value).map_err(|e| undecodable(e.to_string()))
    }

    /// Decodes a wire-format payload with its writer's schema alone, whatever record it holds, as
    /// JSON (Avro's JSON mapping of the generic value): for tools that show records of any topic.
    /// Returns the schema id, the schema's full name and the value.
    pub async fn decode_json(&self, payload: &[u8]) -> Result<(u32, String, serde_json::Value), CodecError> {
        let (id, mut datum) = split_wire_format(payload)?;
        let writer = self
            .inner
            .decoder
            .get_schema(id)
            .await
            .map_err(|e| self.decoder_error(id, e))?;
        let undecodable = |reason: String| CodecError::Undecodable { id, reason };
        let reader = GenericDatumReader::builder(&writer.parsed)
            .build()
            .map_err(|e| undecodable(e.to_string()))?;
        let value = reader
            .read_value(&mut datum)
            .map_err(|e| undecodable(e.to_string()))?;
        if !datum.is_empty() {
            return Err(undecodable(format!(
                "{} trailing bytes after the datum",
                datum.len()
            )));
        }
        let name = writer
            .parsed
            .name()
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| "value".into());
        let json = serde_json::Value::try_from(value).map_err(|e| undecodable(e.to_string()))?;
        Ok((id, name, json))
    }

    /// Checks that the registry answers; for readiness probes.
    pub async fn check_registry(&self) -> Result<(), CodecError> {
        get_all_subjects(&self.inner.settings)
            .await
            .map(|_| ())
            .map_err(|e| CodecError::RegistryUnavailable(describe(&e)))
    }

    fn encoder_error(&self, subject: &str, e: SRCError) -> CodecError {
        // The converter caches non-retriable errors per subject; none of them should outlive
        // this call (a fixed registry or compatibility setting must be picked up on retry).
        self.inner.encoder.remove_errors_from_cache();
        match registry_error_code(&e) {
            Some(409 | 42201 | 42202 | 40401 | 40402 | 40403) => CodecError::SchemaRejected {
                subject: subject.to_string(),
                reason: describe(&e),
            },
            _ if e.retriable || is_http_failure(&e) => CodecError::RegistryUnavailable(describe(&e)),
            _ => CodecError::Encode {
                subject: subject.to_string(),
                reason: describe(&e),
            },
        }
    }

    fn decoder_error(&self, id: u32, e: SRCError) -> CodecError {
        match registry_error_code(&e) {
            Some(40403) => CodecError::UnknownSchema { id },
            _ if e.retriable || is_http_failure(&e) => {
                self.inner.decoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable(describe(&e))
            }
            // A schema the registry returned but that does not parse: nothing a retry fixes.
            _ => CodecError::Undecodable {
                id,
                reason: describe(&e),
            },
        }
    }
}

fn record_name<T: AvroRecord>() -> String {
    T::schema()
        .name()
        .map(|n| n.fullname(None))
        .unwrap_or_else(|| "record".into())
}

/// The Confluent `error_code` the registry answered with, if the failure was an HTTP error.
fn registry_error_code(e: &SRCError) -> Option<u32> {
    let raw = e.source()?.downcast_ref::<RawError>()?;
    (raw.error_code != 0).then_some(raw.error_code)
}

/// True when the registry answered with a non-success HTTP status that is not a definite answer
/// about the schema (500, 401, a proxy error page): worth retrying.
fn is_http_failure(e: &SRCError) -> bool {
    e.error.starts_with("HTTP request to schema registry failed")
        && registry_error_code(e).is_none_or(|c| c >= 500)
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_header_is_split() {
        let (id, datum) = split_wire_format(&[0, 0, 0, 1, 2, 9, 9]).unwrap();
        assert_eq!(id, 258);
        assert_eq!(datum, &[9, 9]);
    }

    #[test]
    fn bad_headers_are_malformed() {
        for payload in [
            &[][..],
            &[0, 0, 0][..],
            &[1, 0, 0, 0, 1, 2][..],
            &b"{\"json\":true}"[..],
        ] {
            let err = split_wire_format(payload).unwrap_err();
            assert!(
                matches!(err, CodecError::Malformed(_)),
                "{payload:?} gave {err:?}"
            );
            assert!(!err.is_transient());
        }
    }
}
