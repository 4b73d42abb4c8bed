//! Prices: the model catalog (a data file in the repository, extendable from
//! configuration), per-tenant overrides and markup, tool and sandbox prices,
//! and the exact integer arithmetic that turns usage into money.
//!
//! Every cost is computed once, in nano-dollars, with one rounding (half up)
//! at the end of an event's computation; sums are integer sums.

use std::collections::BTreeMap;

use bulkhead_core::{Code, Error, Money};
use serde::{Deserialize, Serialize};

const BUILTIN_CATALOG: &str = include_str!("../catalog/models.toml");

/// The price and shape of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The provider (by its name in `models.providers`) that serves it.
    pub provider: String,
    /// The model's id at the provider, when it differs from the catalog name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_model: Option<String>,
    /// What the model does: `chat` (default) or `embedding`.
    #[serde(default = "default_mode")]
    pub mode: String,
    pub input_per_mtok: Money,
    pub output_per_mtok: Money,
    pub cached_input_per_mtok: Money,
    pub context_window: u32,
    pub max_output: u32,
}

fn default_mode() -> String {
    "chat".into()
}

/// Models by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub models: BTreeMap<String, ModelPrice>,
}

impl Catalog {
    /// The catalog shipped in `catalog/models.toml`.
    pub fn builtin() -> Self {
        Self::from_toml(BUILTIN_CATALOG).expect("the shipped catalog parses")
    }

    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let catalog: Catalog =
            toml::from_str(text).map_err(|e| Error::invalid(format!("model catalog: {e}")))?;
        for (name, p) in &catalog.models {
            if [p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok].iter().any(|m| m.is_negative())
            {
                return Err(Error::invalid(format!("model catalog: {name} has a negative price")));
            }
        }
        Ok(catalog)
    }

    /// `other`'s entries replace or extend ours.
    pub fn merge(mut self, other: Catalog) -> Self {
        self.models.extend(other.models);
        self
    }

    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }
}

/// Token counts of one model call. `cached_input` is the part of `input`
/// served from the provider's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
}

/// A tenant's price arrangement, set by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPricing {
    /// Added on top of every cost, in basis points (1500 = +15 %).
    pub markup_bps: u32,
    /// Per-model prices that replace the catalog's for this tenant.
    pub models: BTreeMap<String, PriceOverride>,
    /// Per-tool prices per call that replace the platform's.
    pub tools: BTreeMap<String, Money>,
}

/// A partial model price: unset fields keep the catalog's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceOverride {
    pub input_per_mtok: Option<Money>,
    pub output_per_mtok: Option<Money>,
    pub cached_input_per_mtok: Option<Money>,
}

pub const MAX_MARKUP_BPS: u32 = 100_000;

impl TenantPricing {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        if value.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(Self::default());
        }
        let p: TenantPricing = serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(format!("tenant pricing: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.markup_bps > MAX_MARKUP_BPS {
            return Err(Error::invalid(format!("markup_bps must be at most {MAX_MARKUP_BPS}")));
        }
        let negative = self.models.values().any(|o| {
            [o.input_per_mtok, o.output_per_mtok, o.cached_input_per_mtok]
                .iter()
                .flatten()
                .any(|m| m.is_negative())
        }) || self.tools.values().any(|m| m.is_negative());
        if negative {
            return Err(Error::invalid("prices cannot be negative"));
        }
        Ok(())
    }
}

/// Platform prices for what is not a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtherPrices {
    /// Price of one tool call, unless the tool has its own.
    pub tool_call: Money,
    pub tools: BTreeMap<String, Money>,
    /// Price of one second of sandbox CPU time.
    pub sandbox_cpu_second: Money,
}

/// The platform's prices: what every cost is computed from.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub catalog: Catalog,
    pub other: OtherPrices,
}

