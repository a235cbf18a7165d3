//! The `relay` binary as an operator uses it: fresh start, graceful shutdown, the key
//! and account commands, OAuth login, token refresh, and PostgreSQL migrations.

use bench::mock::{MockConfig, MockUpstream};
use sqlx::Connection;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn relay_cmd(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .env("LOG_LEVEL", "info")
        // The mock upstream listens on loopback.
        .env("UPSTREAM_ALLOW_PRIVATE", "true")
        .env("NO_COLOR", "1");
    c
}

/// Runs a subcommand to completion with `stdin`, returning stdout; panics on failure.
pub(crate) fn run_ok(mut cmd: Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `relay serve` child process and the address it announced.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(mut cmd: Command) -> Served {
        let mut child = cmd
            .arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("relay did not announce its address");
        Served { child, addr }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn fresh_start_creates_data_dir_serves_health_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested").join("data");
    let served = Served::start(relay_cmd(&data));
    let (status, body) = get(&format!("http://{}/health", served.addr)).await;
    assert_eq!(status, 200);
    assert!(body.contains("ok"));
    assert!(data.join("events.db").exists());
    assert!(data.join("relay.db").exists());
    assert!(data.join("encryption.key").exists());
    let status = served.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn keys_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = relay_cmd(tmp.path());
    cmd.args(["keys", "create", "--name", "alice", "--tenant", "acme"]);
    let out = run_ok(cmd, "");
    let key = out.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("sk-relay-"), "{out}");
    assert!(key.len() > 40);
    let db = std::fs::read(tmp.path().join("relay.db")).unwrap();
    let wal = std::fs::read(tmp.path().join("relay.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key is stored in clear"
        );
    }
    let mut list = relay_cmd(tmp.path());
    list.args(["keys", "list"]);
    let listed = run_ok(list, "");
    assert!(listed.contains("alice") && listed.contains("acme"));
    assert!(!listed.contains(&key));
}

