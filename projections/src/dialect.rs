//! One SQL text for three databases.
//!
//! Statements are written once, in the dialect SQLite and PostgreSQL share: `$N`
//! placeholders numbered in order of appearance, `INSERT … ON CONFLICT (…) DO NOTHING`,
//! `INSERT … ON CONFLICT (…) DO UPDATE SET c = excluded.c` and `CAST(… AS BIGINT)`.
//! [`Dialect::sql`] passes that text through untouched on SQLite and PostgreSQL and
//! rewrites it for MySQL / MariaDB:
//!
//! | portable | MySQL / MariaDB |
//! |---|---|
//! | `$1`, `$2`, … | `?`, `?`, … (so `$N` must appear once each, in order) |
//! | `INSERT INTO … ON CONFLICT (k) DO NOTHING` | `INSERT IGNORE INTO …` |
//! | `ON CONFLICT (k) DO UPDATE SET c = excluded.c` | `ON DUPLICATE KEY UPDATE c = VALUES(c)` |
//! | `CAST(x AS BIGINT)` | `CAST(x AS SIGNED)` |
//!
//! Integer division is spelled per backend with [`Dialect::int_div`] (`/` divides
//! integers exactly on MySQL). What cannot be rewritten is not written portably: an upsert with a `WHERE` guard and
//! `RETURNING` are spelled per backend where they are used (see `runner` and the
//! places that match on [`Backend::MySql`]). Text inside `'…'` literals is never
//! rewritten. Everything else (types, keys, collations) is the migrations' business:
//! on MySQL every text column is a `VARCHAR` with a binary collation, so strings
//! compare and sort as they do on the other two.

use crate::Backend;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, ColumnIndex, Row};
use std::borrow::Cow;

/// Something that knows which database it talks to, and so how to spell a statement.
pub trait Dialect {
    /// The backend.
    fn backend(&self) -> Backend;

    /// The integer-division operator (truncating): `/`, or `DIV` on MySQL, where `/`
    /// returns a decimal.
    fn int_div(&self) -> &'static str {
        match self.backend() {
            Backend::MySql => "DIV",
            Backend::Sqlite | Backend::Postgres => "/",
        }
    }

    /// `portable` as this backend must receive it.
    fn sql<'q>(&self, portable: &'q str) -> Cow<'q, str> {
        match self.backend() {
            Backend::MySql => Cow::Owned(to_mysql(portable)),
            Backend::Sqlite | Backend::Postgres => Cow::Borrowed(portable),
        }
    }
}

impl Dialect for Backend {
    fn backend(&self) -> Backend {
        *self
    }
}

impl Dialect for AnyPool {
    fn backend(&self) -> Backend {
        // A pool is only ever opened from a URL `Backend::from_url` accepted.
        Backend::of(self).unwrap_or(Backend::Sqlite)
    }
}

impl Dialect for AnyConnection {
    fn backend(&self) -> Backend {
        Backend::from_driver_name(self.backend_name())
    }
}

/// A text column that may be long. On MySQL such a column is a `MEDIUMTEXT`, which
/// sqlx's `Any` driver hands over as bytes; every other text column is a `VARCHAR` and
/// reads as a string on every backend.
pub fn long_text<I: ColumnIndex<AnyRow> + Copy>(
    row: &AnyRow,
    col: I,
) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(col) {
        Ok(s) => Ok(s),
        Err(text_error) => match row.try_get::<Option<Vec<u8>>, _>(col) {
            Ok(bytes) => bytes
                .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
                .transpose(),
            Err(_) => Err(text_error),
        },
    }
}

/// Rewrites portable SQL for MySQL / MariaDB (see the module docs).
///
/// When the placeholders are not `$1..$N` once each in order, they are left as they
/// are: MySQL then refuses the statement, where `?`s would bind values to the wrong
/// places.
pub fn to_mysql(sql: &str) -> String {
    let tokens = split_literals(sql);
    let in_order = tokens
        .iter()
        .filter(|(literal, _)| !literal)
        .flat_map(|(_, text)| numbers(text))
        .enumerate()
        .all(|(i, n)| n == i + 1);
    let mut out = String::with_capacity(sql.len() + 16);
    let mut insert_ignore = false;
    for (literal, text) in &tokens {
        if *literal {
            out.push_str(text);
            continue;
        }
        let mut t = if in_order {
            placeholders(text)
        } else {
            (*text).to_owned()
        };
        if let Some(rewritten) = on_conflict(&t, &mut insert_ignore) {
            t = rewritten;
        }
        t = replace_ci(&t, " AS BIGINT)", " AS SIGNED)");
        out.push_str(&t);
    }
    if insert_ignore {
        if let Some(at) = find_ci(&out, "INSERT INTO") {
            out.replace_range(at..at + "INSERT INTO".len(), "INSERT IGNORE INTO");
        }
    }
    out
}

