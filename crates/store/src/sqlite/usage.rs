//! The usage ledger, budgets and settings on SQLite. Writers that must see
//! and change state atomically (ledger batches, reservations) open
//! `BEGIN IMMEDIATE` transactions, which take SQLite's write lock up front —
//! across processes sharing the file, too.

use std::collections::HashSet;

use async_trait::async_trait;
use bulkhead_core::{Money, TenantCtx, TenantId};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SqliteStore, decode};
use crate::usage::shared::{self, Param};
use crate::usage::*;
use crate::{BudgetStore, Result, SettingsStore, UsageScope, UsageStore};

const EVENT_COLS: &str = "tenant_id, id, ts, day, kind, name, input_tokens, output_tokens, cached_input_tokens, \
                          quantity, unit, cost, run_id, agent_id, request_id, attributes";
/// Rows per INSERT statement: 16 columns × 1000 stays under SQLite's 32766 variables.
const ROWS_PER_INSERT: usize = 1000;

fn uuid_text(u: Option<Uuid>) -> Option<String> {
    u.map(|u| u.hyphenated().to_string())
}

fn event_from_row(row: &SqliteRow) -> Result<StoredUsage> {
    Ok(StoredUsage {
        seq: row.try_get("seq")?,
        tenant_id: decode(row.try_get::<&str, _>("tenant_id")?)?,
        event: UsageEvent {
            id: row.try_get("id")?,
            ts: from_micros(row.try_get("ts")?),
            kind: decode(row.try_get::<&str, _>("kind")?)?,
            name: row.try_get("name")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cached_input_tokens: row.try_get("cached_input_tokens")?,
            quantity: row.try_get("quantity")?,
            unit: row.try_get("unit")?,
            cost: Money::from_nanos(row.try_get("cost")?),
            run_id: row.try_get::<Option<&str>, _>("run_id")?.map(decode).transpose()?,
            agent_id: row.try_get::<Option<&str>, _>("agent_id")?.map(decode).transpose()?,
            request_id: row.try_get("request_id")?,
            attributes: serde_json::from_str(row.try_get::<&str, _>("attributes")?).unwrap_or_default(),
        },
    })
}

/// Spent this month and today, and live reservations — read in one
/// statement, so one consistent view.
async fn standing(
    tx: &mut Transaction<'_, Sqlite>,
    tenant: TenantId,
    now: OffsetDateTime,
) -> Result<(Money, Money, Money)> {
    let (month, day) = period_starts(now);
    let (m, d, r): (i64, i64, i64) = sqlx::query_as(
        "SELECT
            (SELECT coalesce(sum(cost), 0) FROM usage_daily WHERE tenant_id = ?1 AND day >= ?2),
            (SELECT coalesce(sum(cost), 0) FROM usage_daily WHERE tenant_id = ?1 AND day = ?3),
            (SELECT coalesce(sum(amount), 0) FROM budget_reservations WHERE tenant_id = ?1 AND expires_at > ?4)",
    )
    .bind(tenant.to_string())
    .bind(day_string(month))
    .bind(day_string(day))
    .bind(to_micros(now))
    .fetch_one(&mut **tx)
    .await?;
    Ok((Money::from_nanos(m), Money::from_nanos(d), Money::from_nanos(r)))
}

