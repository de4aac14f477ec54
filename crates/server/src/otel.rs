//! Optional OpenTelemetry traces (cargo feature `otel`; `[server]
//! otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`): one trace
//! per API request, exported over OTLP/HTTP (protobuf) in batches off the
//! request path. The root span `request` (kind server) has a child for each
//! phase the request went through: `validate`, `route` (routed requests),
//! `queue` (waiting for the engine's first step), `prefill` (to the first
//! token), `decode` (to the last token) and, for streams, `stream` (first to
//! last event sent). The phases are measured on the request's path
//! ([`crate::access::Marks`]) and written as spans with their own start and
//! end times when the request ends, so no span crosses the engine thread.

use std::time::SystemTime;

use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// The installed exporter; shut down (flushing queued spans) on drop.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("otel: {e}");
        }
    }
}

/// Export traces to `endpoint` (an OTLP/HTTP base URL such as
/// `http://collector:4318`; `/v1/traces` is added), as protobuf, or as
/// JSON when `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`.
pub fn install(endpoint: &str) -> anyhow::Result<Traces> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other}: switchyard exports http/protobuf or http/json"
        ),
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {url}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("switchyard")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    tracing::info!(%url, "exporting traces (OTLP/HTTP)");
    Ok(Traces { provider })
}

/// One request's trace: the root span over `[start, end]`, its phases as
/// children, its attributes on the root.
pub fn export(
    start: SystemTime,
    end: SystemTime,
    phases: &[(&'static str, SystemTime, SystemTime)],
    attributes: Vec<KeyValue>,
) {
    let tracer = global::tracer("switchyard");
    let root = tracer
        .span_builder("request")
        .with_kind(SpanKind::Server)
        .with_start_time(start)
        .with_attributes(attributes)
        .start(&tracer);
    let cx = Context::current_with_span(root);
    for &(name, from, to) in phases {
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(from)
            .start_with_context(&tracer, &cx);
        span.end_with_timestamp(to);
    }
    cx.span().end_with_timestamp(end);
}
