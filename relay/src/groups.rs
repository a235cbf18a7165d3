//! Account groups: a key scoped to a group is served by the accounts of that group.
//!
//! Groups have seed-style integer ids. Accounts and keys name their group by name (the
//! proxy path compares names); renaming a group renames it on its accounts and keys in
//! the same transaction.

use chrono::{DateTime, Utc};
use projections::Dialect as _;
use serde::Serialize;
use sqlx::{AnyPool, Row};

/// One group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub remark: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Accounts in the group.
    pub accounts: i64,
    /// Keys scoped to the group (revoked keys excluded).
    pub keys: i64,
}

/// Groups in the database.
#[derive(Clone)]
pub struct GroupStore {
    /// The database.
    db: AnyPool,
}

const SELECT: &str = "SELECT g.id, g.name, g.remark, g.created_at_ms, \
     (SELECT COUNT(*) FROM accounts a WHERE a.group_name = g.name) AS account_count, \
     (SELECT COUNT(*) FROM api_keys k WHERE k.group_name = g.name AND k.revoked_at_ms IS NULL) AS key_count \
     FROM account_groups g";

fn row_to_group(r: &sqlx::any::AnyRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        remark: r.try_get("remark")?,
        created_at: DateTime::from_timestamp_millis(r.try_get("created_at_ms")?)
            .unwrap_or_default(),
        accounts: r.try_get("account_count")?,
        keys: r.try_get("key_count")?,
    })
}

impl GroupStore {
    /// A store over the given database.
    pub fn new(db: AnyPool) -> Self {
        Self { db }
    }

    /// Groups by id, one page, with the total.
    pub async fn list(&self, offset: i64, limit: i64) -> Result<(Vec<Group>, i64), sqlx::Error> {
        let total: i64 = sqlx::query(&self.db.sql("SELECT COUNT(*) AS n FROM account_groups"))
            .fetch_one(&self.db)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(
            &self
                .db
                .sql(&format!("{SELECT} ORDER BY g.id LIMIT $1 OFFSET $2")),
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db)
        .await?;
        let groups = rows.iter().map(row_to_group).collect::<Result<_, _>>()?;
        Ok((groups, total))
    }

    /// A group by id.
    pub async fn get(&self, id: i64) -> Result<Option<Group>, sqlx::Error> {
        sqlx::query(&self.db.sql(&format!("{SELECT} WHERE g.id = $1")))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(row_to_group)
            .transpose()
    }

    /// A group by name.
    pub async fn by_name(&self, name: &str) -> Result<Option<Group>, sqlx::Error> {
        sqlx::query(&self.db.sql(&format!("{SELECT} WHERE g.name = $1")))
            .bind(name)
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(row_to_group)
            .transpose()
    }

    /// Creates a group and returns it.
    pub async fn create(&self, name: &str, remark: &str) -> Result<Group, sqlx::Error> {
        sqlx::query(
            &self.db.sql(
                "INSERT INTO account_groups (name, remark, created_at_ms) VALUES ($1, $2, $3)",
            ),
        )
        .bind(name)
        .bind(remark)
        .bind(Utc::now().timestamp_millis())
        .execute(&self.db)
        .await?;
        self.by_name(name).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// Renames (cascading to accounts and keys) and/or changes the remark.
    pub async fn update(
        &self,
        id: i64,
        name: Option<&str>,
        remark: Option<&str>,
    ) -> Result<Option<Group>, sqlx::Error> {
        let Some(old) = self.get(id).await? else {
            return Ok(None);
        };
        let mut tx = self.db.begin().await?;
        if let Some(new) = name.filter(|n| *n != old.name) {
            sqlx::query(&tx.sql("UPDATE account_groups SET name = $1 WHERE id = $2"))
                .bind(new)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for table in ["accounts", "api_keys"] {
                sqlx::query(&tx.sql(&format!(
                    "UPDATE {table} SET group_name = $1 WHERE group_name = $2"
                )))
                .bind(new)
                .bind(&old.name)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(r) = remark {
            sqlx::query(&tx.sql("UPDATE account_groups SET remark = $1 WHERE id = $2"))
                .bind(r)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get(id).await
    }

    /// Deletes a group.
    pub async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&self.db.sql("DELETE FROM account_groups WHERE id = $1"))
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
