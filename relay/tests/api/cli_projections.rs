//! The projection commands as an operator runs them: `relay rebuild`, `relay
//! statement`, `relay events tail`, `relay reprice` and `relay project`, against the
//! embedded stores in a temporary `DATA_DIR` (with `TEST_APP_DATABASE=mysql`, the read
//! models in a fresh MariaDB database instead).

use chrono::{TimeZone, Utc};
use ingest::EventLog;
use schema::{
    AccountId, AdminAction, ApiKeyId, Completeness, Envelope, Event, ServerToolUse, TenantId,
    UsageRecorded,
};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn relay(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .env("DATABASE_URL", database_url(data_dir))
        .env("LOG_LEVEL", "warn")
        .env("NO_COLOR", "1");
    c
}

/// The read models' database: the MariaDB one `seed` made, else SQLite in `data_dir`.
fn database_url(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("database_url"))
        .unwrap_or_else(|_| format!("sqlite://{}", data_dir.join("relay.db").display()))
}

fn ok(mut cmd: Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "command failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn usage(tenant: &str, model: &str, tokens: [u64; 5], day: u32) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap(),
        Event::UsageRecorded(UsageRecorded {
            account: AccountId::parse("acc_1").unwrap(),
            attempt: 1,
            model: model.into(),
            status: 200,
            stream: true,
            input_tokens: tokens[0],
            output_tokens: tokens[1],
            cache_read_input_tokens: tokens[2],
            cache_creation_5m_input_tokens: tokens[3],
            cache_creation_1h_input_tokens: tokens[4],
            server_tool_use: ServerToolUse::default(),
            service_tier: None,
            speed: None,
            inference_geo: None,
            completeness: Completeness::Complete,
        }),
    )
    .with_request(format!("req_{day}"))
    .with_key(
        Some(TenantId::parse(tenant).unwrap()),
        Some(ApiKeyId::parse("key_1").unwrap()),
    )
}

fn admin_action(at: chrono::DateTime<Utc>) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        at,
        Event::AdminAction(AdminAction {
            actor: "cli".into(),
            action: "key.create".into(),
            target: "key:key_1".into(),
            summary: "created".into(),
        }),
    )
}

/// Writes a few events into the embedded log of `data_dir`; returns them.
async fn seed(data_dir: &Path) -> Vec<Envelope> {
    if std::env::var("TEST_APP_DATABASE").as_deref() == Ok("mysql") {
        let db = crate::MyDb::new().await;
        std::fs::write(data_dir.join("database_url"), &db.url).unwrap();
    }
    let log = ingest::sqlite::SqliteLog::open(&data_dir.join("events.db"))
        .await
        .unwrap();
    let events = vec![
        // 9281*3 + 1200*15 + 20000*0.3 + 3000*3.75 + 1000*6 = 69093 µUSD.
        usage(
            "acme",
            "claude-sonnet-4-6",
            [9_281, 1_200, 20_000, 3_000, 1_000],
            3,
        ),
        // 1000*1 + 1000*5 = 6000 µUSD.
        usage("acme", "claude-haiku-4-5", [1_000, 1_000, 0, 0, 0], 4),
        usage("globex", "claude-haiku-4-5", [1_000, 0, 0, 0, 0], 4),
        admin_action(Utc.with_ymd_and_hms(2026, 11, 5, 0, 0, 0).unwrap()),
    ];
    log.append_batch(&events).await.unwrap();
    log.close().await;
    events
}

