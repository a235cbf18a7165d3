//! Relay-issued tenant API keys: creation, listing and the authentication lookup on
//! the hot path.
//!
//! Only the SHA-256 of a key is stored. Authentication hashes the presented key and
//! looks the hash up in a small in-memory cache. Entries live [`CACHE_TTL`] (0.8 s), so
//! a key revoked or disabled through any relay, or whose owner is disabled, is refused
//! by every relay sharing the database within a second, without a query per request.

use crate::crypto::{
    generate_key, key_last4 as last4, key_prefix, legacy_hash_key, KeyHasher, Secret,
};
use chrono::{DateTime, TimeZone, Utc};
use projections::Dialect as _;
use schema::{ApiKeyId, TenantId};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A key as the relay knows it (never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Public id, used in events and listings.
    pub id: ApiKeyId,
    /// Display name.
    pub name: String,
    /// Tenant billed for the key.
    pub tenant: TenantId,
    /// Account group the key is scoped to; `None` = accounts without a group.
    pub group: Option<String>,
    /// First characters of the key, for recognition.
    pub prefix: String,
    /// Disabled keys are refused.
    pub enabled: bool,
    /// Expired keys are refused.
    pub expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The user who owns the key (keys made by the CLI for a bare tenant have none).
    pub user_id: Option<String>,
    /// When the key was revoked; revoked keys are refused for good.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last four characters of the key, for recognition (keys issued before this was
    /// kept have none).
    pub last4: Option<String>,
    /// Models, rate, concurrency, budgets and addresses this key is held to.
    pub limits: crate::limits::KeyLimits,
    /// The tenant's own monthly budget, when it has one (filled by the
    /// authentication lookup only).
    pub tenant_budget: Option<crate::limits::engine::TenantBudget>,
}

impl ApiKey {
    /// How the key is shown: `prefix…last4`.
    pub fn display(&self) -> String {
        format!("{}…{}", self.prefix, self.last4.as_deref().unwrap_or(""))
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("missing API key: send it in the x-api-key header or as Authorization: Bearer")]
    Missing,
    /// The key is not known.
    #[error("invalid x-api-key")]
    Unknown,
    /// The key is disabled, or its owner is.
    #[error("API key is disabled")]
    Disabled,
    /// The key was revoked.
    #[error("API key has been revoked")]
    Revoked,
    /// The key has expired.
    #[error("API key has expired")]
    Expired,
    /// The key store could not be read.
    #[error("API key store unavailable")]
    Store,
}

impl AuthError {
    /// The matching audit reason, for store-independent failures.
    pub fn audit_reason(self) -> Option<schema::AuthFailureReason> {
        use schema::AuthFailureReason as R;
        match self {
            AuthError::Missing => Some(R::Missing),
            AuthError::Unknown => Some(R::Unknown),
            AuthError::Disabled | AuthError::Revoked => Some(R::Disabled),
            AuthError::Expired => Some(R::Expired),
            AuthError::Store => None,
        }
    }
}

/// Errors managing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// SQL failure.
    #[error("key store: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored value is invalid.
    #[error("key store holds an invalid value: {0}")]
    Invalid(String),
}

/// Input for [`KeyStore::create`].
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Display name.
    pub name: String,
    /// Tenant.
    pub tenant: TenantId,
    /// Group scope.
    pub group: Option<String>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Owner.
    pub user_id: Option<String>,
}

/// A partial update of a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New group scope (`Some(None)` clears it).
    pub group: Option<Option<String>>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New limits (the whole document).
    pub limits: Option<crate::limits::KeyLimits>,
}

/// Which keys [`KeyStore::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Only this owner.
    pub user_id: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Include revoked keys.
    pub include_revoked: bool,
}

/// How long a cached lookup is trusted: the bound on how late a revocation made on
/// another relay takes effect here (plus one lookup), kept under a second.
pub const CACHE_TTL: Duration = Duration::from_millis(800);

/// Cached lookups: key hash → (the key, or `None` for "unknown", and when fetched).
type LookupCache = HashMap<String, (Option<Arc<ApiKey>>, Instant)>;