/// Splits `sql` into `(is_literal, text)` runs; a literal keeps its quotes (`''`
/// inside one is an escaped quote and stays inside).
fn split_literals(sql: &str) -> Vec<(bool, &str)> {
    let mut runs = Vec::new();
    let bytes = sql.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if start < i {
                runs.push((false, &sql[start..i]));
            }
            let open = i;
            i += 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(bytes.len());
            runs.push((true, &sql[open..i]));
            start = i;
        } else {
            i += 1;
        }
    }
    if start < bytes.len() {
        runs.push((false, &sql[start..]));
    }
    runs
}

/// `$N` → `?`.
fn placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// The numbers of the `$N` placeholders in `text`, in order.
fn numbers(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.split('$').skip(1).filter_map(|after| {
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Rewrites an `ON CONFLICT` clause; sets `insert_ignore` for `DO NOTHING`.
fn on_conflict(text: &str, insert_ignore: &mut bool) -> Option<String> {
    let at = find_ci(text, "ON CONFLICT")?;
    let rest = &text[at + "ON CONFLICT".len()..];
    // The conflict target: an optional parenthesised column list.
    let trimmed = rest.trim_start();
    let after_target = if trimmed.starts_with('(') {
        let close = trimmed.find(')')?;
        &trimmed[close + 1..]
    } else {
        trimmed
    };
    let action = after_target.trim_start();
    let head = text[..at].trim_end();
    if let Some(tail) = strip_prefix_ci(action, "DO NOTHING") {
        *insert_ignore = true;
        return Some(format!("{head}{tail}"));
    }
    let set = strip_prefix_ci(action, "DO UPDATE SET")?;
    let set = replace_excluded(set);
    Some(format!("{head} ON DUPLICATE KEY UPDATE{set}"))
}

/// `excluded.col` → `VALUES(col)`.
fn replace_excluded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(at) = find_ci(rest, "excluded.") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        out.push_str(&rest[..at]);
        let after = &rest[at + "excluded.".len()..];
        if !boundary {
            out.push_str(&rest[at..at + "excluded.".len()]);
            rest = after;
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str("VALUES(");
        out.push_str(&after[..end]);
        out.push(')');
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.len() > h.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn replace_ci(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_ci(rest, from) {
        out.push_str(&rest[..at]);
        out.push_str(to);
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_sql_is_untouched_on_sqlite_and_postgres() {
        let q = "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING";
        assert!(matches!(Backend::Sqlite.sql(q), Cow::Borrowed(s) if s == q));
        assert!(matches!(Backend::Postgres.sql(q), Cow::Borrowed(s) if s == q));
    }

    #[test]
    fn mysql_rewrites() {
        let cases = [
            (
                "SELECT a FROM t WHERE b = $1 AND c = $2 LIMIT $3 OFFSET $4",
                "SELECT a FROM t WHERE b = ? AND c = ? LIMIT ? OFFSET ?",
            ),
            (
                "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO NOTHING",
                "INSERT IGNORE INTO t (a, b) VALUES (?, ?)",
            ),
            (
                "INSERT INTO t (a, b) VALUES ($1,$2) ON CONFLICT DO NOTHING",
                "INSERT IGNORE INTO t (a, b) VALUES (?,?)",
            ),
            (
                "INSERT INTO t (a, b, n) VALUES ($1, $2, $3) \
                 ON CONFLICT (a, b) DO UPDATE SET n = t.n + excluded.n, b = excluded.b",
                "INSERT INTO t (a, b, n) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE n = t.n + VALUES(n), b = VALUES(b)",
            ),
            (
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM t",
                "SELECT CAST(COALESCE(SUM(n), 0) AS SIGNED) FROM t",
            ),
            (
                "SELECT '$1 ON CONFLICT DO NOTHING' || x, 'it''s $2' FROM t WHERE y = $1",
                "SELECT '$1 ON CONFLICT DO NOTHING' || x, 'it''s $2' FROM t WHERE y = ?",
            ),
            (
                "UPDATE t SET not_excluded.x = 1, e = $1",
                "UPDATE t SET not_excluded.x = 1, e = ?",
            ),
            // Repeated or out of order: left for MySQL to refuse, never misbound.
            (
                "SELECT a FROM t WHERE ($1 = '' OR b = $1)",
                "SELECT a FROM t WHERE ($1 = '' OR b = $1)",
            ),
            (
                "SELECT a FROM t WHERE b = $2 AND c = $1",
                "SELECT a FROM t WHERE b = $2 AND c = $1",
            ),
        ];
        for (portable, mysql) in cases {
            assert_eq!(Backend::MySql.sql(portable), mysql, "{portable}");
        }
    }
}
