//! Users: login, registration, password changes, administration of users and tenants,
//! and the first admin.

use super::{check_name, Actor, Page, PageReq, ServiceError, Services};
use crate::identity::password;
use crate::identity::{NewUser, Role, Tenant, User, UserPatch};
use chrono::{DateTime, Utc};
use schema::{AdminVerb, TenantId};
use std::time::{Duration, Instant};

/// Failed logins tolerated per user name in a window.
pub const MAX_FAILURES_PER_USER: u32 = 5;
/// Failed logins tolerated per client address in a window.
pub const MAX_FAILURES_PER_ADDR: u32 = 20;
/// The throttle window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Failed logins per scope (`user:<name>`, `addr:<ip>`), in memory.
pub type LoginThrottle = crate::throttle::FailureWindows;

/// A successful login.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LoginResult {
    /// The bearer token.
    pub token: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Who logged in.
    pub user: User,
}

/// Input of [`Services::create_user`].
#[derive(Debug, Clone, Default)]
pub struct CreateUser {
    /// Login name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Password in clear (hashed here).
    pub password: String,
    /// Role (default `user`).
    pub role: Option<Role>,
    /// Tenant; default a new tenant named after the user.
    pub tenant: Option<String>,
}

/// A change to a user (admin); `None` leaves a field.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    /// New e-mail.
    pub email: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Move to another tenant.
    pub tenant: Option<String>,
    /// New password in clear (hashed here).
    pub password: Option<String>,
}

/// Checks a user name: 3..=64 of `[A-Za-z0-9_.-]`.
pub fn check_username(s: &str) -> Result<String, ServiceError> {
    let s = s.trim();
    let ok = (3..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ServiceError::BadRequest(
            "username must be 3 to 64 characters of letters, digits, '_', '-' and '.'".into(),
        ))
    }
}

/// Checks an e-mail address, loosely: one `@` with text on both sides, at most 254.
pub fn check_email(s: &str) -> Result<String, ServiceError> {
    let s = s.trim();
    let mut parts = s.split('@');
    let ok = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!((parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None) if !a.is_empty() && b.contains('.') && !b.starts_with('.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ServiceError::BadRequest(
            "email is not a valid address".into(),
        ))
    }
}

fn check_tenant(s: &str) -> Result<TenantId, ServiceError> {
    TenantId::parse(s.trim()).map_err(|e| ServiceError::BadRequest(format!("tenant: {e}")))
}

async fn hash_password(p: String) -> Result<String, ServiceError> {
    tokio::task::spawn_blocking(move || password::hash(&p))
        .await
        .map_err(ServiceError::internal)?
        .map_err(|e| ServiceError::BadRequest(e.to_string()))
}

async fn verify_password(p: String, hash: String) -> Result<bool, ServiceError> {
    tokio::task::spawn_blocking(move || password::verify(&p, &hash))
        .await
        .map_err(ServiceError::internal)
}

/// A hash to verify against when the user does not exist, so that unknown and known
/// user names take the same time.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| password::hash("not-a-real-password-0").unwrap_or_default())
}

