//! Operational endpoints: `GET /api/v1/status` (database, event log, projector lag,
//! spool, an account summary). Public, like the seed's: it names no account, key or
//! tenant.

use crate::app::AppState;
use axum::extract::State;
use axum::Json;
use chrono::Utc;
use projections::Dialect as _;
use serde_json::json;
use std::collections::BTreeMap;

/// `GET /api/v1/status`.
pub async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let db_ok = sqlx::query(&state.db.sql("SELECT 1"))
        .execute(&state.db)
        .await
        .is_ok();
    let head = state.log.head().await;
    let lag = projections::read::lag(
        &state.db,
        state.log.as_ref(),
        &projections::PROJECTION_NAMES,
    )
    .await
    .ok();
    let stats = state.publisher.stats();
    let snapshot = state.proxy.pool.snapshot();
    let now = Utc::now();
    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut disabled = 0u64;
    for slot in &snapshot.slots {
        if !slot.account.enabled {
            disabled += 1;
            continue;
        }
        let h = slot.rt.health();
        let name = if h.available(now) {
            "healthy"
        } else {
            crate::metrics::health_name(h.state)
        };
        *by_state.entry(name).or_default() += 1;
    }
    let overall = if db_ok && head.is_ok() {
        "ok"
    } else {
        "degraded"
    };
    Json(json!({
        "status": overall,
        "database_status": if db_ok { "ok" } else { "error" },
        "database_backend": projections::Backend::from_url(&state.common.database_url())
            .map(|b| format!("{b:?}").to_lowercase())
            .unwrap_or_default(),
        "event_log": {
            "backend": state.log.backend(),
            "status": if head.is_ok() { "ok" } else { "unreachable" },
            "head": head.ok(),
        },
        "projections": lag.map(|l| l.into_iter().map(|p| json!({
            "projection": p.projection,
            "checkpoint": p.checkpoint,
            "behind": p.behind,
        })).collect::<Vec<_>>()),
        "publisher": {
            "queue_depth": stats.queue_depth,
            "spool_events": stats.spool_events,
            "spool_bytes": stats.spool_bytes,
            "quarantine_events": stats.quarantine_events,
            "journal": {
                "fsync": format!("{:?}", state.publisher.journal_fsync()).to_lowercase(),
                "failing": stats.journal.failing,
                "segments": stats.journal.segments,
                "open_attempts": stats.journal.open_attempts,
                "write_errors_total": stats.journal.write_errors_total,
            },
        },
        "accounts": {
            "total": snapshot.slots.len(),
            "disabled": disabled,
            "by_state": by_state,
        },
        "time": now,
    }))
}
