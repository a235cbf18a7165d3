//! Relay-issued tenant API keys: creation, listing and the authentication lookup on
//! the hot path.
//!
//! Only the SHA-256 of a key is stored. Authentication hashes the presented key and
//! looks the hash up in a small in-memory cache (entries live a few seconds, so a key
//! disabled in the database stops working quickly without a query per request).

use crate::crypto::{generate_key, hash_key, key_prefix, Secret};
use chrono::{DateTime, TimeZone, Utc};
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
    /// The key is disabled.
    #[error("API key is disabled")]
    Disabled,
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
            AuthError::Disabled => Some(R::Disabled),
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
}

/// How long a cached lookup is trusted.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// Cached lookups: key hash → (the key, or `None` for "unknown", and when fetched).
type LookupCache = HashMap<String, (Option<Arc<ApiKey>>, Instant)>;

/// Tenant keys in the database, with a short-lived lookup cache.
#[derive(Clone)]
pub struct KeyStore {
    /// The database.
    db: AnyPool,
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
    Ok(ApiKey {
        id: ApiKeyId::parse(id).map_err(|e| KeyStoreError::Invalid(e.to_string()))?,
        name: row.try_get("name")?,
        tenant: TenantId::parse(tenant).map_err(|e| KeyStoreError::Invalid(e.to_string()))?,
        group: row.try_get("group_name")?,
        prefix: row.try_get("key_prefix")?,
        enabled: enabled != 0,
        expires_at: expires.and_then(ms_to_time),
        created_at: ms_to_time(created).unwrap_or_default(),
    })
}

const COLUMNS: &str =
    "id, name, tenant, key_prefix, group_name, enabled, expires_at_ms, created_at_ms";

impl KeyStore {
    /// A store over the given database.
    pub fn new(db: AnyPool) -> Self {
        Self {
            db,
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
            created_at: now,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, tenant, key_hash, key_prefix, group_name, enabled, \
             expires_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(key.tenant.as_str())
        .bind(hash_key(secret.expose()))
        .bind(&key.prefix)
        .bind(key.group.clone())
        .bind(key.expires_at.map(|t| t.timestamp_millis()))
        .bind(now.timestamp_millis())
        .execute(&self.db)
        .await?;
        Ok((key, secret))
    }

    /// All keys, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKey>, KeyStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at_ms, id"
        ))
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(row_to_key).collect()
    }

    /// Enables or disables a key; takes effect within the cache lifetime.
    pub async fn set_enabled(&self, id: &ApiKeyId, enabled: bool) -> Result<bool, KeyStoreError> {
        let done = sqlx::query("UPDATE api_keys SET enabled = $1 WHERE id = $2")
            .bind(i64::from(enabled))
            .bind(id.as_str())
            .execute(&self.db)
            .await?;
        self.clear_cache();
        Ok(done.rows_affected() > 0)
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
        let hash = hash_key(presented);
        let cached = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&hash).cloned())
            .filter(|(_, at)| at.elapsed() < CACHE_TTL);
        let key = match cached {
            Some((key, _)) => key,
            None => {
                let key = self.fetch_by_hash(&hash).await?;
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
        if !key.enabled {
            return Err(AuthError::Disabled);
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Expired);
        }
        Ok(key)
    }

    async fn fetch_by_hash(&self, hash: &str) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.db)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "key lookup failed");
            AuthError::Store
        })?;
        match row {
            None => Ok(None),
            Some(row) => row_to_key(&row).map(|k| Some(Arc::new(k))).map_err(|e| {
                tracing::error!(error = %e, "stored key is invalid");
                AuthError::Store
            }),
        }
    }
}
