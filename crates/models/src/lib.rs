//! Model providers behind one trait (BLUEPRINT §3 "models"): a
//! provider-neutral chat representation ([`chat`]), the [`Provider`] trait,
//! and three adapters —
//!
//! - [`OpenAiProvider`]: OpenAI Chat Completions, and every server that
//!   speaks it (vLLM, Ollama, llama.cpp) at any base URL;
//! - [`AnthropicProvider`]: Anthropic Messages;
//! - [`ScriptedProvider`]: the built-in offline stand-in (`builtin/scripted`),
//!   which answers by documented rules, for demos and tests.
//!
//! [`build`] picks one by kind (`openai`, `anthropic`, `builtin`).
//!
//! Network adapters retry transient failures with backoff and jitter (see
//! [`retry`] for the policy), bound every call with the timeouts of their
//! [`ProviderConfig`], and stream over server-sent events. Dropping a
//! returned future or stream closes the HTTP connection, so a cancelled run
//! stops the provider's work.
//!
//! Invariants:
//! - A provider's API key leaves this crate only in the request header that
//!   authenticates with the provider: never in an error, a log line or
//!   `Debug` output (the HTTP layer may show [`ProviderError`]s' messages
//!   to callers only through `From<ProviderError> for bulkhead_core::Error`,
//!   which shows a provider's message only for 4xx the caller can fix).
//! - This crate knows provider wire formats and nothing of ours: no tenant,
//!   no pricing, no HTTP routes. Choosing the provider, key and model for a
//!   tenant (and metering the [`Usage`] a call returns) is the caller's job.

pub mod anthropic;
pub mod chat;
pub mod config;
pub mod error;
pub mod openai;
pub mod retry;
pub mod routing;
pub mod scripted;
mod sse;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use anthropic::AnthropicProvider;
pub use chat::{
    ChatRequest, ChatResponse, Embeddings, FinishReason, Message, Role, StreamCollector, StreamEvent,
    ToolCall, ToolChoice, ToolDef, Usage,
};
pub use config::{ANTHROPIC_BASE_URL, OPENAI_BASE_URL, ProviderConfig};
pub use error::ProviderError;
pub use openai::OpenAiProvider;
pub use scripted::{SCRIPTED_MODEL, ScriptedProvider};

/// The stream of a streamed answer.
pub type EventStream = BoxStream<'static, Result<StreamEvent, ProviderError>>;

/// A model provider. Object safe: hold it as `Arc<dyn Provider>`.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `openai`, `anthropic` or `builtin`.
    fn kind(&self) -> &'static str;

    /// One complete answer. Retried on transient failures.
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// An answer as a stream of events (see [`StreamEvent`] for their order).
    /// Failures up to the first event are retried and returned here; after
    /// it, an error is the stream's last item. Dropping the stream aborts
    /// the request.
    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError>;

    /// One vector per input, in order. Providers without embeddings answer
    /// [`ProviderError::Unsupported`].
    async fn embed(&self, model: &str, inputs: &[String]) -> Result<Embeddings, ProviderError>;
}

/// The provider kinds [`build`] knows.
pub const KINDS: [&str; 3] = ["openai", "anthropic", "builtin"];

/// A provider of `kind` (`openai`, `anthropic` or `builtin`) for `config`.
/// The `builtin` kind ignores the configuration.
pub fn build(kind: &str, config: ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    Ok(match kind {
        "openai" => Arc::new(OpenAiProvider::new(config)?),
        "anthropic" => Arc::new(AnthropicProvider::new(config)?),
        "builtin" => Arc::new(ScriptedProvider::new()),
        other => {
            return Err(ProviderError::Config(format!(
                "unknown provider kind {other:?}; expected one of {}",
                KINDS.join(", ")
            )));
        }
    })
}
