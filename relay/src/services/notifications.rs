//! Notification targets and the delivery log.
//!
//! An administrator manages every target: operator targets (no tenant; every kind of
//! alert) and targets of a tenant. A user manages only their tenant's targets, which
//! receive only alerts about that tenant (budget thresholds); another tenant's targets
//! and operator targets read as "not found".

use super::{check_name, Actor, Page, PageReq, ServiceError, Services};
use crate::crypto::Secret;
use crate::notify::payload::{Alert, TargetKind};
use crate::notify::route::check_events;
use crate::notify::store::{NewTarget, NotifyStoreError, TargetPatch};
use crate::notify::{worker, Delivery, NotifyStore, Target};
use chrono::Utc;
use projections::Dialect as _;
use schema::AdminVerb;
use sqlx::Row;
use std::time::Duration;

impl From<NotifyStoreError> for ServiceError {
    fn from(e: NotifyStoreError) -> Self {
        ServiceError::internal(e)
    }
}

/// Telegram's API base when a target names none.
pub const TELEGRAM_API: &str = "https://api.telegram.org";

/// Rate limit of a target that names none, per minute.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 30;

/// Input of [`Services::create_target`].
#[derive(Debug, Clone)]
pub struct CreateTarget {
    /// Kind.
    pub kind: TargetKind,
    /// Display name (default: the kind).
    pub name: Option<String>,
    /// URL (Telegram: the API base, default `https://api.telegram.org`).
    pub url: Option<String>,
    /// Telegram chat id.
    pub address: Option<String>,
    /// Signing secret or bot token.
    pub secret: Option<String>,
    /// Event filters.
    pub events: Vec<String>,
    /// The tenant (administrators only; a user's targets are their tenant's).
    pub tenant: Option<String>,
    /// Most deliveries per minute (0 = unlimited; default 30).
    pub rate_limit_per_minute: Option<u32>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
}

/// Input of [`Services::update_target`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateTarget {
    /// New name.
    pub name: Option<String>,
    /// New URL.
    pub url: Option<String>,
    /// New chat id.
    pub address: Option<String>,
    /// New secret; `Some(None)` removes it.
    pub secret: Option<Option<String>>,
    /// New filters.
    pub events: Option<Vec<String>>,
    /// New rate limit.
    pub rate_limit_per_minute: Option<u32>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

fn check_url(s: &Services, kind: TargetKind, url: Option<&str>) -> Result<String, ServiceError> {
    let url = match (kind, url.map(str::trim)) {
        (_, Some(u)) if !u.is_empty() => u.to_owned(),
        (TargetKind::Telegram, _) => TELEGRAM_API.to_owned(),
        _ => {
            return Err(ServiceError::BadRequest(format!(
                "a {} target needs a url",
                kind.as_str()
            )))
        }
    };
    if url.len() > 2048 {
        return Err(ServiceError::BadRequest(
            "url must be at most 2048 characters".into(),
        ));
    }
    if kind == TargetKind::Email {
        return check_smtp_url(s, url);
    }
    s.settings
        .egress
        .check_url("url", &url)
        .map_err(ServiceError::BadRequest)?;
    Ok(url)
}

/// An SMTP server URL: `smtps://` or `smtp://` (`?tls=required` for STARTTLS), a host
/// the egress policy allows, a valid sender.
fn check_smtp_url(s: &Services, url: String) -> Result<String, ServiceError> {
    let bad = |m: &str| ServiceError::BadRequest(m.to_owned());
    let parsed = url::Url::parse(&url).map_err(|_| bad("url is not a URL"))?;
    if !matches!(parsed.scheme(), "smtp" | "smtps") {
        return Err(bad(
            "an email target's url is smtps://user@host[:port] or smtp://user@host:587?tls=required",
        ));
    }
    let host = parsed.host_str().ok_or_else(|| bad("url has no host"))?;
    s.settings
        .egress
        .check_url("url", &format!("http://{host}/"))
        .map_err(ServiceError::BadRequest)?;
    if parsed.password().is_some() {
        return Err(bad("put the SMTP password in secret, not in the url"));
    }
    worker::email_sender(&parsed)
        .parse::<lettre::Address>()
        .map_err(|e| ServiceError::BadRequest(format!("the sender (from) is invalid: {e}")))?;
    Ok(url)
}

fn check_address(kind: TargetKind, address: Option<&str>) -> Result<String, ServiceError> {
    let a = address.map(str::trim).unwrap_or_default();
    match kind {
        TargetKind::Email => {
            let to: Vec<&str> = a
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect();
            if to.is_empty() || to.len() > 10 {
                return Err(ServiceError::BadRequest(
                    "an email target needs 1 to 10 recipients in address, comma-separated".into(),
                ));
            }
            for x in &to {
                x.parse::<lettre::Address>().map_err(|e| {
                    ServiceError::BadRequest(format!("recipient {x:?} is invalid: {e}"))
                })?;
            }
            Ok(to.join(","))
        }
        TargetKind::Telegram if a.is_empty() => Err(ServiceError::BadRequest(
            "a telegram target needs its chat id as the address".into(),
        )),
        TargetKind::Telegram if a.len() > 64 || a.chars().any(char::is_whitespace) => Err(
            ServiceError::BadRequest("address must be a Telegram chat id".into()),
        ),
        TargetKind::Telegram => Ok(a.to_owned()),
        _ if !a.is_empty() => Err(ServiceError::BadRequest(format!(
            "a {} target takes no address",
            kind.as_str()
        ))),
        _ => Ok(String::new()),
    }
}

