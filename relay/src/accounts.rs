//! Upstream accounts as configured: the stored rows and their sealed credentials.
//!
//! Scheduling state (health, in-flight counts, sticky sessions) lives in the pool on
//! the proxy path; this module is only the durable configuration.

use crate::crypto::{Cipher, CryptoError, Secret};
use chrono::{DateTime, TimeZone, Utc};
use projections::Dialect as _;
use schema::AccountId;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

/// What kind of credential an account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// An Anthropic Console API key (`sk-ant-api03-…`), sent as `x-api-key`.
    ApiKey,
    /// A Claude OAuth access token (`sk-ant-oat01-…`), sent as Bearer.
    OAuth,
}

impl AccountKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::ApiKey => "api_key",
            AccountKind::OAuth => "oauth",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "api_key" => Some(AccountKind::ApiKey),
            "oauth" => Some(AccountKind::OAuth),
            _ => None,
        }
    }
}

/// One upstream account with its credential opened.
#[derive(Debug, Clone)]
pub struct Account {
    /// Stable id (used in events and subjects).
    pub id: AccountId,
    /// Unique display name.
    pub name: String,
    /// Credential kind.
    pub kind: AccountKind,
    /// Upstream base URL without a trailing slash.
    pub base_url: String,
    /// The credential, decrypted.
    pub credential: Secret,
    /// Lower is tried first.
    pub priority: i32,
    /// Relative share inside a priority tier.
    pub weight: u32,
    /// Group; keys scoped to this group may use it.
    pub group: Option<String>,
    /// Most concurrent requests (0 = unlimited).
    pub concurrency: u32,
    /// Proxy for this account's upstream traffic.
    pub proxy_url: Option<String>,
    /// Disabled accounts are never scheduled.
    pub enabled: bool,
    /// OAuth accounts: the refresh token, decrypted.
    pub refresh_token: Option<Secret>,
    /// OAuth accounts: when the access token lapses.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the account was added.
    pub created_at: DateTime<Utc>,
}

/// Input for [`AccountStore::add`].
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Unique display name.
    pub name: String,
    /// Credential kind.
    pub kind: AccountKind,
    /// Upstream base URL.
    pub base_url: String,
    /// The credential.
    pub credential: Secret,
    /// Priority.
    pub priority: i32,
    /// Weight.
    pub weight: u32,
    /// Group.
    pub group: Option<String>,
    /// Concurrency cap.
    pub concurrency: u32,
    /// Proxy URL.
    pub proxy_url: Option<String>,
}

/// A partial update of an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    /// New name.
    pub name: Option<String>,
    /// New kind (with a new credential).
    pub kind: Option<AccountKind>,
    /// New base URL.
    pub base_url: Option<String>,
    /// New credential.
    pub credential: Option<Secret>,
    /// New priority.
    pub priority: Option<i32>,
    /// New weight.
    pub weight: Option<u32>,
    /// New group (`Some(None)` clears it).
    pub group: Option<Option<String>>,
    /// New concurrency cap.
    pub concurrency: Option<u32>,
    /// New proxy (`Some(None)` clears it).
    pub proxy_url: Option<Option<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// What an OAuth account's login and refreshes recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthMeta {
    /// Granted scopes.
    pub scopes: Option<String>,
    /// `max`, `pro`, … from the profile endpoint.
    pub subscription_type: Option<String>,
    /// The login's e-mail.
    pub email: Option<String>,
    /// Last successful refresh.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Token sets stored so far.
    pub token_version: i64,
}

