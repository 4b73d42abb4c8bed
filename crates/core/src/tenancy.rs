//! Who a call acts for. The auth layer turns a key into a [`TenantCtx`] (or an
//! [`OperatorCtx`]) once; every repository, index, cache, queue, tool and
//! sandbox call below it takes `&TenantCtx`, never a bare tenant id.
//!
//! A `TenantCtx` can be minted in exactly two ways, both easy to grep for:
//! [`crate::keys::authenticate`] (a verified tenant key), and
//! [`OperatorCtx::act_for`] (an operator naming a tenant explicitly, which the
//! context remembers so it can be audited).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Code, Error, KeyId, TenantId};

/// Isolation tier of a tenant (BLUEPRINT §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Tier {
    /// Shared database and index, rows filtered by tenant (and RLS).
    #[default]
    Shared,
    /// Shared compute, the tenant's own database and index.
    Isolated,
    /// The tenant's own cell (deployment).
    Dedicated,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Shared => "shared",
            Tier::Isolated => "isolated",
            Tier::Dedicated => "dedicated",
        }
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "shared" => Ok(Tier::Shared),
            "isolated" => Ok(Tier::Isolated),
            "dedicated" => Ok(Tier::Dedicated),
            other => Err(Error::new(
                Code::InvalidRequest,
                format!("unknown tier `{other}`; use shared, isolated or dedicated"),
            )),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a tenant may use the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

impl FromStr for TenantStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "suspended" => Ok(TenantStatus::Suspended),
            other => Err(Error::new(Code::InvalidRequest, format!("unknown status `{other}`"))),
        }
    }
}

/// What a tenant key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    /// Run agents, hold conversations, search knowledge, call models.
    TenantApp,
    /// Everything `tenant_app` may, plus configuring the tenant.
    TenantAdmin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TenantApp => "tenant_app",
            Scope::TenantAdmin => "tenant_admin",
        }
    }

    /// Whether a key with this scope satisfies `required`.
    pub fn allows(self, required: Scope) -> bool {
        self >= required
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "tenant_app" => Ok(Scope::TenantApp),
            "tenant_admin" => Ok(Scope::TenantAdmin),
            other => Err(Error::new(
                Code::InvalidRequest,
                format!("unknown scope `{other}`; use tenant_app or tenant_admin"),
            )),
        }
    }
}

/// Who is behind a call, for logs and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A tenant key.
    TenantKey { key_id: KeyId, scope: Scope },
    /// An operator key acting for a tenant (via `X-Tenant-ID`).
    Operator { key_id: Option<KeyId> },
}

/// The tenant a call acts for, with who is acting. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCtx {
    tenant: TenantId,
    actor: Actor,
}

impl TenantCtx {
    pub(crate) fn from_tenant_key(tenant: TenantId, key_id: KeyId, scope: Scope) -> Self {
        Self { tenant, actor: Actor::TenantKey { key_id, scope } }
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The effective scope: an operator acting for a tenant is its admin.
    pub fn scope(&self) -> Scope {
        match self.actor {
            Actor::TenantKey { scope, .. } => scope,
            Actor::Operator { .. } => Scope::TenantAdmin,
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scope().allows(scope) {
            Ok(())
        } else {
            Err(Error::new(
                Code::Forbidden,
                format!("this operation needs a key with scope `{}`", scope.as_str()),
            ))
        }
    }

    /// Binds a value to this context's tenant.
    pub fn bind<T>(&self, value: T) -> TenantBound<T> {
        TenantBound { tenant: self.tenant, value }
    }
}

/// The platform operator. Minted by the auth layer for an operator key, or by
/// the CLI working directly on a store it was pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorCtx {
    key_id: Option<KeyId>,
}

impl OperatorCtx {
    pub(crate) fn from_key(key_id: KeyId) -> Self {
        Self { key_id: Some(key_id) }
    }

    /// The operator at the console: the CLI with direct access to the store.
    pub fn local_cli() -> Self {
        Self { key_id: None }
    }

    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// Acts for a tenant the operator names explicitly; the context records
    /// that an operator is acting.
    pub fn act_for(&self, tenant: TenantId) -> TenantCtx {
        TenantCtx { tenant, actor: Actor::Operator { key_id: self.key_id } }
    }
}

/// A value that belongs to one tenant. Context assembly accepts only items
/// whose tenant equals the run's; [`TenantBound::into_inner_for`] makes a
/// mismatch a hard error rather than a silent drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantBound<T> {
    tenant: TenantId,
    value: T,
}

impl<T> TenantBound<T> {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    /// Borrows the value for `ctx`'s tenant.
    pub fn get_for(&self, ctx: &TenantCtx) -> Result<&T, Error> {
        self.check(ctx)?;
        Ok(&self.value)
    }

    /// Takes the value for `ctx`'s tenant.
    pub fn into_inner_for(self, ctx: &TenantCtx) -> Result<T, Error> {
        self.check(ctx)?;
        Ok(self.value)
    }

    fn check(&self, ctx: &TenantCtx) -> Result<(), Error> {
        if self.tenant == ctx.tenant_id() {
            Ok(())
        } else {
            // Never shown to a caller as-is: the HTTP layer logs internals.
            Err(Error::internal(format!(
                "tenant mismatch: item of {} used for {}",
                self.tenant,
                ctx.tenant_id()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_bound_refuses_other_tenant() {
        let op = OperatorCtx::local_cli();
        let a = op.act_for(TenantId::new());
        let b = op.act_for(TenantId::new());
        let item = a.bind("canary-a");
        assert_eq!(*item.get_for(&a).unwrap(), "canary-a");
        let err = item.clone().into_inner_for(&b).unwrap_err();
        assert_eq!(err.code, Code::Internal);
    }

    #[test]
    fn scopes_are_ordered() {
        assert!(Scope::TenantAdmin.allows(Scope::TenantApp));
        assert!(!Scope::TenantApp.allows(Scope::TenantAdmin));
        let ctx = TenantCtx::from_tenant_key(TenantId::new(), KeyId::new(), Scope::TenantApp);
        assert_eq!(ctx.require(Scope::TenantAdmin).unwrap_err().code, Code::Forbidden);
        assert!(OperatorCtx::local_cli().act_for(TenantId::new()).require(Scope::TenantAdmin).is_ok());
    }
}