/// Tenant keys in the database, with a short-lived lookup cache.
#[derive(Clone)]
pub struct KeyStore {
    /// The database.
    db: AnyPool,
    /// Keyed hashing of presented keys.
    hasher: KeyHasher,
    /// key hash → (key or "unknown", when fetched).
    cache: Arc<RwLock<LookupCache>>,
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn row_to_key(row: &sqlx::any::AnyRow) -> Result<ApiKey, KeyStoreError> {
    let id: String = row.try_get("id")?;
    let tenant: String = row.try_get("tenant")?;
    let enabled: i64 = row.try_get("enabled")?;
    let expires: Option<i64> = row.try_get("expires_at_ms")?;
    let created: i64 = row.try_get("created_at_ms")?;
    let revoked: Option<i64> = row.try_get("revoked_at_ms")?;
    Ok(ApiKey {
        id: ApiKeyId::parse(id).map_err(|e| KeyStoreError::Invalid(e.to_string()))?,
        name: row.try_get("name")?,
        tenant: TenantId::parse(tenant).map_err(|e| KeyStoreError::Invalid(e.to_string()))?,
        group: row.try_get("group_name")?,
        prefix: row.try_get("key_prefix")?,
        enabled: enabled != 0,
        expires_at: expires.and_then(ms_to_time),
        created_at: ms_to_time(created).unwrap_or_default(),
        user_id: row.try_get("user_id")?,
        revoked_at: revoked.and_then(ms_to_time),
        last4: row.try_get("key_last4")?,
        limits: match projections::long_text(row, "limits_json")? {
            Some(j) if !j.is_empty() => serde_json::from_str(&j)
                .map_err(|e| KeyStoreError::Invalid(format!("limits: {e}")))?,
            _ => crate::limits::KeyLimits::default(),
        },
        tenant_budget: None,
    })
}

/// The tenant budget columns of the authentication lookup.
fn tenant_budget(
    row: &sqlx::any::AnyRow,
    tenant: &TenantId,
) -> Result<Option<crate::limits::engine::TenantBudget>, KeyStoreError> {
    let budget: Option<String> = row.try_get("tenant_budget")?;
    let tz: Option<String> = row.try_get("tenant_tz")?;
    let Some(b) = budget.filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(crate::limits::engine::TenantBudget {
        tenant: tenant.to_string(),
        monthly_budget_usd: b
            .parse()
            .map_err(|_| KeyStoreError::Invalid("tenant budget".into()))?,
        tz: tz.and_then(|z| z.parse().ok()),
    }))
}

const COLUMNS: &str = "k.id, k.name, k.tenant, k.key_prefix, k.group_name, k.enabled, \
     k.expires_at_ms, k.created_at_ms, k.user_id, k.revoked_at_ms, k.key_last4, k.limits_json";

impl KeyStore {
    /// A store over the given database.
    pub fn new(db: AnyPool, hasher: KeyHasher) -> Self {
        Self {
            db,
            hasher,
            cache: Arc::default(),
        }
    }

    /// Issues a key. The secret is returned once and never stored.
    pub async fn create(&self, new: NewKey) -> Result<(ApiKey, Secret), KeyStoreError> {
        let secret = generate_key();
        let id = ApiKeyId::parse(format!("key_{}", Uuid::now_v7().simple()))
            .map_err(|e| KeyStoreError::Invalid(e.to_string()))?;
        let now = Utc::now();
        let key = ApiKey {
            id,
            name: new.name,
            tenant: new.tenant,
            group: new.group,
            prefix: key_prefix(secret.expose()),
            enabled: true,
            expires_at: new.expires_at,
            created_at: ms_to_time(now.timestamp_millis()).unwrap_or_default(),
            user_id: new.user_id,
            revoked_at: None,
            last4: Some(last4(secret.expose())),
            limits: crate::limits::KeyLimits::default(),
            tenant_budget: None,
        };
        sqlx::query(&self.db.sql(
            "INSERT INTO api_keys (id, name, tenant, key_hash, key_prefix, group_name, enabled, \
             expires_at_ms, created_at_ms, user_id, key_last4) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10)",
        ))
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(key.tenant.as_str())
        .bind(self.hasher.hash(secret.expose()))
        .bind(&key.prefix)
        .bind(key.group.clone())
        .bind(key.expires_at.map(|t| t.timestamp_millis()))
        .bind(now.timestamp_millis())
        .bind(key.user_id.clone())
        .bind(key.last4.clone())
        .execute(&self.db)
        .await?;
        Ok((key, secret))
    }

