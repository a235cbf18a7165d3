//! Users and tenants in the database.

use chrono::{DateTime, Utc};
use projections::Dialect as _;
use schema::TenantId;
use serde::Serialize;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Their own keys, usage and statements.
    User,
}

impl Role {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// A user as stored (the password hash stays in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// `usr_…`.
    pub id: String,
    /// Unique login name.
    pub username: String,
    /// Unique e-mail address.
    pub email: String,
    /// Role.
    pub role: Role,
    /// Disabled users cannot log in, their tokens and keys stop working.
    pub enabled: bool,
    /// The tenant billed for this user's keys.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Bumped to invalidate every token issued before.
    #[serde(skip)]
    pub token_epoch: i64,
}

/// A tenant: an organisation billed as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    /// Tenant id as it appears on events and statements.
    #[schema(value_type = String)]
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// A monthly budget every key of the tenant draws on, USD (decimal string).
    #[schema(value_type = Option<String>)]
    pub monthly_budget_usd: Option<rust_decimal::Decimal>,
    /// The tenant's own zone for its budget window (default `BILLING_TIMEZONE`).
    pub timezone: Option<String>,
}

/// Input for [`UserStore::create`]; fields already validated.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// argon2id PHC hash.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Tenant (created if missing).
    pub tenant: TenantId,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New e-mail.
    pub email: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Move to another tenant.
    pub tenant: Option<TenantId>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// Errors of the user store.
#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    /// SQL failure.
    #[error("user store: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored row is invalid.
    #[error("user store holds an invalid value: {0}")]
    Corrupt(String),
}

/// Users and tenants.
#[derive(Clone)]
pub struct UserStore {
    /// The database.
    db: AnyPool,
}

const COLUMNS: &str =
    "id, username, email, role, enabled, tenant, created_at_ms, token_epoch, password_hash";

const TENANT_SELECT: &str =
    "SELECT id, name, created_at_ms, monthly_budget_usd, timezone FROM tenants";