/// Errors managing accounts.
#[derive(Debug, thiserror::Error)]
pub enum AccountStoreError {
    /// SQL failure.
    #[error("account store: {0}")]
    Sql(#[from] sqlx::Error),
    /// Credential could not be opened.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Input or stored value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Validates an account's base URL and proxy URL at the edge.
pub fn validate(new: &NewAccount) -> Result<(), AccountStoreError> {
    if new.name.trim().is_empty() {
        return Err(AccountStoreError::Invalid("account name is empty".into()));
    }
    let base = new.base_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(AccountStoreError::Invalid(
            "base URL must start with http:// or https://".into(),
        ));
    }
    if let Some(p) = &new.proxy_url {
        let ok = ["http://", "https://", "socks5://", "socks5h://"]
            .iter()
            .any(|s| p.starts_with(s));
        if !ok {
            return Err(AccountStoreError::Invalid(
                "proxy URL must start with http://, https://, socks5:// or socks5h://".into(),
            ));
        }
    }
    if new.weight == 0 {
        return Err(AccountStoreError::Invalid(
            "weight must be at least 1".into(),
        ));
    }
    if new.credential.expose().trim().is_empty() {
        return Err(AccountStoreError::Invalid("credential is empty".into()));
    }
    Ok(())
}

const SELECT_ACCOUNT: &str = "SELECT id, name, kind, base_url, credential_enc, priority, weight, \
     group_name, concurrency, proxy_url, enabled, refresh_token_enc, expires_at_ms, \
     created_at_ms FROM accounts";

/// Whether a URL carries user-info (`scheme://user[:pass]@host`).
pub fn has_userinfo(url: &str) -> bool {
    let Some(i) = url.find("://") else {
        return false;
    };
    let rest = &url[i + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..end].contains('@')
}

/// Accounts in the database; credentials sealed with the [`Cipher`].
#[derive(Clone)]
pub struct AccountStore {
    /// The database.
    db: AnyPool,
    /// Seals and opens credentials.
    cipher: Cipher,
}

impl AccountStore {
    /// A store over the given database.
    pub fn new(db: AnyPool, cipher: Cipher) -> Self {
        Self { db, cipher }
    }

    /// Adds an account and returns its id.
    pub async fn add(&self, new: NewAccount) -> Result<AccountId, AccountStoreError> {
        self.add_with_tokens(new, None, None).await
    }

