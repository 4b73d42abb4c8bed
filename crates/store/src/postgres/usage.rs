//! The usage ledger, budgets and settings on PostgreSQL, under row-level
//! security: each tenant's part of a ledger batch runs with that tenant set
//! in the transaction. Reservations lock the tenant's budget row
//! (`FOR UPDATE`), so admissions of one tenant serialize across all server
//! processes, and read spend and reservations in one statement (one
//! snapshot) so a settlement committing in between cannot be half-seen.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bulkhead_core::{Money, TenantCtx, TenantId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgStore;
use crate::usage::shared::{self, Param};
use crate::usage::*;
use crate::{BudgetStore, Result, SettingsStore, UsageScope, UsageStore};

const EVENT_COLS: &str = "tenant_id, id, ts, day, kind, name, input_tokens, output_tokens, cached_input_tokens, \
                          quantity, unit, cost, run_id, agent_id, request_id, attributes";

fn decode<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| crate::StoreError::Db(sqlx::Error::Decode(e.to_string().into())))
}

fn event_from_row(row: &PgRow) -> Result<StoredUsage> {
    Ok(StoredUsage {
        seq: row.try_get("seq")?,
        tenant_id: TenantId::from_uuid(row.try_get("tenant_id")?),
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
            run_id: row.try_get("run_id")?,
            agent_id: row.try_get("agent_id")?,
            request_id: row.try_get("request_id")?,
            attributes: row.try_get("attributes")?,
        },
    })
}

async fn set_tenant(tx: &mut Transaction<'_, Postgres>, tenant: TenantId) -> Result<()> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn standing(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    now: OffsetDateTime,
) -> Result<(Money, Money, Money)> {
    let (month, day) = period_starts(now);
    let (m, d, r): (i64, i64, i64) = sqlx::query_as(
        "SELECT
            (SELECT coalesce(sum(cost), 0)::bigint FROM usage_daily WHERE tenant_id = $1 AND day >= $2),
            (SELECT coalesce(sum(cost), 0)::bigint FROM usage_daily WHERE tenant_id = $1 AND day = $3),
            (SELECT coalesce(sum(amount), 0)::bigint FROM budget_reservations WHERE tenant_id = $1 AND expires_at > $4)",
    )
    .bind(tenant.as_uuid())
    .bind(day_string(month))
    .bind(day_string(day))
    .bind(to_micros(now))
    .fetch_one(&mut **tx)
    .await?;
    Ok((Money::from_nanos(m), Money::from_nanos(d), Money::from_nanos(r)))
}

async fn load_budget(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    lock: bool,
) -> Result<Option<Budget>> {
    let sql = if lock {
        "SELECT monthly_limit, daily_limit, soft_alert_percent FROM budgets WHERE tenant_id = $1 FOR UPDATE"
    } else {
        "SELECT monthly_limit, daily_limit, soft_alert_percent FROM budgets WHERE tenant_id = $1"
    };
    let row: Option<(Option<i64>, Option<i64>, Option<i32>)> =
        sqlx::query_as(sql).bind(tenant.as_uuid()).fetch_optional(&mut **tx).await?;
    Ok(row.map(|(m, d, p)| Budget {
        monthly_limit: m.map(Money::from_nanos),
        daily_limit: d.map(Money::from_nanos),
        soft_alert_percent: p.map(|p| p.clamp(0, 100) as u8),
    }))
}

