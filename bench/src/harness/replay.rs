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
use super::procfs;

/// Events per append batch.
const BATCH: u64 = 1000;

/// A realistic usage event: 10 accounts, 5 tenants, 20 keys, 3 models, varied tokens.
pub(crate) fn usage_event(i: u64) -> Result<Envelope> {
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

/// Wall time, this process's CPU time (all threads) and the machine's 1-minute load
/// average at the end of a phase: on a shared machine the CPU time is the steadier
/// figure.
struct Phase {
    wall: Duration,
    cpu: Duration,
    load: String,
}

impl Phase {
    async fn measure<F: std::future::Future<Output = Result<()>>>(work: F) -> Result<Phase> {
        let cpu = || procfs::cpu_us(std::process::id()).unwrap_or(0);
        let (started, cpu_before) = (Instant::now(), cpu());
        work.await?;
        Ok(Phase {
            wall: started.elapsed(),
            cpu: Duration::from_micros(cpu().saturating_sub(cpu_before)),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default(),
        })
    }

    fn row(&self, operation: &str, n: u64) -> String {
        format!(
            "| {operation} | {n} | {:.1} | {} | {:.1} | {} |\n",
            self.wall.as_secs_f64(),
            rate(n, self.wall),
            self.cpu.as_secs_f64(),
            self.load
        )
    }
}

async fn fill(log: &dyn EventLog, n: u64) -> Result<()> {
    let mut i = 0;
    while i < n {
        let batch: Vec<Envelope> = (i..(i + BATCH).min(n))
            .map(usage_event)
            .collect::<Result<_>>()?;
        log.append_batch(&batch).await?;
        i += BATCH;
    }
    Ok(())
}

async fn rebuild_usage(db_url: &str, log: Arc<dyn EventLog>) -> Result<Phase> {
    let db = projections::connect(db_url).await?;
    projections::migrate(&db).await?;
    let prices = Arc::new(projections::PriceTable::embedded()?);
    let all = projections::all(prices);
    let phase = Phase::measure(async {
        projections::rebuild(&db, log, &all, "usage", &mut |_, _| {}).await?;
        Ok(())
    })
    .await;
    db.close().await;
    phase
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

/// Runs the scenario over `n` generated events; returns the markdown section.
pub async fn run(n: u64) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### 5. Event log and replay throughput ({n} generated usage events)\n\nAppends in batches of {BATCH}. Rebuild = `projections::rebuild(…, \"usage\")` (reset, then replay the SQLite log to its head into the ledger and totals, with pricing). Process CPU = this process's user + system time over the phase (all its threads; not the PostgreSQL or MariaDB server's, nor nats-server's); load = the machine's 1-minute load average at the end of the phase.\n\n| operation | events | seconds | events/s | process CPU s | load |\n|---|---|---|---|---|---|"
    );
    let dir = tempfile::tempdir()?;
    let log = Arc::new(ingest::sqlite::SqliteLog::open(&dir.path().join("events.db")).await?);
    let phase = Phase::measure(fill(log.as_ref(), n))
        .await
        .context("append to the SQLite log")?;
    out.push_str(&phase.row("append, embedded SQLite log", n));

    match start_nats().await {
        Ok(nats) => {
            match nats::JetStreamLog::connect(&nats.url, nats::StreamSettings::default()).await {
                Ok(js) => match Phase::measure(fill(&js, n)).await {
                    Ok(phase) => out.push_str(&phase.row(
                        "publish with acks, JetStream (nats-server, file storage)",
                        n,
                    )),
                    Err(e) => {
                        let _ = writeln!(out, "| publish, JetStream | failed: {e:#} | | | | |");
                    }
                },
                Err(e) => {
                    let _ = writeln!(out, "| publish, JetStream | not run: {e} | | | | |");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "| publish, JetStream | not run: {e:#} | | | | |");
        }
    }

    let sqlite_url = format!("sqlite://{}", dir.path().join("read.db").display());
    let phase = rebuild_usage(&sqlite_url, log.clone())
        .await
        .context("rebuild on SQLite")?;
    out.push_str(&phase.row("rebuild `usage`, SQLite read model", n));

    for (env, default, label) in [
        (
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
            "PostgreSQL",
        ),
        (
            "TEST_MYSQL_URL",
            "mysql://root@127.0.0.1:3306/mysql",
            "MariaDB / MySQL",
        ),
    ] {
        let admin_url = std::env::var(env).unwrap_or_else(|_| default.to_owned());
        match server_rebuild(&admin_url, log.clone()).await {
            Ok((phase, version)) => out.push_str(&phase.row(
                &format!("rebuild `usage`, {label} read model ({version})"),
                n,
            )),
            Err(e) => {
                let _ = writeln!(out, "| rebuild `usage`, {label} | not run: {e:#} | | | | |");
            }
        }
    }
    log.close().await;
    Ok(out)
}

/// Rebuilds into a fresh database on the server at `admin_url` (PostgreSQL or MySQL);
/// returns the phase and the server's version.
async fn server_rebuild(admin_url: &str, log: Arc<dyn EventLog>) -> Result<(Phase, String)> {
    let admin = projections::connect(admin_url).await?;
    let mysql = projections::Backend::of(&admin)? == projections::Backend::MySql;
    let name = format!("bench_replay_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await?;
    let charset = if mysql {
        " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    } else {
        ""
    };
    sqlx::query(&format!("CREATE DATABASE {name}{charset}"))
        .execute(&admin)
        .await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    let result = rebuild_usage(&format!("{base}/{name}"), log).await;
    let force = if mysql { "" } else { " WITH (FORCE)" };
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}{force}"))
        .execute(&admin)
        .await;
    let version: String = sqlx::query_scalar(if mysql {
        "SELECT VERSION()"
    } else {
        "SHOW server_version"
    })
    .fetch_one(&admin)
    .await
    .unwrap_or_default();
    admin.close().await;
    Ok((result?, version))
}
