//! Embedding for tenants: the tenant's `embedding` model (or the one a
//! knowledge base names), resolved through its model settings like every
//! model call, admitted and settled through metering (tokens-per-minute,
//! a budget reservation of the worst case, a usage event of kind
//! `embedding`). The built-in model runs in this process (all-MiniLM-L6-v2
//! from a local directory, loaded on first use); any other goes to its
//! provider's embeddings API.

use std::path::PathBuf;
use std::sync::Arc;

use bulkhead_core::{Code, Error, Money, TenantCtx};
use bulkhead_limits::RateKind;
use bulkhead_metering::{Admission, Metering, TokenUsage};
use bulkhead_models::routing::{ModelRouter, ModelSettings};
use bulkhead_store::{UsageEvent, UsageKind};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

#[cfg(feature = "minilm")]
use crate::MiniLm;
use crate::{Chunker, Embedder};

/// The built-in embedding model's catalog name.
pub const LOCAL_MODEL: &str = "builtin/all-minilm-l6-v2";
/// Its dimensions.
pub const LOCAL_DIMS: usize = 384;

/// Vectors with what they cost.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: i64,
    pub cost: Money,
}

/// What an embedding call's usage event is filed under.
#[derive(Debug, Clone, Default)]
pub struct EmbedTags {
    /// Idempotency key of the usage event.
    pub event_id: String,
    pub request_id: Option<String>,
    pub attributes: serde_json::Value,
}

#[derive(Clone)]
pub struct Embedding {
    models: Arc<ModelRouter>,
    metering: Metering,
    model_dir: Option<PathBuf>,
    #[cfg(feature = "minilm")]
    local: Arc<OnceCell<Arc<MiniLm>>>,
    tokenizer: Arc<OnceCell<Arc<tokenizers::Tokenizer>>>,
}

impl Embedding {
    pub fn new(models: Arc<ModelRouter>, metering: Metering, model_dir: Option<PathBuf>) -> Self {
        Self {
            models,
            metering,
            model_dir,
            #[cfg(feature = "minilm")]
            local: Arc::new(OnceCell::new()),
            tokenizer: Arc::new(OnceCell::new()),
        }
    }

    fn model_dir(&self) -> Result<&PathBuf, Error> {
        self.model_dir.as_ref().ok_or_else(|| {
            Error::new(
                Code::Unavailable,
                "the embedding model is not installed: run `bash scripts/models.sh` and set \
                 knowledge.model_dir (or BULKHEAD_MINILM_DIR) to the directory it prints",
            )
        })
    }

