//! Small helpers for hand-written, portable SQL.

use chrono::{DateTime, Utc};

/// Rows per multi-row statement of `cols` columns on `conn`'s backend.
///
/// SQLite resolves `$N` parameters by name with a linear scan, so a statement's bind
/// cost grows with the square of its parameter count: keep it near 300 there.
/// PostgreSQL binds by position; 8000 parameters per statement saves round trips and
/// stays far below its 65535 limit.
pub(crate) fn rows_per_statement(conn: &sqlx::AnyConnection, cols: usize) -> usize {
    let budget = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        8_000
    } else {
        300
    };
    (budget / cols.max(1)).max(1)
}

/// `($1,$2,…),(…)` for `rows` rows of `cols` columns.
pub(crate) fn values(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
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
            s.push('$');
            s.push_str(&n.to_string());
            n += 1;
        }
        s.push(')');
    }
    s
}

/// `$start,$start+1,…` (`count` placeholders), for `IN (…)` lists.
pub(crate) fn list(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(",")
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
    fn placeholders() {
        assert_eq!(values(2, 2), "($1,$2),($3,$4)");
        assert_eq!(list(3, 2), "$3,$4");
    }
}
