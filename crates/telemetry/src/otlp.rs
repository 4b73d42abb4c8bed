//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless the operator
//! sets `telemetry.otlp_endpoint`: [`layer`] then returns a
//! `tracing-subscriber` layer that turns our `tracing` spans into
//! OpenTelemetry spans, and an [`Exporter`] to shut down (flush) at exit.
//!
//! The spans are the ones the code already opens: `request` (the server's
//! HTTP span, with `http.route` and `tenant.id` recorded once known),
//! `run`, `model.call`, `tool.call` and `sandbox.execute`, each with
//! `tenant.id`. Their fields are ids, names and codes; prompts, arguments,
//! code and secrets are never span fields.
//!
//! Export runs on the SDK's batch processor — its own thread, with a
//! bounded queue (spans past it are dropped, never blocking a request) —
//! through a blocking HTTP client, so it needs no async runtime and works
//! the same in `serve` and `worker`.

use std::time::Duration;

use bulkhead_core::config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last spans to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The running exporter; [`Exporter::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Exports the spans still queued (waiting up to a few seconds), then
    /// stops the exporter. Call it once the work is done, outside any
    /// async runtime's worker (it blocks).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "could not flush the last trace spans");
        }
    }
}

/// The traces URL of a configured endpoint.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") { endpoint.to_owned() } else { format!("{endpoint}/v1/traces") }
}

/// The layer that turns `tracing` spans into exported OpenTelemetry spans.
pub type TraceLayer<S> = OpenTelemetryLayer<S, SdkTracer>;

/// The trace layer, or `None` when no endpoint is configured (the default:
/// nothing is exported). Errors if the exporter cannot be built.
pub fn layer<S>(config: &TelemetryConfig) -> Result<Option<(TraceLayer<S>, Exporter)>, String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let Some(endpoint) = config.otlp_endpoint.as_deref() else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("the OTLP exporter for {endpoint} could not be built: {e}"))?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
        .build();
    let tracer = provider.tracer("bulkhead");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_tracked_inactivity(false);
    Ok(Some((layer, Exporter { provider })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }

    #[test]
    fn nothing_is_built_without_an_endpoint() {
        let config = TelemetryConfig::default();
        let built = layer::<tracing_subscriber::Registry>(&config).unwrap();
        assert!(built.is_none());
    }
}