#[async_trait]
impl UsageStore for PgStore {
    async fn write_usage(&self, batch: &[UsageWrite], now: OffsetDateTime) -> Result<Vec<bool>> {
        let first = shared::first_occurrences(batch);
        let mut by_tenant: HashMap<TenantId, Vec<usize>> = HashMap::new();
        for (i, w) in batch.iter().enumerate() {
            by_tenant.entry(w.ctx.tenant_id()).or_default().push(i);
        }
        let mut inserted = vec![false; batch.len()];
        let mut tx = self.pool.begin().await?;
        for (tenant, idxs) in &by_tenant {
            set_tenant(&mut tx, *tenant).await?;
            let fresh: Vec<&UsageWrite> = idxs.iter().filter(|i| first[**i]).map(|i| &batch[*i]).collect();
            if !fresh.is_empty() {
                let col =
                    |f: &dyn Fn(&UsageEvent) -> i64| fresh.iter().map(|w| f(&w.event)).collect::<Vec<i64>>();
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO usage_events ({EVENT_COLS})
                     SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                         $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::bigint[], $13::uuid[], $14::uuid[],
                         $15::text[], $16::jsonb[])
                     ON CONFLICT (tenant_id, id) DO NOTHING RETURNING id"
                )))
                .bind(tenant.as_uuid())
                .bind(fresh.iter().map(|w| w.event.id.clone()).collect::<Vec<_>>())
                .bind(col(&|e| to_micros(e.ts)))
                .bind(fresh.iter().map(|w| day_string(w.event.ts)).collect::<Vec<_>>())
                .bind(fresh.iter().map(|w| w.event.kind.as_str().to_owned()).collect::<Vec<_>>())
                .bind(fresh.iter().map(|w| w.event.name.clone()).collect::<Vec<_>>())
                .bind(col(&|e| e.input_tokens))
                .bind(col(&|e| e.output_tokens))
                .bind(col(&|e| e.cached_input_tokens))
                .bind(col(&|e| e.quantity))
                .bind(fresh.iter().map(|w| w.event.unit.clone()).collect::<Vec<_>>())
                .bind(col(&|e| e.cost.nanos()))
                .bind(fresh.iter().map(|w| w.event.run_id).collect::<Vec<_>>())
                .bind(fresh.iter().map(|w| w.event.agent_id).collect::<Vec<_>>())
                .bind(fresh.iter().map(|w| w.event.request_id.clone()).collect::<Vec<_>>())
                .bind(fresh.iter().map(|w| w.event.attributes.clone()).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await?;
                let new_ids: HashSet<String> =
                    rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
                for i in idxs {
                    inserted[*i] = first[*i] && new_ids.contains(&batch[*i].event.id);
                }
            }
            let settled: Vec<Uuid> = idxs.iter().filter_map(|i| batch[*i].settles.map(|r| r.0)).collect();
            if !settled.is_empty() {
                sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = $1 AND id = ANY($2)")
                    .bind(tenant.as_uuid())
                    .bind(&settled)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let deltas = shared::daily_deltas(batch, &inserted);
        let mut per_tenant: HashMap<TenantId, Vec<(&shared::DailyKey, &shared::Totals)>> = HashMap::new();
        for (k, t) in &deltas {
            per_tenant.entry(k.tenant).or_default().push((k, t));
        }
        for (tenant, rows) in per_tenant {
            set_tenant(&mut tx, tenant).await?;
            for (k, t) in rows {
                sqlx::query(
                    "INSERT INTO usage_daily (tenant_id, day, kind, name, agent_id, events, input_tokens, output_tokens,
                         cached_input_tokens, quantity, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (tenant_id, day, kind, name, agent_id) DO UPDATE SET
                         events = usage_daily.events + excluded.events,
                         input_tokens = usage_daily.input_tokens + excluded.input_tokens,
                         output_tokens = usage_daily.output_tokens + excluded.output_tokens,
                         cached_input_tokens = usage_daily.cached_input_tokens + excluded.cached_input_tokens,
                         quantity = usage_daily.quantity + excluded.quantity, cost = usage_daily.cost + excluded.cost",
                )
                .bind(tenant.as_uuid())
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
            let Some(budget) = load_budget(&mut tx, tenant, false).await? else { continue };
            let (m, d, _) = standing(&mut tx, tenant, now).await?;
            for a in shared::alerts_reached(&budget, m, d, now) {
                sqlx::query(
                    "INSERT INTO budget_alerts (tenant_id, period, kind, threshold, spent, crossed_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(tenant.as_uuid())
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
        let (mut tx, tenant) = match scope {
            UsageScope::Tenant(ctx) => (self.tenant_tx(ctx).await?, Some(ctx.tenant_id())),
            UsageScope::Platform(_) => (self.platform_tx().await?, None),
        };
        let (sql, params) = shared::summary_sql(query, tenant, |n| format!("${n}"));
        // sums of bigint are numeric in PostgreSQL: cast back for decoding.
        let sql = sql.replace("), 0) AS", "), 0)::bigint AS");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for p in params {
            q = match p {
                Param::I64(v) => q.bind(v),
                Param::Text(v) => q.bind(v),
                Param::Uuid(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let has = |c: GroupBy| query.group_by.contains(&c);
                Ok(UsageRow {
                    tenant_id: if has(GroupBy::Tenant) {
                        Some(TenantId::from_uuid(row.try_get("tenant_id")?))
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
                    agent_id: if has(GroupBy::Agent) { row.try_get("agent_id")? } else { None },
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
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, {EVENT_COLS} FROM usage_events
             WHERE tenant_id = $1 AND seq > $2 AND ts >= $3 AND ts < $4
               AND ($5::text IS NULL OR kind = $5) AND ($6::text IS NULL OR name = $6)
               AND ($7::uuid IS NULL OR agent_id = $7) AND ($8::uuid IS NULL OR run_id = $8)
             ORDER BY seq LIMIT $9"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(after_seq)
        .bind(query.from.map(to_micros).unwrap_or(i64::MIN))
        .bind(query.to.map(to_micros).unwrap_or(i64::MAX))
        .bind(query.kind.map(UsageKind::as_str))
        .bind(query.name.as_deref())
        .bind(query.agent_id)
        .bind(query.run_id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn get_budget(&self, ctx: &TenantCtx) -> Result<Option<Budget>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let b = load_budget(&mut tx, ctx.tenant_id(), false).await?;
        tx.commit().await?;
        Ok(b)
    }

    async fn set_budget(&self, ctx: &TenantCtx, budget: Option<&Budget>) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        match budget {
            None => {
                sqlx::query("DELETE FROM budgets WHERE tenant_id = $1")
                    .bind(ctx.tenant_id().as_uuid())
                    .execute(&mut *tx)
                    .await?;
            }
            Some(b) => {
                sqlx::query(
                    "INSERT INTO budgets (tenant_id, monthly_limit, daily_limit, soft_alert_percent, updated_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET
                       monthly_limit = excluded.monthly_limit, daily_limit = excluded.daily_limit,
                       soft_alert_percent = excluded.soft_alert_percent, updated_at = excluded.updated_at",
                )
                .bind(ctx.tenant_id().as_uuid())
                .bind(b.monthly_limit.map(Money::nanos))
                .bind(b.daily_limit.map(Money::nanos))
                .bind(b.soft_alert_percent.map(i32::from))
                .bind(to_micros(OffsetDateTime::now_utc()))
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
            }
        }
        tx.commit().await?;
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
        let mut tx = self.tenant_tx(ctx).await?;
        // The row lock serializes this tenant's admissions across processes.
        let Some(budget) = load_budget(&mut tx, tenant, true).await? else {
            tx.commit().await?;
            return Ok(Reserve::Unlimited);
        };
        let expired =
            sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = $1 AND expires_at <= $2")
                .bind(tenant.as_uuid())
                .bind(to_micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if expired > 0 {
            tracing::warn!(%tenant, expired, "budget reservations expired without settlement");
        }
        let (m, d, r) = standing(&mut tx, tenant, now).await?;
        if let Some(refused) = shared::check_reserve(&budget, m, d, r, amount) {
            tx.commit().await?;
            return Ok(refused);
        }
        let id = ReservationId(Uuid::now_v7());
        let expires_at = now + ttl;
        sqlx::query(
            "INSERT INTO budget_reservations (id, tenant_id, amount, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.0)
        .bind(tenant.as_uuid())
        .bind(amount.nanos())
        .bind(to_micros(now))
        .bind(to_micros(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reserve::Reserved { id, expires_at })
    }

    async fn release(&self, ctx: &TenantCtx, id: ReservationId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query("DELETE FROM budget_reservations WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn budget_status(&self, ctx: &TenantCtx, now: OffsetDateTime) -> Result<BudgetStatus> {
        let tenant = ctx.tenant_id();
        let mut tx = self.tenant_tx(ctx).await?;
        let budget = load_budget(&mut tx, tenant, false).await?;
        let (spent_month, spent_day, reserved) = standing(&mut tx, tenant, now).await?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT period, kind, threshold, spent, crossed_at FROM budget_alerts WHERE tenant_id = $1
             ORDER BY crossed_at, period, kind",
        )
        .bind(tenant.as_uuid())
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
impl SettingsStore for PgStore {
    async fn tenant_settings(&self, ctx: &TenantCtx) -> Result<TenantSettings> {
        let mut tx = self.tenant_tx(ctx).await?;
        type Row = (serde_json::Value, serde_json::Value, serde_json::Value, serde_json::Value);
        let row: Option<Row> = sqlx::query_as(
            "SELECT limits, pricing, models, sandbox FROM tenant_settings WHERE tenant_id = $1",
        )
        .bind(ctx.tenant_id().as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row
            .map(|(limits, pricing, models, sandbox)| TenantSettings { limits, pricing, models, sandbox })
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

impl PgStore {
    async fn upsert_setting(
        &self,
        ctx: &TenantCtx,
        column: &'static str,
        value: &serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        // `column` is one of the literals above, never caller input.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenant_settings (tenant_id, {column}, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET {column} = excluded.{column}, updated_at = excluded.updated_at"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(value)
        .bind(to_micros(OffsetDateTime::now_utc()))
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        tx.commit().await?;
        Ok(())
    }
}
