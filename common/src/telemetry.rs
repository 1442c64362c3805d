//! Logs and traces: a `tracing` subscriber writing to stderr (text or JSON, filtered by `RUST_LOG`)
//! and, when an
//! OTLP endpoint is configured, span export over OTLP/HTTP. Trace context crosses Kafka in
//! record headers (see [`crate::kafka::trace_headers`]).

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Log and trace settings, shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Filter directives (`RUST_LOG`), e.g. `info,rdkafka=warn`.
    pub log: String,
    /// `text` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g. `http://127.0.0.1:4318`. Unset:
    /// spans are not exported, trace context is still propagated.
    pub otlp_endpoint: Option<String>,
    /// Service name on exported spans (`OTEL_SERVICE_NAME`); the stage's name when unset.
    pub service_name: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes spans still buffered.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Flushes and stops span export. Call once, at the end of shutdown (dropping does the same).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Off the async runtime: the exporter's blocking client may not be dropped inside it.
            let flushed = std::thread::spawn(move || provider.shutdown()).join();
            if let Ok(Err(e)) = flushed {
                eprintln!("telemetry: flushing spans failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber. Fails if the filter does not parse or the exporter cannot be
/// built; a second call in one process (tests) leaves the first subscriber in place.
pub fn init(default_service: &str, settings: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&settings.log).map_err(|e| {
        anyhow::anyhow!(
            "invalid setting `telemetry.log` (RUST_LOG) `{}`: {e}",
            settings.log
        )
    })?;

    let provider = match &settings.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let service = settings
                .service_name
                .clone()
                .unwrap_or_else(|| default_service.to_string());
            // The exporter's blocking HTTP client must be created and dropped outside the async
            // runtime, so both happen on plain threads.
            let provider = std::thread::spawn(move || build_provider(endpoint, service))
                .join()
                .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))??;
            Some(provider)
        }
        _ => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(default_service.to_string())));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match settings.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed; keeping it");
    }
    Ok(Telemetry { provider })
}

/// Links span `from` to span `to` (OpenTelemetry span links): for work done for many traces at
/// once, such as one request carrying many records' operations. Without span export, nothing.
pub fn link(from: &tracing::Span, to: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = to.context();
    let target = cx.span().span_context().clone();
    // An invalid context (export off) is ignored by `add_link`.
    from.add_link(target);
}

fn build_provider(endpoint: String, service: String) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("invalid setting `telemetry.otlp_endpoint`: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}
