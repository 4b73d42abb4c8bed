//! Usage and budget records: what the ledger holds, and the queries over it.
//! Pricing and the ledger's batching live in `bulkhead-metering`; this is
//! only the shape of what is stored.

use std::fmt;
use std::str::FromStr;

use bulkhead_core::{Code, Error, Money, TenantCtx, TenantId};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// What was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    Llm,
    Embedding,
    ToolCall,
    Sandbox,
    Storage,
    RunTime,
}

impl UsageKind {
    pub const ALL: [UsageKind; 6] = [
        UsageKind::Llm,
        UsageKind::Embedding,
        UsageKind::ToolCall,
        UsageKind::Sandbox,
        UsageKind::Storage,
        UsageKind::RunTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Llm => "llm",
            UsageKind::Embedding => "embedding",
            UsageKind::ToolCall => "tool_call",
            UsageKind::Sandbox => "sandbox",
            UsageKind::Storage => "storage",
            UsageKind::RunTime => "run_time",
        }
    }
}

impl fmt::Display for UsageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UsageKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        UsageKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            Error::new(
                Code::InvalidRequest,
                format!(
                    "unknown usage kind `{s}`; use llm, embedding, tool_call, sandbox, storage or run_time"
                ),
            )
        })
    }
}

/// One usage event. `id` is the idempotency key: recording the same id for
/// the same tenant twice records it once.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    pub id: String,
    pub ts: OffsetDateTime,
    pub kind: UsageKind,
    /// Model, tool or resource name.
    pub name: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    /// For non-token kinds: how much, in `unit` (e.g. `calls`, `cpu_ms`, `bytes`).
    pub quantity: i64,
    pub unit: Option<String>,
    pub cost: Money,
    pub run_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub attributes: serde_json::Value,
}

/// A stored event with its tenant and its position in the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUsage {
    pub seq: i64,
    pub tenant_id: TenantId,
    pub event: UsageEvent,
}

/// Identifies a budget reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(pub Uuid);

/// One write to the ledger: an event, possibly settling a reservation.
#[derive(Debug, Clone)]
pub struct UsageWrite {
    pub ctx: TenantCtx,
    pub event: UsageEvent,
    /// Released in the same transaction that records the event.
    pub settles: Option<ReservationId>,
}

/// How usage can be grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Tenant,
    Day,
    Kind,
    Name,
    Agent,
}

impl FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "tenant" => GroupBy::Tenant,
            "day" => GroupBy::Day,
            "kind" => GroupBy::Kind,
            "model" | "name" | "tool" => GroupBy::Name,
            "agent" => GroupBy::Agent,
            other => {
                return Err(Error::invalid(format!(
                    "cannot group by `{other}`; use tenant, day, kind, model or agent"
                )));
            }
        })
    }
}

/// Filters for usage queries; times are a half-open range `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub kind: Option<UsageKind>,
    pub name: Option<String>,
    pub agent_id: Option<Uuid>,
    pub run_id: Option<Uuid>,
    pub group_by: Vec<GroupBy>,
}

/// One aggregated row; the grouped-by fields are set, the others `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageRow {
    pub tenant_id: Option<TenantId>,
    pub day: Option<Date>,
    pub kind: Option<UsageKind>,
    pub name: Option<String>,
    pub agent_id: Option<Uuid>,
    pub events: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub quantity: i64,
    pub cost: Money,
}

/// A tenant's budget. `None` limits are unlimited.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Budget {
    pub monthly_limit: Option<Money>,
    pub daily_limit: Option<Money>,
    /// Percent of a limit at which a soft alert is recorded.
    pub soft_alert_percent: Option<u8>,
}

/// The outcome of asking to reserve.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserve {
    /// No budget is set: nothing to reserve against.
    Unlimited,
    Reserved {
        id: ReservationId,
        expires_at: OffsetDateTime,
    },
    /// Refused: `spent + reserved + requested` would pass `limit`.
    Exceeded {
        period: BudgetPeriod,
        limit: Money,
        spent: Money,
        reserved: Money,
        requested: Money,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Month,
    Day,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Month => "month",
            BudgetPeriod::Day => "day",
        }
    }
}

/// A recorded crossing of a budget threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    /// `2026-11` for a month, `2026-11-27` for a day.
    pub period: String,
    /// `soft` (the alert percent) or `hard` (the limit itself).
    pub kind: String,
    pub threshold: Money,
    pub spent: Money,
    pub crossed_at: OffsetDateTime,
}

/// Where a tenant stands against its budget now.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    pub budget: Option<Budget>,
    pub spent_month: Money,
    pub spent_day: Money,
    pub reserved: Money,
    pub alerts: Vec<BudgetAlert>,
}