    /// All keys that are not revoked, oldest first.
    pub async fn list_all(&self) -> Result<Vec<ApiKey>, KeyStoreError> {
        Ok(self.list(&KeyFilter::default(), 0, i64::MAX).await?.0)
    }

    /// Keys matching `f`, oldest first, one page, with the total.
    pub async fn list(
        &self,
        f: &KeyFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ApiKey>, i64), KeyStoreError> {
        let revoked = if f.include_revoked {
            ""
        } else {
            " AND k.revoked_at_ms IS NULL"
        };
        let cond = format!("($1 = '' OR k.user_id = $2) AND ($3 = '' OR k.tenant = $4){revoked}");
        let user = f.user_id.clone().unwrap_or_default();
        let tenant = f.tenant.clone().unwrap_or_default();
        let total: i64 = sqlx::query(&self.db.sql(&format!(
            "SELECT COUNT(*) AS n FROM api_keys k WHERE {cond}"
        )))
        .bind(&user)
        .bind(&user)
        .bind(&tenant)
        .bind(&tenant)
        .fetch_one(&self.db)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(&self.db.sql(&format!(
            "SELECT {COLUMNS} FROM api_keys k WHERE {cond} \
             ORDER BY k.created_at_ms, k.id LIMIT $5 OFFSET $6"
        )))
        .bind(&user)
        .bind(&user)
        .bind(&tenant)
        .bind(&tenant)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let keys = rows.iter().map(row_to_key).collect::<Result<_, _>>()?;
        Ok((keys, total))
    }

