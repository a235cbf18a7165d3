//! Upstream accounts (admin): add with the seed's fields, list with live status, edit,
//! enable, disable, remove, reset health. Secrets are never returned, and URLs are
//! shown without their credentials.

use super::users::check_display_name;
use super::{Actor, Page, PageReq, ServiceError, Services};
use crate::accounts::{Account, AccountKind, AccountPatch, NewAccount};
use crate::crypto::Secret;
use chrono::{DateTime, Utc};
use schema::{
    AccountHealthChanged, AdminVerb, Envelope, Event, HealthEvidence, HealthReason, HealthState,
};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The seed's platform types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlatformType {
    /// A Claude subscription (OAuth access token or long-lived setup token, sent as
    /// Bearer).
    Claude,
    /// An Anthropic Console API key (`sk-ant-api…`, sent as `x-api-key`), or any
    /// Messages-API-compatible endpoint with a key.
    ClaudeConsole,
}

impl PlatformType {
    fn of(kind: AccountKind) -> Self {
        match kind {
            AccountKind::OAuth => PlatformType::Claude,
            AccountKind::ApiKey => PlatformType::ClaudeConsole,
        }
    }
}

/// An account as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `claude` (OAuth) or `claude_console` (API key).
    pub platform_type: PlatformType,
    /// `oauth` or `api_key`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Upstream base URL, credentials removed.
    pub request_url: String,
    /// Group id, when in a group.
    pub group_id: Option<i64>,
    /// Group name.
    pub group: Option<String>,
    /// Priority (lower first).
    pub priority: i32,
    /// Weight within a priority.
    pub weight: u32,
    /// Most concurrent requests (0 = unlimited).
    pub concurrency: u32,
    /// Proxy URL, credentials removed.
    pub proxy: Option<String>,
    /// Whether scheduled.
    pub enabled: bool,
    /// OAuth: when the access token lapses.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// When added.
    pub created_at: DateTime<Utc>,
    /// Live status from the account-status projection.
    pub status: AccountStatusView,
}

/// Health and utilisation of an account, from the projection.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct AccountStatusView {
    /// `healthy`, `rate_limited`, …
    pub state: String,
    /// Cause of the last change.
    pub reason: String,
    /// End of the cooldown.
    pub until: Option<DateTime<Utc>>,
    /// The last unified rate-limit headers (e.g. `5h-utilization`).
    pub utilization: BTreeMap<String, String>,
    /// Requests routed here.
    pub requests: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Last upstream error message.
    pub last_error: Option<String>,
}

/// Replaces a URL's user-info (`user:pass@`) with `***@`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Input of [`Services::create_account`] (the seed's fields plus ours).
#[derive(Debug, Clone, Default)]
pub struct CreateAccount {
    /// Unique name.
    pub name: String,
    /// Platform type; decides how the secret is sent.
    pub platform_type: Option<PlatformType>,
    /// Base URL (default `https://api.anthropic.com`).
    pub request_url: Option<String>,
    /// API key or OAuth token.
    pub secret_key: String,
    /// Group id.
    pub group_id: Option<i64>,
    /// Group by name (CLI).
    pub group: Option<String>,
    /// Priority (default 50).
    pub priority: Option<i64>,
    /// Weight (default 1).
    pub weight: Option<i64>,
    /// Proxy URL.
    pub proxy: Option<String>,
    /// Concurrency cap (default 0 = unlimited).
    pub concurrency: Option<i64>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
    /// OAuth: refresh token.
    pub refresh_token: Option<Secret>,
    /// OAuth: access-token expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A change to an account; `None` leaves a field.
#[derive(Debug, Clone, Default)]
pub struct UpdateAccount {
    /// New name.
    pub name: Option<String>,
    /// New platform type (needs a matching secret).
    pub platform_type: Option<PlatformType>,
    /// New base URL.
    pub request_url: Option<String>,
    /// New secret.
    pub secret_key: Option<String>,
    /// New group id (`Some(None)` or `Some(Some(0))` clears).
    pub group_id: Option<Option<i64>>,
    /// New priority.
    pub priority: Option<i64>,
    /// New weight.
    pub weight: Option<i64>,
    /// New proxy (`Some(None)` clears).
    pub proxy: Option<Option<String>>,
    /// New concurrency cap.
    pub concurrency: Option<i64>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

fn kind_for(platform: Option<PlatformType>, secret: &str) -> Result<AccountKind, ServiceError> {
    let s = secret.trim();
    let by_prefix = if s.starts_with("sk-ant-oat") {
        Some(AccountKind::OAuth)
    } else if s.starts_with("sk-ant-api") {
        Some(AccountKind::ApiKey)
    } else {
        None
    };
    match (platform, by_prefix) {
        (Some(PlatformType::Claude), Some(AccountKind::ApiKey)) => Err(ServiceError::BadRequest(
            "platform_type claude takes an OAuth or setup token (sk-ant-oat…); an API key \
             (sk-ant-api…) belongs to platform_type claude_console"
                .into(),
        )),
        (Some(PlatformType::ClaudeConsole), Some(AccountKind::OAuth)) => {
            Err(ServiceError::BadRequest(
                "platform_type claude_console takes an API key; an OAuth token (sk-ant-oat…) \
             belongs to platform_type claude"
                    .into(),
            ))
        }
        (Some(p), _) => Ok(match p {
            PlatformType::Claude => AccountKind::OAuth,
            PlatformType::ClaudeConsole => AccountKind::ApiKey,
        }),
        (None, Some(k)) => Ok(k),
        (None, None) => Ok(AccountKind::ApiKey),
    }
}

fn bounded(what: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ServiceError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ServiceError::BadRequest(format!(
            "{what} must be between {lo} and {hi}"
        )))
    }
}

