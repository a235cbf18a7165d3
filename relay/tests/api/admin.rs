//! The admin API over HTTP: the seed's walk-through end to end (login → account →
//! key → /v1/messages → usage and statement), tenant isolation on every route, bad
//! input, secrets, revocation, and the CLI on the same services.

use crate::*;
use bench::mock::MockUpstream;
use serde_json::{json, Value};
use sqlx::Connection;

const SECRET: &str = "sk-ant-api03-walkthrough-upstream-secret";
const PROXY_PASSWORD: &str = "proxy-pw-canary-7731";

/// Polls the usage API until `pred` holds on its rows (10 s deadline).
async fn wait_usage(
    app: &TestApp,
    token: &str,
    query: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app
            .api("GET", &format!("/api/v1/usage?{query}"), Some(token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if pred(&items) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage never appeared: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The seed README's walk-through, on the given database.
async fn walkthrough(database_url: Option<String>) {
    let mock = MockUpstream::start().await;
    let app = spawn_app_on(database_url, &["--projectors", "on"]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;

    // The seed's example body creates a working account.
    let (status, acc) = app
        .api(
            "POST",
            "/api/v1/admin/accounts",
            Some(&admin),
            Some(json!({
                "name": "main",
                "platform_type": "claude_console",
                "request_url": mock.base_url(),
                "secret_key": SECRET,
                "priority": 1,
                "weight": 100
            })),
        )
        .await;
    assert_eq!(status, 201, "{acc}");
    assert_eq!(acc["kind"], "api_key");
    assert_eq!(acc["status"]["state"], "healthy");
    assert!(!acc.to_string().contains(SECRET));

    let (status, created) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let shown = created["api_key"]["key"].as_str().unwrap();
    assert!(
        shown.contains('…') && shown.ends_with(&key[key.len() - 4..]),
        "{shown}"
    );
    assert!(!created["api_key"].to_string().contains(&key));
    let tenant = created["api_key"]["tenant"].as_str().unwrap().to_owned();
    let key_id = created["api_key"]["id"].as_str().unwrap().to_owned();

    // The account is picked up without a restart (the admin event wakes the reload).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let r = app.messages_as(&key, &body(false)).send().await.unwrap();
        if r.status() != 529 && r.status() != 503 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "account never loaded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let rows = wait_usage(
        &app,
        &admin,
        "granularity=total&group_by=tenant,key,account,model",
        |rows| rows.iter().any(|r| r["requests"] == 1),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["tenant"], tenant.as_str());
    assert_eq!(rows[0]["api_key"], key_id.as_str());
    assert_eq!(rows[0]["account"], acc["id"]);
    assert!(rows[0]["input_tokens"].as_u64().unwrap() > 0);

    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let (status, st) = app
        .api(
            "GET",
            &format!("/api/v1/statements?tenant={tenant}&month={month}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["totals"]["requests"], 1);
    assert_eq!(st["totals"]["cost"], rows[0]["cost"]);
    let csv = app
        .http
        .get(app.url(&format!(
            "/api/v1/statements?tenant={tenant}&month={month}&format=csv"
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));

    let (status, logs) = app
        .api("GET", "/api/v1/logs?limit=5", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{logs}");
    assert_eq!(logs["items"][0]["api_key"], key_id.as_str());

    let (status, audit) = app
        .api("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"account.add") && actions.contains(&"key.create"),
        "{actions:?}"
    );

    let (status, st) = app.api("GET", "/api/v1/status", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(st["database_status"], "ok");
    assert_eq!(st["accounts"]["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn the_seed_walkthrough_bills_a_request_on_sqlite() {
    walkthrough(None).await;
}

/// A fresh PostgreSQL database; dropped when the guard goes.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    pub async fn new() -> Self {
        let admin = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("relay_admin_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Self { url, admin, name }
    }

    pub async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_seed_walkthrough_bills_a_request_on_postgresql() {
    let db = PgDb::new().await;
    walkthrough(Some(db.url.clone())).await;
    db.drop_db().await;
}

/// Two tenants, each with a user and a key.
struct Two {
    app: TestApp,
    admin: String,
    alice: String,
    bob: String,
    bob_id: String,
    bob_key_id: String,
    bob_key: String,
    alice_key: String,
}

async fn two_tenants() -> Two {
    let app = spawn_app(&[]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let (status, u) = app
            .api(
                "POST",
                "/api/v1/admin/users",
                Some(&admin),
                Some(json!({"username": name, "email": format!("{name}@example.com"), "password": format!("{name}-password")})),
            )
            .await;
        assert_eq!(status, 201, "{u}");
        assert_eq!(u["tenant"], name);
        ids.push(u["id"].as_str().unwrap().to_owned());
    }
    let alice = app.login("alice", "alice-password").await;
    let bob = app.login("bob", "bob-password").await;
    let (_, bk) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&bob),
            Some(json!({"name": "bob-key"})),
        )
        .await;
    let (_, ak) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&alice),
            Some(json!({"name": "alice-key"})),
        )
        .await;
    Two {
        admin,
        alice,
        bob,
        bob_id: ids[1].clone(),
        bob_key_id: bk["api_key"]["id"].as_str().unwrap().to_owned(),
        bob_key: bk["key"].as_str().unwrap().to_owned(),
        alice_key: ak["key"].as_str().unwrap().to_owned(),
        app,
    }
}

/// Every admin route, with `{key}`, `{user}`, `{account}`, `{group}` and `{tenant}`
/// standing for another tenant's ids, and a body valid enough to pass parsing.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/api/v1/auth/me", None),
        (
            "POST",
            "/api/v1/auth/password",
            Some(json!({"old_password": "x", "new_password": "yyyyyyyyyy"})),
        ),
        ("GET", "/api/v1/admin/accounts", None),
        (
            "POST",
            "/api/v1/admin/accounts",
            Some(json!({"name": "x", "secret_key": "sk-ant-api03-x"})),
        ),
        ("GET", "/api/v1/admin/accounts/{account}", None),
        (
            "PATCH",
            "/api/v1/admin/accounts/{account}",
            Some(json!({"priority": 3})),
        ),
        ("DELETE", "/api/v1/admin/accounts/{account}", None),
        ("POST", "/api/v1/admin/accounts/{account}/reset", None),
        ("POST", "/api/v1/admin/accounts/{account}/enable", None),
        ("POST", "/api/v1/admin/accounts/{account}/disable", None),
        ("GET", "/api/v1/groups", None),
        ("POST", "/api/v1/groups", Some(json!({"name": "g2"}))),
        ("GET", "/api/v1/groups/{group}", None),
        (
            "PATCH",
            "/api/v1/groups/{group}",
            Some(json!({"remark": "r"})),
        ),
        ("DELETE", "/api/v1/groups/{group}", None),
        ("GET", "/api/v1/api-keys", None),
        ("POST", "/api/v1/api-keys", Some(json!({"name": "k"}))),
        ("GET", "/api/v1/api-keys/{key}", None),
        (
            "PATCH",
            "/api/v1/api-keys/{key}",
            Some(json!({"name": "stolen"})),
        ),
        ("DELETE", "/api/v1/api-keys/{key}", None),
        ("GET", "/api/v1/admin/users", None),
        (
            "POST",
            "/api/v1/admin/users",
            Some(
                json!({"username": "mallory", "email": "m@example.com", "password": "mallory-pw"}),
            ),
        ),
        ("GET", "/api/v1/admin/users/{user}", None),
        (
            "PATCH",
            "/api/v1/admin/users/{user}",
            Some(json!({"enabled": false})),
        ),
        ("DELETE", "/api/v1/admin/users/{user}", None),
        ("GET", "/api/v1/admin/tenants", None),
        ("GET", "/api/v1/usage?tenant={tenant}", None),
        ("GET", "/api/v1/statements?tenant={tenant}", None),
        ("GET", "/api/v1/logs?tenant={tenant}", None),
        ("GET", "/api/v1/admin/audit", None),
    ]
}

#[tokio::test]
async fn a_user_never_sees_or_changes_another_tenants_data() {
    let t = two_tenants().await;
    let app = &t.app;
    let mock = MockUpstream::start().await;
    let acc = app.add_account(&mock, Acc::new("pool", KEY_A)).await;
    let (_, g) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(&t.admin),
            Some(json!({"name": "g1"})),
        )
        .await;
    let group = g["id"].as_i64().unwrap().to_string();
    let subst = |p: &str| {
        p.replace("{key}", &t.bob_key_id)
            .replace("{user}", &t.bob_id)
            .replace("{account}", acc.as_str())
            .replace("{group}", &group)
            .replace("{tenant}", "bob")
    };
    // Groups are shared configuration (a user picks one for a key): readable by all,
    // changed only by admins.
    let admin_only = |p: &str| p.contains("/admin/");
    for (method, path, body) in routes() {
        let path = subst(path);
        let (status, resp) = app.api(method, &path, Some(&t.alice), body.clone()).await;
        let text = resp.to_string();
        assert!(
            !text.contains(&t.bob_key_id) && !text.contains("bob-key") && !text.contains("\"bob\""),
            "{method} {path} leaked bob's data: {resp}"
        );
        assert!(status < 500, "{method} {path}: {status} {resp}");
        if path.contains(&t.bob_key_id) || path.contains("tenant=bob") {
            assert_eq!(status, 404, "{method} {path}: {resp}");
        } else if admin_only(&path) || (method != "GET" && path.starts_with("/api/v1/groups")) {
            assert!(
                status == 403 || status == 404,
                "{method} {path}: {status} {resp}"
            );
        }
        if status >= 400 {
            assert!(
                resp["code"].as_u64().unwrap() / 100 == u64::from(status),
                "{resp}"
            );
            assert!(resp["error"].is_string(), "{resp}");
        }
    }
    // Nothing of bob's changed: his key still works, his user is enabled.
    let (status, k) = app
        .api(
            "GET",
            &format!("/api/v1/api-keys/{}", t.bob_key_id),
            Some(&t.bob),
            None,
        )
        .await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(k["name"], "bob-key");
    assert_eq!(k["enabled"], true);
    let r = app
        .messages_as(&t.bob_key, &body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Alice's own list holds only her keys (one made above through the route table).
    let (_, mine) = app
        .api("GET", "/api/v1/api-keys", Some(&t.alice), None)
        .await;
    assert_eq!(mine["total"], 2, "{mine}");
    assert!(mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["tenant"] == "alice"));
    let _ = &t.alice_key;
}

#[tokio::test]
async fn bad_tokens_get_401_on_every_route() {
    let t = two_tenants().await;
    let app = &t.app;
    // Expired, and signed with another secret.
    let secret = std::fs::read_to_string(app.state.common.data_dir.join("jwt.secret")).unwrap();
    let alice_id = app
        .api("GET", "/api/v1/auth/me", Some(&t.alice), None)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let expired =
        relay::identity::JwtKeys::from_secret(secret.trim().as_bytes(), chrono::Duration::hours(1))
            .issue(
                &alice_id,
                0,
                chrono::Utc::now() - chrono::Duration::hours(2),
            )
            .0;
    let forged = relay::identity::JwtKeys::from_secret(&[7u8; 32], chrono::Duration::hours(1))
        .issue(&alice_id, 0, chrono::Utc::now())
        .0;
    // A disabled user's token.
    let (status, _) = app
        .api(
            "PATCH",
            &format!("/api/v1/admin/users/{}", t.bob_id),
            Some(&t.admin),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    for token in [
        Some(expired.as_str()),
        Some(forged.as_str()),
        Some(t.bob.as_str()),
        Some("garbage"),
        None,
    ] {
        for (method, path, body) in routes() {
            let path = path
                .replace("{key}", &t.bob_key_id)
                .replace("{user}", &t.bob_id)
                .replace("{account}", "acc_x")
                .replace("{group}", "1")
                .replace("{tenant}", "bob");
            let (status, resp) = app.api(method, &path, token, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {resp}");
            assert_eq!(resp["code"], 40101);
        }
    }
    // The disabled user's keys stop working too.
    let r = app
        .messages_as(&t.bob_key, &body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_in_the_seed_shape() {
    let t = two_tenants().await;
    let app = &t.app;
    let huge = "x".repeat(1 << 20);
    let cases: Vec<(&str, String, Option<Value>, u16)> = vec![
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": 5})),
            400,
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": "k", "unknown": 1})),
            400,
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": huge})),
            400,
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": "k", "expires_at": "2020-01-01 00:00:00"})),
            400,
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": "k", "expires_at": "tomorrow"})),
            400,
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            Some(json!({"name": "k", "group_id": 999})),
            400,
        ),
        ("POST", "/api/v1/api-keys".into(), Some(json!([1, 2])), 400),
        ("GET", "/api/v1/api-keys?page=-1".into(), None, 400),
        ("GET", "/api/v1/api-keys?limit=100000".into(), None, 400),
        (
            "GET",
            "/api/v1/api-keys?page=99999999999999999999".into(),
            None,
            400,
        ),
        ("GET", "/api/v1/usage?from=yesterday".into(), None, 400),
        ("GET", "/api/v1/usage?granularity=week".into(), None, 400),
        ("GET", "/api/v1/usage?tz=Mars/Base".into(), None, 400),
        (
            "GET",
            "/api/v1/statements?tenant=alice&month=2026-13".into(),
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/statements?tenant=alice&format=pdf".into(),
            None,
            400,
        ),
        ("GET", "/api/v1/logs?limit=0".into(), None, 400),
        (
            "POST",
            "/api/v1/admin/users".into(),
            Some(
                json!({"username": "alice", "email": "a2@example.com", "password": "long-enough"}),
            ),
            409,
        ),
        (
            "POST",
            "/api/v1/admin/users".into(),
            Some(
                json!({"username": "carol", "email": "alice@example.com", "password": "long-enough"}),
            ),
            409,
        ),
        (
            "POST",
            "/api/v1/admin/users".into(),
            Some(json!({"username": "carol", "email": "c@example.com", "password": "short"})),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/users".into(),
            Some(
                json!({"username": "carol", "email": "c@example.com", "password": "long-enough", "role": "root"}),
            ),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/accounts".into(),
            Some(json!({"name": "a", "secret_key": "sk-ant-api03-x", "request_url": "ftp://x"})),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/accounts".into(),
            Some(json!({"name": "a", "secret_key": "sk-ant-api03-x", "platform_type": "claude"})),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/accounts".into(),
            Some(json!({"name": "a", "secret_key": "sk-ant-api03-x", "weight": 0})),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/accounts".into(),
            Some(json!({"name": "a", "secret_key": "sk-ant-api03-x", "priority": -5})),
            400,
        ),
        (
            "POST",
            "/api/v1/admin/accounts".into(),
            Some(json!({"name": "a", "secret_key": ""})),
            400,
        ),
        (
            "GET",
            "/api/v1/admin/accounts?status=x&page=0".into(),
            None,
            400,
        ),
        (
            "PATCH",
            "/api/v1/admin/users/nope".into(),
            Some(json!({"enabled": false})),
            404,
        ),
        ("GET", "/api/v1/groups/abc".into(), None, 404),
        ("GET", "/api/v1/no-such-route".into(), None, 404),
        (
            "POST",
            "/api/v1/groups".into(),
            Some(json!({"name": ""})),
            400,
        ),
        (
            "POST",
            "/api/v1/auth/login".into(),
            Some(json!({"username": huge, "password": "x"})),
            401,
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, resp) = app.api(method, &path, Some(&t.admin), body.clone()).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {resp}");
        assert_eq!(
            resp["code"].as_u64().unwrap() / 100,
            u64::from(want),
            "{resp}"
        );
        assert!(
            resp["error"].as_str().unwrap().len() < 1000,
            "the error echoes the input"
        );
    }
    // Duplicate group names conflict; a group in use cannot be deleted.
    let (s1, g) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(&t.admin),
            Some(json!({"name": "team"})),
        )
        .await;
    assert_eq!(s1, 201);
    let (s2, _) = app
        .api(
            "POST",
            "/api/v1/groups",
            Some(&t.admin),
            Some(json!({"name": "team"})),
        )
        .await;
    assert_eq!(s2, 409);
    let gid = g["id"].as_i64().unwrap();
    let (s3, _) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&t.admin),
            Some(json!({"name": "in-team", "group_id": gid})),
        )
        .await;
    assert_eq!(s3, 201);
    let (s4, r) = app
        .api(
            "DELETE",
            &format!("/api/v1/groups/{gid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s4, r["code"].as_u64()), (409, Some(40901)), "{r}");
}

#[tokio::test]
async fn a_revoked_key_is_refused_and_secrets_are_stored_nowhere() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--projectors", "on"]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let proxy = format!("http://user:{PROXY_PASSWORD}@127.0.0.1:9");
    let (status, acc) = app
        .api(
            "POST",
            "/api/v1/admin/accounts",
            Some(&admin),
            Some(json!({"name": "px", "secret_key": SECRET, "request_url": mock.base_url(), "proxy": proxy, "enabled": false})),
        )
        .await;
    assert_eq!(status, 201, "{acc}");
    assert_eq!(acc["proxy"], "http://***@127.0.0.1:9");
    let acc_id = acc["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .api(
            "PATCH",
            &format!("/api/v1/admin/accounts/{acc_id}"),
            Some(&admin),
            Some(json!({"proxy": null, "enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, created) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "k"})),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["api_key"]["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.messages_as(&key, &body(false)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "key never served: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, revoked) = app
        .api(
            "DELETE",
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["revoked"], true);
    // Same process: refused at once (the cache is cleared); other relays within the
    // key cache's lifetime, which is at most a second.
    assert!(relay::keys::CACHE_TTL <= Duration::from_secs(1));
    let r = app.messages_as(&key, &body(false)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = app
        .api(
            "DELETE",
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409);

    // No secret in any stored byte: database, event log, spool, or any response.
    let events = app.events().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let (_, audit) = app
            .api("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
            .await;
        if audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key.revoke")
        {
            break audit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no key.revoke in {audit}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    for canary in [SECRET, PROXY_PASSWORD, key.as_str(), ADMIN_PASSWORD] {
        for e in &events {
            assert!(
                !serde_json::to_string(e).unwrap().contains(canary),
                "{canary} in an event"
            );
        }
        assert!(!audit.to_string().contains(canary));
        for entry in std::fs::read_dir(&app.state.common.data_dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} stored in {}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn a_password_change_ends_every_older_token_and_logins_are_throttled() {
    let t = two_tenants().await;
    let app = &t.app;
    let (status, _) = app
        .api(
            "POST",
            "/api/v1/auth/password",
            Some(&t.alice),
            Some(json!({"old_password": "alice-password", "new_password": "alice-new-password"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .api("GET", "/api/v1/auth/me", Some(&t.alice), None)
        .await;
    assert_eq!(status, 401);
    app.login("alice", "alice-new-password").await;
    // Five wrong passwords for bob, then even the right one is throttled.
    for _ in 0..5 {
        let (status, r) = app
            .api(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "bob", "password": "wrong-password"})),
            )
            .await;
        assert_eq!((status, r["code"].as_u64()), (401, Some(40101)));
    }
    let r = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "bob", "password": "bob-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Failures are aggregated in the audit log, not one event each.
    let events = app.events().await;
    let failures = events
        .iter()
        .filter(|e| matches!(&e.event, schema::Event::AdminAction(a) if a.action == "auth.login_failures"))
        .count();
    assert_eq!(
        failures, 1,
        "one aggregate event for the first failure of the window"
    );
    // Registration is off by default.
    let (status, r) = app
        .api(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "eve", "email": "e@example.com", "password": "eve-password"})),
        )
        .await;
    assert_eq!((status, r["code"].as_u64()), (403, Some(40301)));
}

#[tokio::test]
async fn the_last_admin_cannot_be_demoted_and_the_first_start_generates_a_password() {
    let app = spawn_app(&[]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let me = app
        .api("GET", "/api/v1/auth/me", Some(&admin), None)
        .await
        .1;
    let (status, r) = app
        .api(
            "PATCH",
            &format!("/api/v1/admin/users/{}", me["id"].as_str().unwrap()),
            Some(&admin),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!((status, r["code"].as_u64()), (409, Some(40901)), "{r}");
    assert!(!app
        .state
        .common
        .data_dir
        .join("initial-admin-password")
        .exists());
}
