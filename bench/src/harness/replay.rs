//! Scenario 5: event-log append and projection replay throughput on generated usage
//! events — SQLite log appends, JetStream publishes with acks, and `projections::rebuild`
//! of the `usage` projection into SQLite and PostgreSQL.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use chrono::Utc;
use ingest::EventLog;
use schema::{
    AccountId, ApiKeyId, Completeness, Envelope, Event, ServerToolUse, TenantId, UsageRecorded,
};
use uuid::Uuid;

use super::processes::start_nats;

/// Events per append batch.
const BATCH: u64 = 1000;

/// A realistic usage event: 10 accounts, 5 tenants, 20 keys, 3 models, varied tokens.
fn usage_event(i: u64) -> Result<Envelope> {
    let models = ["claude-sonnet-4-6", "claude-opus-4-7", "claude-haiku-4-5"];
    let account = AccountId::parse(format!("acct-{}", i % 10))?;
    Ok(Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::UsageRecorded(UsageRecorded {
            account: account.clone(),
            attempt: 1,
            model: models[(i % 3) as usize].to_owned(),
            status: 200,
            stream: i & 1 == 0,
            input_tokens: 100 + i % 5000,
            output_tokens: 10 + i % 700,
            cache_read_input_tokens: (i % 7) * 1000,
            cache_creation_5m_input_tokens: (i % 11) * 100,
            cache_creation_1h_input_tokens: (i % 13) * 50,
            server_tool_use: ServerToolUse::default(),
            service_tier: Some("standard".into()),
            speed: None,
            inference_geo: Some("global".into()),
            completeness: Completeness::Complete,
        }),
    )
    .with_request(format!("req_bench_{i}"))
    .with_key(
        Some(TenantId::parse(format!("tenant-{}", i % 5))?),
        Some(ApiKeyId::parse(format!("key-{}", i % 20))?),
    )
    .with_account(Some(account)))
}

async fn fill(log: &dyn EventLog, n: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Envelope> = (i..(i + BATCH).min(n))
            .map(usage_event)
            .collect::<Result<_>>()?;
        log.append_batch(&batch).await?;
        i += BATCH;
    }
    Ok(started.elapsed())
}

async fn rebuild_usage(db_url: &str, log: Arc<dyn EventLog>) -> Result<Duration> {
    let db = projections::connect(db_url).await?;
    projections::migrate(&db).await?;
    let prices = Arc::new(projections::PriceTable::embedded()?);
    let all = projections::all(prices);
    let started = Instant::now();
    projections::rebuild(&db, log, &all, "usage", &mut |_, _| {}).await?;
    let took = started.elapsed();
    db.close().await;
    Ok(took)
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

/// Runs the scenario over `n` generated events; returns the markdown section.
pub async fn run(n: u64) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### 5. Event log and replay throughput ({n} generated usage events)\n\nAppends in batches of {BATCH}. Rebuild = `projections::rebuild(…, \"usage\")` (reset, then replay the SQLite log to its head into the ledger and totals, with pricing).\n\n| operation | events | seconds | events/s |\n|---|---|---|---|"
    );
    let dir = tempfile::tempdir()?;
    let log = Arc::new(ingest::sqlite::SqliteLog::open(&dir.path().join("events.db")).await?);
    let took = fill(log.as_ref(), n)
        .await
        .context("append to the SQLite log")?;
    let _ = writeln!(
        out,
        "| append, embedded SQLite log | {n} | {:.1} | {} |",
        took.as_secs_f64(),
        rate(n, took)
    );

    match start_nats().await {
        Ok(nats) => {
            match nats::JetStreamLog::connect(&nats.url, nats::StreamSettings::default()).await {
                Ok(js) => match fill(&js, n).await {
                    Ok(took) => {
                        let _ = writeln!(out, "| publish with acks, JetStream (nats-server, file storage) | {n} | {:.1} | {} |", took.as_secs_f64(), rate(n, took));
                    }
                    Err(e) => {
                        let _ = writeln!(out, "| publish, JetStream | failed: {e:#} | | |");
                    }
                },
                Err(e) => {
                    let _ = writeln!(out, "| publish, JetStream | not run: {e} | | |");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "| publish, JetStream | not run: {e:#} | | |");
        }
    }

    let sqlite_url = format!("sqlite://{}", dir.path().join("read.db").display());
    let took = rebuild_usage(&sqlite_url, log.clone())
        .await
        .context("rebuild on SQLite")?;
    let _ = writeln!(
        out,
        "| rebuild `usage`, SQLite read model | {n} | {:.1} | {} |",
        took.as_secs_f64(),
        rate(n, took)
    );

    let admin_url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match postgres_rebuild(&admin_url, log.clone(), n).await {
        Ok(row) => out.push_str(&row),
        Err(e) => {
            let _ = writeln!(out, "| rebuild `usage`, PostgreSQL | not run: {e:#} | | |");
        }
    }
    log.close().await;
    Ok(out)
}

async fn postgres_rebuild(admin_url: &str, log: Arc<dyn EventLog>, n: u64) -> Result<String> {
    let admin = projections::connect(admin_url).await?;
    let name = format!("bench_replay_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    let result = rebuild_usage(&format!("{base}/{name}"), log).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
    let took = result?;
    Ok(format!(
        "| rebuild `usage`, PostgreSQL read model | {n} | {:.1} | {} |\n",
        took.as_secs_f64(),
        rate(n, took)
    ))
}