fn check_secret(s: &str) -> Result<Secret, ServiceError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ServiceError::BadRequest(
            "secret_key must not be empty".into(),
        ));
    }
    if s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::BadRequest(
            "secret_key must be at most 4096 printable ASCII characters".into(),
        ));
    }
    Ok(Secret::new(s))
}

fn check_url(what: &str, s: &str) -> Result<String, ServiceError> {
    let s = s.trim();
    if s.len() > 2048 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ServiceError::BadRequest(format!(
            "{what} must be a URL of at most 2048 characters without spaces"
        )));
    }
    Ok(s.to_owned())
}

fn describe(a: &Account) -> String {
    format!(
        "{} ({}) kind={} url={} priority={} weight={} group={} concurrency={} proxy={} enabled={}",
        a.id,
        a.name,
        a.kind.as_str(),
        redact_url(&a.base_url),
        a.priority,
        a.weight,
        a.group.as_deref().unwrap_or("-"),
        a.concurrency,
        a.proxy_url
            .as_deref()
            .map(redact_url)
            .unwrap_or_else(|| "-".into()),
        a.enabled
    )
}

impl Services {
    async fn view(
        &self,
        a: Account,
        status: Option<&projections::read::AccountStatus>,
    ) -> Result<AccountView, ServiceError> {
        let group_id = match &a.group {
            Some(g) => self.groups.by_name(g).await?.map(|g| g.id),
            None => None,
        };
        Ok(AccountView {
            id: a.id.to_string(),
            platform_type: PlatformType::of(a.kind),
            kind: a.kind.as_str(),
            request_url: redact_url(&a.base_url),
            group_id,
            group: a.group,
            priority: a.priority,
            weight: a.weight,
            concurrency: a.concurrency,
            proxy: a.proxy_url.as_deref().map(redact_url),
            enabled: a.enabled,
            token_expires_at: a.expires_at,
            created_at: a.created_at,
            name: a.name,
            status: status
                .map(|s| AccountStatusView {
                    state: s.state.clone(),
                    reason: s.reason.clone(),
                    until: s.until,
                    utilization: s.unified.clone(),
                    requests: s.requests,
                    errors: s.errors,
                    last_error: s.last_error.as_ref().and_then(|e| e.message.clone()),
                })
                .unwrap_or_else(|| AccountStatusView {
                    state: "healthy".into(),
                    ..AccountStatusView::default()
                }),
        })
    }

    /// Accounts (admin), filtered by platform type, group and health state.
    pub async fn list_accounts(
        &self,
        actor: &Actor,
        platform: Option<PlatformType>,
        group_id: Option<i64>,
        state: Option<&str>,
        page: PageReq,
    ) -> Result<Page<AccountView>, ServiceError> {
        actor.require_admin()?;
        let statuses = projections::read::account_status(&self.db).await?;
        let group = match group_id {
            Some(id) => Some(
                self.groups
                    .get(id)
                    .await?
                    .map(|g| g.name)
                    .unwrap_or_default(),
            ),
            None => None,
        };
        let mut all = Vec::new();
        for a in self.accounts.list().await? {
            if platform.is_some_and(|p| PlatformType::of(a.kind) != p) {
                continue;
            }
            if group.as_ref().is_some_and(|g| a.group.as_ref() != Some(g)) {
                continue;
            }
            let status = statuses.iter().find(|s| s.account == a.id.as_str());
            let v = self.view(a, status).await?;
            let wanted = |s: &str| {
                if s == "disabled" {
                    !v.enabled
                } else {
                    v.status.state == s
                }
            };
            if state.is_some_and(|s| !wanted(s)) {
                continue;
            }
            all.push(v);
        }
        let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
        let items = all
            .into_iter()
            .skip(usize::try_from(page.offset()).unwrap_or(usize::MAX))
            .take(page.limit as usize)
            .collect();
        Ok(Page::new(items, total, page))
    }