impl Services {
    /// Logs in; throttled per user name and per client address.
    pub async fn login(
        &self,
        username: &str,
        pass: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<LoginResult, ServiceError> {
        let now = Instant::now();
        let user_scope = format!("user:{}", username.trim().to_lowercase());
        let addr_scope = client.map(|a| format!("addr:{a}"));
        if let Some(wait) = self
            .throttle
            .blocked(&user_scope, MAX_FAILURES_PER_USER, now)
            .or_else(|| {
                addr_scope
                    .as_deref()
                    .and_then(|s| self.throttle.blocked(s, MAX_FAILURES_PER_ADDR, now))
            })
        {
            return Err(ServiceError::Throttled(
                format!("too many failed logins; try again in {wait} s"),
                wait,
            ));
        }
        let found = if username.len() <= 64 {
            self.users.by_username(username.trim()).await?
        } else {
            None
        };
        let hash = found
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let ok = verify_password(pass.to_owned(), hash).await?;
        match found {
            Some((user, _)) if ok && user.enabled => {
                self.throttle.clear(&user_scope);
                let jwt = self
                    .jwt
                    .as_ref()
                    .ok_or_else(|| ServiceError::internal("no JWT keys in this process"))?;
                let (token, expires_at) = jwt.issue(&user.id, user.token_epoch, Utc::now());
                Ok(LoginResult {
                    token,
                    expires_at,
                    user,
                })
            }
            _ => {
                let n = self.throttle.fail(&user_scope, now);
                if let Some(s) = &addr_scope {
                    self.throttle.fail(s, now);
                }
                // Aggregated: one event at the 1st, 10th, 100th… failure of a window.
                if crate::throttle::is_milestone(n) {
                    self.audit_relay(
                        AdminVerb::LoginFailures,
                        user_scope.chars().take(80).collect::<String>(),
                        format!(
                            "{n} failed login(s) in the current {}-minute window{}",
                            FAILURE_WINDOW.as_secs() / 60,
                            client
                                .map(|a| format!(", latest from {a}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                Err(ServiceError::Unauthenticated(
                    "invalid username or password".into(),
                ))
            }
        }
    }

    /// Counts a refused admin API token and records the failures aggregated per client
    /// address and window: one `auth.admin_failures` event at the 1st, 10th, 100th …
    /// failure, never one per request.
    pub fn record_admin_auth_failure(&self, client: Option<std::net::IpAddr>, why: &str) {
        let scope = format!(
            "admin-token:{}",
            client
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
        let n = self.throttle.fail(&scope, Instant::now());
        if crate::throttle::is_milestone(n) {
            self.audit_relay(
                AdminVerb::AdminAuthFailures,
                scope,
                format!(
                    "{n} refused admin API request(s) in the current {}-minute window (latest: {why})",
                    FAILURE_WINDOW.as_secs() / 60
                ),
            );
        }
    }

    /// The user behind a bearer token, if the token is valid and the user is enabled
    /// and has not changed password, role or state since the token was issued.
    pub async fn authenticate_token(&self, token: &str) -> Result<User, ServiceError> {
        let unauth = || ServiceError::Unauthenticated("invalid or expired token".into());
        let jwt = self.jwt.as_ref().ok_or_else(unauth)?;
        let claims = jwt.verify(token).ok_or_else(unauth)?;
        let user = self.users.get(&claims.sub).await?.ok_or_else(unauth)?;
        if !user.enabled || user.token_epoch != claims.epoch {
            return Err(unauth());
        }
        Ok(user)
    }

    /// Open registration (when enabled): a `user` with a tenant of their own.
    pub async fn register(&self, input: CreateUser) -> Result<User, ServiceError> {
        if !self.settings.registration_enabled {
            return Err(ServiceError::Forbidden("registration is disabled".into()));
        }
        let input = CreateUser {
            role: Some(Role::User),
            tenant: None,
            ..input
        };
        let user = self.insert_user(input).await?;
        self.audit(
            &Actor::User(Box::new(user.clone())),
            AdminVerb::UserCreate,
            format!("user:{}", user.id),
            format!("registered {} in tenant {}", user.username, user.tenant),
        );
        Ok(user)
    }

    /// Creates a user (admin).
    pub async fn create_user(
        &self,
        actor: &Actor,
        input: CreateUser,
    ) -> Result<User, ServiceError> {
        actor.require_admin()?;
        let user = self.insert_user(input).await?;
        self.audit(
            actor,
            AdminVerb::UserCreate,
            format!("user:{}", user.id),
            format!(
                "created {} user {} in tenant {}",
                user.role.as_str(),
                user.username,
                user.tenant
            ),
        );
        Ok(user)
    }

    async fn insert_user(&self, input: CreateUser) -> Result<User, ServiceError> {
        let username = check_username(&input.username)?;
        let email = check_email(&input.email)?;
        if self.users.taken("username", &username, None).await? {
            return Err(ServiceError::Conflict(format!(
                "username {username} is taken"
            )));
        }
        if self.users.taken("email", &email, None).await? {
            return Err(ServiceError::Conflict("email is already registered".into()));
        }
        let tenant = match input.tenant.as_deref() {
            Some(t) => check_tenant(t)?,
            None => self.own_tenant_for(&username).await?,
        };
        let password_hash = hash_password(input.password).await?;
        self.users
            .create(NewUser {
                username,
                email,
                password_hash,
                role: input.role.unwrap_or(Role::User),
                tenant,
            })
            .await
            .map_err(|e| match e {
                crate::identity::users::UserStoreError::Sql(sqlx::Error::Database(d))
                    if d.is_unique_violation() =>
                {
                    ServiceError::Conflict("username or email is taken".into())
                }
                other => ServiceError::internal(other),
            })
    }

    /// A fresh tenant id named after the user (`alice`, else `alice-2`, …).
    async fn own_tenant_for(&self, username: &str) -> Result<TenantId, ServiceError> {
        let base: String = username
            .chars()
            .map(|c| if c == '.' { '-' } else { c })
            .take(56)
            .collect();
        for n in 1..1000 {
            let candidate = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let id = check_tenant(&candidate)?;
            if !self.users.tenant_exists(&id).await? {
                return Ok(id);
            }
        }
        Err(ServiceError::Conflict(
            "no free tenant id for this user name".into(),
        ))
    }

    /// Users (admin), optionally of one tenant.
    pub async fn list_users(
        &self,
        actor: &Actor,
        tenant: Option<&str>,
        page: PageReq,
    ) -> Result<Page<User>, ServiceError> {
        actor.require_admin()?;
        let tenant = tenant.map(check_tenant).transpose()?;
        let (items, total) = self
            .users
            .list(tenant.as_ref(), page.offset(), page.limit())
            .await?;
        Ok(Page::new(items, total, page))
    }

    /// Changes role, state, tenant, e-mail or password of a user (admin). An admin
    /// cannot demote or disable the last enabled admin.
    pub async fn update_user(
        &self,
        actor: &Actor,
        id: &str,
        change: UserChange,
    ) -> Result<User, ServiceError> {
        actor.require_admin()?;
        let UserChange {
            email,
            role,
            enabled,
            tenant,
            password: new_password,
        } = change;
        let (email, tenant) = (email.as_deref(), tenant.as_deref());
        let before = self
            .users
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        let email = email.map(check_email).transpose()?;
        if let Some(e) = &email {
            if self.users.taken("email", e, Some(id)).await? {
                return Err(ServiceError::Conflict("email is already registered".into()));
            }
        }
        let tenant = tenant.map(check_tenant).transpose()?;
        let demotes = before.role == Role::Admin
            && before.enabled
            && (role == Some(Role::User) || enabled == Some(false));
        if demotes && self.users.enabled_admins().await? <= 1 {
            return Err(ServiceError::Conflict(
                "cannot demote or disable the last enabled admin".into(),
            ));
        }
        let password_hash = match new_password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let changed_password = password_hash.is_some();
        let patch = UserPatch {
            email,
            role,
            enabled,
            tenant,
            password_hash,
        };
        let after = self
            .users
            .update(id, &patch)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        self.keys.clear_cache();
        let mut changes = Vec::new();
        if before.role != after.role {
            changes.push(format!(
                "role {} → {}",
                before.role.as_str(),
                after.role.as_str()
            ));
        }
        if before.enabled != after.enabled {
            changes.push(format!("enabled {} → {}", before.enabled, after.enabled));
        }
        if before.tenant != after.tenant {
            changes.push(format!("tenant {} → {}", before.tenant, after.tenant));
        }
        if before.email != after.email {
            changes.push("email changed".into());
        }
        if !changes.is_empty() {
            self.audit(
                actor,
                AdminVerb::UserUpdate,
                format!("user:{id}"),
                format!("{}: {}", after.username, changes.join(", ")),
            );
        }
        if changed_password {
            self.audit(
                actor,
                AdminVerb::UserPassword,
                format!("user:{id}"),
                format!("password of {} reset", after.username),
            );
        }
        Ok(after)
    }

    /// Finds a user by name (CLI convenience).
    pub async fn user_by_name(&self, actor: &Actor, username: &str) -> Result<User, ServiceError> {
        actor.require_admin()?;
        self.users
            .by_username(username)
            .await?
            .map(|(u, _)| u)
            .ok_or(ServiceError::NotFound("user"))
    }

    /// Deletes a user (admin) and revokes their keys.
    pub async fn delete_user(&self, actor: &Actor, id: &str) -> Result<(), ServiceError> {
        actor.require_admin()?;
        let user = self
            .users
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        if user.role == Role::Admin && user.enabled && self.users.enabled_admins().await? <= 1 {
            return Err(ServiceError::Conflict(
                "cannot delete the last enabled admin".into(),
            ));
        }
        let revoked = self.keys.revoke_all_of(id, Utc::now()).await?;
        self.users.delete(id).await?;
        self.keys.clear_cache();
        self.audit(
            actor,
            AdminVerb::UserDelete,
            format!("user:{id}"),
            format!(
                "deleted {}; revoked {} key(s)",
                user.username,
                revoked.len()
            ),
        );
        Ok(())
    }

    /// Changes one's own password after checking the current one.
    pub async fn change_own_password(
        &self,
        user: &User,
        current: &str,
        new: String,
    ) -> Result<(), ServiceError> {
        let (_, hash) = self
            .users
            .by_username(&user.username)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        if !verify_password(current.to_owned(), hash).await? {
            return Err(ServiceError::BadRequest("current password is wrong".into()));
        }
        let hash = hash_password(new).await?;
        self.users
            .update(
                &user.id,
                &UserPatch {
                    password_hash: Some(hash),
                    ..UserPatch::default()
                },
            )
            .await?;
        self.audit(
            &Actor::User(Box::new(user.clone())),
            AdminVerb::UserPassword,
            format!("user:{}", user.id),
            format!("{} changed their password", user.username),
        );
        Ok(())
    }

    /// Tenants (admin).
    pub async fn list_tenants(
        &self,
        actor: &Actor,
        page: PageReq,
    ) -> Result<Page<Tenant>, ServiceError> {
        actor.require_admin()?;
        let (items, total) = self.users.tenants(page.offset(), page.limit()).await?;
        Ok(Page::new(items, total, page))
    }

    /// Sets a tenant's monthly budget and zone (admin); `Some(None)` clears.
    pub async fn update_tenant(
        &self,
        actor: &Actor,
        id: &str,
        budget: Option<Option<rust_decimal::Decimal>>,
        timezone: Option<Option<String>>,
    ) -> Result<Tenant, ServiceError> {
        actor.require_admin()?;
        let before = self
            .users
            .tenant(id)
            .await?
            .ok_or(ServiceError::NotFound("tenant"))?;
        if let Some(Some(b)) = budget {
            crate::limits::check_budget("monthly_budget_usd", b)
                .map_err(ServiceError::BadRequest)?;
        }
        if let Some(Some(z)) = &timezone {
            if z.len() > 64 || z.parse::<chrono_tz::Tz>().is_err() {
                return Err(ServiceError::BadRequest(
                    "timezone must be an IANA zone name such as Europe/Berlin".into(),
                ));
            }
        }
        self.users.set_tenant_limits(id, budget, timezone).await?;
        self.keys.clear_cache();
        let after = self
            .users
            .tenant(id)
            .await?
            .ok_or(ServiceError::NotFound("tenant"))?;
        let show = |t: &Tenant| {
            format!(
                "monthly_budget_usd={} timezone={}",
                t.monthly_budget_usd
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                t.timezone.as_deref().unwrap_or("-")
            )
        };
        self.audit(
            actor,
            AdminVerb::TenantUpdate,
            format!("tenant:{id}"),
            format!("before: {}; after: {}", show(&before), show(&after)),
        );
        Ok(after)
    }

    /// On first start: creates the admin when there is no user. Returns the generated
    /// password when none was configured (the caller shows it once).
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        email: &str,
        configured_password: Option<&str>,
    ) -> Result<Option<(User, Option<String>)>, ServiceError> {
        if self.users.count().await? > 0 {
            return Ok(None);
        }
        let generated = configured_password.is_none().then(password::generate);
        let pass = configured_password
            .map(str::to_owned)
            .or_else(|| generated.clone())
            .unwrap_or_default();
        let user = self
            .create_user(
                &Actor::Cli,
                CreateUser {
                    username: username.to_owned(),
                    email: email.to_owned(),
                    password: pass,
                    role: Some(Role::Admin),
                    tenant: None,
                },
            )
            .await?;
        Ok(Some((user, generated)))
    }
}

/// Checks a display name for keys, groups and accounts.
pub fn check_display_name(what: &str, s: &str) -> Result<String, ServiceError> {
    check_name(what, s, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails_are_checked_at_the_edge() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("al").is_err());
        assert!(check_username("a b c").is_err());
        assert!(check_username(&"a".repeat(65)).is_err());
        assert!(check_email("a@example.com").is_ok());
        assert!(check_email("a@b").is_err());
        assert!(check_email("a@@b.c").is_err());
        assert!(check_email("no-at.example.com").is_err());
    }

    #[test]
    fn the_throttle_blocks_after_the_limit_within_a_window() {
        let t = LoginThrottle::new(FAILURE_WINDOW);
        let now = Instant::now();
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(t.blocked("user:a", MAX_FAILURES_PER_USER, now).is_none());
            t.fail("user:a", now);
        }
        assert!(t.blocked("user:a", MAX_FAILURES_PER_USER, now).is_some());
        assert!(t.blocked("user:b", MAX_FAILURES_PER_USER, now).is_none());
        let later = now + FAILURE_WINDOW;
        assert!(t.blocked("user:a", MAX_FAILURES_PER_USER, later).is_none());
    }
}
