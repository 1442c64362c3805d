//! HTTP layer: extractors with Confluent-shaped rejections, handlers, and the router.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::compat::{Compatibility, Incompatibility};
use crate::error::RegistryError;
use crate::json::{raw_json, sr_json};
use crate::store::{AVRO, ParsedSchema, VersionSel, parse_avro};

/// Request content types accepted for bodies (besides none at all). Confluent accepts the
/// same set.
const ACCEPTED_REQUEST_TYPES: [&str; 4] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

type ApiResult = Result<Response, RegistryError>;

fn ok<T: Serialize + ?Sized>(body: &T) -> ApiResult {
    Ok(sr_json(StatusCode::OK, body))
}

// ----- extractors -----

/// Path parameters; a parameter that cannot be decoded is a 400 in Confluent's shape.
pub(crate) struct SrPath<T>(pub T);

impl<S, T> FromRequestParts<S> for SrPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(SrPath(value)),
            Err(rejection) => Err(RegistryError::BadRequest(rejection.body_text())),
        }
    }
}

/// Boolean query flags (`deleted`, `permanent`, `verbose`, `defaultToGlobal`). Unparseable
/// query strings are treated as having no flags.
pub(crate) struct Flags(HashMap<String, String>);

impl Flags {
    fn get(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Flags {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let flags = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| q)
            .unwrap_or_default();
        Ok(Flags(flags))
    }
}

/// A JSON body. Content type: one of [`ACCEPTED_REQUEST_TYPES`] or none (else 415).
/// Unparseable JSON is 400 (error_code 400); JSON of the wrong shape is 422 (error_code 422).
/// Unknown fields are ignored.
pub(crate) struct SrJson<T>(pub T);

impl<S, T> FromRequest<S> for SrJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = RegistryError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(value) = req.headers().get(header::CONTENT_TYPE) {
            let value = value.to_str().unwrap_or_default();
            let essence = value.split(';').next().unwrap_or_default().trim();
            if !essence.is_empty()
                && !ACCEPTED_REQUEST_TYPES
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(essence))
            {
                return Err(RegistryError::UnsupportedMediaType);
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| RegistryError::BadRequest(rejection.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::MalformedJson(format!("Unparseable JSON body: {e}")))?;
        let body = serde_json::from_value(value)
            .map_err(|e| RegistryError::Unprocessable(format!("Unprocessable JSON body: {e}")))?;
        Ok(SrJson(body))
    }
}

// ----- request and response bodies -----

#[derive(Debug, Deserialize)]
pub(crate) struct SchemaBody {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaBody {
    fn parse(&self) -> Result<ParsedSchema, RegistryError> {
        if let Some(t) = &self.schema_type
            && !t.eq_ignore_ascii_case(AVRO)
        {
            return Err(RegistryError::UnsupportedSchemaType(t.clone()));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::ReferencesUnsupported);
        }
        parse_avro(self.schema.as_deref().unwrap_or_default())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConfigBody {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default, rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl ConfigBody {
    fn level(&self) -> Result<Compatibility, RegistryError> {
        self.compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .ok_or(RegistryError::InvalidCompatibility)?
            .parse()
            .map_err(|_| RegistryError::InvalidCompatibility)
    }
}

#[derive(Serialize)]
struct IdBody {
    id: u32,
}

#[derive(Serialize)]
struct SubjectVersionBody<'a> {
    subject: &'a str,
    version: u32,
    id: u32,
    schema: &'a str,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
}

#[derive(Serialize)]
struct SchemaStringBody<'a> {
    schema: &'a str,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
}

#[derive(Serialize)]
struct SubjectAndVersion<'a> {
    subject: &'a str,
    version: u32,
}

#[derive(Serialize)]
struct CompatibilityLevelBody {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Compatibility,
}

#[derive(Serialize)]
struct CompatibilityBody {
    compatibility: Compatibility,
}

