//! Small helpers for hand-written, portable SQL.

use crate::{Dialect as _, Error};
use chrono::{DateTime, Utc};
use ingest::StoredEvent;
use sqlx::AnyConnection;
use std::collections::HashSet;
use std::fmt::Write as _;

/// A statement being bound.
pub(crate) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// What a multi-row insert does with a row whose key (a comma-separated column list)
/// is already stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnConflict<'a> {
    /// Keeps the stored row (a duplicate event).
    Ignore(&'a str),
    /// Overwrites every other column.
    Replace(&'a str),
    /// Adds every other column to the stored value (counters).
    Add(&'a str),
}

/// The portable text of `INSERT INTO table (columns) VALUES … ON CONFLICT …` for
/// `rows` rows.
pub(crate) fn insert_sql(
    params: Params,
    table: &str,
    columns: &str,
    on_conflict: OnConflict<'_>,
    rows: usize,
) -> String {
    let cols: Vec<&str> = columns.split(',').map(str::trim).collect();
    let mut s = format!(
        "INSERT INTO {table} ({columns}) VALUES {}",
        params.values(rows, cols.len())
    );
    let (key, add) = match on_conflict {
        OnConflict::Ignore(key) => {
            let _ = write!(s, " ON CONFLICT ({key}) DO NOTHING");
            return s;
        }
        OnConflict::Replace(key) => (key, false),
        OnConflict::Add(key) => (key, true),
    };
    let keys: Vec<&str> = key.split(',').map(str::trim).collect();
    let _ = write!(s, " ON CONFLICT ({key}) DO UPDATE SET ");
    let rest = cols.iter().filter(|c| !keys.contains(c));
    for (n, c) in rest.enumerate() {
        if n > 0 {
            s.push_str(", ");
        }
        if add {
            let _ = write!(s, "{c} = {table}.{c} + excluded.{c}");
        } else {
            let _ = write!(s, "{c} = excluded.{c}");
        }
    }
    s
}

/// Inserts `rows` into `table` in multi-row statements as large as the backend takes,
/// `bind` binding one row's values in `columns` order. Returns the rows the database
/// reports affected (with [`OnConflict::Ignore`]: the rows inserted).
pub(crate) async fn insert_rows<T>(
    tx: &mut AnyConnection,
    table: &str,
    columns: &str,
    on_conflict: OnConflict<'_>,
    rows: &[T],
    bind: impl for<'q> Fn(Query<'q>, &'q T) -> Query<'q>,
) -> Result<u64, Error> {
    let params = Params::of(tx);
    let width = columns.split(',').count();
    let mut affected = 0;
    for chunk in rows.chunks(params.rows_per_statement(width)) {
        let text = insert_sql(params, table, columns, on_conflict, chunk.len());
        let text = tx.sql(&text);
        let mut q = sqlx::query(&text);
        for r in chunk {
            q = bind(q, r);
        }
        affected += q.execute(&mut *tx).await?.rows_affected();
    }
    Ok(affected)
}

/// How a backend spells bind parameters in the multi-row statements built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Params {
    /// `$1, $2, …` (PostgreSQL, which binds by position).
    Numbered,
    /// `?, ?, …` (SQLite). sqlx resolves a *named* SQLite parameter (`$N`, `?N`) by
    /// asking SQLite for its name, a linear scan of the statement's names, so binding
    /// n of them costs n²/2 string comparisons (a third of a replay's CPU at 300 per
    /// statement). Anonymous parameters bind in order at constant cost.
    Anonymous,
}

impl Params {
    /// The style of `conn`'s backend.
    pub(crate) fn of(conn: &sqlx::AnyConnection) -> Self {
        Self::for_backend(conn.backend_name())
    }

    /// The style of `pool`'s backend.
    pub(crate) fn of_pool(pool: &sqlx::AnyPool) -> Result<Self, crate::Error> {
        Ok(match crate::Backend::of(pool)? {
            crate::Backend::Postgres => Params::Numbered,
            crate::Backend::Sqlite | crate::Backend::MySql => Params::Anonymous,
        })
    }

    /// The style of a backend named as sqlx names it (`"PostgreSQL"`, `"SQLite"`).
    pub(crate) fn for_backend(name: &str) -> Self {
        if name.eq_ignore_ascii_case("postgresql") {
            Params::Numbered
        } else {
            Params::Anonymous
        }
    }

    /// Rows per multi-row statement of `cols` columns.
    ///
    /// Both backends bind in linear time with these styles; big statements save round
    /// trips (to SQLite's worker thread, or to the PostgreSQL server). PostgreSQL
    /// allows 65535 parameters and SQLite (3.32+) 32766; 8000 stays far below both.
    pub(crate) fn rows_per_statement(self, cols: usize) -> usize {
        (8_000 / cols.max(1)).max(1)
    }

    /// `($1,$2,…),(…)` or `(?,?,…),(…)` for `rows` rows of `cols` columns; the only
    /// parameters of the statement.
    pub(crate) fn values(self, rows: usize, cols: usize) -> String {
        let mut s = String::with_capacity(rows * cols * 6);
        let mut n = 1;
        for r in 0..rows {
            if r > 0 {
                s.push(',');
            }
            s.push('(');
            for c in 0..cols {
                if c > 0 {
                    s.push(',');
                }
                self.push(&mut s, n);
                n += 1;
            }
            s.push(')');
        }
        s
    }

    /// `$1,$2,…` or `?,?,…` (`count` placeholders), for an `IN (…)` list that is the
    /// statement's only parameters.
    pub(crate) fn list(self, count: usize) -> String {
        let mut s = String::with_capacity(count * 6);
        for n in 1..=count {
            if n > 1 {
                s.push(',');
            }
            self.push(&mut s, n);
        }
        s
    }

    fn push(self, s: &mut String, n: usize) {
        match self {
            Params::Numbered => {
                let _ = write!(s, "${n}");
            }
            Params::Anonymous => s.push('?'),
        }
    }
}

/// A `WHERE` clause built from optional filters, its placeholders numbered in the
/// order the conditions are added (as [`Dialect::sql`](crate::Dialect::sql) needs),
/// its values bound in the same order.
#[derive(Debug, Default)]
pub(crate) struct Where {
    conds: Vec<String>,
    values: Vec<Value>,
}

#[derive(Debug)]
enum Value {
    Text(String),
    Int(i64),
}

impl Where {
    /// A condition without a value (`rejected_by > ''`).
    pub(crate) fn always(mut self, cond: &str) -> Self {
        self.conds.push(cond.to_owned());
        self
    }

    /// `{lhs} $N` when `value` is set (`lhs` is e.g. `"tenant ="`, `"position <"`).
    pub(crate) fn text(mut self, lhs: &str, value: Option<&String>) -> Self {
        if let Some(v) = value {
            self.values.push(Value::Text(v.clone()));
            self.conds.push(format!("{lhs} ${}", self.values.len()));
        }
        self
    }

    /// `{lhs} $N` when `value` is set.
    pub(crate) fn int(mut self, lhs: &str, value: Option<i64>) -> Self {
        if let Some(v) = value {
            self.values.push(Value::Int(v));
            self.conds.push(format!("{lhs} ${}", self.values.len()));
        }
        self
    }

    /// The conditions joined with `AND` (`1 = 1` when there are none).
    pub(crate) fn clause(&self) -> String {
        if self.conds.is_empty() {
            "1 = 1".to_owned()
        } else {
            self.conds.join(" AND ")
        }
    }

    /// Binds the values, in order.
    pub(crate) fn bind<'q>(&'q self, mut q: Query<'q>) -> Query<'q> {
        for v in &self.values {
            q = match v {
                Value::Text(t) => q.bind(t.as_str()),
                Value::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// What `row_of` makes of `events`, once per event id: a copy of an event inside the
/// batch (the log may hold one at a later position) is skipped, so the first, lowest
/// position wins.
pub(crate) fn once_per_event<'e, T>(
    events: &'e [StoredEvent],
    mut row_of: impl FnMut(&'e StoredEvent) -> Option<T>,
) -> Vec<(&'e StoredEvent, T)> {
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .filter_map(|e| row_of(e).map(|r| (e, r)))
        .filter(|(e, _)| seen.insert(e.envelope.id))
        .collect()
}

/// Empties `tables` (a projection's reset).
pub(crate) async fn delete_all(tx: &mut AnyConnection, tables: &[&str]) -> Result<(), Error> {
    for t in tables {
        sqlx::query(&format!("DELETE FROM {t}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The UTC day of a timestamp, `YYYY-MM-DD`.
pub(crate) fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// Tokens and counters are `u64` in events and BIGINT in SQL; real counts never reach
/// 2^63, and saturating keeps a corrupt event from wrapping negative.
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An optional id as stored: absent is `''`.
pub(crate) fn opt<T: std::fmt::Display>(v: Option<&T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The snake_case wire name of a unit enum (`Outcome`, `HealthState`, …).
pub(crate) fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_numbers_what_is_set_in_order() {
        let tenant = Some("acme".to_owned());
        let w = Where::default()
            .always("x > ''")
            .text("tenant =", tenant.as_ref())
            .text("api_key =", None)
            .int("position <", Some(7));
        assert_eq!(w.clause(), "x > '' AND tenant = $1 AND position < $2");
        assert_eq!(Where::default().int("a =", None).clause(), "1 = 1");
    }

    #[test]
    fn inserts() {
        let p = Params::Numbered;
        assert_eq!(
            insert_sql(p, "t", "a, b", OnConflict::Ignore("a"), 2),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            insert_sql(p, "t", "a, b, c", OnConflict::Replace("a"), 1),
            "INSERT INTO t (a, b, c) VALUES ($1,$2,$3) ON CONFLICT (a) DO UPDATE SET \
             b = excluded.b, c = excluded.c"
        );
        assert_eq!(
            insert_sql(
                Params::Anonymous,
                "t",
                "a, b, n",
                OnConflict::Add("a, b"),
                1
            ),
            "INSERT INTO t (a, b, n) VALUES (?,?,?) ON CONFLICT (a, b) DO UPDATE SET \
             n = t.n + excluded.n"
        );
    }

    #[test]
    fn placeholders() {
        assert_eq!(Params::Numbered.values(2, 2), "($1,$2),($3,$4)");
        assert_eq!(Params::Anonymous.values(2, 2), "(?,?),(?,?)");
        assert_eq!(Params::Numbered.list(2), "$1,$2");
        assert_eq!(Params::Anonymous.list(3), "?,?,?");
        assert_eq!(Params::for_backend("PostgreSQL"), Params::Numbered);
        assert_eq!(Params::for_backend("SQLite"), Params::Anonymous);
    }
}
