//! One metered model call, shared by the agent loop and the
//! OpenAI-compatible gateway: admit (tokens per minute, a reservation of
//! the worst case at the route's prices) → call → price the actual usage,
//! write it to the ledger and settle; on a provider failure that another
//! route may not share, release what was held and try the next route.

use bulkhead_core::{Code, Error, Money, TenantCtx};
use bulkhead_limits::RateKind;
use bulkhead_metering::{Admission, Admitted, Metering, TenantTerms, TokenUsage};
use bulkhead_models::routing::{ModelRouter, Route};
use bulkhead_models::{ChatRequest, ChatResponse, Usage};
use bulkhead_store::{UsageEvent, UsageKind};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a call's usage event is filed under.
#[derive(Debug, Clone)]
pub struct CallTags {
    /// The idempotency key; a fallback attempt `n` is filed as `<id>-<n>`.
    pub event_id: String,
    pub run_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    /// Merged into the event's attributes (with the provider's name).
    pub attributes: Value,
}

/// A rough prompt size for admission: a quarter-token per character plus a
/// little per message and for tool schemas. The provider's count settles it.
pub fn estimate_prompt_tokens(req: &ChatRequest) -> u64 {
    let messages: usize = req
        .messages
        .iter()
        .map(|m| {
            m.content.len() + m.tool_calls.iter().map(|c| c.arguments.len() + c.name.len()).sum::<usize>()
        })
        .sum();
    let tools: usize =
        req.tools.iter().map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len()).sum();
    ((messages + tools) as u64).div_ceil(4) + 4 * req.messages.len() as u64 + 3
}

/// Admits one attempt on `route`.
pub async fn admit(
    metering: &Metering,
    models: &ModelRouter,
    terms: &TenantTerms,
    ctx: &TenantCtx,
    route: &Route,
    request: &ChatRequest,
    prompt: u64,
) -> Result<Admitted, Error> {
    let price = models
        .catalog()
        .get(&route.model)
        .ok_or_else(|| bulkhead_metering::pricing::unknown_model(&route.model))?;
    let cap = price.max_output.max(1);
    let max_out = u64::from(request.max_tokens.unwrap_or(cap).min(cap));
    let worst =
        metering.pricing().worst_case(&terms.pricing, &route.model, prompt as i64, Some(max_out as i64))?;
    let admission =
        Admission { rates: vec![(RateKind::Tokens, prompt + max_out)], concurrency: None, worst_case: worst };
    metering.admit(ctx, admission).await
}

/// Prices a finished attempt's usage, writes it to the ledger (durably)
/// and settles its admission. Returns the cost.
#[allow(clippy::too_many_arguments)]
pub async fn settle(
    metering: &Metering,
    terms: &TenantTerms,
    ctx: &TenantCtx,
    admitted: Admitted,
    route: &Route,
    usage: &Usage,
    tags: &CallTags,
    attempt: usize,
) -> Result<Money, Error> {
    let tokens = TokenUsage {
        input: usage.input_tokens as i64,
        output: usage.output_tokens as i64,
        cached_input: usage.cached_input_tokens as i64,
    };
    let cost = metering.pricing().llm_cost(&terms.pricing, &route.model, tokens)?;
    let mut attributes = json!({"provider": route.provider_name});
    if let Some(extra) = tags.attributes.as_object() {
        for (k, v) in extra {
            attributes[k] = v.clone();
        }
    }
    let event = UsageEvent {
        id: if attempt == 0 { tags.event_id.clone() } else { format!("{}-{attempt}", tags.event_id) },
        ts: OffsetDateTime::now_utc(),
        kind: UsageKind::Llm,
        name: route.model.clone(),
        input_tokens: tokens.input,
        output_tokens: tokens.output,
        cached_input_tokens: tokens.cached_input.min(tokens.input),
        quantity: 0,
        unit: None,
        cost,
        run_id: tags.run_id,
        agent_id: tags.agent_id,
        request_id: tags.request_id.clone(),
        attributes,
    };
    metering.settle(ctx, admitted, event).await?;
    Ok(cost)
}

/// A whole non-streaming call over `routes`, in order, failing over on
/// provider errors that may be transient. Returns the answer, its cost and
/// the route that served it.
#[tracing::instrument(
    name = "model.call",
    skip_all,
    fields(
        tenant.id = %ctx.tenant_id(),
        gen_ai.request.model = routes.first().map_or("", |r| r.model.as_str()),
    )
)]
pub async fn complete(
    metering: &Metering,
    models: &ModelRouter,
    ctx: &TenantCtx,
    routes: &[Route],
    mut request: ChatRequest,
    tags: &CallTags,
) -> Result<(ChatResponse, Money, Route), Error> {
    let terms = metering.terms(ctx).await?;
    let prompt = estimate_prompt_tokens(&request);
    let mut last = None;
    for (attempt, route) in routes.iter().enumerate() {
        let admitted = admit(metering, models, &terms, ctx, route, &request, prompt).await?;
        request.model = route.provider_model.clone();
        match route.provider.chat(&request).await {
            Ok(response) => {
                let cost =
                    settle(metering, &terms, ctx, admitted, route, &response.usage, tags, attempt).await?;
                return Ok((response, cost, route.clone()));
            }
            Err(e) => {
                metering.cancel(ctx, admitted).await?;
                let failover = e.is_retryable();
                if failover {
                    tracing::warn!(model = %route.model, error = %e, "provider failed; trying the next model");
                }
                last = Some(e);
                if !failover {
                    break;
                }
            }
        }
    }
    Err(last
        .map(Error::from)
        .unwrap_or_else(|| Error::new(Code::Unavailable, "no provider could serve the call")))
}