    /// Adds an OAuth account with its refresh token and access-token expiry.
    pub async fn add_with_tokens(
        &self,
        new: NewAccount,
        refresh_token: Option<Secret>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<AccountId, AccountStoreError> {
        validate(&new)?;
        let id = AccountId::parse(format!("acc_{}", Uuid::now_v7().simple()))
            .map_err(|e| AccountStoreError::Invalid(e.to_string()))?;
        sqlx::query(&self.db.sql(
            "INSERT INTO accounts (id, name, kind, base_url, credential_enc, priority, weight, \
             group_name, concurrency, proxy_url, enabled, created_at_ms, refresh_token_enc, \
             expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $12, $13)",
        ))
        .bind(id.as_str())
        .bind(new.name.trim())
        .bind(new.kind.as_str())
        .bind(self.seal_url(new.base_url.trim_end_matches('/')))
        .bind(self.cipher.seal(&new.credential))
        .bind(i64::from(new.priority))
        .bind(i64::from(new.weight))
        .bind(new.group)
        .bind(i64::from(new.concurrency))
        .bind(new.proxy_url.as_deref().map(|p| self.seal_url(p)))
        .bind(Utc::now().timestamp_millis())
        .bind(refresh_token.as_ref().map(|t| self.cipher.seal(t)))
        .bind(expires_at.map(|t| t.timestamp_millis()))
        .execute(&self.db)
        .await?;
        Ok(id)
    }

    /// The cipher sealing this store's secrets (shared with other sealed state, such
    /// as pending OAuth logins).
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// One account by id, credential opened.
    pub async fn get(&self, id: &str) -> Result<Option<Account>, AccountStoreError> {
        let row = sqlx::query(&self.db.sql(&format!("{SELECT_ACCOUNT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        row.as_ref().map(|r| self.row_to_account(r)).transpose()
    }

    /// Applies a patch after validating the result; `None` when there is no such
    /// account.
    pub async fn update(
        &self,
        id: &str,
        p: &AccountPatch,
    ) -> Result<Option<Account>, AccountStoreError> {
        let Some(old) = self.get(id).await? else {
            return Ok(None);
        };
        let merged = NewAccount {
            name: p.name.clone().unwrap_or(old.name),
            kind: p.kind.unwrap_or(old.kind),
            base_url: p.base_url.clone().unwrap_or(old.base_url),
            credential: p.credential.clone().unwrap_or(old.credential),
            priority: p.priority.unwrap_or(old.priority),
            weight: p.weight.unwrap_or(old.weight),
            group: p.group.clone().unwrap_or(old.group),
            concurrency: p.concurrency.unwrap_or(old.concurrency),
            proxy_url: p.proxy_url.clone().unwrap_or(old.proxy_url),
        };
        validate(&merged)?;
        let enabled = p.enabled.unwrap_or(old.enabled);
        sqlx::query(&self.db.sql(
            "UPDATE accounts SET name = $1, kind = $2, base_url = $3, credential_enc = $4, \
             priority = $5, weight = $6, group_name = $7, concurrency = $8, proxy_url = $9, \
             enabled = $10 WHERE id = $11",
        ))
        .bind(merged.name.trim())
        .bind(merged.kind.as_str())
        .bind(self.seal_url(merged.base_url.trim_end_matches('/')))
        .bind(self.cipher.seal(&merged.credential))
        .bind(i64::from(merged.priority))
        .bind(i64::from(merged.weight))
        .bind(merged.group)
        .bind(i64::from(merged.concurrency))
        .bind(merged.proxy_url.as_deref().map(|p| self.seal_url(p)))
        .bind(i64::from(enabled))
        .bind(id)
        .execute(&self.db)
        .await?;
        self.get(id).await
    }

    /// Removes an account; `false` when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, AccountStoreError> {
        let done = sqlx::query(&self.db.sql("DELETE FROM accounts WHERE id = $1"))
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether an account name is taken by an account other than `except`.
    pub async fn name_taken(
        &self,
        name: &str,
        except: Option<&str>,
    ) -> Result<bool, AccountStoreError> {
        let row = sqlx::query(&self.db.sql("SELECT id FROM accounts WHERE name = $1"))
            .bind(name.trim())
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

    /// The token version of an account (grows with every stored token set).
    pub async fn token_version(&self, id: &str) -> Result<Option<i64>, AccountStoreError> {
        let row = sqlx::query(
            &self
                .db
                .sql("SELECT token_version FROM accounts WHERE id = $1"),
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|r| r.try_get("token_version")).transpose()?)
    }

    /// Takes the refresh lease of an account until `until` if nobody holds it;
    /// `true` when this caller got it.
    pub async fn try_lock_refresh(
        &self,
        id: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, AccountStoreError> {
        let done = sqlx::query(&self.db.sql(
            "UPDATE accounts SET refresh_lock_until_ms = $1 WHERE id = $2 \
             AND (refresh_lock_until_ms IS NULL OR refresh_lock_until_ms < $3)",
        ))
        .bind(until.timestamp_millis())
        .bind(id)
        .bind(now.timestamp_millis())
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the refresh lease back.
    pub async fn unlock_refresh(&self, id: &str) -> Result<(), AccountStoreError> {
        sqlx::query(
            &self
                .db
                .sql("UPDATE accounts SET refresh_lock_until_ms = NULL WHERE id = $1"),
        )
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Stores refreshed tokens only over the version they were refreshed from (so a
    /// stale refresh token is never written back) and releases the lease. `false` when
    /// the version moved meanwhile and nothing was written.
    pub async fn store_refreshed(
        &self,
        id: &str,
        seen_version: i64,
        access_token: &Secret,
        refresh_token: Option<&Secret>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, AccountStoreError> {
        let done = sqlx::query(&self.db.sql(
            "UPDATE accounts SET credential_enc = $1, \
             refresh_token_enc = COALESCE($2, refresh_token_enc), expires_at_ms = $3, \
             token_version = token_version + 1, refreshed_at_ms = $4, \
             refresh_lock_until_ms = NULL WHERE id = $5 AND token_version = $6",
        ))
        .bind(self.cipher.seal(access_token))
        .bind(refresh_token.map(|t| self.cipher.seal(t)))
        .bind(expires_at.timestamp_millis())
        .bind(now.timestamp_millis())
        .bind(id)
        .bind(seen_version)
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what the OAuth login learnt about the account.
    pub async fn set_oauth_meta(
        &self,
        id: &str,
        scopes: Option<&str>,
        subscription_type: Option<&str>,
        email: Option<&str>,
    ) -> Result<(), AccountStoreError> {
        sqlx::query(&self.db.sql(
            "UPDATE accounts SET oauth_scopes = COALESCE($1, oauth_scopes), \
             subscription_type = COALESCE($2, subscription_type), \
             oauth_email = COALESCE($3, oauth_email) WHERE id = $4",
        ))
        .bind(scopes.map(str::to_owned))
        .bind(subscription_type.map(str::to_owned))
        .bind(email.map(str::to_owned))
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// OAuth facts of an account: scopes, subscription type, e-mail, last refresh,
    /// token version.
    pub async fn oauth_meta(&self, id: &str) -> Result<Option<OAuthMeta>, AccountStoreError> {
        let row = sqlx::query(&self.db.sql(
            "SELECT oauth_scopes, subscription_type, oauth_email, refreshed_at_ms, token_version \
             FROM accounts WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let refreshed: Option<i64> = r.try_get("refreshed_at_ms")?;
        Ok(Some(OAuthMeta {
            scopes: r.try_get("oauth_scopes")?,
            subscription_type: r.try_get("subscription_type")?,
            email: r.try_get("oauth_email")?,
            refreshed_at: refreshed.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            token_version: r.try_get("token_version")?,
        }))
    }

    /// Every account, credentials opened, in name order.
    pub async fn list(&self) -> Result<Vec<Account>, AccountStoreError> {
        let rows = sqlx::query(&self.db.sql(&format!("{SELECT_ACCOUNT} ORDER BY name")))
            .fetch_all(&self.db)
            .await?;
        rows.iter().map(|r| self.row_to_account(r)).collect()
    }

    /// A URL as stored: sealed when it carries credentials (`user:pass@`), so proxy
    /// passwords and credentials in base URLs are encrypted like account credentials.
    fn seal_url(&self, url: &str) -> String {
        if has_userinfo(url) {
            self.cipher.seal(&Secret::new(url))
        } else {
            url.to_owned()
        }
    }

    /// Reads a URL stored by [`AccountStore::seal_url`] (plain URLs pass through).
    fn open_url(&self, stored: String) -> Result<String, AccountStoreError> {
        if stored.starts_with("v1:") {
            Ok(self.cipher.open(&stored)?.expose().to_owned())
        } else {
            Ok(stored)
        }
    }

    fn row_to_account(&self, row: &sqlx::any::AnyRow) -> Result<Account, AccountStoreError> {
        let invalid =
            |what: &str| AccountStoreError::Invalid(format!("stored account has invalid {what}"));
        let id: String = row.try_get("id")?;
        let kind: String = row.try_get("kind")?;
        let sealed: String = row.try_get("credential_enc")?;
        let priority: i64 = row.try_get("priority")?;
        let weight: i64 = row.try_get("weight")?;
        let concurrency: i64 = row.try_get("concurrency")?;
        let enabled: i64 = row.try_get("enabled")?;
        let refresh: Option<String> = row.try_get("refresh_token_enc")?;
        let expires: Option<i64> = row.try_get("expires_at_ms")?;
        Ok(Account {
            id: AccountId::parse(id).map_err(|_| invalid("id"))?,
            name: row.try_get("name")?,
            kind: AccountKind::parse(&kind).ok_or_else(|| invalid("kind"))?,
            base_url: self.open_url(row.try_get("base_url")?)?,
            credential: self.cipher.open(&sealed)?,
            priority: i32::try_from(priority).map_err(|_| invalid("priority"))?,
            weight: u32::try_from(weight).map_err(|_| invalid("weight"))?,
            group: row.try_get("group_name")?,
            concurrency: u32::try_from(concurrency).map_err(|_| invalid("concurrency"))?,
            proxy_url: row
                .try_get::<Option<String>, _>("proxy_url")?
                .map(|p| self.open_url(p))
                .transpose()?,
            enabled: enabled != 0,
            refresh_token: refresh.map(|r| self.cipher.open(&r)).transpose()?,
            expires_at: expires.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            created_at: Utc
                .timestamp_millis_opt(row.try_get("created_at_ms")?)
                .single()
                .unwrap_or_default(),
        })
    }
}
