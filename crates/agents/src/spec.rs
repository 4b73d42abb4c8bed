//! Agent definitions: what an agent is (its spec, stored as a versioned JSON
//! document), prompt templates with variables, and run limits.

use std::collections::BTreeMap;

use bulkhead_core::Error;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An agent's definition. Every change is a new version; a run records the
/// version it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSpec {
    /// The system prompt, a template: `{{name}}` is replaced by the run's
    /// variable `name`, else the default in `variables`.
    pub system_prompt: String,
    /// Default values of the template's variables.
    pub variables: BTreeMap<String, String>,
    /// The model: a catalog name, an alias, or `task:<type>`.
    pub model: String,
    /// The model per task type for this agent (e.g. `summarization`),
    /// overriding the tenant's.
    pub models: BTreeMap<String, String>,
    /// Tools the agent may call (names in the tool registry).
    pub tools: Vec<String>,
    /// Knowledge bases attached to the agent.
    pub knowledge_bases: Vec<Uuid>,
    pub memory: Memory,
    pub limits: RunLimits,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            system_prompt: "You are a helpful assistant.".into(),
            variables: BTreeMap::new(),
            model: "task:reasoning".into(),
            models: BTreeMap::new(),
            tools: Vec::new(),
            knowledge_bases: Vec::new(),
            memory: Memory::default(),
            limits: RunLimits::default(),
        }
    }
}

/// How much of a thread goes into a model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    /// `last_n`, `token_window` or `summarize`.
    pub strategy: String,
    /// `last_n`: how many messages; the others: how many are read at most.
    pub last_n: u32,
    /// `token_window` and `summarize`: the budget of (estimated) tokens.
    pub max_tokens: u32,
}

impl Default for Memory {
    fn default() -> Self {
        Self { strategy: "last_n".into(), last_n: 20, max_tokens: 4_000 }
    }
}

/// When a run stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunLimits {
    /// Model calls plus tool calls.
    pub max_steps: u32,
    /// Input plus output tokens over all model calls.
    pub max_tokens: u64,
    /// Wall time of the whole run.
    pub timeout_secs: u64,
    /// Output tokens one model call may produce (`null`: the model's own
    /// maximum). It also bounds the budget reservation of each call, whose
    /// worst case is this many output tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self { max_steps: 12, max_tokens: 50_000, timeout_secs: 300, max_output_tokens: None }
    }
}

impl AgentSpec {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        let spec: AgentSpec =
            serde_json::from_value(value.clone()).map_err(|e| Error::invalid(format!("agent spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the spec on its own; tool and model names are checked by the
    /// caller against the registry and the tenant's models.
    pub fn validate(&self) -> Result<(), Error> {
        if self.system_prompt.len() > 64 * 1024 {
            return Err(Error::invalid("system_prompt must be at most 64 KiB"));
        }
        template_variables(&self.system_prompt)?;
        if !matches!(self.memory.strategy.as_str(), "last_n" | "token_window" | "summarize") {
            return Err(Error::invalid("memory.strategy must be last_n, token_window or summarize"));
        }
        if !(1..=1_000).contains(&self.memory.last_n) || !(100..=1_000_000).contains(&self.memory.max_tokens)
        {
            return Err(Error::invalid("memory.last_n must be 1-1000 and memory.max_tokens 100-1000000"));
        }
        let l = &self.limits;
        if !(1..=200).contains(&l.max_steps)
            || !(1..=10_000_000).contains(&l.max_tokens)
            || !(1..=86_400).contains(&l.timeout_secs)
            || l.max_output_tokens.is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            return Err(Error::invalid(
                "limits: max_steps 1-200, max_tokens 1-10000000, timeout_secs 1-86400, max_output_tokens 1-1000000",
            ));
        }
        if self.model.is_empty() {
            return Err(Error::invalid("model must not be empty"));
        }
        Ok(())
    }

    /// The system prompt with its variables filled in: the run's values
    /// first, then the defaults. A variable with neither is an error.
    pub fn render(&self, run_vars: &BTreeMap<String, String>) -> Result<String, Error> {
        let mut out = String::with_capacity(self.system_prompt.len());
        let mut rest = self.system_prompt.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| Error::invalid("unclosed {{ in the system prompt"))?;
            let name = after[..end].trim();
            let value = run_vars
                .get(name)
                .or_else(|| self.variables.get(name))
                .ok_or_else(|| Error::invalid(format!("the prompt needs the variable `{name}`")))?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The variables a template uses.
pub fn template_variables(template: &str) -> Result<Vec<String>, Error> {
    let mut vars = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| Error::invalid("unclosed {{ in the system prompt"))?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid(format!("invalid template variable `{name}`")));
        }
        vars.push(name.to_owned());
        rest = &after[end + 2..];
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_with_run_values_then_defaults() {
        let spec = AgentSpec {
            system_prompt: "You help {{ customer }} with {{product}}.".into(),
            variables: BTreeMap::from([("product".into(), "widgets".into())]),
            ..Default::default()
        };
        let vars = BTreeMap::from([("customer".into(), "Ada".into())]);
        assert_eq!(spec.render(&vars).unwrap(), "You help Ada with widgets.");
        assert!(spec.render(&BTreeMap::new()).is_err(), "customer has no value");
        assert!(template_variables("{{ bad-name }}").is_err());
        assert!(template_variables("{{ open").is_err());
    }

    #[test]
    fn specs_validate() {
        assert!(AgentSpec::from_json(&serde_json::json!({"system_prompt": "hi"})).is_ok());
        assert!(AgentSpec::from_json(&serde_json::json!({"memory": {"strategy": "everything"}})).is_err());
        assert!(AgentSpec::from_json(&serde_json::json!({"limits": {"max_steps": 0}})).is_err());
        assert!(AgentSpec::from_json(&serde_json::json!({"limits": {"max_output_tokens": 0}})).is_err());
        let capped =
            AgentSpec::from_json(&serde_json::json!({"limits": {"max_output_tokens": 256}})).unwrap();
        assert_eq!(capped.limits.max_output_tokens, Some(256));
        assert!(AgentSpec::from_json(&serde_json::json!({"colour": "blue"})).is_err());
    }
}