/// Per-tenant settings kept as documents: limits and pricing overrides (the
/// operator's) and the model configuration (their shapes belong to `limits`,
/// `metering` and `models`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TenantSettings {
    pub limits: serde_json::Value,
    pub pricing: serde_json::Value,
    pub models: serde_json::Value,
    /// The sandbox policy (its shape belongs to `bulkhead-sandbox`).
    pub sandbox: serde_json::Value,
}

/// The first instant of `now`'s UTC month and day.
pub fn period_starts(now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let now = now.to_offset(time::UtcOffset::UTC);
    let day = now.replace_time(time::Time::MIDNIGHT);
    let month = day.replace_day(1).expect("day 1 exists");
    (month, day)
}

/// Unix microseconds: how both backends store event times.
pub fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1000) as i64
}

pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn day_string(at: OffsetDateTime) -> String {
    let d = at.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

pub fn month_string(at: OffsetDateTime) -> String {
    let d = at.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}", d.year(), u8::from(d.month()))
}

pub fn parse_day(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn periods_are_utc_month_and_day() {
        let (m, d) = period_starts(datetime!(2026-11-27 23:30 -02:00));
        assert_eq!(m, datetime!(2026-11-01 0:00 UTC));
        assert_eq!(d, datetime!(2026-11-28 0:00 UTC));
        assert_eq!(day_string(datetime!(2026-11-27 23:30 -02:00)), "2026-11-28");
        assert_eq!(month_string(datetime!(2026-12-31 23:59 UTC)), "2026-12");
        let t = datetime!(2026-11-27 10:00:00.123456 UTC);
        assert_eq!(from_micros(to_micros(t)), t);
    }
}