    /// The built-in model, loaded once.
    #[cfg(feature = "minilm")]
    pub async fn local(&self) -> Result<Arc<MiniLm>, Error> {
        let dir = self.model_dir()?.clone();
        self.local
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || MiniLm::load(dir).map(Arc::new))
                    .await
                    .map_err(|e| Error::internal(format!("loading the embedding model: {e}")))?
            })
            .await
            .cloned()
    }

    /// A chunker counting tokens with the built-in model's tokenizer (the
    /// same for every knowledge base, whatever model embeds it).
    pub async fn chunker(&self, max_tokens: usize, overlap: usize) -> Result<Chunker, Error> {
        let dir = self.model_dir()?.clone();
        let tokenizer = self
            .tokenizer
            .get_or_try_init(|| async move {
                let path = dir.join("tokenizer.json");
                tokio::task::spawn_blocking(move || {
                    tokenizers::Tokenizer::from_file(&path).map(Arc::new).map_err(|e| {
                        Error::new(Code::Unavailable, format!("cannot read {}: {e}", path.display()))
                    })
                })
                .await
                .map_err(|e| Error::internal(format!("loading the tokenizer: {e}")))?
            })
            .await?;
        Chunker::new(tokenizer, max_tokens, overlap)
    }

    /// The catalog model a request means: `requested` (a name or alias) or
    /// the tenant's `embedding` task model; it must be an embedding model
    /// the tenant may use.
    pub async fn resolve(&self, ctx: &TenantCtx, requested: Option<&str>) -> Result<String, Error> {
        let terms = self.metering.terms(ctx).await?;
        let settings = ModelSettings::from_json(&terms.models)?;
        let model = self.models.resolve_name(&settings, requested.unwrap_or("task:embedding"))?;
        let price = self
            .models
            .catalog()
            .get(&model)
            .ok_or_else(|| bulkhead_metering::pricing::unknown_model(&model))?;
        if price.mode != "embedding" {
            return Err(Error::invalid(format!("model `{model}` is not an embedding model")));
        }
        Ok(model)
    }

    /// Embeds `inputs` with `model` (a resolved catalog name) for the
    /// tenant, metered. Vectors come back in input order.
    pub async fn embed(
        &self,
        ctx: &TenantCtx,
        model: &str,
        inputs: &[String],
        tags: &EmbedTags,
    ) -> Result<Embedded, Error> {
        if inputs.is_empty() {
            return Ok(Embedded { vectors: Vec::new(), tokens: 0, cost: Money::ZERO });
        }
        let terms = self.metering.terms(ctx).await?;
        let estimate: i64 = inputs.iter().map(|s| (s.len() as i64 + 3) / 4 + 2).sum();
        let worst = self.metering.pricing().worst_case(&terms.pricing, model, estimate * 2, Some(0))?;
        let admitted = self
            .metering
            .admit(
                ctx,
                Admission {
                    rates: vec![(RateKind::Tokens, estimate as u64)],
                    concurrency: None,
                    worst_case: worst,
                },
            )
            .await?;
        let result = self.call(ctx, model, inputs).await;
        let (vectors, tokens, provider) = match result {
            Ok(r) => r,
            Err(e) => {
                self.metering.cancel(ctx, admitted).await?;
                return Err(e);
            }
        };
        let tokens = tokens.max(0);
        let cost = self.metering.pricing().llm_cost(
            &terms.pricing,
            model,
            TokenUsage { input: tokens, output: 0, cached_input: 0 },
        )?;
        let mut attributes = json!({"provider": provider, "inputs": inputs.len()});
        if let (Some(a), Some(extra)) = (attributes.as_object_mut(), tags.attributes.as_object()) {
            a.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let event = UsageEvent {
            id: tags.event_id.clone(),
            ts: OffsetDateTime::now_utc(),
            kind: UsageKind::Embedding,
            name: model.to_owned(),
            input_tokens: tokens,
            output_tokens: 0,
            cached_input_tokens: 0,
            quantity: inputs.len() as i64,
            unit: Some("inputs".into()),
            cost,
            run_id: None,
            agent_id: None,
            request_id: tags.request_id.clone(),
            attributes,
        };
        self.metering.settle(ctx, admitted, event).await?;
        Ok(Embedded { vectors, tokens, cost })
    }

    async fn call(
        &self,
        ctx: &TenantCtx,
        model: &str,
        inputs: &[String],
    ) -> Result<(Vec<Vec<f32>>, i64, String), Error> {
        if model == LOCAL_MODEL {
            return self.embed_locally(inputs).await;
        }
        let terms = self.metering.terms(ctx).await?;
        let settings = ModelSettings::from_json(&terms.models)?;
        let routes = self.models.routes(ctx, &settings, model).await?;
        let route = routes.first().ok_or_else(|| Error::internal("no route for the embedding model"))?;
        let out = route.provider.embed(&route.provider_model, inputs).await.map_err(Error::from)?;
        if out.vectors.len() != inputs.len() {
            return Err(Error::new(
                Code::Unavailable,
                format!("the provider returned {} vectors for {} inputs", out.vectors.len(), inputs.len()),
            ));
        }
        Ok((out.vectors, out.usage.input_tokens as i64, route.provider_name.clone()))
    }

    #[cfg(feature = "minilm")]
    async fn embed_locally(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, i64, String), Error> {
        let model = self.local().await?;
        let inputs = inputs.to_vec();
        tokio::task::spawn_blocking(move || {
            let tokens: usize = inputs.iter().map(|s| model.count_tokens(s)).sum();
            let vectors = model.embed(&inputs)?;
            Ok((vectors, tokens as i64, "builtin".to_owned()))
        })
        .await
        .map_err(|e| Error::internal(format!("embedding: {e}")))?
    }

    #[cfg(not(feature = "minilm"))]
    async fn embed_locally(&self, _inputs: &[String]) -> Result<(Vec<Vec<f32>>, i64, String), Error> {
        Err(Error::new(Code::Unavailable, "this build has no local embedding model (feature `minilm`)"))
    }
}