fn check_secret(kind: TargetKind, secret: Option<&str>) -> Result<Option<Secret>, ServiceError> {
    let s = secret.filter(|s| !s.is_empty());
    match (kind, s) {
        (TargetKind::Webhook, None) => Err(ServiceError::BadRequest(
            "a webhook target needs a secret to sign its deliveries".into(),
        )),
        (TargetKind::Telegram, None) => Err(ServiceError::BadRequest(
            "a telegram target needs its bot token as the secret".into(),
        )),
        (TargetKind::Slack, Some(_)) => Err(ServiceError::BadRequest(
            "a slack target takes no secret (the webhook URL is the credential)".into(),
        )),
        (_, Some(s)) if s.len() > 512 || s.chars().any(char::is_control) => {
            Err(ServiceError::BadRequest(
                "secret must be at most 512 characters, no control characters".into(),
            ))
        }
        (_, s) => Ok(s.map(Secret::new)),
    }
}

fn check_rate(r: Option<u32>) -> Result<u32, ServiceError> {
    let r = r.unwrap_or(DEFAULT_RATE_PER_MINUTE);
    if r > 10_000 {
        return Err(ServiceError::BadRequest(
            "rate_limit_per_minute must be between 0 (unlimited) and 10000".into(),
        ));
    }
    Ok(r)
}

fn describe(t: &Target) -> String {
    format!(
        "{} target {} ({}) for {}: events {}, url {}",
        t.kind.as_str(),
        t.id,
        t.name,
        t.tenant
            .as_deref()
            .map(|x| format!("tenant {x}"))
            .unwrap_or_else(|| "the operator".into()),
        t.events.join(","),
        t.url
    )
}

impl Services {
    fn notify_store(&self) -> NotifyStore {
        NotifyStore::new(self.db.clone(), self.accounts.cipher().clone())
    }

