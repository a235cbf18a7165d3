//! Tenant API keys: issue, list, read, change, revoke. A `user` manages their own
//! keys; an admin manages every key.

use super::users::check_display_name;
use super::{Actor, Page, PageReq, ServiceError, Services};
use crate::crypto::Secret;
use crate::keys::{ApiKey, KeyFilter, KeyPatch, NewKey};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use schema::{AdminVerb, TenantId};

/// Input of [`Services::create_key`].
#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    /// Display name.
    pub name: String,
    /// Owner (admin only; default the actor).
    pub user_id: Option<String>,
    /// Tenant for a key without an owner (CLI only).
    pub tenant: Option<String>,
    /// Group scope by name.
    pub group: Option<String>,
    /// Expiry as typed (RFC 3339, `YYYY-MM-DD HH:MM:SS` in the billing zone, or a
    /// duration such as `30d`).
    pub expires_at: Option<String>,
}

/// Parses an expiry at the edge: RFC 3339, the seed's `"2025-12-31 23:59:59"` (in
/// `tz`), or a duration from `now` (`30s`, `15m`, `2h`, `7d`). Past times are refused.
pub fn parse_expiry(
    s: &str,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ServiceError> {
    let s = s.trim();
    let bad = || {
        ServiceError::BadRequest(format!(
            "expires_at {:?} is not RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or a duration like 30d",
            s.chars().take(40).collect::<String>()
        ))
    };
    let t = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else if let Ok(naive) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        tz.from_local_datetime(&naive)
            .earliest()
            .ok_or_else(bad)?
            .with_timezone(&Utc)
    } else {
        now + parse_duration(s).ok_or_else(bad)?
    };
    if t <= now {
        return Err(ServiceError::BadRequest("expires_at is in the past".into()));
    }
    Ok(t)
}

/// Parses `15m`, `2h`, `7d`, `30s`.
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    if s.len() < 2 || s.len() > 12 {
        return None;
    }
    let (num, unit) = s.split_at(s.len() - 1);
    let n: i64 = num.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
}

fn summary(k: &ApiKey) -> String {
    format!(
        "{} ({}) tenant={} group={} enabled={} expires={}",
        k.id,
        k.name,
        k.tenant,
        k.group.as_deref().unwrap_or("-"),
        k.enabled,
        k.expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    )
}

impl Services {
    async fn check_group(&self, group: Option<&str>) -> Result<Option<String>, ServiceError> {
        match group.map(str::trim).filter(|g| !g.is_empty()) {
            None => Ok(None),
            Some(g) => match self.groups.by_name(g).await? {
                Some(found) => Ok(Some(found.name)),
                None => Err(ServiceError::BadRequest(format!(
                    "group {g:?} does not exist"
                ))),
            },
        }
    }

    /// Resolves a group id to its name.
    pub(crate) async fn group_name_of(
        &self,
        id: Option<i64>,
    ) -> Result<Option<String>, ServiceError> {
        match id {
            None | Some(0) => Ok(None),
            Some(id) => match self.groups.get(id).await? {
                Some(g) => Ok(Some(g.name)),
                None => Err(ServiceError::BadRequest(format!(
                    "group {id} does not exist"
                ))),
            },
        }
    }

    /// Issues a key; the secret is returned this once.
    pub async fn create_key(
        &self,
        actor: &Actor,
        input: CreateKey,
    ) -> Result<(ApiKey, Secret), ServiceError> {
        let name = check_display_name("name", &input.name)?;
        let (user_id, tenant) = match (actor, input.user_id, input.tenant) {
            (Actor::User(u), None, None) => (Some(u.id.clone()), u.tenant.clone()),
            (Actor::User(u), Some(other), None) if other == u.id => (Some(other), u.tenant.clone()),
            (a, Some(other), None) if a.is_admin() => {
                let owner = self.users.get(&other).await?.ok_or_else(|| {
                    ServiceError::BadRequest(format!("user {other:?} does not exist"))
                })?;
                (Some(owner.id), owner.tenant)
            }
            (Actor::Cli, None, tenant) => {
                let t = TenantId::parse(tenant.as_deref().unwrap_or("default").trim())
                    .map_err(|e| ServiceError::BadRequest(format!("tenant: {e}")))?;
                self.users.ensure_tenant(&t, t.as_str()).await?;
                (None, t)
            }
            (Actor::User(_), _, _) => {
                return Err(ServiceError::Forbidden(
                    "only an admin may issue keys for another user".into(),
                ))
            }
            (Actor::Cli, _, _) => {
                return Err(ServiceError::BadRequest(
                    "give either a user or a tenant, not both".into(),
                ))
            }
        };
        let group = self.check_group(input.group.as_deref()).await?;
        let expires_at = input
            .expires_at
            .as_deref()
            .map(|s| parse_expiry(s, self.settings.billing_tz, Utc::now()))
            .transpose()?;
        let (key, secret) = self
            .keys
            .create(NewKey {
                name,
                tenant,
                group,
                expires_at,
                user_id,
            })
            .await?;
        self.audit(
            actor,
            AdminVerb::KeyCreate,
            format!("key:{}", key.id),
            format!("created {}", summary(&key)),
        );
        Ok((key, secret))
    }