/// `a * b / d`, rounded half up, in i128 so no product overflows; the
/// result saturates at i64's range.
fn mul_div_round(a: i64, b: i64, d: i64) -> i64 {
    let n = i128::from(a) * i128::from(b);
    let d = i128::from(d);
    let q = (2 * n + d) / (2 * d);
    q.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn with_markup(cost: i64, markup_bps: u32) -> Money {
    Money::from_nanos(mul_div_round(cost, 10_000 + i64::from(markup_bps), 10_000))
}

pub fn unknown_model(model: &str) -> Error {
    Error::new(Code::UnknownModel, format!("model `{model}` is not in the catalog"))
}

impl Pricing {
    pub fn new(catalog: Catalog, other: OtherPrices) -> Self {
        Self { catalog, other }
    }

    /// The model's price for this tenant: catalog, then tenant overrides.
    pub fn model_price(&self, tenant: &TenantPricing, model: &str) -> Result<ModelPrice, Error> {
        let mut price = self.catalog.get(model).cloned().ok_or_else(|| unknown_model(model))?;
        if let Some(o) = tenant.models.get(model) {
            price.input_per_mtok = o.input_per_mtok.unwrap_or(price.input_per_mtok);
            price.output_per_mtok = o.output_per_mtok.unwrap_or(price.output_per_mtok);
            price.cached_input_per_mtok = o.cached_input_per_mtok.unwrap_or(price.cached_input_per_mtok);
        }
        Ok(price)
    }

    /// Cost of a model call: uncached input, cached input and output at
    /// their prices per million tokens, plus the tenant's markup.
    pub fn llm_cost(&self, tenant: &TenantPricing, model: &str, usage: TokenUsage) -> Result<Money, Error> {
        let p = self.model_price(tenant, model)?;
        let cached = usage.cached_input.min(usage.input);
        let per_mtok = i128::from(usage.input - cached) * i128::from(p.input_per_mtok.nanos())
            + i128::from(cached) * i128::from(p.cached_input_per_mtok.nanos())
            + i128::from(usage.output) * i128::from(p.output_per_mtok.nanos());
        let base = ((2 * per_mtok + 1_000_000) / 2_000_000).clamp(0, i128::from(i64::MAX)) as i64;
        Ok(with_markup(base, tenant.markup_bps))
    }

    /// The most a call can cost: every prompt token uncached and the
    /// full `max_output` (capped by the model's maximum) produced.
    pub fn worst_case(
        &self,
        tenant: &TenantPricing,
        model: &str,
        prompt_tokens: i64,
        max_output: Option<i64>,
    ) -> Result<Money, Error> {
        let p = self.model_price(tenant, model)?;
        let cap = i64::from(p.max_output.max(1));
        let output = max_output.unwrap_or(cap).clamp(0, cap);
        self.llm_cost(tenant, model, TokenUsage { input: prompt_tokens, output, cached_input: 0 })
    }

    pub fn tool_cost(&self, tenant: &TenantPricing, tool: &str, calls: i64) -> Money {
        let unit = tenant
            .tools
            .get(tool)
            .or_else(|| self.other.tools.get(tool))
            .copied()
            .unwrap_or(self.other.tool_call);
        with_markup(unit.nanos().saturating_mul(calls), tenant.markup_bps)
    }

    pub fn sandbox_cost(&self, tenant: &TenantPricing, cpu_ms: i64) -> Money {
        with_markup(mul_div_round(self.other.sandbox_cpu_second.nanos(), cpu_ms, 1000), tenant.markup_bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pricing() -> Pricing {
        Pricing::new(
            Catalog::builtin(),
            OtherPrices {
                tool_call: "0.001".parse().unwrap(),
                tools: BTreeMap::from([("web_search".into(), "0.01".parse().unwrap())]),
                sandbox_cpu_second: "0.00005".parse().unwrap(),
            },
        )
    }

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn hand_computed_costs() {
        let p = pricing();
        let none = TenantPricing::default();
        // gpt-4o: 1,000 in at $2.50/M + 500 out at $10/M = $0.0025 + $0.005.
        let u = TokenUsage { input: 1000, output: 500, cached_input: 0 };
        assert_eq!(p.llm_cost(&none, "gpt-4o", u).unwrap(), usd("0.0075"));
        // 400 of the 1,000 cached at $1.25/M: 600×2.5 + 400×1.25 + 500×10 = 7000 µ$/M.
        let u = TokenUsage { input: 1000, output: 500, cached_input: 400 };
        assert_eq!(p.llm_cost(&none, "gpt-4o", u).unwrap(), usd("0.007"));
        // gpt-4o-mini: 1 in at $0.15/M = 150 nano-dollars exactly.
        let u = TokenUsage { input: 1, output: 0, cached_input: 0 };
        assert_eq!(p.llm_cost(&none, "gpt-4o-mini", u).unwrap(), Money::from_nanos(150));
        // 1 cached token at $0.075/M = 75 nano-dollars.
        let u = TokenUsage { input: 1, output: 0, cached_input: 1 };
        assert_eq!(p.llm_cost(&none, "gpt-4o-mini", u).unwrap(), Money::from_nanos(75));
        // claude-sonnet-4: 120,000 in + 4,000 out = $0.36 + $0.06.
        let u = TokenUsage { input: 120_000, output: 4_000, cached_input: 0 };
        assert_eq!(p.llm_cost(&none, "claude-sonnet-4", u).unwrap(), usd("0.42"));
        // A markup of 15 %: $0.42 → $0.483.
        let marked = TenantPricing { markup_bps: 1500, ..Default::default() };
        assert_eq!(p.llm_cost(&marked, "claude-sonnet-4", u).unwrap(), usd("0.483"));
        // A tenant price override on output only.
        let custom = TenantPricing {
            models: BTreeMap::from([(
                "claude-sonnet-4".into(),
                PriceOverride { output_per_mtok: Some(usd("10")), ..Default::default() },
            )]),
            ..Default::default()
        };
        assert_eq!(p.llm_cost(&custom, "claude-sonnet-4", u).unwrap(), usd("0.40"));
        // Worst case: 1,000 prompt tokens and the model's full 16,384 output.
        assert_eq!(p.worst_case(&none, "gpt-4o", 1000, None).unwrap(), usd("0.16634"));
        assert_eq!(p.worst_case(&none, "gpt-4o", 1000, Some(100)).unwrap(), usd("0.0035"));
        // Tools and sandbox.
        assert_eq!(p.tool_cost(&none, "calculator", 3), usd("0.003"));
        assert_eq!(p.tool_cost(&none, "web_search", 2), usd("0.02"));
        assert_eq!(p.sandbox_cost(&none, 1500), usd("0.000075"));
        assert_eq!(p.llm_cost(&none, "no-such-model", u).unwrap_err().code, Code::UnknownModel);
    }

    #[test]
    fn the_shipped_catalog_is_sane() {
        let c = Catalog::builtin();
        assert!(c.models.len() >= 5);
        for (name, m) in &c.models {
            assert!(m.cached_input_per_mtok <= m.input_per_mtok, "{name}");
            assert!(m.context_window > 0, "{name}");
        }
        assert!(Catalog::from_toml("[models.x]\nprovider='a'\ninput_per_mtok='-1'\noutput_per_mtok='0'\ncached_input_per_mtok='0'\ncontext_window=1\nmax_output=1").is_err());
        assert!(
            Catalog::from_toml("[models.x]\nprovider='a'\ninput_per_mtok=2.5").is_err(),
            "floats are refused"
        );
    }

    proptest! {
        /// Costs are additive up to the one rounding per event: splitting a
        /// call in two never changes the total by more than a nano-dollar,
        /// and costs never decrease when usage grows.
        #[test]
        fn costs_are_additive_and_monotone(a in 0i64..10_000_000, b in 0i64..10_000_000, o1 in 0i64..1_000_000, o2 in 0i64..1_000_000) {
            let p = pricing();
            let t = TenantPricing::default();
            let one = |i, o| p.llm_cost(&t, "gpt-4o-mini", TokenUsage { input: i, output: o, cached_input: 0 }).unwrap().nanos();
            let whole = one(a + b, o1 + o2);
            let parts = one(a, o1) + one(b, o2);
            prop_assert!((whole - parts).abs() <= 1);
            prop_assert!(one(a + 1, o1) >= one(a, o1));
            prop_assert!(one(a, o1) >= 0);
        }

        #[test]
        fn markup_never_lowers_a_cost(cost in 0i64..1_000_000_000_000, bps in 0u32..=MAX_MARKUP_BPS) {
            prop_assert!(with_markup(cost, bps).nanos() >= cost);
        }
    }
}