#[tokio::test]
async fn accounts_add_reads_the_credential_from_stdin_and_never_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "sk-ant-api03-very-secret-credential";
    let mut cmd = relay_cmd(tmp.path());
    cmd.args([
        "accounts",
        "add",
        "--name",
        "main",
        "--base-url",
        "http://127.0.0.1:9",
        "--priority",
        "5",
        "--proxy",
        "socks5://user:pw@127.0.0.1:1080",
    ]);
    let id = run_ok(cmd, &format!("{secret}\n"));
    assert!(id.trim().starts_with("acc_"));
    let mut list = relay_cmd(tmp.path());
    list.args(["accounts", "list"]);
    let listed = run_ok(list, "");
    assert!(listed.contains("main") && listed.contains("\t5\t"));
    assert!(!listed.contains(secret));
    assert!(!listed.contains("pw@"), "proxy password shown: {listed}");
    for f in ["relay.db", "relay.db-wal", "events.db", "events.db-wal"] {
        let bytes = std::fs::read(tmp.path().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "credential stored in clear in {f}"
        );
    }
    // A bad base URL is refused with a message, not stored.
    let mut bad = relay_cmd(tmp.path());
    bad.args(["accounts", "add", "--name", "x", "--base-url", "ftp://nope"]);
    let out = bad
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn oauth_login_exchanges_the_pasted_code_with_pkce() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = relay_cmd(tmp.path());
    cmd.args([
        "accounts",
        "oauth-login",
        "--name",
        "max-1",
        "--base-url",
        &mock.base_url(),
        "--token-url",
        &format!("{}/v1/oauth/token", mock.base_url()),
    ]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    while !url.starts_with("https://") {
        url.clear();
        assert!(stdout.read_line(&mut url).unwrap() > 0, "no authorize URL");
    }
    let param = |name: &str| {
        url.trim()
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    assert_eq!(param("code_challenge_method"), "S256");
    mock.register_oauth_code("the-code", &param("code_challenge"));
    let pasted = format!("the-code#{}\n", param("state"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pasted.as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rest.trim().starts_with("acc_"), "{rest}");
    let mut list = relay_cmd(tmp.path());
    list.args(["accounts", "list"]);
    let listed = run_ok(list, "");
    assert!(listed.contains("max-1\toauth"), "{listed}");
    assert!(!listed.contains("sk-ant-oat01"));
}

#[tokio::test]
async fn serve_refreshes_oauth_tokens_that_are_about_to_lapse() {
    // Tokens from this mock live 60 s, inside the 5-minute refresh margin.
    let mock = MockUpstream::start_with(MockConfig {
        oauth_expires_in: 60,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    mock.register_refresh_token("sk-ant-ort01-initial");
    let tmp = tempfile::tempdir().unwrap();
    // Seed an OAuth account through the library, as `oauth-login` would.
    {
        let pool = relay::db::connect(&format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join("relay.db").display()
        ))
        .await
        .unwrap();
        relay::db::migrate(&pool, relay::db::Backend::Sqlite)
            .await
            .unwrap();
        let cipher = relay::crypto::Cipher::load_or_create(None, tmp.path()).unwrap();
        let store = relay::accounts::AccountStore::new(pool, cipher);
        store
            .add_with_tokens(
                relay::accounts::NewAccount {
                    name: "max".into(),
                    kind: relay::accounts::AccountKind::OAuth,
                    base_url: mock.base_url(),
                    credential: relay::crypto::Secret::new("sk-ant-oat01-old"),
                    priority: 1,
                    weight: 1,
                    group: None,
                    concurrency: 0,
                    proxy_url: None,
                },
                Some(relay::crypto::Secret::new("sk-ant-ort01-initial")),
                Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
            )
            .await
            .unwrap();
    }
    let mut cmd = relay_cmd(tmp.path());
    cmd.env(
        "OAUTH_TOKEN_URL",
        format!("{}/v1/oauth/token", mock.base_url()),
    );
    let served = Served::start(cmd);
    // The refresh is recorded in the event log as an admin action.
    let log = ingest::sqlite::SqliteLog::open(&tmp.path().join("events.db"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = ingest::testing::read_all(&log).await;
        let refreshed = events.iter().any(|e| {
            matches!(&e.envelope.event, schema::Event::AdminAction(a) if a.action == "account.token_refreshed")
        });
        if refreshed {
            break;
        }
        assert!(Instant::now() < deadline, "token was not refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(served);
    let pool = relay::db::connect(&format!(
        "sqlite://{}",
        tmp.path().join("relay.db").display()
    ))
    .await
    .unwrap();
    let cipher = relay::crypto::Cipher::load_or_create(None, tmp.path()).unwrap();
    let accounts = relay::accounts::AccountStore::new(pool, cipher)
        .list()
        .await
        .unwrap();
    assert!(accounts[0]
        .credential
        .expose()
        .starts_with("sk-ant-oat01-mock-access"));
    assert!(accounts[0]
        .refresh_token
        .as_ref()
        .unwrap()
        .expose()
        .starts_with("sk-ant-ort01-mock-refresh"));
}

#[tokio::test]
async fn migrations_and_key_commands_work_on_postgresql() {
    let admin = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("relay_cli_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("bad TEST_POSTGRES_URL"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut migrate = relay_cmd(tmp.path());
    migrate.env("DATABASE_URL", &url).arg("migrate");
    run_ok(migrate, "");
    // Twice: migrations are idempotent.
    let mut again = relay_cmd(tmp.path());
    again.env("DATABASE_URL", &url).arg("migrate");
    run_ok(again, "");
    let mut create = relay_cmd(tmp.path());
    create
        .env("DATABASE_URL", &url)
        .args(["keys", "create", "--name", "pg", "--tenant", "t1"]);
    let out = run_ok(create, "");
    assert!(out.lines().last().unwrap().starts_with("sk-relay-"));
    let mut list = relay_cmd(tmp.path());
    list.env("DATABASE_URL", &url).args(["keys", "list"]);
    assert!(run_ok(list, "").contains("\tpg\tt1\t"));
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn first_start_generates_an_admin_password_and_the_cli_resets_it() {
    let tmp = tempfile::tempdir().unwrap();
    let served = Served::start(relay_cmd(tmp.path()));
    let file = tmp.path().join("initial-admin-password");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(password.len() >= 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let http = reqwest::Client::new();
    let login = |p: String| {
        let http = http.clone();
        let url = format!("http://{}/api/v1/auth/login", served.addr);
        async move {
            http.post(url)
                .json(&serde_json::json!({"username": "admin", "password": p}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = login(password.clone()).await;
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The seed's FAQ said "delete the row"; here it is a command.
    let mut reset = relay_cmd(tmp.path());
    reset.args(["users", "reset-password", "admin"]);
    let out = run_ok(reset, "a-new-admin-password\n");
    assert!(out.contains("reset"), "{out}");
    let me = http
        .get(format!("http://{}/api/v1/auth/me", served.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.status(),
        401,
        "a token from before the reset still works"
    );
    assert_eq!(login(password).await.status(), 401);
    assert_eq!(login("a-new-admin-password".into()).await.status(), 200);
    assert!(served.terminate().success());
}

#[tokio::test]
async fn keys_and_accounts_are_managed_from_the_cli_with_one_audit_event_each() {
    let tmp = tempfile::tempdir().unwrap();
    let mut create = relay_cmd(tmp.path());
    create.args([
        "keys", "create", "--name", "leaky", "--tenant", "acme", "--group", "vip",
    ]);
    let out = run_ok(create, "");
    let id = out.split_whitespace().nth(2).unwrap().to_owned();
    assert!(id.starts_with("key_"), "{out}");
    let mut revoke = relay_cmd(tmp.path());
    revoke.args(["keys", "revoke", &id]);
    run_ok(revoke, "");
    let mut again = relay_cmd(tmp.path());
    let failed = again
        .args(["keys", "revoke", &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!failed.status.success(), "revoking twice succeeded");
    let mut list = relay_cmd(tmp.path());
    list.args(["keys", "list"]);
    assert!(!run_ok(list, "").contains(&id));

    let mut add = relay_cmd(tmp.path());
    add.args([
        "accounts",
        "add",
        "--name",
        "main",
        "--base-url",
        "http://127.0.0.1:9",
    ]);
    run_ok(add, "sk-ant-api03-cli-account\n");
    for verb in ["disable", "enable", "reset"] {
        let mut c = relay_cmd(tmp.path());
        c.args(["accounts", verb, "main"]);
        run_ok(c, "");
    }
    let mut upd = relay_cmd(tmp.path());
    upd.args([
        "accounts",
        "update",
        "main",
        "--priority",
        "7",
        "--group",
        "vip",
    ]);
    run_ok(upd, "");
    let mut list = relay_cmd(tmp.path());
    list.args(["accounts", "list"]);
    let listed = run_ok(list, "");
    assert!(
        listed.contains("\t7\t") && listed.contains("\tvip\t"),
        "{listed}"
    );
    let mut rm = relay_cmd(tmp.path());
    rm.args(["accounts", "remove", "main"]);
    run_ok(rm, "");
    let mut list = relay_cmd(tmp.path());
    list.args(["accounts", "list"]);
    assert!(!run_ok(list, "").contains("main"));

    let mut tail = relay_cmd(tmp.path());
    tail.args(["events", "tail", "--no-follow", "--type", "admin.action"]);
    let events = run_ok(tail, "");
    let count = |verb: &str| {
        events
            .lines()
            .filter(|l| l.contains(&format!("\"action\":\"{verb}\"")))
            .count()
    };
    for (verb, n) in [
        ("key.create", 1),
        ("key.revoke", 1),
        ("group.create", 1),
        ("account.add", 1),
        ("account.disable", 1),
        ("account.enable", 1),
        ("account.reset", 1),
        ("account.update", 1),
        ("account.remove", 1),
    ] {
        assert_eq!(count(verb), n, "{verb} in {events}");
    }
    assert!(
        events.lines().all(|l| l.contains("\"actor\":\"cli\"")),
        "{events}"
    );
    assert!(!events.contains("sk-ant-api03-cli-account"));
}

#[tokio::test]
async fn key_limits_are_set_and_cleared_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let mut create = relay_cmd(tmp.path());
    create.args(["keys", "create", "--name", "capped"]);
    let out = run_ok(create, "");
    let id = out.split_whitespace().nth(2).unwrap().to_owned();
    let mut set = relay_cmd(tmp.path());
    set.args([
        "keys",
        "limits",
        &id,
        "--rpm",
        "5",
        "--daily-budget-usd",
        "2.50",
        "--allowed-models",
        "claude-sonnet-*,claude-haiku-*",
    ]);
    let shown: serde_json::Value = serde_json::from_str(run_ok(set, "").trim()).unwrap();
    assert_eq!(shown["rpm"], 5);
    assert_eq!(shown["daily_budget_usd"], "2.50");
    assert_eq!(shown["allowed_models"].as_array().unwrap().len(), 2);
    let mut clear = relay_cmd(tmp.path());
    clear.args(["keys", "limits", &id, "--rpm", "none"]);
    let shown: serde_json::Value = serde_json::from_str(run_ok(clear, "").trim()).unwrap();
    assert!(shown.get("rpm").is_none(), "{shown}");
    assert_eq!(shown["daily_budget_usd"], "2.50");
    let mut bad = relay_cmd(tmp.path());
    let failed = bad
        .args(["keys", "limits", &id, "--rpm", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("rpm must be between"));
}

#[tokio::test]
async fn metadata_private_and_loopback_base_urls_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1:2375",
        "http://0x7f000001",
        "http://[::1]:9",
    ] {
        let mut add = relay_cmd(tmp.path());
        add.env_remove("UPSTREAM_ALLOW_PRIVATE").args([
            "accounts",
            "add",
            "--name",
            "ssrf",
            "--base-url",
            url,
        ]);
        let out = add
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(b"sk-ant-api03-x\n")
            .unwrap();
        let done = out.wait_with_output().unwrap();
        assert!(!done.status.success(), "{url} was accepted");
        let err = String::from_utf8_lossy(&done.stderr);
        assert!(err.contains("UPSTREAM_ALLOW_PRIVATE"), "{url}: {err}");
    }
    // An operator can allow one host.
    let mut add = relay_cmd(tmp.path());
    add.env_remove("UPSTREAM_ALLOW_PRIVATE")
        .env("UPSTREAM_ALLOW_HOSTS", "10.0.0.1")
        .args([
            "accounts",
            "add",
            "--name",
            "gateway",
            "--base-url",
            "http://10.0.0.1:2375",
        ]);
    run_ok(add, "sk-ant-api03-x\n");
}