/// Pieces of the ledger logic both backends share.
pub(crate) mod shared {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// The key of a `usage_daily` row.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct DailyKey {
        pub tenant: TenantId,
        pub day: String,
        pub kind: UsageKind,
        pub name: String,
        /// `""` when the event has no agent.
        pub agent: String,
    }

    #[derive(Debug, Clone, Default)]
    pub struct Totals {
        pub events: i64,
        pub input_tokens: i64,
        pub output_tokens: i64,
        pub cached_input_tokens: i64,
        pub quantity: i64,
        pub cost: i64,
    }

    /// Indexes of the writes whose (tenant, id) appears first in the batch;
    /// later duplicates in the same batch can never be new.
    pub fn first_occurrences(batch: &[UsageWrite]) -> Vec<bool> {
        let mut seen = HashSet::new();
        batch.iter().map(|w| seen.insert((w.ctx.tenant_id(), w.event.id.as_str()))).collect()
    }

    /// Daily aggregate deltas of the events that were newly inserted.
    pub fn daily_deltas(batch: &[UsageWrite], inserted: &[bool]) -> HashMap<DailyKey, Totals> {
        let mut out: HashMap<DailyKey, Totals> = HashMap::new();
        for (w, _) in batch.iter().zip(inserted).filter(|(_, new)| **new) {
            let e = &w.event;
            let key = DailyKey {
                tenant: w.ctx.tenant_id(),
                day: day_string(e.ts),
                kind: e.kind,
                name: e.name.clone(),
                agent: e.agent_id.map(|a| a.to_string()).unwrap_or_default(),
            };
            let t = out.entry(key).or_default();
            t.events += 1;
            t.input_tokens += e.input_tokens;
            t.output_tokens += e.output_tokens;
            t.cached_input_tokens += e.cached_input_tokens;
            t.quantity += e.quantity;
            t.cost += e.cost.nanos();
        }
        out
    }

    /// Checks a reservation request against a budget.
    pub fn check_reserve(
        budget: &Budget,
        spent_month: Money,
        spent_day: Money,
        reserved: Money,
        requested: Money,
    ) -> Option<Reserve> {
        for (period, limit, spent) in [
            (BudgetPeriod::Month, budget.monthly_limit, spent_month),
            (BudgetPeriod::Day, budget.daily_limit, spent_day),
        ] {
            let Some(limit) = limit else { continue };
            let total = spent.saturating_add(reserved).saturating_add(requested);
            if total > limit {
                return Some(Reserve::Exceeded { period, limit, spent, reserved, requested });
            }
        }
        None
    }

    /// The alerts a tenant's spend has reached: soft at the percentage,
    /// hard at the limit, for the month and the day.
    pub fn alerts_reached(
        budget: &Budget,
        spent_month: Money,
        spent_day: Money,
        now: OffsetDateTime,
    ) -> Vec<BudgetAlert> {
        let mut out = Vec::new();
        for (period, limit, spent) in [
            (month_string(now), budget.monthly_limit, spent_month),
            (day_string(now), budget.daily_limit, spent_day),
        ] {
            let Some(limit) = limit else { continue };
            let mut thresholds = vec![("hard", limit)];
            if let Some(pct) = budget.soft_alert_percent {
                let soft = (i128::from(limit.nanos()) * i128::from(pct) / 100) as i64;
                thresholds.push(("soft", Money::from_nanos(soft)));
            }
            for (kind, threshold) in thresholds {
                if spent >= threshold {
                    out.push(BudgetAlert {
                        period: period.clone(),
                        kind: kind.into(),
                        threshold,
                        spent,
                        crossed_at: now,
                    });
                }
            }
        }
        out
    }

    /// A typed query parameter, bound by each backend in its own types.
    #[derive(Debug, Clone)]
    pub enum Param {
        I64(i64),
        Text(String),
        Uuid(Uuid),
    }

    /// Builds the aggregate query over `usage_events`. `ph(n)` renders the
    /// n-th placeholder (1-based) in the backend's syntax. Only fixed column
    /// names enter the SQL text; every value is a parameter.
    pub fn summary_sql(
        query: &UsageQuery,
        tenant: Option<TenantId>,
        ph: impl Fn(usize) -> String,
    ) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut wheres = Vec::new();
        let mut push = |clause: &str, p: Param, params: &mut Vec<Param>| {
            params.push(p);
            wheres.push(format!("{clause} {}", ph(params.len())));
        };
        if let Some(t) = tenant {
            push("tenant_id =", Param::Uuid(t.as_uuid()), &mut params);
        }
        if let Some(from) = query.from {
            push("ts >=", Param::I64(to_micros(from)), &mut params);
        }
        if let Some(to) = query.to {
            push("ts <", Param::I64(to_micros(to)), &mut params);
        }
        if let Some(kind) = query.kind {
            push("kind =", Param::Text(kind.as_str().into()), &mut params);
        }
        if let Some(name) = &query.name {
            push("name =", Param::Text(name.clone()), &mut params);
        }
        if let Some(agent) = query.agent_id {
            push("agent_id =", Param::Uuid(agent), &mut params);
        }
        if let Some(run) = query.run_id {
            push("run_id =", Param::Uuid(run), &mut params);
        }
        let groups: Vec<&str> = query
            .group_by
            .iter()
            .map(|g| match g {
                GroupBy::Tenant => "tenant_id",
                GroupBy::Day => "day",
                GroupBy::Kind => "kind",
                GroupBy::Name => "name",
                GroupBy::Agent => "agent_id",
            })
            .collect();
        let select_groups: String = groups.iter().map(|g| format!("{g}, ")).collect();
        let mut sql = format!(
            "SELECT {select_groups}count(*) AS events, coalesce(sum(input_tokens), 0) AS input_tokens, \
             coalesce(sum(output_tokens), 0) AS output_tokens, coalesce(sum(cached_input_tokens), 0) AS cached_input_tokens, \
             coalesce(sum(quantity), 0) AS quantity, coalesce(sum(cost), 0) AS cost FROM usage_events"
        );
        if !wheres.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wheres.join(" AND "));
        }
        if !groups.is_empty() {
            let list = groups.join(", ");
            sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
        }
        (sql, params)
    }
}

/// Checks an event before it is written: counts are not negative or absurd,
/// names and ids are sane.
pub fn validate_event(e: &UsageEvent) -> Result<(), Error> {
    const MAX_TOKENS: i64 = 100_000_000;
    if e.id.is_empty() || e.id.len() > 128 || e.id.chars().any(char::is_control) {
        return Err(Error::invalid("event id must be 1-128 printable characters"));
    }
    if e.name.is_empty() || e.name.len() > 200 {
        return Err(Error::invalid("event name (model, tool or resource) must be 1-200 characters"));
    }
    for (field, v) in [
        ("input_tokens", e.input_tokens),
        ("output_tokens", e.output_tokens),
        ("cached_input_tokens", e.cached_input_tokens),
    ] {
        if !(0..=MAX_TOKENS).contains(&v) {
            return Err(Error::invalid(format!("{field} must be between 0 and {MAX_TOKENS}")));
        }
    }
    if e.cached_input_tokens > e.input_tokens {
        return Err(Error::invalid("cached_input_tokens cannot exceed input_tokens"));
    }
    if !(0..=1_000_000_000_000).contains(&e.quantity) {
        return Err(Error::invalid("quantity must be between 0 and 10^12"));
    }
    if e.cost.is_negative() {
        return Err(Error::invalid("cost cannot be negative"));
    }
    if !e.attributes.is_object() || e.attributes.to_string().len() > 8 * 1024 {
        return Err(Error::invalid("attributes must be a JSON object of at most 8 KiB"));
    }
    Ok(())
}