    async fn account(&self, actor: &Actor, id: &str) -> Result<Account, ServiceError> {
        actor.require_admin()?;
        if id.len() > 80 {
            return Err(ServiceError::NotFound("account"));
        }
        self.accounts
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("account"))
    }

    /// One account with its status (admin).
    pub async fn get_account(&self, actor: &Actor, id: &str) -> Result<AccountView, ServiceError> {
        let a = self.account(actor, id).await?;
        let statuses = projections::read::account_status(&self.db).await?;
        let status = statuses.iter().find(|s| s.account == a.id.as_str());
        self.view(a, status).await
    }

    /// Adds an account (admin).
    pub async fn create_account(
        &self,
        actor: &Actor,
        input: CreateAccount,
    ) -> Result<AccountView, ServiceError> {
        actor.require_admin()?;
        let name = check_display_name("name", &input.name)?;
        let credential = check_secret(&input.secret_key)?;
        let kind = kind_for(input.platform_type, credential.expose())?;
        let base_url = check_url(
            "request_url",
            input
                .request_url
                .as_deref()
                .unwrap_or("https://api.anthropic.com"),
        )?;
        self.settings
            .egress
            .check_url("request_url", &base_url)
            .map_err(ServiceError::BadRequest)?;
        let proxy = input
            .proxy
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(|p| check_url("proxy", p))
            .transpose()?;
        let group = match (input.group_id, input.group.as_deref()) {
            (Some(id), _) => self.group_name_of(Some(id)).await?,
            (None, Some(name)) if !name.trim().is_empty() => {
                Some(self.ensure_group(actor, name).await?.name)
            }
            _ => None,
        };
        if self.accounts.name_taken(&name, None).await? {
            return Err(ServiceError::Conflict(format!("account {name:?} exists")));
        }
        let new = NewAccount {
            name,
            kind,
            base_url,
            credential,
            priority: i32::try_from(bounded(
                "priority",
                input.priority.unwrap_or(50),
                0,
                1_000_000,
            )?)
            .unwrap_or(50),
            weight: u32::try_from(bounded("weight", input.weight.unwrap_or(1), 1, 1_000_000)?)
                .unwrap_or(1),
            group,
            concurrency: u32::try_from(bounded(
                "concurrency",
                input.concurrency.unwrap_or(0),
                0,
                1_000_000,
            )?)
            .unwrap_or(0),
            proxy_url: proxy,
        };
        let id = self
            .accounts
            .add_with_tokens(new, input.refresh_token, input.expires_at)
            .await?;
        if input.enabled == Some(false) {
            self.accounts
                .update(
                    id.as_str(),
                    &AccountPatch {
                        enabled: Some(false),
                        ..AccountPatch::default()
                    },
                )
                .await?;
        }
        let a = self.account(actor, id.as_str()).await?;
        self.audit_account(
            actor,
            AdminVerb::AccountAdd,
            &id,
            format!("added {}", describe(&a)),
        );
        self.view(a, None).await
    }

    /// Changes an account (admin).
    pub async fn update_account(
        &self,
        actor: &Actor,
        id: &str,
        u: UpdateAccount,
    ) -> Result<AccountView, ServiceError> {
        let before = self.account(actor, id).await?;
        let name = u
            .name
            .as_deref()
            .map(|n| check_display_name("name", n))
            .transpose()?;
        if let Some(n) = &name {
            if self.accounts.name_taken(n, Some(id)).await? {
                return Err(ServiceError::Conflict(format!("account {n:?} exists")));
            }
        }
        let credential = u.secret_key.as_deref().map(check_secret).transpose()?;
        let kind = match (&credential, u.platform_type) {
            (Some(c), p) => Some(kind_for(
                p.or(Some(PlatformType::of(before.kind))),
                c.expose(),
            )?),
            (None, Some(p)) => Some(kind_for(Some(p), before.credential.expose())?),
            (None, None) => None,
        };
        let group = match u.group_id {
            None => None,
            Some(g) => Some(self.group_name_of(g).await?),
        };
        let patch = AccountPatch {
            name,
            kind,
            base_url: u
                .request_url
                .as_deref()
                .map(|s| {
                    let url = check_url("request_url", s)?;
                    self.settings
                        .egress
                        .check_url("request_url", &url)
                        .map_err(ServiceError::BadRequest)?;
                    Ok::<_, ServiceError>(url)
                })
                .transpose()?,
            credential,
            priority: u
                .priority
                .map(|p| bounded("priority", p, 0, 1_000_000))
                .transpose()?
                .and_then(|p| i32::try_from(p).ok()),
            weight: u
                .weight
                .map(|w| bounded("weight", w, 1, 1_000_000))
                .transpose()?
                .and_then(|w| u32::try_from(w).ok()),
            group,
            concurrency: u
                .concurrency
                .map(|c| bounded("concurrency", c, 0, 1_000_000))
                .transpose()?
                .and_then(|c| u32::try_from(c).ok()),
            proxy_url: match u.proxy {
                None => None,
                Some(None) => Some(None),
                Some(Some(p)) if p.trim().is_empty() => Some(None),
                Some(Some(p)) => Some(Some(check_url("proxy", &p)?)),
            },
            enabled: u.enabled,
        };
        let secret_changed = patch.credential.is_some();
        let after = self
            .accounts
            .update(id, &patch)
            .await?
            .ok_or(ServiceError::NotFound("account"))?;
        let verb = match (before.enabled, after.enabled) {
            (true, false) => AdminVerb::AccountDisable,
            (false, true) => AdminVerb::AccountEnable,
            _ => AdminVerb::AccountUpdate,
        };
        self.audit_account(
            actor,
            verb,
            &after.id,
            format!(
                "before: {}; after: {}{}",
                describe(&before),
                describe(&after),
                if secret_changed {
                    "; credential replaced"
                } else {
                    ""
                }
            ),
        );
        self.view(after, None).await
    }

    /// Enables or disables an account (admin).
    pub async fn set_account_enabled(
        &self,
        actor: &Actor,
        id: &str,
        enabled: bool,
    ) -> Result<AccountView, ServiceError> {
        self.update_account(
            actor,
            id,
            UpdateAccount {
                enabled: Some(enabled),
                ..UpdateAccount::default()
            },
        )
        .await
    }

    /// Removes an account (admin). Its usage history stays in the ledger.
    pub async fn delete_account(&self, actor: &Actor, id: &str) -> Result<(), ServiceError> {
        let a = self.account(actor, id).await?;
        self.accounts.delete(id).await?;
        self.audit_account(
            actor,
            AdminVerb::AccountRemove,
            &a.id,
            format!("removed {}", describe(&a)),
        );
        Ok(())
    }

    /// Clears an account's health state on every relay (admin): one
    /// `account.health_changed` to healthy, which every relay folds, and its audit
    /// event.
    pub async fn reset_account(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<AccountView, ServiceError> {
        let a = self.account(actor, id).await?;
        let statuses = projections::read::account_status(&self.db).await?;
        let from = statuses
            .iter()
            .find(|s| s.account == a.id.as_str())
            .and_then(|s| {
                serde_json::from_value::<HealthState>(serde_json::Value::String(s.state.clone()))
                    .ok()
            })
            .unwrap_or(HealthState::Healthy);
        let now = Utc::now();
        self.publish(
            Envelope::new(
                Uuid::now_v7(),
                now,
                Event::AccountHealthChanged(AccountHealthChanged {
                    account: a.id.clone(),
                    from,
                    to: HealthState::Healthy,
                    reason: HealthReason::ManualReset,
                    until: None,
                    evidence: HealthEvidence::default(),
                }),
            )
            .with_account(Some(a.id.clone())),
        );
        self.audit_account(
            actor,
            AdminVerb::AccountReset,
            &a.id,
            format!("reset health of {} ({})", a.id, a.name),
        );
        let status = statuses.iter().find(|s| s.account == a.id.as_str());
        let mut v = self.view(a, status).await?;
        v.status.state = "healthy".into();
        v.status.reason = "manual_reset".into();
        v.status.until = None;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_when_shown() {
        assert_eq!(redact_url("http://u:p@proxy:8080"), "http://***@proxy:8080");
        assert_eq!(
            redact_url("socks5://user@h:1/x?a=b@c"),
            "socks5://***@h:1/x?a=b@c"
        );
        assert_eq!(
            redact_url("https://api.anthropic.com"),
            "https://api.anthropic.com"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn the_platform_type_and_the_secret_agree() {
        use PlatformType::*;
        assert_eq!(
            kind_for(Some(Claude), "sk-ant-oat01-x").unwrap(),
            AccountKind::OAuth
        );
        assert_eq!(
            kind_for(Some(ClaudeConsole), "sk-ant-api03-x").unwrap(),
            AccountKind::ApiKey
        );
        assert_eq!(
            kind_for(Some(ClaudeConsole), "any-key").unwrap(),
            AccountKind::ApiKey
        );
        assert_eq!(
            kind_for(None, "sk-ant-oat01-x").unwrap(),
            AccountKind::OAuth
        );
        assert!(kind_for(Some(Claude), "sk-ant-api03-x").is_err());
        assert!(kind_for(Some(ClaudeConsole), "sk-ant-oat01-x").is_err());
    }
}
