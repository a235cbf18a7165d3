//! Use cases shared by the admin API and the CLI: validate, write, emit the one
//! `admin.action` event (typed verb), invalidate caches. Handlers and commands are thin
//! adapters over these functions, so the API and the CLI behave identically.
//!
//! Every function takes the [`Actor`] and scopes what it reads and changes to what the
//! actor may see: a `user` sees only their own keys and their own tenant's usage;
//! anything else reads as "not found", so ids cannot be probed.
//!
//! [`schemas`] describes, for the admin API's OpenAPI document, the read-model rows
//! these functions return but cannot derive a schema on.

pub mod accounts;
pub mod groups;
pub mod keys;
pub mod notifications;
pub mod reads;
pub mod schemas;
pub mod users;

use crate::accounts::AccountStore;
use crate::groups::GroupStore;
use crate::identity::{JwtKeys, Role, User, UserStore};
use crate::keys::KeyStore;
use chrono::Utc;
use ingest::publisher::Publisher;
use schema::{AccountId, AdminAction, AdminVerb, Envelope, Event, TenantId};
use sqlx::AnyPool;
use std::sync::Arc;
use uuid::Uuid;

/// Who is acting.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The operator at the command line (full rights).
    Cli,
    /// A logged-in user.
    User(Box<User>),
}

impl Actor {
    /// How the actor appears in audit events: the user id, or `cli`.
    pub fn audit_name(&self) -> String {
        match self {
            Actor::Cli => "cli".into(),
            Actor::User(u) => u.id.clone(),
        }
    }

    /// Whether the actor has administrator rights.
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Cli => true,
            Actor::User(u) => u.role == Role::Admin,
        }
    }

    /// The user, when the actor is one.
    pub fn user(&self) -> Option<&User> {
        match self {
            Actor::Cli => None,
            Actor::User(u) => Some(u),
        }
    }

    /// The only tenant the actor may read; `None` = every tenant.
    pub fn tenant_scope(&self) -> Option<&TenantId> {
        match self {
            Actor::User(u) if u.role != Role::Admin => Some(&u.tenant),
            _ => None,
        }
    }

    fn require_admin(&self) -> Result<(), ServiceError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(
                "administrator role required".into(),
            ))
        }
    }
}

/// Why a use case failed; each maps to one HTTP status and `{error, code}`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input (40001).
    #[error("{0}")]
    BadRequest(String),
    /// Not logged in, or bad credentials (40101).
    #[error("{0}")]
    Unauthenticated(String),
    /// Logged in but not allowed (40301).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing, or not visible to the actor (40401).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Duplicate or in use (40901).
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts (42901); seconds to wait.
    #[error("{0}")]
    Throttled(String, u64),
    /// Something on our side (50001); the detail is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    /// An internal error, logged once here with its cause.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "admin service failed");
        ServiceError::Internal(e.to_string())
    }
}

macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ServiceError {
            fn from(e: $t) -> Self {
                ServiceError::internal(e)
            }
        }
    )*};
}
internal_from!(
    sqlx::Error,
    crate::identity::users::UserStoreError,
    crate::keys::KeyStoreError,
    projections::Error
);

impl From<crate::accounts::AccountStoreError> for ServiceError {
    fn from(e: crate::accounts::AccountStoreError) -> Self {
        match e {
            crate::accounts::AccountStoreError::Invalid(m) => ServiceError::BadRequest(m),
            other => ServiceError::internal(other),
        }
    }
}

/// A page request: `page` from 1, `limit` 1..=100 (default 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReq {
    /// Page number, from 1.
    pub page: u32,
    /// Items per page.
    pub limit: u32,
}

impl Default for PageReq {
    fn default() -> Self {
        Self { page: 1, limit: 10 }
    }
}

impl PageReq {
    /// Most items per page.
    pub const MAX_LIMIT: u32 = 100;

    /// Validates raw query values.
    pub fn parse(page: Option<i64>, limit: Option<i64>) -> Result<Self, ServiceError> {
        let page = page.unwrap_or(1);
        let limit = limit.unwrap_or(10);
        if !(1..=1_000_000).contains(&page) {
            return Err(ServiceError::BadRequest(
                "page must be between 1 and 1000000".into(),
            ));
        }
        if !(1..=i64::from(Self::MAX_LIMIT)).contains(&limit) {
            return Err(ServiceError::BadRequest(format!(
                "limit must be between 1 and {}",
                Self::MAX_LIMIT
            )));
        }
        Ok(Self {
            page: u32::try_from(page).unwrap_or(1),
            limit: u32::try_from(limit).unwrap_or(10),
        })
    }