    /// A key by id (revoked keys included).
    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>, KeyStoreError> {
        sqlx::query(
            &self
                .db
                .sql(&format!("SELECT {COLUMNS} FROM api_keys k WHERE k.id = $1")),
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?
        .as_ref()
        .map(row_to_key)
        .transpose()
    }

    /// Applies a patch to a key that is not revoked; `None` when there is none.
    pub async fn update(&self, id: &str, p: &KeyPatch) -> Result<Option<ApiKey>, KeyStoreError> {
        let done = sqlx::query(&self.db.sql(
            "UPDATE api_keys SET name = COALESCE($1, name), \
             group_name = CASE WHEN $2 = 1 THEN $3 ELSE group_name END, \
             expires_at_ms = CASE WHEN $4 = 1 THEN $5 ELSE expires_at_ms END, \
             enabled = COALESCE($6, enabled), limits_json = COALESCE($7, limits_json) \
             WHERE id = $8 AND revoked_at_ms IS NULL",
        ))
        .bind(p.name.clone())
        .bind(i64::from(p.group.is_some()))
        .bind(p.group.clone().flatten())
        .bind(i64::from(p.expires_at.is_some()))
        .bind(p.expires_at.flatten().map(|t| t.timestamp_millis()))
        .bind(p.enabled.map(i64::from))
        .bind(
            p.limits
                .as_ref()
                .map(|l| serde_json::to_string(l).unwrap_or_default()),
        )
        .bind(id)
        .execute(&self.db)
        .await?;
        self.clear_cache();
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.get(id).await
    }

    /// Enables or disables a key; takes effect within the cache lifetime.
    pub async fn set_enabled(&self, id: &ApiKeyId, enabled: bool) -> Result<bool, KeyStoreError> {
        let patch = KeyPatch {
            enabled: Some(enabled),
            ..KeyPatch::default()
        };
        Ok(self.update(id.as_str(), &patch).await?.is_some())
    }

    /// Revokes a key for good; `false` when it does not exist or was revoked before.
    pub async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<bool, KeyStoreError> {
        let done = sqlx::query(&self.db.sql(
            "UPDATE api_keys SET revoked_at_ms = $1, enabled = 0 \
             WHERE id = $2 AND revoked_at_ms IS NULL",
        ))
        .bind(now.timestamp_millis())
        .bind(id)
        .execute(&self.db)
        .await?;
        self.clear_cache();
        Ok(done.rows_affected() > 0)
    }

    /// Revokes every key of a user (when the user is deleted); returns their ids.
    pub async fn revoke_all_of(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, KeyStoreError> {
        let f = KeyFilter {
            user_id: Some(user_id.to_owned()),
            ..KeyFilter::default()
        };
        let mut out = Vec::new();
        for k in self.list(&f, 0, i64::MAX).await?.0 {
            if self.revoke(k.id.as_str(), now).await? {
                out.push(k.id.to_string());
            }
        }
        Ok(out)
    }

    /// Forgets cached lookups (after an administrative change in this process).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    /// Authenticates a presented key at time `now`.
    pub async fn authenticate(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        if presented.len() > 512 {
            return Err(AuthError::Unknown);
        }
        let hash = self.hasher.hash(presented);
        let cached = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&hash).cloned())
            .filter(|(_, at)| at.elapsed() < CACHE_TTL);
        let key = match cached {
            Some((key, _)) => key,
            None => {
                let mut key = self.fetch_by_hash(&hash).await?;
                if key.is_none() {
                    key = self.migrate_legacy(presented, &hash).await?;
                }
                if let Ok(mut c) = self.cache.write() {
                    // Bound the cache so a flood of random keys cannot grow it forever.
                    if c.len() > 100_000 {
                        c.clear();
                    }
                    c.insert(hash, (key.clone(), Instant::now()));
                }
                key
            }
        };
        let key = key.ok_or(AuthError::Unknown)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if !key.enabled {
            return Err(AuthError::Disabled);
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Expired);
        }
        Ok(key)
    }

    /// A key stored under its plain SHA-256 (before keyed hashing): verified, then
    /// re-stored under the keyed hash.
    async fn migrate_legacy(
        &self,
        presented: &str,
        keyed: &str,
    ) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let legacy = legacy_hash_key(presented);
        let Some(key) = self.fetch_by_hash(&legacy).await? else {
            return Ok(None);
        };
        let moved = sqlx::query(
            &self
                .db
                .sql("UPDATE api_keys SET key_hash = $1 WHERE key_hash = $2"),
        )
        .bind(keyed)
        .bind(&legacy)
        .execute(&self.db)
        .await;
        if let Err(e) = moved {
            tracing::warn!(error = %e, "could not re-hash a legacy key; it keeps working");
        }
        Ok(Some(key))
    }

    async fn fetch_by_hash(&self, hash: &str) -> Result<Option<Arc<ApiKey>>, AuthError> {
        // A key whose owner is disabled or deleted reads as disabled.
        let row = sqlx::query(&self.db.sql(&format!(
            "SELECT {COLUMNS}, CASE WHEN k.user_id IS NULL THEN 1 \
             ELSE COALESCE(u.enabled, 0) END AS owner_enabled, \
             t.monthly_budget_usd AS tenant_budget, t.timezone AS tenant_tz \
             FROM api_keys k LEFT JOIN users u ON u.id = k.user_id \
             LEFT JOIN tenants t ON t.id = k.tenant WHERE k.key_hash = $1"
        )))
        .bind(hash)
        .fetch_optional(&self.db)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "key lookup failed");
            AuthError::Store
        })?;
        match row {
            None => Ok(None),
            Some(row) => row_to_key(&row)
                .and_then(|mut k| {
                    let owner: i64 = row.try_get("owner_enabled")?;
                    k.enabled &= owner != 0;
                    k.tenant_budget = tenant_budget(&row, &k.tenant)?;
                    Ok(k)
                })
                .map(|k| Some(Arc::new(k)))
                .map_err(|e| {
                    tracing::error!(error = %e, "stored key is invalid");
                    AuthError::Store
                }),
        }
    }
}
