//! The tool registry the agent loop calls through, and two harmless
//! built-ins: `current_time` and `calculator`. Tools that need a tenant
//! (`http_request`, the tenant's HTTP tools, its MCP servers' tools) are
//! resolved per run by `tenant_tools`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_core::{TenantBound, TenantCtx};
use bulkhead_models::ToolDef;
use serde_json::{Value, json};

/// What a tool call runs under: the run's tenant and what its agent may
/// reach.
#[derive(Debug, Clone, Copy)]
pub struct ToolCtx<'a> {
    pub tenant: &'a TenantCtx,
    /// The knowledge bases attached to the agent (still checked against the
    /// tenant's own by whoever reads them).
    pub knowledge_bases: &'a [uuid::Uuid],
}

/// A tool an agent can call. `call` returns the text the model gets, bound
/// to the tenant it was produced for (the loop refuses a result of another
/// tenant as a hard error), or an error text (also given to the model, as a
/// tool error).
#[async_trait]
pub trait Tool: Send + Sync {
    fn def(&self) -> ToolDef;
    async fn call(&self, call: &ToolCtx<'_>, args: &Value) -> Result<TenantBound<String>, String>;

    /// `call`, with what the audit trail and metering record about it.
    /// Tools that know more than ok/error (an egress refusal, an HTTP
    /// status) override this.
    async fn invoke(&self, call: &ToolCtx<'_>, args: &Value) -> ToolOutcome {
        ToolOutcome::from_result(self.call(call, args).await)
    }
}

/// One call's result: the model's text (or error text), a stable outcome
/// code, and facts for the audit entry and the usage event.
#[derive(Debug)]
pub struct ToolOutcome {
    pub output: Result<TenantBound<String>, String>,
    /// `ok`, or a short code for the failure (`error` when the tool names
    /// none; e.g. `egress_denied`, `upstream_error`, `timeout`).
    pub code: &'static str,
    /// The failure is a policy refusal (nothing was sent), not a fault.
    pub denied: bool,
    /// Facts for the audit entry: names, sizes, statuses — never content.
    pub details: Value,
}

impl ToolOutcome {
    pub fn from_result(output: Result<TenantBound<String>, String>) -> Self {
        let code = if output.is_ok() { "ok" } else { "error" };
        Self { output, code, denied: false, details: json!({}) }
    }
}

/// Tools by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl ToolRegistry {
    /// The built-ins.
    pub fn builtin() -> Self {
        let mut r = Self::default();
        r.register(Arc::new(CurrentTime));
        r.register(Arc::new(Calculator));
        r
    }

    pub fn register(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.def().name, tool);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}

struct CurrentTime;

#[async_trait]
impl Tool for CurrentTime {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "current_time".into(),
            description: "The current date and time in UTC (RFC 3339).".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }
    }

    async fn call(&self, call: &ToolCtx<'_>, _args: &Value) -> Result<TenantBound<String>, String> {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map(|t| call.tenant.bind(t))
            .map_err(|e| e.to_string())
    }
}

struct Calculator;

#[async_trait]
impl Tool for Calculator {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "calculator".into(),
            description: "Evaluates an arithmetic expression: numbers, + - * / ^ and parentheses.".into(),
            parameters: json!({"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}),
        }
    }

    async fn call(&self, call: &ToolCtx<'_>, args: &Value) -> Result<TenantBound<String>, String> {
        let expr =
            args.get("expression").and_then(Value::as_str).ok_or("expected {\"expression\": \"…\"}")?;
        let value = evaluate(expr)?;
        Ok(call.tenant.bind(if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{}", value as i64)
        } else {
            format!("{value}")
        }))
    }
}

/// Evaluates `+ - * / ^`, unary minus and parentheses over decimal numbers.
/// Bounded: at most 256 characters and 32 levels of nesting.
pub fn evaluate(expr: &str) -> Result<f64, String> {
    if expr.len() > 256 {
        return Err("expression too long (256 characters at most)".into());
    }
    let tokens: Vec<char> = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let mut p = Parser { t: &tokens, i: 0, depth: 0 };
    let v = p.sum()?;
    if p.i != tokens.len() {
        return Err(format!("unexpected `{}`", tokens[p.i]));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(v)
}

struct Parser<'a> {
    t: &'a [char],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.t.get(self.i).copied()
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let r = self.product()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.power()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.i += 1;
            let r = self.power()?;
            if op == '/' && r == 0.0 {
                return Err("division by zero".into());
            }
            v = if op == '*' { v * r } else { v / r };
        }
        Ok(v)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.peek() == Some('^') {
            self.i += 1;
            let exp = self.power()?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        if self.peek() == Some('-') {
            self.i += 1;
            return Ok(-self.unary()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some('(') => {
                self.depth += 1;
                if self.depth > 32 {
                    return Err("too deeply nested".into());
                }
                self.i += 1;
                let v = self.sum()?;
                if self.peek() != Some(')') {
                    return Err("missing `)`".into());
                }
                self.i += 1;
                self.depth -= 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.i += 1;
                }
                let s: String = self.t[start..self.i].iter().collect();
                s.parse().map_err(|_| format!("bad number `{s}`"))
            }
            Some(c) => Err(format!("unexpected `{c}`")),
            None => Err("unexpected end of expression".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        for (e, v) in [("1+2*3", 7.0), ("(1+2)*3", 9.0), ("2^3^2", 512.0), ("-4+10/4", -1.5), ("((2))", 2.0)]
        {
            assert_eq!(evaluate(e).unwrap(), v, "{e}");
        }
        for bad in ["", "1+", "1/0", "2**3", "abc", &"(".repeat(40), &"1+".repeat(200)] {
            assert!(evaluate(bad).is_err(), "{bad}");
        }
    }
}