#[derive(Serialize)]
struct CompatibilityCheckBody {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

/// `schemaType` is only reported when it is not AVRO, like Confluent.
fn reported_type(schema_type: &str) -> Option<&str> {
    (!schema_type.eq_ignore_ascii_case(AVRO)).then_some(schema_type)
}

fn parse_id(raw: &str) -> Result<u32, RegistryError> {
    raw.parse::<u32>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or(RegistryError::RouteNotFound)
}

// ----- handlers -----

async fn root() -> Response {
    sr_json(StatusCode::OK, &serde_json::json!({}))
}

async fn healthz() -> Response {
    sr_json(StatusCode::OK, &serde_json::json!({"status": "UP"}))
}

async fn not_found() -> RegistryError {
    RegistryError::RouteNotFound
}

async fn method_not_allowed() -> RegistryError {
    RegistryError::MethodNotAllowed
}

async fn list_subjects(State(state): State<AppState>, flags: Flags) -> ApiResult {
    let registry = state.registry.read().await;
    ok(&registry.subjects(flags.get("deleted")))
}

async fn list_versions(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    flags: Flags,
) -> ApiResult {
    let registry = state.registry.read().await;
    let versions: Vec<u32> = registry
        .versions(&subject, flags.get("deleted"))?
        .iter()
        .map(|v| v.version)
        .collect();
    ok(&versions)
}

async fn register(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let schema = body.parse()?;
    let id = state
        .write(|registry| registry.register(&subject, &schema))
        .await?;
    tracing::info!(subject = %subject, id, "schema registered");
    ok(&IdBody { id })
}

async fn lookup(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    flags: Flags,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let schema = body.parse()?;
    let registry = state.registry.read().await;
    let entry = registry.lookup(&subject, &schema, flags.get("deleted"))?;
    let stored = registry.schema_by_id(entry.id)?;
    ok(&SubjectVersionBody {
        subject: &subject,
        version: entry.version,
        id: entry.id,
        schema: &stored.schema,
        schema_type: reported_type(&stored.schema_type),
    })
}

async fn get_version(
    State(state): State<AppState>,
    SrPath((subject, version)): SrPath<(String, String)>,
    flags: Flags,
) -> ApiResult {
    let sel = VersionSel::parse(&version)?;
    let registry = state.registry.read().await;
    let entry = registry.version(&subject, sel, flags.get("deleted"))?;
    let stored = registry.schema_by_id(entry.id)?;
    ok(&SubjectVersionBody {
        subject: &subject,
        version: entry.version,
        id: entry.id,
        schema: &stored.schema,
        schema_type: reported_type(&stored.schema_type),
    })
}

async fn get_version_schema(
    State(state): State<AppState>,
    SrPath((subject, version)): SrPath<(String, String)>,
    flags: Flags,
) -> ApiResult {
    let sel = VersionSel::parse(&version)?;
    let registry = state.registry.read().await;
    let entry = registry.version(&subject, sel, flags.get("deleted"))?;
    let stored = registry.schema_by_id(entry.id)?;
    Ok(raw_json(StatusCode::OK, stored.schema.clone().into_bytes()))
}

async fn referenced_by(
    State(state): State<AppState>,
    SrPath((subject, version)): SrPath<(String, String)>,
) -> ApiResult {
    let sel = VersionSel::parse(&version)?;
    let registry = state.registry.read().await;
    registry.version(&subject, sel, false)?;
    ok::<[u32]>(&[])
}

async fn delete_subject(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    flags: Flags,
) -> ApiResult {
    let permanent = flags.get("permanent");
    let versions = state
        .write(|registry| registry.delete_subject(&subject, permanent))
        .await?;
    tracing::info!(subject = %subject, permanent, "subject deleted");
    ok(&versions)
}

async fn delete_version(
    State(state): State<AppState>,
    SrPath((subject, version)): SrPath<(String, String)>,
    flags: Flags,
) -> ApiResult {
    let sel = VersionSel::parse(&version)?;
    let permanent = flags.get("permanent");
    let deleted = state
        .write(|registry| registry.delete_version(&subject, sel, permanent))
        .await?;
    tracing::info!(subject = %subject, version = deleted, permanent, "version deleted");
    ok(&deleted)
}

async fn schema_types() -> Response {
    sr_json(StatusCode::OK, &[AVRO])
}

async fn schema_by_id(State(state): State<AppState>, SrPath(id): SrPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let registry = state.registry.read().await;
    let stored = registry.schema_by_id(id)?;
    ok(&SchemaStringBody {
        schema: &stored.schema,
        schema_type: reported_type(&stored.schema_type),
    })
}

async fn raw_schema_by_id(State(state): State<AppState>, SrPath(id): SrPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let registry = state.registry.read().await;
    let stored = registry.schema_by_id(id)?;
    Ok(raw_json(StatusCode::OK, stored.schema.clone().into_bytes()))
}

async fn subjects_by_id(
    State(state): State<AppState>,
    SrPath(id): SrPath<String>,
    flags: Flags,
) -> ApiResult {
    let id = parse_id(&id)?;
    let registry = state.registry.read().await;
    let mut subjects: Vec<String> = registry
        .usages(id, flags.get("deleted"))?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    ok(&subjects)
}

async fn versions_by_id(
    State(state): State<AppState>,
    SrPath(id): SrPath<String>,
    flags: Flags,
) -> ApiResult {
    let id = parse_id(&id)?;
    let registry = state.registry.read().await;
    let usages = registry.usages(id, flags.get("deleted"))?;
    let body: Vec<SubjectAndVersion<'_>> = usages
        .iter()
        .map(|(subject, version)| SubjectAndVersion {
            subject,
            version: *version,
        })
        .collect();
    ok(&body)
}

fn compatibility_answer(problems: &[Incompatibility], level: Compatibility, verbose: bool) -> ApiResult {
    let messages = verbose.then(|| {
        let mut messages: Vec<String> = problems
            .iter()
            .map(|p| {
                format!(
                    "{{errorType:'{}', description:'{}'}}",
                    p.error_type, p.description
                )
            })
            .collect();
        if let Some(first) = problems.first() {
            messages.push(format!("{{oldSchemaVersion: {}}}", first.old_version));
            messages.push(format!("{{compatibility: '{level}'}}"));
        }
        messages
    });
    ok(&CompatibilityCheckBody {
        is_compatible: problems.is_empty(),
        messages,
    })
}

async fn check_version(
    State(state): State<AppState>,
    SrPath((subject, version)): SrPath<(String, String)>,
    flags: Flags,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let sel = VersionSel::parse(&version)?;
    let schema = body.parse()?;
    let registry = state.registry.read().await;
    let problems = registry.check(&subject, &schema, Some(sel))?;
    let level = registry.effective_compatibility(&subject);
    compatibility_answer(&problems, level, flags.get("verbose"))
}

async fn check_all(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    flags: Flags,
    SrJson(body): SrJson<SchemaBody>,
) -> ApiResult {
    let schema = body.parse()?;
    let registry = state.registry.read().await;
    let problems = registry.check(&subject, &schema, None)?;
    let level = registry.effective_compatibility(&subject);
    compatibility_answer(&problems, level, flags.get("verbose"))
}

async fn get_global_config(State(state): State<AppState>) -> ApiResult {
    let registry = state.registry.read().await;
    ok(&CompatibilityLevelBody {
        compatibility_level: registry.global_compatibility(),
    })
}

async fn put_global_config(State(state): State<AppState>, SrJson(body): SrJson<ConfigBody>) -> ApiResult {
    let level = body.level()?;
    state
        .write(|registry| {
            registry.set_global_compatibility(level);
            Ok(((), true))
        })
        .await?;
    tracing::info!(%level, "global compatibility set");
    ok(&CompatibilityBody { compatibility: level })
}

async fn delete_global_config(State(state): State<AppState>) -> ApiResult {
    let old = state
        .write(|registry| Ok((registry.reset_global_compatibility(), true)))
        .await?;
    ok(&CompatibilityLevelBody {
        compatibility_level: old,
    })
}

async fn get_subject_config(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    flags: Flags,
) -> ApiResult {
    let registry = state.registry.read().await;
    let level = match registry.subject_compatibility(&subject) {
        Some(level) => level,
        None if flags.get("defaultToGlobal") => registry.global_compatibility(),
        None => return Err(RegistryError::SubjectConfigNotFound(subject)),
    };
    ok(&CompatibilityLevelBody {
        compatibility_level: level,
    })
}

async fn put_subject_config(
    State(state): State<AppState>,
    SrPath(subject): SrPath<String>,
    SrJson(body): SrJson<ConfigBody>,
) -> ApiResult {
    let level = body.level()?;
    state
        .write(|registry| {
            registry.set_subject_compatibility(&subject, level);
            Ok(((), true))
        })
        .await?;
    tracing::info!(subject = %subject, %level, "subject compatibility set");
    ok(&CompatibilityBody { compatibility: level })
}

async fn delete_subject_config(State(state): State<AppState>, SrPath(subject): SrPath<String>) -> ApiResult {
    let old = state
        .write(|registry| Ok((registry.delete_subject_compatibility(&subject)?, true)))
        .await?;
    ok(&CompatibilityLevelBody {
        compatibility_level: old,
    })
}

async fn get_mode() -> Response {
    sr_json(StatusCode::OK, &serde_json::json!({"mode": "READWRITE"}))
}

/// The registry's routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route("/compatibility/subjects/{subject}/versions", post(check_all))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_mode))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
