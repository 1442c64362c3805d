//! An OTLP/HTTP trace receiver for tests: a real HTTP server on a free port that accepts
//! `POST /v1/traces` with protobuf bodies (what the stages' exporter sends) and keeps every span
//! for assertions.
//!
//! The stages' exporter (`opentelemetry-otlp` with `http-proto`, without `gzip-http`) sends
//! uncompressed protobuf; asking it for gzip (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`) fails its
//! construction. So a compressed body, or JSON, is refused here with 415 and says why, rather
//! than being half understood.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::span::SpanKind,
};
use prost::Message as _;

/// One received span, flattened: ids as lowercase hex, attributes as text.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    /// The `service.name` resource attribute of the process that sent it.
    pub service: String,
    pub attributes: BTreeMap<String, String>,
    /// Linked spans, as `(trace id, span id)`.
    pub links: Vec<(String, String)>,
    /// `true` when the span's status is error.
    pub error: bool,
}

impl ReceivedSpan {
    /// The attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// True when this span links to `other`.
    pub fn links_to(&self, other: &ReceivedSpan) -> bool {
        self.links
            .iter()
            .any(|(trace, span)| *trace == other.trace_id && *span == other.span_id)
    }
}

/// A span's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl From<i32> for Kind {
    fn from(kind: i32) -> Self {
        match SpanKind::try_from(kind) {
            Ok(SpanKind::Internal) => Kind::Internal,
            Ok(SpanKind::Server) => Kind::Server,
            Ok(SpanKind::Client) => Kind::Client,
            Ok(SpanKind::Producer) => Kind::Producer,
            Ok(SpanKind::Consumer) => Kind::Consumer,
            Ok(SpanKind::Unspecified) | Err(_) => Kind::Unspecified,
        }
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: usize,
    /// Requests refused, with the reason: a test that sees none of its spans can say why.
    refused: Vec<String>,
}

/// The receiver; the server stops when this is dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the OTLP receiver stopped: {e}");
            }
        });
        Ok(Receiver {
            addr,
            received,
            server,
        })
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// The spans of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.lock()
            .spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// How many export requests were accepted.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Why requests were refused, if any were.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn export(State(received): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = decode(&headers, &body);
    let mut received = received.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(spans) => {
            received.requests += 1;
            received.spans.extend(spans);
            let answer = ExportTraceServiceResponse::default().encode_to_vec();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                answer,
            )
                .into_response()
        }
        Err((status, reason)) => {
            received.refused.push(reason.clone());
            (status, reason).into_response()
        }
    }
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Vec<ReceivedSpan>, (StatusCode, String)> {
    let unsupported = |what: String| (StatusCode::UNSUPPORTED_MEDIA_TYPE, what);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return Err(unsupported(format!(
            "content type `{content_type}`: this receiver takes OTLP protobuf (application/x-protobuf)"
        )));
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?");
        if encoding != "identity" {
            return Err(unsupported(format!(
                "content encoding `{encoding}`: the stages' exporter sends uncompressed bodies, and so must a client of this receiver"
            )));
        }
    }
    let request = ExportTraceServiceRequest::decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("not an OTLP trace export: {e}")))?;
    Ok(flatten(request))
}

/// The spans of an export request, each with its resource's `service.name`.
pub fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex::encode(&span.parent_span_id)),
                    name: span.name,
                    kind: Kind::from(span.kind),
                    service: service.clone(),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    // Status code 2 is STATUS_CODE_ERROR.
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    spans
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default()))
        .collect()
}

/// An attribute value as text: strings as they are, numbers and booleans printed, arrays and
/// maps as JSON-like lists.
fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(text).collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(text).unwrap_or_default()))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages' own exporter (`common::telemetry`) reaches the receiver, and what it sent comes
    /// back intact: ids, parentage, service name, kind, attributes.
    #[tokio::test(flavor = "multi_thread")]
    async fn keeps_the_spans_the_stages_exporter_sends() {
        let receiver = Receiver::start().await.unwrap();
        let settings = common::telemetry::TelemetrySettings {
            otlp_endpoint: Some(receiver.endpoint()),
            service_name: Some("receiver-test".into()),
            ..Default::default()
        };
        let telemetry = common::telemetry::init("x", &settings).unwrap();
        {
            let outer = tracing::info_span!("outer", otel.kind = "server", customer_id = "cus_1", n = 3);
            let _entered = outer.enter();
            tracing::info_span!("inner", ok = true).in_scope(|| {});
        }
        // Shutting down flushes the batch, from a plain thread as the stages do.
        tokio::task::spawn_blocking(move || telemetry.shutdown())
            .await
            .unwrap();

        assert_eq!(receiver.refused(), Vec::<String>::new());
        assert!(receiver.requests() >= 1);
        let spans = receiver.spans();
        let outer = spans.iter().find(|s| s.name == "outer").expect("outer span");
        let inner = spans.iter().find(|s| s.name == "inner").expect("inner span");
        assert_eq!(outer.service, "receiver-test");
        assert_eq!(outer.kind, Kind::Server);
        assert_eq!(outer.parent_span_id, None);
        assert_eq!(outer.attr("customer_id"), Some("cus_1"));
        assert_eq!(outer.attr("n"), Some("3"));
        assert_eq!(outer.trace_id.len(), 32);
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_eq!(inner.parent_span_id.as_deref(), Some(outer.span_id.as_str()));
        assert_eq!(inner.attr("ok"), Some("true"));
        assert_eq!(receiver.trace(&outer.trace_id).len(), 2);
    }

    /// What the receiver cannot read is refused with the reason, not silently dropped.
    #[tokio::test]
    async fn refuses_what_it_cannot_decode_and_says_why() {
        let receiver = Receiver::start().await.unwrap();
        let http = reqwest::Client::new();
        let url = format!("{}/v1/traces", receiver.endpoint());
        let post = |content_type: &'static str, encoding: Option<&'static str>, body: Vec<u8>| {
            let mut request = http.post(&url).header("content-type", content_type).body(body);
            if let Some(encoding) = encoding {
                request = request.header("content-encoding", encoding);
            }
            request.send()
        };
        let json = post("application/json", None, b"{}".to_vec()).await.unwrap();
        assert_eq!(json.status(), 415);
        let gzip = post("application/x-protobuf", Some("gzip"), vec![0x1f, 0x8b])
            .await
            .unwrap();
        assert_eq!(gzip.status(), 415);
        assert!(gzip.text().await.unwrap().contains("content encoding `gzip`"));
        let garbage = post("application/x-protobuf", None, vec![0xff; 8]).await.unwrap();
        assert_eq!(garbage.status(), 400);
        let empty = post("application/x-protobuf", None, Vec::new()).await.unwrap();
        assert_eq!(empty.status(), 200, "an empty export is a valid one");
        assert_eq!(receiver.refused().len(), 3);
        assert_eq!(receiver.requests(), 1);
        assert!(receiver.spans().is_empty());
    }
}
