//! The agent loop: one run, from its queued record to its final answer.
//!
//! model call (with the agent's tools) → the tool calls it asks for (only
//! those the agent allows) → results back → … until a final answer, the
//! step or token limit, the timeout, a cancel, or the budget says stop.
//! Every model call goes through admission and settlement with the run and
//! agent ids; every step is stored; every message lands in the thread.
//!
//! Context isolation: everything that enters a model call is loaded through
//! the run's `TenantCtx` and carried as `TenantBound` until assembly, where a
//! mismatch is a hard error, never a silent drop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulkhead_core::{Code, Error, Money, TenantBound, TenantCtx};
use bulkhead_metering::Metering;
use bulkhead_models::routing::{ModelRouter, ModelSettings, Route};
use bulkhead_models::{ChatRequest, ChatResponse, Message, Role, ToolCall, ToolDef};
use bulkhead_store::{DynStore, Run, RunStatus, StoredMessage};
use serde_json::{Value, json};

use crate::calls::CallTags;
use crate::events::{EventHub, RunEvent};
use crate::spec::AgentSpec;
use crate::tenant_tools::{RunTools, TenantTools};
use crate::tools::{ToolCtx, ToolRegistry};

/// What the loop needs.
#[derive(Clone)]
pub struct Runner {
    pub store: DynStore,
    pub metering: Metering,
    pub models: Arc<ModelRouter>,
    pub tools: ToolRegistry,
    /// The tenant's own tools (HTTP, MCP, `http_request`) and the gate
    /// every tool call passes: permissions, limits, metering, audit.
    pub tenant_tools: TenantTools,
    pub events: Arc<EventHub>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: RunStatus,
    pub output: Value,
    pub error: Option<String>,
}

impl Outcome {
    fn failed(reason: impl Into<String>, output: Value) -> Self {
        Self { status: RunStatus::Failed, output, error: Some(reason.into()) }
    }
}

/// A run's running totals.
#[derive(Debug, Default, Clone)]
struct Totals {
    steps: u32,
    input_tokens: u64,
    output_tokens: u64,
    cost: Money,
}

impl Totals {
    fn json(&self) -> Value {
        json!({"steps": self.steps, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "cost_usd": self.cost})
    }
}

/// Rough token count of a text, for memory windows and admission.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4) + 4
}

fn to_message(m: &StoredMessage) -> Message {
    let role = match m.role.as_str() {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    };
    let tool_calls: Vec<ToolCall> =
        m.data.get("tool_calls").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    Message {
        role,
        content: m.content.clone(),
        tool_calls,
        tool_call_id: m.data.get("tool_call_id").and_then(Value::as_str).map(str::to_owned),
        name: m.data.get("name").and_then(Value::as_str).map(str::to_owned),
    }
}

/// Assembles a model context from tenant-bound items: every item must
/// belong to the run's tenant.
pub fn assemble(ctx: &TenantCtx, items: Vec<TenantBound<Message>>) -> Result<Vec<Message>, Error> {
    items.into_iter().map(|item| item.into_inner_for(ctx)).collect()
}