fn row_to_tenant(r: &sqlx::any::AnyRow) -> Result<Tenant, UserStoreError> {
    let id: String = r.try_get("id")?;
    let budget: Option<String> = r.try_get("monthly_budget_usd")?;
    Ok(Tenant {
        id: TenantId::parse(id).map_err(|e| UserStoreError::Corrupt(e.to_string()))?,
        name: r.try_get("name")?,
        created_at: time(r.try_get("created_at_ms")?),
        monthly_budget_usd: budget
            .map(|b| {
                b.parse()
                    .map_err(|_| UserStoreError::Corrupt("tenant budget".into()))
            })
            .transpose()?,
        timezone: r.try_get("timezone")?,
    })
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn row_to_user(row: &sqlx::any::AnyRow) -> Result<(User, String), UserStoreError> {
    let role: String = row.try_get("role")?;
    let tenant: String = row.try_get("tenant")?;
    let enabled: i64 = row.try_get("enabled")?;
    let created: i64 = row.try_get("created_at_ms")?;
    Ok((
        User {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            role: Role::parse(&role).ok_or_else(|| UserStoreError::Corrupt("role".into()))?,
            enabled: enabled != 0,
            tenant: TenantId::parse(tenant).map_err(|e| UserStoreError::Corrupt(e.to_string()))?,
            created_at: time(created),
            token_epoch: row.try_get("token_epoch")?,
        },
        row.try_get("password_hash")?,
    ))
}

impl UserStore {
    /// A store over the given database.
    pub fn new(db: AnyPool) -> Self {
        Self { db }
    }

    /// Creates the tenant if it does not exist yet.
    pub async fn ensure_tenant(&self, id: &TenantId, name: &str) -> Result<(), UserStoreError> {
        sqlx::query(&self.db.sql(
            "INSERT INTO tenants (id, name, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        ))
        .bind(id.as_str())
        .bind(name)
        .bind(Utc::now().timestamp_millis())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Whether a tenant exists.
    pub async fn tenant_exists(&self, id: &TenantId) -> Result<bool, UserStoreError> {
        Ok(
            sqlx::query(&self.db.sql("SELECT id FROM tenants WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.db)
                .await?
                .is_some(),
        )
    }

    /// Tenants, by id, one page.
    pub async fn tenants(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Tenant>, i64), UserStoreError> {
        let total: i64 = sqlx::query(&self.db.sql("SELECT COUNT(*) AS n FROM tenants"))
            .fetch_one(&self.db)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(
            &self
                .db
                .sql(&format!("{TENANT_SELECT} ORDER BY id LIMIT $1 OFFSET $2")),
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let out = rows.iter().map(row_to_tenant).collect::<Result<_, _>>()?;
        Ok((out, total))
    }

    /// One tenant.
    pub async fn tenant(&self, id: &str) -> Result<Option<Tenant>, UserStoreError> {
        sqlx::query(&self.db.sql(&format!("{TENANT_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(row_to_tenant)
            .transpose()
    }

    /// Sets or clears a tenant's budget and zone (`Some(None)` clears).
    pub async fn set_tenant_limits(
        &self,
        id: &str,
        budget: Option<Option<rust_decimal::Decimal>>,
        timezone: Option<Option<String>>,
    ) -> Result<bool, UserStoreError> {
        let done = sqlx::query(&self.db.sql(
            "UPDATE tenants SET \
             monthly_budget_usd = CASE WHEN $1 = 1 THEN $2 ELSE monthly_budget_usd END, \
             timezone = CASE WHEN $3 = 1 THEN $4 ELSE timezone END WHERE id = $5",
        ))
        .bind(i64::from(budget.is_some()))
        .bind(budget.flatten().map(|b| b.normalize().to_string()))
        .bind(i64::from(timezone.is_some()))
        .bind(timezone.flatten())
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Inserts a user. Unique violations surface as `Sql` (the caller checks first).
    pub async fn create(&self, new: NewUser) -> Result<User, UserStoreError> {
        self.ensure_tenant(&new.tenant, new.tenant.as_str()).await?;
        let id = format!("usr_{}", Uuid::now_v7().simple());
        let now = Utc::now();
        sqlx::query(&self.db.sql(
            "INSERT INTO users (id, username, email, password_hash, role, enabled, tenant, \
             created_at_ms, token_epoch) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, 0)",
        ))
        .bind(&id)
        .bind(&new.username)
        .bind(&new.email)
        .bind(&new.password_hash)
        .bind(new.role.as_str())
        .bind(new.tenant.as_str())
        .bind(now.timestamp_millis())
        .execute(&self.db)
        .await?;
        Ok(User {
            id,
            username: new.username,
            email: new.email,
            role: new.role,
            enabled: true,
            tenant: new.tenant,
            created_at: time(now.timestamp_millis()),
            token_epoch: 0,
        })
    }

    /// A user by id.
    pub async fn get(&self, id: &str) -> Result<Option<User>, UserStoreError> {
        Ok(self.get_with_hash("id", id).await?.map(|(u, _)| u))
    }

    /// A user and their password hash by user name.
    pub async fn by_username(&self, name: &str) -> Result<Option<(User, String)>, UserStoreError> {
        self.get_with_hash("username", name).await
    }

    /// Whether a user name or e-mail is taken (by a user other than `except`).
    pub async fn taken(
        &self,
        column: &str,
        value: &str,
        except: Option<&str>,
    ) -> Result<bool, UserStoreError> {
        let col = if column == "email" {
            "email"
        } else {
            "username"
        };
        let row = sqlx::query(
            &self
                .db
                .sql(&format!("SELECT id FROM users WHERE {col} = $1")),
        )
        .bind(value)
        .fetch_optional(&self.db)
        .await?;
        Ok(match row {
            None => false,
            Some(r) => {
                let id: String = r.try_get("id")?;
                Some(id.as_str()) != except
            }
        })
    }

    async fn get_with_hash(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<(User, String)>, UserStoreError> {
        let col = if column == "id" { "id" } else { "username" };
        let row = sqlx::query(
            &self
                .db
                .sql(&format!("SELECT {COLUMNS} FROM users WHERE {col} = $1")),
        )
        .bind(value)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(row_to_user).transpose()
    }

    /// Users, oldest first, one page, optionally of one tenant.
    pub async fn list(
        &self,
        tenant: Option<&TenantId>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<User>, i64), UserStoreError> {
        let (cond, t) = match tenant {
            Some(t) => ("WHERE tenant = $1", t.as_str().to_owned()),
            None => ("WHERE $1 = ''", String::new()),
        };
        let total: i64 = sqlx::query(
            &self
                .db
                .sql(&format!("SELECT COUNT(*) AS n FROM users {cond}")),
        )
        .bind(&t)
        .fetch_one(&self.db)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(&self.db.sql(&format!(
            "SELECT {COLUMNS} FROM users {cond} ORDER BY created_at_ms, id LIMIT $2 OFFSET $3"
        )))
        .bind(&t)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let users = rows
            .iter()
            .map(|r| row_to_user(r).map(|(u, _)| u))
            .collect::<Result<_, _>>()?;
        Ok((users, total))
    }

    /// Number of enabled admins.
    pub async fn enabled_admins(&self) -> Result<i64, UserStoreError> {
        Ok(sqlx::query(
            &self
                .db
                .sql("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND enabled = 1"),
        )
        .fetch_one(&self.db)
        .await?
        .try_get("n")?)
    }

    /// Number of users.
    pub async fn count(&self) -> Result<i64, UserStoreError> {
        Ok(sqlx::query(&self.db.sql("SELECT COUNT(*) AS n FROM users"))
            .fetch_one(&self.db)
            .await?
            .try_get("n")?)
    }

    /// Applies a patch. Role, enabled and password changes bump the token epoch so
    /// tokens issued before stop working. Returns the updated user.
    pub async fn update(&self, id: &str, p: &UserPatch) -> Result<Option<User>, UserStoreError> {
        if let Some(t) = &p.tenant {
            self.ensure_tenant(t, t.as_str()).await?;
        }
        let bump =
            i64::from(p.role.is_some() || p.enabled == Some(false) || p.password_hash.is_some());
        let done = sqlx::query(&self.db.sql(
            "UPDATE users SET email = COALESCE($1, email), role = COALESCE($2, role), \
             enabled = COALESCE($3, enabled), tenant = COALESCE($4, tenant), \
             password_hash = COALESCE($5, password_hash), token_epoch = token_epoch + $6 \
             WHERE id = $7",
        ))
        .bind(p.email.clone())
        .bind(p.role.map(|r| r.as_str()))
        .bind(p.enabled.map(i64::from))
        .bind(p.tenant.as_ref().map(|t| t.as_str().to_owned()))
        .bind(p.password_hash.clone())
        .bind(bump)
        .bind(id)
        .execute(&self.db)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.get(id).await
    }

    /// Deletes a user; their keys are revoked by the caller.
    pub async fn delete(&self, id: &str) -> Result<bool, UserStoreError> {
        let done = sqlx::query(&self.db.sql("DELETE FROM users WHERE id = $1"))
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