async fn load_budget(tx: &mut Transaction<'_, Sqlite>, tenant: TenantId) -> Result<Option<Budget>> {
    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT monthly_limit, daily_limit, soft_alert_percent FROM budgets WHERE tenant_id = ?",
    )
    .bind(tenant.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(m, d, p)| Budget {
        monthly_limit: m.map(Money::from_nanos),
        daily_limit: d.map(Money::from_nanos),
        soft_alert_percent: p.map(|p| p.clamp(0, 100) as u8),
    }))
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn write_usage(&self, batch: &[UsageWrite], now: OffsetDateTime) -> Result<Vec<bool>> {
        let first = shared::first_occurrences(batch);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut inserted_keys: HashSet<(String, String)> = HashSet::new();
        let candidates: Vec<&UsageWrite> =
            batch.iter().zip(&first).filter(|(_, f)| **f).map(|(w, _)| w).collect();
        for chunk in candidates.chunks(ROWS_PER_INSERT) {
            let row = format!("({})", vec!["?"; 16].join(", "));
            let sql = format!(
                "INSERT INTO usage_events ({EVENT_COLS}) VALUES {} ON CONFLICT (tenant_id, id) DO NOTHING RETURNING tenant_id, id",
                vec![row.as_str(); chunk.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for w in chunk {
                let e = &w.event;
                q = q
                    .bind(w.ctx.tenant_id().to_string())
                    .bind(&e.id)
                    .bind(to_micros(e.ts))
                    .bind(day_string(e.ts))
                    .bind(e.kind.as_str())
                    .bind(&e.name)
                    .bind(e.input_tokens)
                    .bind(e.output_tokens)
                    .bind(e.cached_input_tokens)
                    .bind(e.quantity)
                    .bind(e.unit.as_deref())
                    .bind(e.cost.nanos())
                    .bind(uuid_text(e.run_id))
                    .bind(uuid_text(e.agent_id))
                    .bind(e.request_id.as_deref())
                    .bind(e.attributes.to_string());
            }
            for row in q.fetch_all(&mut *tx).await? {
                inserted_keys.insert((row.try_get("tenant_id")?, row.try_get("id")?));
            }
        }
        let inserted: Vec<bool> = batch
            .iter()
            .zip(&first)
            .map(|(w, f)| *f && inserted_keys.contains(&(w.ctx.tenant_id().to_string(), w.event.id.clone())))
            .collect();

        for w in batch {
            if let Some(res) = w.settles {
                sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = ? AND id = ?")
                    .bind(w.ctx.tenant_id().to_string())
                    .bind(res.0.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let deltas = shared::daily_deltas(batch, &inserted);
        let mut touched = HashSet::new();
        for (k, t) in &deltas {
            touched.insert(k.tenant);
            sqlx::query(
                "INSERT INTO usage_daily (tenant_id, day, kind, name, agent_id, events, input_tokens, output_tokens,
                     cached_input_tokens, quantity, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (tenant_id, day, kind, name, agent_id) DO UPDATE SET
                     events = events + excluded.events, input_tokens = input_tokens + excluded.input_tokens,
                     output_tokens = output_tokens + excluded.output_tokens,
                     cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
                     quantity = quantity + excluded.quantity, cost = cost + excluded.cost",
            )
            .bind(k.tenant.to_string())
            .bind(&k.day)
            .bind(k.kind.as_str())
            .bind(&k.name)
            .bind(&k.agent)
            .bind(t.events)
            .bind(t.input_tokens)
            .bind(t.output_tokens)
            .bind(t.cached_input_tokens)
            .bind(t.quantity)
            .bind(t.cost)
            .execute(&mut *tx)
            .await?;
        }
        for tenant in touched {
            let Some(budget) = load_budget(&mut tx, tenant).await? else { continue };
            let (m, d, _) = standing(&mut tx, tenant, now).await?;
            for a in shared::alerts_reached(&budget, m, d, now) {
                sqlx::query(
                    "INSERT INTO budget_alerts (tenant_id, period, kind, threshold, spent, crossed_at)
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind(tenant.to_string())
                .bind(&a.period)
                .bind(&a.kind)
                .bind(a.threshold.nanos())
                .bind(a.spent.nanos())
                .bind(to_micros(a.crossed_at))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn usage_summary(&self, scope: UsageScope<'_>, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        let tenant = match scope {
            UsageScope::Tenant(ctx) => Some(ctx.tenant_id()),
            UsageScope::Platform(_) => None,
        };
        let (sql, params) = shared::summary_sql(query, tenant, |n| format!("?{n}"));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for p in params {
            q = match p {
                Param::I64(v) => q.bind(v),
                Param::Text(v) => q.bind(v),
                Param::Uuid(v) => q.bind(v.hyphenated().to_string()),
            };
        }
        let rows = q.fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                let has = |c: GroupBy| query.group_by.contains(&c);
                Ok(UsageRow {
                    tenant_id: if has(GroupBy::Tenant) {
                        Some(decode(row.try_get::<&str, _>("tenant_id")?)?)
                    } else {
                        None
                    },
                    day: if has(GroupBy::Day) { parse_day(row.try_get::<&str, _>("day")?) } else { None },
                    kind: if has(GroupBy::Kind) {
                        Some(decode(row.try_get::<&str, _>("kind")?)?)
                    } else {
                        None
                    },
                    name: if has(GroupBy::Name) { Some(row.try_get("name")?) } else { None },
                    agent_id: if has(GroupBy::Agent) {
                        row.try_get::<Option<&str>, _>("agent_id")?.map(decode).transpose()?
                    } else {
                        None
                    },
                    events: row.try_get("events")?,
                    input_tokens: row.try_get("input_tokens")?,
                    output_tokens: row.try_get("output_tokens")?,
                    cached_input_tokens: row.try_get("cached_input_tokens")?,
                    quantity: row.try_get("quantity")?,
                    cost: Money::from_nanos(row.try_get("cost")?),
                })
            })
            .collect()
    }

    async fn usage_events(
        &self,
        ctx: &TenantCtx,
        query: &UsageQuery,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredUsage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, {EVENT_COLS} FROM usage_events
             WHERE tenant_id = ?1 AND seq > ?2 AND ts >= ?3 AND ts < ?4
               AND (?5 IS NULL OR kind = ?5) AND (?6 IS NULL OR name = ?6)
               AND (?7 IS NULL OR agent_id = ?7) AND (?8 IS NULL OR run_id = ?8)
             ORDER BY seq LIMIT ?9"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_seq)
        .bind(query.from.map(to_micros).unwrap_or(i64::MIN))
        .bind(query.to.map(to_micros).unwrap_or(i64::MAX))
        .bind(query.kind.map(UsageKind::as_str))
        .bind(query.name.as_deref())
        .bind(uuid_text(query.agent_id))
        .bind(uuid_text(query.run_id))
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl BudgetStore for SqliteStore {
    async fn get_budget(&self, ctx: &TenantCtx) -> Result<Option<Budget>> {
        let mut tx = self.read.begin().await?;
        let b = load_budget(&mut tx, ctx.tenant_id()).await?;
        tx.commit().await?;
        Ok(b)
    }

    async fn set_budget(&self, ctx: &TenantCtx, budget: Option<&Budget>) -> Result<()> {
        let tenant = ctx.tenant_id().to_string();
        match budget {
            None => {
                sqlx::query("DELETE FROM budgets WHERE tenant_id = ?")
                    .bind(tenant)
                    .execute(&self.pool)
                    .await?;
            }
            Some(b) => {
                sqlx::query(
                    "INSERT INTO budgets (tenant_id, monthly_limit, daily_limit, soft_alert_percent, updated_at)
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET
                       monthly_limit = excluded.monthly_limit, daily_limit = excluded.daily_limit,
                       soft_alert_percent = excluded.soft_alert_percent, updated_at = excluded.updated_at",
                )
                .bind(&tenant)
                .bind(b.monthly_limit.map(Money::nanos))
                .bind(b.daily_limit.map(Money::nanos))
                .bind(b.soft_alert_percent.map(i64::from))
                .bind(to_micros(OffsetDateTime::now_utc()))
                .execute(&self.pool)
                .await
                .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
            }
        }
        Ok(())
    }

    async fn reserve(
        &self,
        ctx: &TenantCtx,
        amount: Money,
        ttl: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Reserve> {
        let tenant = ctx.tenant_id();
        // Most tenants have no budget: answer them from a reader, without
        // taking the write lock.
        if self.get_budget(ctx).await?.is_none() {
            return Ok(Reserve::Unlimited);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let expired = sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = ? AND expires_at <= ?")
            .bind(tenant.to_string())
            .bind(to_micros(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if expired > 0 {
            tracing::warn!(%tenant, expired, "budget reservations expired without settlement");
        }
        let Some(budget) = load_budget(&mut tx, tenant).await? else {
            tx.commit().await?;
            return Ok(Reserve::Unlimited);
        };
        let (m, d, r) = standing(&mut tx, tenant, now).await?;
        if let Some(refused) = shared::check_reserve(&budget, m, d, r, amount) {
            tx.commit().await?;
            return Ok(refused);
        }
        let id = ReservationId(Uuid::now_v7());
        let expires_at = now + ttl;
        sqlx::query("INSERT INTO budget_reservations (id, tenant_id, amount, created_at, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id.0.to_string())
            .bind(tenant.to_string())
            .bind(amount.nanos())
            .bind(to_micros(now))
            .bind(to_micros(expires_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Reserve::Reserved { id, expires_at })
    }

    async fn release(&self, ctx: &TenantCtx, id: ReservationId) -> Result<()> {
        sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.0.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn budget_status(&self, ctx: &TenantCtx, now: OffsetDateTime) -> Result<BudgetStatus> {
        let tenant = ctx.tenant_id();
        let mut tx = self.read.begin().await?;
        let budget = load_budget(&mut tx, tenant).await?;
        let (spent_month, spent_day, reserved) = standing(&mut tx, tenant, now).await?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT period, kind, threshold, spent, crossed_at FROM budget_alerts WHERE tenant_id = ? ORDER BY crossed_at, period, kind",
        )
        .bind(tenant.to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let alerts = rows
            .into_iter()
            .map(|(period, kind, threshold, spent, at)| BudgetAlert {
                period,
                kind,
                threshold: Money::from_nanos(threshold),
                spent: Money::from_nanos(spent),
                crossed_at: from_micros(at),
            })
            .collect();
        Ok(BudgetStatus { budget, spent_month, spent_day, reserved, alerts })
    }
}

#[async_trait]
impl SettingsStore for SqliteStore {
    async fn tenant_settings(&self, ctx: &TenantCtx) -> Result<TenantSettings> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT limits, pricing, models, sandbox FROM tenant_settings WHERE tenant_id = ?",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_optional(&self.read)
        .await?;
        let parse = |s: &str| serde_json::from_str(s).unwrap_or_else(|_| serde_json::json!({}));
        Ok(row
            .map(|(l, p, m, s)| TenantSettings {
                limits: parse(&l),
                pricing: parse(&p),
                models: parse(&m),
                sandbox: parse(&s),
            })
            .unwrap_or_else(|| TenantSettings {
                limits: serde_json::json!({}),
                pricing: serde_json::json!({}),
                models: serde_json::json!({}),
                sandbox: serde_json::json!({}),
            }))
    }

    async fn set_tenant_limits(&self, ctx: &TenantCtx, limits: &serde_json::Value) -> Result<()> {
        self.upsert_setting(ctx, "limits", limits).await
    }

    async fn set_tenant_pricing(&self, ctx: &TenantCtx, pricing: &serde_json::Value) -> Result<()> {
        self.upsert_setting(ctx, "pricing", pricing).await
    }

    async fn set_tenant_models(&self, ctx: &TenantCtx, models: &serde_json::Value) -> Result<()> {
        self.upsert_setting(ctx, "models", models).await
    }

    async fn set_tenant_sandbox(&self, ctx: &TenantCtx, policy: &serde_json::Value) -> Result<()> {
        self.upsert_setting(ctx, "sandbox", policy).await
    }
}

impl SqliteStore {
    async fn upsert_setting(
        &self,
        ctx: &TenantCtx,
        column: &'static str,
        value: &serde_json::Value,
    ) -> Result<()> {
        // `column` is one of the literals above, never caller input.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenant_settings (tenant_id, {column}, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET {column} = excluded.{column}, updated_at = excluded.updated_at"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(value.to_string())
        .bind(to_micros(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        Ok(())
    }
}