#[tokio::test]
async fn rebuild_then_statement_in_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let events = seed(dir.path()).await;
    let out = ok({
        let mut c = relay(dir.path());
        c.args(["rebuild", "all"]);
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rebuilt usage up to position 4"),
        "{stderr}"
    );
    assert!(stderr.contains("100%"), "{stderr}");

    let out = ok({
        let mut c = relay(dir.path());
        c.args([
            "statement",
            "--tenant",
            "acme",
            "--month",
            "2026-11",
            "--format",
            "json",
        ]);
        c
    });
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["totals"]["cost"], "0.075093000");
    assert_eq!(st["totals"]["requests"], 2);
    let lines = st["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    let sonnet = lines
        .iter()
        .find(|l| l["model"] == "claude-sonnet-4-6")
        .unwrap();
    assert_eq!(sonnet["cost"], "0.069093000");
    assert_eq!(sonnet["unit_prices"]["cache_write_1h"], "6");
    assert_eq!(sonnet["event_ids"][0], events[0].id.to_string());

    let out = ok({
        let mut c = relay(dir.path());
        c.args(["statement", "--tenant", "acme", "--month", "2026-11"]);
        c
    });
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows[0].starts_with("tenant,month,model,"));
    assert!(
        rows[3].contains("TOTAL") && rows[3].contains("0.075093000"),
        "{csv}"
    );

    let bad = relay(dir.path())
        .args(["rebuild", "nonsense"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn events_tail_prints_json_lines_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let events = seed(dir.path()).await;
    let tail = |args: &[&str]| {
        let mut c = relay(dir.path());
        c.args(["events", "tail", "--no-follow"]).args(args);
        let out = ok(c);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let all = tail(&[]);
    assert_eq!(all.len(), 4);
    for (i, (line, e)) in all.iter().zip(&events).enumerate() {
        assert_eq!(line["position"], i as u64 + 1);
        assert_eq!(line["id"], e.id.to_string());
        // The rest of the line is the canonical envelope.
        let mut envelope = line.clone();
        envelope.as_object_mut().unwrap().remove("position");
        let parsed: Envelope = serde_json::from_value(envelope).unwrap();
        assert_eq!(&parsed, e);
    }
    let later = tail(&["--from-seq", "2"]);
    assert_eq!(later.len(), 2);
    assert_eq!(later[0]["position"], 3);
    let admin = tail(&["--type", "admin.action"]);
    assert_eq!(admin.len(), 1);
    assert_eq!(admin[0]["type"], "admin.action");
    let usage = tail(&["--type", "usage"]);
    assert_eq!(usage.len(), 3);
    // Two more: one just now, one two hours ago. `--since 1h` keeps exactly the events
    // of the last hour (the seeded November ones only if the clock is before them).
    let now = Utc::now();
    let fresh = admin_action(now);
    let stale = admin_action(now - chrono::Duration::hours(2));
    let log = ingest::sqlite::SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    log.append_batch(&[stale.clone(), fresh.clone()])
        .await
        .unwrap();
    log.close().await;
    let since = now - chrono::Duration::hours(1);
    let want: Vec<String> = events
        .iter()
        .chain([&stale, &fresh])
        .filter(|e| e.occurred_at >= since)
        .map(|e| e.id.to_string())
        .collect();
    let recent: Vec<String> = tail(&["--since", "1h"])
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recent, want);
    assert!(recent.contains(&fresh.id.to_string()));
    assert!(!recent.contains(&stale.id.to_string()));
    let bad = relay(dir.path())
        .args(["events", "tail", "--no-follow", "--type", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn reprice_prints_the_difference_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    ok({
        let mut c = relay(dir.path());
        c.args(["rebuild", "usage"]);
        c
    });
    // A new version from 2026-11-04 doubles Haiku 4.5's input price.
    let mut table: serde_json::Value =
        serde_json::from_str(projections::pricing::EMBEDDED_JSON).unwrap();
    table["versions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": "test-2026-11-04",
            "effective_from": "2026-11-04",
            "models": { "claude-haiku-4-5": { "input": "2", "output": "5", "cache_read": "0.1" } }
        }));
    let path = dir.path().join("prices.json");
    std::fs::write(&path, table.to_string()).unwrap();
    let out = ok({
        let mut c = relay(dir.path());
        c.env("PRICE_TABLE", &path)
            .args(["reprice", "--from", "2026-11-01"]);
        c
    });
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |name: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // acme: 1000 more input tokens at +$1/MTok on Nov 4 = $0.001; globex the same.
    assert_eq!(row("acme")[5], "0.001000000", "{text}");
    assert_eq!(row("globex")[5], "0.001000000", "{text}");
    assert_eq!(row("TOTAL")[5], "0.002000000", "{text}");
    let out = ok({
        let mut c = relay(dir.path());
        c.env("PRICE_TABLE", &path).args([
            "statement",
            "--tenant",
            "globex",
            "--month",
            "2026-11",
            "--format",
            "json",
        ]);
        c
    });
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["totals"]["cost"], "0.002000000");
    assert_eq!(st["lines"][0]["price_version"], "test-2026-11-04");
}

#[tokio::test]
async fn project_runs_until_terminated() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let mut child = relay(dir.path())
        .arg("project")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = database_url(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "projectors did not catch up");
        if !url.starts_with("sqlite:") || dir.path().join("relay.db").exists() {
            if let Ok(db) = projections::connect(&url).await {
                let lag = projections::read::lag(
                    &db,
                    &ingest::sqlite::SqliteLog::open(&dir.path().join("events.db"))
                        .await
                        .unwrap(),
                    &projections::PROJECTION_NAMES,
                )
                .await;
                db.close().await;
                if lag.is_ok_and(|l| l.iter().all(|p| p.checkpoint == 4)) {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let db = projections::connect(&url).await.unwrap();
    let st = projections::read::statement(&db, "acme", "2026-11")
        .await
        .unwrap();
    assert_eq!(st.totals.cost_nanos, 75_093_000);
    // A clean stop released the leases: a rebuild can run at once.
    db.close().await;
    ok({
        let mut c = relay(dir.path());
        c.args(["rebuild", "all"]);
        c
    });
}