    /// A key the actor may see; others read as not found.
    pub async fn get_key(&self, actor: &Actor, id: &str) -> Result<ApiKey, ServiceError> {
        let key = if id.len() <= 80 {
            self.keys.get(id).await?
        } else {
            None
        };
        match (key, actor) {
            (Some(k), a) if a.is_admin() => Ok(k),
            (Some(k), Actor::User(u)) if k.user_id.as_deref() == Some(u.id.as_str()) => Ok(k),
            _ => Err(ServiceError::NotFound("API key")),
        }
    }

    /// Keys the actor may see. Admins may filter by user and tenant.
    pub async fn list_keys(
        &self,
        actor: &Actor,
        user_id: Option<String>,
        tenant: Option<String>,
        include_revoked: bool,
        page: PageReq,
    ) -> Result<Page<ApiKey>, ServiceError> {
        let filter = match actor {
            a if a.is_admin() => KeyFilter {
                user_id,
                tenant,
                include_revoked,
            },
            Actor::User(u) => KeyFilter {
                user_id: Some(u.id.clone()),
                tenant: None,
                include_revoked,
            },
            Actor::Cli => KeyFilter::default(),
        };
        let (items, total) = self.keys.list(&filter, page.offset(), page.limit()).await?;
        Ok(Page::new(items, total, page))
    }

    /// Changes a key's name, group, expiry or state.
    pub async fn update_key(
        &self,
        actor: &Actor,
        id: &str,
        name: Option<&str>,
        group: Option<Option<&str>>,
        expires_at: Option<Option<&str>>,
        enabled: Option<bool>,
    ) -> Result<ApiKey, ServiceError> {
        let before = self.get_key(actor, id).await?;
        if before.revoked_at.is_some() {
            return Err(ServiceError::Conflict("the key is revoked".into()));
        }
        let group = match group {
            None => None,
            Some(g) => Some(self.check_group(g).await?),
        };
        let expires_at = match expires_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(s)) => Some(Some(parse_expiry(s, self.settings.billing_tz, Utc::now())?)),
        };
        let patch = KeyPatch {
            name: name.map(|n| check_display_name("name", n)).transpose()?,
            group,
            expires_at,
            enabled,
            limits: None,
        };
        let after = self
            .keys
            .update(id, &patch)
            .await?
            .ok_or(ServiceError::NotFound("API key"))?;
        let verb = match (before.enabled, after.enabled) {
            (true, false) => AdminVerb::KeyDisable,
            (false, true) => AdminVerb::KeyEnable,
            _ => AdminVerb::KeyUpdate,
        };
        self.audit(
            actor,
            verb,
            format!("key:{id}"),
            format!("before: {}; after: {}", summary(&before), summary(&after)),
        );
        Ok(after)
    }

    /// Sets a key's limits (admin). The whole document is validated, stored, audited
    /// with its before and after, and in force on every relay within the key cache's
    /// lifetime.
    pub async fn set_key_limits(
        &self,
        actor: &Actor,
        id: &str,
        change: &crate::limits::LimitsPatch,
    ) -> Result<ApiKey, ServiceError> {
        let before = self.get_key(actor, id).await?;
        if !actor.is_admin() {
            return Err(ServiceError::Forbidden(
                "only an admin may change a key's limits".into(),
            ));
        }
        if before.revoked_at.is_some() {
            return Err(ServiceError::Conflict("the key is revoked".into()));
        }
        let limits = change.apply(before.limits.clone());
        limits.validate().map_err(ServiceError::BadRequest)?;
        let patch = KeyPatch {
            limits: Some(limits.clone()),
            ..KeyPatch::default()
        };
        let after = self
            .keys
            .update(id, &patch)
            .await?
            .ok_or(ServiceError::NotFound("API key"))?;
        self.audit(
            actor,
            AdminVerb::KeyUpdate,
            format!("key:{id}"),
            format!(
                "limits of {id}: before {}; after {}",
                serde_json::to_string(&before.limits).unwrap_or_default(),
                serde_json::to_string(&after.limits).unwrap_or_default()
            ),
        );
        Ok(after)
    }

    /// Revokes a key for good.
    pub async fn revoke_key(&self, actor: &Actor, id: &str) -> Result<ApiKey, ServiceError> {
        let key = self.get_key(actor, id).await?;
        if !self.keys.revoke(id, Utc::now()).await? {
            return Err(ServiceError::Conflict("the key is already revoked".into()));
        }
        self.audit(
            actor,
            AdminVerb::KeyRevoke,
            format!("key:{id}"),
            format!("revoked {}", summary(&key)),
        );
        self.get_key(actor, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_parse_in_every_accepted_form() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            parse_expiry("2026-12-31 23:59:59", tz, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 31, 15, 59, 59).unwrap()
        );
        assert_eq!(
            parse_expiry("2026-06-01T00:00:00Z", chrono_tz::UTC, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_expiry("7d", chrono_tz::UTC, now).unwrap(),
            now + chrono::Duration::days(7)
        );
        for bad in [
            "2025-12-31 23:59:59",
            "soon",
            "-5d",
            "0d",
            "2026-13-01 00:00:00",
            "",
        ] {
            assert!(parse_expiry(bad, chrono_tz::UTC, now).is_err(), "{bad}");
        }
    }
}
