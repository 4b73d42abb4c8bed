//! Telemetry: the process's Prometheus metrics ([`metrics`]), recorded by
//! every crate that does work (metering, agents, the server) without their
//! depending on each other, and — behind the `otlp` feature, which only the
//! binary turns on — OpenTelemetry trace export over OTLP/HTTP ([`otlp`]).
//!
//! Invariants, as absences: no label value comes from a caller unbounded
//! (tenants, models and routes are interned under caps; every other label is
//! a `&'static str` chosen by our code); no secret, prompt, argument or code
//! reaches a metric label or a span attribute this crate defines; nothing is
//! exported over the network unless the operator configured an endpoint.

#![forbid(unsafe_code)]

pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