    /// SQL offset.
    pub fn offset(self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.limit)
    }

    /// SQL limit.
    pub fn limit(self) -> i64 {
        i64::from(self.limit)
    }
}

/// One page of results.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Items matching in all pages.
    pub total: i64,
    /// This page.
    pub page: u32,
    /// Page size.
    pub limit: u32,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, total: i64, req: PageReq) -> Self {
        Self {
            items,
            total,
            page: req.page,
            limit: req.limit,
        }
    }
}

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Zone of times given without one (key expiry), and of billing windows.
    pub billing_tz: chrono_tz::Tz,
    /// Whether anyone may register.
    pub registration_enabled: bool,
    /// Where accounts may point.
    pub egress: crate::egress::EgressPolicy,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            billing_tz: chrono_tz::UTC,
            registration_enabled: false,
            egress: crate::egress::EgressPolicy::default(),
        }
    }
}

/// Everything the use cases work on. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// The configuration and read-model database.
    pub db: AnyPool,
    /// Tenant keys.
    pub keys: KeyStore,
    /// Upstream accounts.
    pub accounts: AccountStore,
    /// Users and tenants.
    pub users: UserStore,
    /// Account groups.
    pub groups: GroupStore,
    /// Login tokens; `None` in CLI processes that issue none.
    pub jwt: Option<JwtKeys>,
    /// Where audit events go.
    publisher: Publisher,
    /// Settings.
    pub settings: Arc<ServiceSettings>,
    /// Failed-login throttle.
    pub(crate) throttle: Arc<users::LoginThrottle>,
}

impl Services {
    /// Builds the services over opened stores.
    pub fn new(
        db: AnyPool,
        keys: KeyStore,
        accounts: AccountStore,
        jwt: Option<JwtKeys>,
        publisher: Publisher,
        settings: ServiceSettings,
    ) -> Self {
        Self {
            users: UserStore::new(db.clone()),
            groups: GroupStore::new(db.clone()),
            db,
            keys,
            accounts,
            jwt,
            publisher,
            settings: Arc::new(settings),
            throttle: Arc::new(users::LoginThrottle::new(users::FAILURE_WINDOW)),
        }
    }

    /// Records one administrative action: the single place audit events are made.
    pub fn audit(
        &self,
        actor: &Actor,
        verb: AdminVerb,
        target: impl Into<String>,
        summary: impl Into<String>,
    ) {
        self.audit_event(
            AdminAction::new(actor.audit_name(), verb, target, summary),
            None,
        );
    }

    /// Records something the relay itself observed (aggregated failures): actor `relay`.
    pub fn audit_relay(
        &self,
        verb: AdminVerb,
        target: impl Into<String>,
        summary: impl Into<String>,
    ) {
        self.audit_event(AdminAction::new("relay", verb, target, summary), None);
    }

    /// Records an action about an account (the event carries the account id).
    pub fn audit_account(
        &self,
        actor: &Actor,
        verb: AdminVerb,
        account: &AccountId,
        summary: impl Into<String>,
    ) {
        self.audit_event(
            AdminAction::new(
                actor.audit_name(),
                verb,
                format!("account:{account}"),
                summary,
            ),
            Some(account.clone()),
        );
    }

    fn audit_event(&self, action: AdminAction, account: Option<AccountId>) {
        let envelope = Envelope::new(Uuid::now_v7(), Utc::now(), Event::AdminAction(action))
            .with_account(account);
        self.publisher.publish(envelope);
    }

    /// Publishes any event (health resets).
    pub fn publish(&self, envelope: Envelope) {
        self.publisher.publish(envelope);
    }
}

/// Checks a display name: trimmed, 1..=`max` characters, no control characters.
pub fn check_name(what: &str, value: &str, max: usize) -> Result<String, ServiceError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ServiceError::BadRequest(format!(
            "{what} must not be empty"
        )));
    }
    if v.chars().count() > max {
        return Err(ServiceError::BadRequest(format!(
            "{what} must be at most {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ServiceError::BadRequest(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}
