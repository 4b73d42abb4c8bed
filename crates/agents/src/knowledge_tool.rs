//! `knowledge_search`: the agent's way into its knowledge bases — only
//! those attached to the agent, and only the tenant's own (the service looks
//! each one up through the run's `TenantCtx`, so another tenant's id is "not
//! found"). Retrieved chunks come back `TenantBound`; each is checked
//! against the run's tenant before its text enters the context.

use async_trait::async_trait;
use bulkhead_core::{KbId, TenantBound};
use bulkhead_knowledge::{Knowledge, SearchMode, SearchRequest};
use bulkhead_models::ToolDef;
use serde_json::{Value, json};

use crate::tools::{Tool, ToolCtx};

/// Results per search unless the model asks for fewer.
const DEFAULT_K: usize = 5;
const MAX_K: usize = 10;

pub struct KnowledgeSearch {
    pub knowledge: Knowledge,
}

#[async_trait]
impl Tool for KnowledgeSearch {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "knowledge_search".into(),
            description: "Searches the knowledge bases attached to this agent and returns the most \
                          relevant passages with their document names."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for"},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K}
                },
                "required": ["query"]
            }),
        }
    }

    async fn call(&self, call: &ToolCtx<'_>, args: &Value) -> Result<TenantBound<String>, String> {
        let query = args.get("query").and_then(Value::as_str).ok_or("expected {\"query\": \"…\"}")?;
        let k = args.get("k").and_then(Value::as_u64).map_or(DEFAULT_K, |k| (k as usize).clamp(1, MAX_K));
        if call.knowledge_bases.is_empty() {
            return Err("this agent has no knowledge bases attached".into());
        }
        let req = SearchRequest {
            query: query.to_owned(),
            kbs: call.knowledge_bases.iter().map(|id| KbId::from_uuid(*id)).collect(),
            k,
            mode: SearchMode::Hybrid,
            filter: Default::default(),
            request_id: None,
        };
        let hits = self.knowledge.search(call.tenant, &req).await.map_err(|e| e.message.to_string())?;
        if hits.is_empty() {
            return Ok(call.tenant.bind("no passages found".to_owned()));
        }
        let mut out = String::new();
        for (i, bound) in hits.iter().enumerate() {
            // A passage of another tenant is a hard error, never a silent drop.
            let hit = bound.get_for(call.tenant).map_err(|e| e.message.to_string())?;
            out.push_str(&format!("[{}] {} (#{})\n{}\n\n", i + 1, hit.doc_name, hit.ord, hit.text.trim()));
        }
        Ok(call.tenant.bind(out.trim_end().to_owned()))
    }
}