    /// A target the actor may see, or 404.
    async fn visible_target(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<(Target, crate::notify::payload::Destination), ServiceError> {
        let found = self.notify_store().get(id).await?;
        match found {
            Some((t, d))
                if actor
                    .tenant_scope()
                    .is_none_or(|mine| t.tenant.as_deref() == Some(mine.as_str())) =>
            {
                Ok((t, d))
            }
            _ => Err(ServiceError::NotFound("notification target")),
        }
    }

    /// Targets, one page: all for an administrator, the own tenant's for a user.
    pub async fn list_targets(
        &self,
        actor: &Actor,
        page: PageReq,
    ) -> Result<Page<Target>, ServiceError> {
        let scope = actor.tenant_scope().map(|t| t.as_str());
        let (items, total) = self
            .notify_store()
            .list(scope, page.offset(), page.limit())
            .await?;
        Ok(Page::new(items, total, page))
    }

    /// One target.
    pub async fn get_target(&self, actor: &Actor, id: &str) -> Result<Target, ServiceError> {
        Ok(self.visible_target(actor, id).await?.0)
    }

    /// Creates a target; its URL and secret are sealed and never shown again.
    pub async fn create_target(
        &self,
        actor: &Actor,
        c: CreateTarget,
    ) -> Result<Target, ServiceError> {
        let tenant = match (actor.tenant_scope(), c.tenant.as_deref().map(str::trim)) {
            (Some(mine), None) => Some(mine.as_str().to_owned()),
            (Some(mine), Some(t)) if t == mine.as_str() => Some(t.to_owned()),
            (Some(_), Some(_)) => return Err(ServiceError::NotFound("tenant")),
            (None, None) => None,
            (None, Some("")) => None,
            (None, Some(t)) => {
                let exists = sqlx::query(
                    &self
                        .db
                        .sql("SELECT COUNT(*) AS n FROM tenants WHERE id = $1"),
                )
                .bind(t)
                .fetch_one(&self.db)
                .await?
                .try_get::<i64, _>("n")?;
                if exists == 0 {
                    return Err(ServiceError::BadRequest(format!("no tenant {t:?}")));
                }
                Some(t.to_owned())
            }
        };
        let new = NewTarget {
            name: check_name("name", c.name.as_deref().unwrap_or(c.kind.as_str()), 64)?,
            url: check_url(self, c.kind, c.url.as_deref())?,
            address: check_address(c.kind, c.address.as_deref())?,
            secret: check_secret(c.kind, c.secret.as_deref())?,
            events: check_events(&c.events, tenant.is_some()).map_err(ServiceError::BadRequest)?,
            rate_limit_per_minute: check_rate(c.rate_limit_per_minute)?,
            enabled: c.enabled.unwrap_or(true),
            kind: c.kind,
            tenant,
        };
        let t = self.notify_store().create(new).await?;
        self.audit(
            actor,
            AdminVerb::NotificationTargetCreate,
            format!("notification_target:{}", t.id),
            format!("created {}", describe(&t)),
        );
        Ok(t)
    }

    /// Changes a target.
    pub async fn update_target(
        &self,
        actor: &Actor,
        id: &str,
        u: UpdateTarget,
    ) -> Result<Target, ServiceError> {
        let (before, _) = self.visible_target(actor, id).await?;
        let kind = before.kind;
        let secret = match &u.secret {
            None => None,
            Some(s) => Some(check_secret(kind, s.as_deref())?),
        };
        let patch = TargetPatch {
            name: u
                .name
                .as_deref()
                .map(|n| check_name("name", n, 64))
                .transpose()?,
            url: u
                .url
                .as_deref()
                .map(|x| check_url(self, kind, Some(x)))
                .transpose()?,
            address: u
                .address
                .as_deref()
                .map(|a| check_address(kind, Some(a)))
                .transpose()?,
            secret,
            events: u
                .events
                .as_deref()
                .map(|e| check_events(e, before.tenant.is_some()))
                .transpose()
                .map_err(ServiceError::BadRequest)?,
            rate_limit_per_minute: u
                .rate_limit_per_minute
                .map(|r| check_rate(Some(r)))
                .transpose()?,
            enabled: u.enabled,
        };
        let mut changed = Vec::new();
        for (what, yes) in [
            ("name", patch.name.is_some()),
            ("url", patch.url.is_some()),
            ("address", patch.address.is_some()),
            ("secret", patch.secret.is_some()),
            ("events", patch.events.is_some()),
            ("rate limit", patch.rate_limit_per_minute.is_some()),
            ("enabled", patch.enabled.is_some()),
        ] {
            if yes {
                changed.push(what);
            }
        }
        let after = self
            .notify_store()
            .update(id, patch)
            .await?
            .ok_or(ServiceError::NotFound("notification target"))?;
        self.audit(
            actor,
            AdminVerb::NotificationTargetUpdate,
            format!("notification_target:{id}"),
            format!("changed {} of {}", changed.join(", "), describe(&after)),
        );
        Ok(after)
    }

    /// Deletes a target; its pending deliveries are cancelled, its log is kept.
    pub async fn delete_target(&self, actor: &Actor, id: &str) -> Result<(), ServiceError> {
        let (t, _) = self.visible_target(actor, id).await?;
        self.notify_store().delete(id).await?;
        self.audit(
            actor,
            AdminVerb::NotificationTargetDelete,
            format!("notification_target:{id}"),
            format!("deleted {}", describe(&t)),
        );
        Ok(())
    }

    /// Sends a test message to a target now and records it in the delivery log.
    pub async fn test_target(&self, actor: &Actor, id: &str) -> Result<Delivery, ServiceError> {
        let (t, dest) = self.visible_target(actor, id).await?;
        let now = Utc::now();
        let alert = Alert {
            id: format!("test-{}", uuid::Uuid::now_v7()),
            kind: "test".into(),
            severity: "info".into(),
            occurred_at: now,
            tenant: t.tenant.clone(),
            api_key: None,
            account: None,
            title: "Test notification from the relay".into(),
            message: format!("Target {} ({}) is set up.", t.name, t.id),
            details: serde_json::json!({}),
        };
        let http = worker::http_client(self.settings.egress.clone(), Duration::from_secs(10))
            .map_err(ServiceError::internal)?;
        let result = worker::send(&http, &dest, &alert, now).await;
        let delivery = self
            .notify_store()
            .record_test(&t, &alert.id, now, &result)
            .await?;
        self.audit(
            actor,
            AdminVerb::NotificationTargetTest,
            format!("notification_target:{id}"),
            format!(
                "sent a test message to {}: {}",
                describe(&t),
                delivery.status
            ),
        );
        Ok(delivery)
    }

    /// The delivery log, newest first: every delivery for an administrator, the own
    /// tenant's targets' for a user; optionally one target's. `admin_view` (the
    /// operator's log) requires the administrator role.
    pub async fn list_deliveries(
        &self,
        actor: &Actor,
        admin_view: bool,
        target: Option<&str>,
        page: PageReq,
    ) -> Result<Page<Delivery>, ServiceError> {
        if admin_view {
            actor.require_admin()?;
        }
        let scope = actor.tenant_scope().map(|t| t.as_str());
        let (items, total) = self
            .notify_store()
            .deliveries(scope, target, page.offset(), page.limit())
            .await?;
        Ok(Page::new(items, total, page))
    }
}