impl Runner {
    /// Runs the loop within the agent's timeout. `cancel` is set by the
    /// worker's heartbeat when someone asks the run to stop.
    pub async fn execute(&self, ctx: &TenantCtx, run: &Run, cancel: Arc<AtomicBool>) -> Outcome {
        let spec = match self.load_spec(ctx, run).await {
            Ok(spec) => spec,
            Err(e) => return Outcome::failed(format!("cannot start: {}", e.message), json!({})),
        };
        let timeout = Duration::from_secs(spec.limits.timeout_secs);
        let mut totals = Totals::default();
        let result =
            tokio::time::timeout(timeout, self.run_loop(ctx, run, &spec, &cancel, &mut totals)).await;
        match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                let reason = if e.code == Code::BudgetExceeded {
                    "budget_exceeded".to_owned()
                } else {
                    e.message.to_string()
                };
                if e.code == Code::Internal {
                    tracing::error!(run = %run.id, error = ?e.source, "run failed");
                }
                Outcome::failed(reason, json!({"usage": totals.json()}))
            }
            Err(_) => Outcome {
                status: RunStatus::Expired,
                output: json!({"usage": totals.json()}),
                error: Some(format!("timed out after {} s", spec.limits.timeout_secs)),
            },
        }
    }

    async fn load_spec(&self, ctx: &TenantCtx, run: &Run) -> Result<AgentSpec, Error> {
        let version = self.store.get_agent_version(ctx, run.agent_id, run.agent_version).await?;
        AgentSpec::from_json(&version.spec)
    }

    fn emit(&self, run: &Run, name: &'static str, data: Value) {
        self.events.publish(run.id, RunEvent { name, data });
    }

    /// The thread's messages as the agent's memory strategy selects them.
    async fn memory(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        spec: &AgentSpec,
        settings: &ModelSettings,
    ) -> Result<Vec<TenantBound<Message>>, Error> {
        let thread = self.store.get_thread(ctx, run.thread_id).await?;
        let mut recent =
            self.store.recent_messages(ctx, run.thread_id, i64::from(spec.memory.last_n)).await?;
        let mut out = Vec::new();
        if spec.memory.strategy == "last_n" {
            return Ok(recent.iter().map(|m| ctx.bind(to_message(m))).collect());
        }
        // Drop what an earlier summary already covers.
        if let (Some(summary), Some(upto)) = (&thread.summary, thread.summary_upto) {
            recent.retain(|m| m.id > upto);
            out.push(ctx.bind(Message::system(format!("Summary of the earlier conversation: {summary}"))));
        }
        let budget = u64::from(spec.memory.max_tokens);
        let total: u64 = recent.iter().map(|m| estimate_tokens(&m.content)).sum();
        if total > budget {
            // Keep the newest messages that fit; the older ones are dropped
            // (token_window) or summarized into the thread (summarize).
            let mut keep = 0;
            let mut used = 0;
            for m in recent.iter().rev() {
                used += estimate_tokens(&m.content);
                if used > budget {
                    break;
                }
                keep += 1;
            }
            // Never split a tool call from its results: start at a user message.
            let mut cut = recent.len() - keep.max(1);
            while cut < recent.len() - 1 && recent[cut].role != "user" {
                cut += 1;
            }
            let older: Vec<StoredMessage> = recent.drain(..cut).collect();
            if spec.memory.strategy == "summarize" && !older.is_empty() {
                let summary = self.summarize(ctx, run, spec, settings, &older).await?;
                let upto = older.last().expect("not empty").id;
                self.store.set_thread_summary(ctx, run.thread_id, &summary, upto).await?;
                out.push(
                    ctx.bind(Message::system(format!("Summary of the earlier conversation: {summary}"))),
                );
            }
        }
        out.extend(recent.iter().map(|m| ctx.bind(to_message(m))));
        Ok(out)
    }

    /// Summarizes older turns with the tenant's (or agent's) summarization model.
    async fn summarize(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        spec: &AgentSpec,
        settings: &ModelSettings,
        older: &[StoredMessage],
    ) -> Result<String, Error> {
        let model = spec.models.get("summarization").cloned().unwrap_or_else(|| "task:summarization".into());
        let routes = self.models.routes(ctx, settings, &model).await?;
        let transcript: String = older.iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect();
        let request = ChatRequest::new(
            "",
            vec![
                Message::system("Summarize this conversation in a few sentences."),
                Message::user(transcript),
            ],
        );
        let step =
            format!("{}-summary-{}", run.id, older.last().map(|m| m.id.to_string()).unwrap_or_default());
        let (response, _) = self.model_call(ctx, run, &routes, request, &step).await?;
        Ok(response.message.content)
    }

    async fn run_loop(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        spec: &AgentSpec,
        cancel: &AtomicBool,
        totals: &mut Totals,
    ) -> Result<Outcome, Error> {
        let terms = self.metering.terms(ctx).await?;
        let settings = ModelSettings::from_json(&terms.models)?;
        // The agent's own model per task type wins over the tenant's.
        let model = match spec.model.strip_prefix("task:").and_then(|t| spec.models.get(t)) {
            Some(m) => m.clone(),
            None => spec.model.clone(),
        };
        let routes = self.models.routes(ctx, &settings, &model).await?;
        let vars: BTreeMap<String, String> = run
            .input
            .get("variables")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let mut items = vec![ctx.bind(Message::system(spec.render(&vars)?))];
        items.extend(self.memory(ctx, run, spec, &settings).await?);
        let mut messages = assemble(ctx, items)?;
        // Resolved for this run's tenant only; MCP sessions end with the run.
        let run_tools = self.tenant_tools.resolve(ctx, &self.tools, &spec.tools).await?;
        let tools: Vec<ToolDef> = run_tools.offered(&spec.tools);

        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok(Outcome {
                    status: RunStatus::Cancelled,
                    output: json!({"usage": totals.json()}),
                    error: Some("cancelled".into()),
                });
            }
            if totals.steps >= spec.limits.max_steps {
                return Ok(Outcome::failed("max_steps", json!({"usage": totals.json()})));
            }
            if totals.input_tokens + totals.output_tokens >= spec.limits.max_tokens {
                return Ok(Outcome::failed("max_tokens", json!({"usage": totals.json()})));
            }
            let mut request = ChatRequest::new("", messages.clone());
            request.tools = tools.clone();
            request.max_tokens = spec.limits.max_output_tokens;
            let step_id = format!("{}-step-{}", run.id, totals.steps + 1);
            let (response, cost) = self.model_call(ctx, run, &routes, request, &step_id).await?;
            totals.steps += 1;
            totals.input_tokens += response.usage.input_tokens;
            totals.output_tokens += response.usage.output_tokens;
            totals.cost = totals.cost.saturating_add(cost);
            let step = json!({
                "model": response.model, "finish_reason": response.finish_reason.as_str(),
                "input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens,
                "cost_usd": cost, "tool_calls": response.message.tool_calls.len(),
            });
            self.store.add_step(ctx, run.id, "model_call", &step).await?;
            self.emit(run, "run.step", json!({"kind": "model_call", "step": totals.steps, "data": step}));

            // A cancel that arrived during the call: the call is paid for, the run stops here.
            if cancel.load(Ordering::Relaxed) {
                return Ok(Outcome {
                    status: RunStatus::Cancelled,
                    output: json!({"usage": totals.json()}),
                    error: Some("cancelled".into()),
                });
            }
            let reply = response.message;
            if reply.tool_calls.is_empty() {
                let stored = self
                    .store
                    .add_message(ctx, run.thread_id, "assistant", &reply.content, &json!({}), Some(run.id))
                    .await?;
                self.emit(run, "message.delta", json!({"message_id": stored.id, "content": reply.content}));
                return Ok(Outcome {
                    status: RunStatus::Completed,
                    output: json!({"message_id": stored.id, "content": reply.content, "usage": totals.json()}),
                    error: None,
                });
            }
            let data = json!({"tool_calls": reply.tool_calls});
            self.store
                .add_message(ctx, run.thread_id, "assistant", &reply.content, &data, Some(run.id))
                .await?;
            messages.push(reply.clone());
            for call in &reply.tool_calls {
                self.emit(
                    run,
                    "tool.call",
                    json!({"id": call.id, "name": call.name, "arguments": call.arguments}),
                );
                let event_id = format!("{}-tool-{}", run.id, totals.steps + 1);
                let (result, ok) = self.call_tool(ctx, run, spec, &run_tools, call, &event_id).await?;
                totals.steps += 1;
                let step = json!({"tool": call.name, "call_id": call.id, "ok": ok,
                                  "arguments_sha256": bulkhead_core::keys::hash_key(&call.arguments).iter().map(|b| format!("{b:02x}")).collect::<String>(),
                                  "result_bytes": result.len()});
                self.store.add_step(ctx, run.id, "tool_call", &step).await?;
                let data = json!({"tool_call_id": call.id, "name": call.name, "ok": ok});
                self.store.add_message(ctx, run.thread_id, "tool", &result, &data, Some(run.id)).await?;
                self.emit(
                    run,
                    "tool.result",
                    json!({"id": call.id, "name": call.name, "ok": ok, "content": result}),
                );
                let mut msg = Message::tool_result(call.id.clone(), result);
                msg.name = Some(call.name.clone());
                messages.push(msg);
            }
        }
    }

    /// Calls a tool through the gate of `tenant_tools` (the agent's list,
    /// the tenant's allow list, the tool-call rate, metering, audit); a
    /// refusal or failure is a tool error the model sees, never an exception
    /// of the run. A result bound to another tenant is the one exception: a
    /// hard error that fails the run.
    async fn call_tool(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        spec: &AgentSpec,
        tools: &RunTools,
        call: &ToolCall,
        event_id: &str,
    ) -> Result<(String, bool), Error> {
        let tool_ctx = ToolCtx { tenant: ctx, knowledge_bases: &spec.knowledge_bases };
        self.tenant_tools.call(&tool_ctx, run, &spec.tools, tools, call, event_id).await
    }

    /// One model call of the run, metered with the run's and agent's ids.
    pub async fn model_call(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        routes: &[Route],
        request: ChatRequest,
        event_id: &str,
    ) -> Result<(ChatResponse, Money), Error> {
        let tags = CallTags {
            event_id: event_id.to_owned(),
            run_id: Some(run.id.as_uuid()),
            agent_id: Some(run.agent_id.as_uuid()),
            request_id: None,
            attributes: json!({}),
        };
        let (response, cost, _) =
            crate::calls::complete(&self.metering, &self.models, ctx, routes, request, &tags).await?;
        Ok((response, cost))
    }
}
