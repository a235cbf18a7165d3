//! The admin API over HTTP: the seed's walk-through end to end (login → account →
//! key → /v1/messages → usage and statement), tenant isolation on every route, bad
//! input, secrets, revocation, and the CLI on the same services.

use crate::*;
use bench::mock::MockUpstream;
use serde_json::{json, Value};
use sqlx::Connection;

const SECRET: &str = "sk-ant-api03-walkthrough-upstream-secret";
const PROXY_PASSWORD: &str = "proxy-pw-canary-7731";

/// Polls `GET path` until `pred` holds on its 200 answer (10 s deadline).
async fn wait_get(app: &TestApp, token: &str, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.api("GET", path, Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls the usage API until `pred` holds on its rows (10 s deadline).
async fn wait_usage(
    app: &TestApp,
    token: &str,
    query: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let body = wait_get(app, token, &format!("/api/v1/usage?{query}"), |b| {
        pred(b["items"].as_array().map(Vec::as_slice).unwrap_or_default())
    })
    .await;
    body["items"].as_array().cloned().unwrap_or_default()
}

/// The seed README's walk-through, on the given database.
async fn walkthrough(database_url: Option<String>) {
    let mock = MockUpstream::start().await;
    let app = spawn_app_on(database_url, &["--projectors", "on"]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    // Every answer below has the shape the OpenAPI document gives.
    let doc = openapi(&app).await;

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
    conforms(&doc, "POST", "/api/v1/admin/accounts", status, &acc);
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
    conforms(&doc, "POST", "/api/v1/api-keys", status, &created);
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
    let (status, usage) = app
        .api(
            "GET",
            "/api/v1/usage?granularity=total&group_by=tenant,key,account,model",
            Some(&admin),
            None,
        )
        .await;
    conforms(&doc, "GET", "/api/v1/usage", status, &usage);
    // By the hour, in the display zone: the request is in this hour of UTC+05:30.
    let (status, hourly) = app
        .api(
            "GET",
            "/api/v1/usage?granularity=hour&tz=%2B05:30",
            Some(&admin),
            None,
        )
        .await;
    conforms(&doc, "GET", "/api/v1/usage", status, &hourly);
    assert_eq!(hourly["granularity"], "hour", "{hourly}");
    let local = |ago: i64| {
        (chrono::Utc::now() + chrono::Duration::minutes(330 - ago))
            .format("%Y-%m-%dT%H:00")
            .to_string()
    };
    let period = hourly["items"][0]["period"].as_str().unwrap_or_default();
    assert!(
        (local(60).as_str()..=local(0).as_str()).contains(&period),
        "{hourly}"
    );
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
    conforms(&doc, "GET", "/api/v1/statements", status, &st);
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
    conforms(&doc, "GET", "/api/v1/logs", status, &logs);
    assert_eq!(logs["items"][0]["api_key"], key_id.as_str());

    let (status, audit) = app
        .api("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    conforms(&doc, "GET", "/api/v1/admin/audit", status, &audit);
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
    conforms(&doc, "GET", "/api/v1/status", status, &st);
    assert_eq!(st["database_status"], "ok");
    assert_eq!(st["accounts"]["total"], 1);

    // Last, as its usage has no tenant: testing the account.
    let path = "/api/v1/admin/accounts/{id}/test";
    let url = path.replace("{id}", acc["id"].as_str().unwrap());
    let (status, probe) = app.api("POST", &url, Some(&admin), None).await;
    assert_eq!((status, &probe["ok"]), (200, &json!(true)), "{probe}");
    conforms(&doc, "POST", path, status, &probe);
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

#[tokio::test]
async fn the_seed_walkthrough_bills_a_request_on_mariadb() {
    let db = crate::MyDb::new().await;
    walkthrough(Some(db.url.clone())).await;
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
    two_tenants_with(&[]).await
}

/// [`two_tenants`] on a relay started with `flags`.
async fn two_tenants_with(flags: &[&str]) -> Two {
    let app = spawn_app(flags).await;
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

/// The OpenAPI document as served (public).
async fn openapi(app: &TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    r.json().await.unwrap()
}

/// One operation of the OpenAPI document.
struct Operation {
    /// `GET`, `POST`, …
    method: String,
    /// The path template, `{id}` standing for a path parameter.
    path: String,
    /// Whether it needs a bearer token.
    secured: bool,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                secured: op["security"][0].get("bearer").is_some(),
            });
        }
    }
    ops
}

/// The routes that need no token.
const PUBLIC: [&str; 4] = [
    "GET /api/v1/openapi.json",
    "GET /api/v1/status",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/register",
];

/// Every admin route that needs a token, as `(method, path, body)`: `{id}` stands for
/// the id of the object the path names and `{tenant}` for a tenant (see [`Ids`]); the
/// body is valid enough to pass parsing. The tests walk the OpenAPI document's
/// operations and take their bodies from here, so a route in one and not the other
/// fails them.
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
        ("GET", "/api/v1/admin/accounts/{id}", None),
        (
            "PATCH",
            "/api/v1/admin/accounts/{id}",
            Some(json!({"priority": 3})),
        ),
        ("DELETE", "/api/v1/admin/accounts/{id}", None),
        ("POST", "/api/v1/admin/accounts/{id}/reset", None),
        ("POST", "/api/v1/admin/accounts/{id}/enable", None),
        ("POST", "/api/v1/admin/accounts/{id}/disable", None),
        (
            "POST",
            "/api/v1/admin/accounts/{id}/test",
            Some(json!({"model": "claude-haiku-4-5"})),
        ),
        ("GET", "/api/v1/groups", None),
        ("POST", "/api/v1/groups", Some(json!({"name": "g2"}))),
        ("GET", "/api/v1/groups/{id}", None),
        ("PATCH", "/api/v1/groups/{id}", Some(json!({"remark": "r"}))),
        ("DELETE", "/api/v1/groups/{id}", None),
        ("GET", "/api/v1/api-keys", None),
        ("POST", "/api/v1/api-keys", Some(json!({"name": "k"}))),
        ("GET", "/api/v1/api-keys/{id}", None),
        (
            "PATCH",
            "/api/v1/api-keys/{id}",
            Some(json!({"name": "stolen"})),
        ),
        ("DELETE", "/api/v1/api-keys/{id}", None),
        ("GET", "/api/v1/admin/users", None),
        (
            "POST",
            "/api/v1/admin/users",
            Some(
                json!({"username": "mallory", "email": "m@example.com", "password": "mallory-pw"}),
            ),
        ),
        ("GET", "/api/v1/admin/users/{id}", None),
        (
            "PATCH",
            "/api/v1/admin/users/{id}",
            Some(json!({"enabled": false})),
        ),
        ("DELETE", "/api/v1/admin/users/{id}", None),
        ("GET", "/api/v1/admin/tenants", None),
        (
            "PATCH",
            "/api/v1/admin/tenants/{id}",
            Some(json!({"monthly_budget_usd": "5"})),
        ),
        ("GET", "/api/v1/api-keys/{id}/limits", None),
        ("GET", "/api/v1/usage?tenant={tenant}", None),
        ("GET", "/api/v1/usage/rejections?tenant={tenant}", None),
        ("GET", "/api/v1/statements?tenant={tenant}", None),
        ("GET", "/api/v1/logs?tenant={tenant}", None),
        ("GET", "/api/v1/admin/audit", None),
        ("GET", "/api/v1/notification-targets", None),
        (
            "POST",
            "/api/v1/notification-targets",
            Some(
                json!({"type": "webhook", "url": "https://hooks.example.com/x", "secret": "s", "events": ["budget.*"]}),
            ),
        ),
        ("GET", "/api/v1/notification-targets/{id}", None),
        (
            "PATCH",
            "/api/v1/notification-targets/{id}",
            Some(json!({"enabled": false})),
        ),
        ("DELETE", "/api/v1/notification-targets/{id}", None),
        ("POST", "/api/v1/notification-targets/{id}/test", None),
        ("GET", "/api/v1/admin/notifications", None),
        ("GET", "/api/v1/notifications", None),
    ]
}

/// A `routes()` path without its query: the document's path template.
fn template(path: &str) -> &str {
    path.split('?').next().unwrap()
}

/// The document's operations that need a token, in its order, each with its
/// `routes()` entry.
fn secured_routes(doc: &Value) -> Vec<(&'static str, &'static str, Option<Value>)> {
    let table = routes();
    operations(doc)
        .into_iter()
        .filter(|op| op.secured)
        .map(|op| {
            table
                .iter()
                .find(|(m, p, _)| *m == op.method && template(p) == op.path)
                .cloned()
                .unwrap_or_else(|| {
                    panic!(
                        "{} {} is in the OpenAPI document but not in routes(): add it there \
                         with a body that passes parsing",
                        op.method, op.path
                    )
                })
        })
        .collect()
}

/// What stands for `{id}` (by the collection the path names) and `{tenant}`.
struct Ids<'a> {
    account: &'a str,
    group: &'a str,
    key: &'a str,
    user: &'a str,
    tenant: &'a str,
    target: &'a str,
}

impl Ids<'_> {
    /// `path` with its placeholders filled.
    fn fill(&self, path: &str) -> String {
        let path = path.replace("{tenant}", self.tenant);
        let Some((collection, rest)) = path.split_once("/{id}") else {
            return path;
        };
        let id = match collection {
            "/api/v1/admin/accounts" => self.account,
            "/api/v1/groups" => self.group,
            "/api/v1/api-keys" => self.key,
            "/api/v1/admin/users" => self.user,
            "/api/v1/admin/tenants" => self.tenant,
            "/api/v1/notification-targets" => self.target,
            other => panic!("no id stands for {other}/{{id}}: add one to Ids"),
        };
        format!("{collection}/{id}{rest}")
    }
}

fn resolve<'d>(doc: &'d Value, reference: &str) -> &'d Value {
    let target = reference
        .strip_prefix('#')
        .and_then(|pointer| doc.pointer(pointer));
    target.unwrap_or_else(|| panic!("dangling reference {reference}"))
}

/// Where `value` departs from `schema` (references resolved in `doc`): a wrong JSON
/// type, a value outside an enum, a required field missing, a field the schema does not
/// name.
fn mismatches(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        return mismatches(doc, resolve(doc, r), value, at, out);
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        let fits = |b: &Value| {
            let mut e = Vec::new();
            mismatches(doc, b, value, at, &mut e);
            e.is_empty()
        };
        if !branches.iter().any(fits) {
            out.push(format!("{at}: {value} matches none of {schema}"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        out.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    match value {
        Value::Object(fields) => {
            if let Some(props) = schema["properties"].as_object() {
                let required = schema["required"].as_array().into_iter().flatten();
                for name in required.filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        out.push(format!("{at}: {name} is missing"));
                    }
                }
                for (k, v) in fields {
                    match props.get(k) {
                        Some(s) => mismatches(doc, s, v, &format!("{at}.{k}"), out),
                        None => out.push(format!("{at}.{k}: not in the schema")),
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (k, v) in fields {
                    let s = &schema["additionalProperties"];
                    mismatches(doc, s, v, &format!("{at}.{k}"), out);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, v) in items.iter().enumerate() {
                mismatches(doc, &schema["items"], v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Asserts the document lists `status` for the operation, and that a JSON `body` has
/// the shape it gives.
fn conforms(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][template(path)][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let mut response = &op["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path} answered {status}, which the OpenAPI document does not list: {body}"
    );
    if let Some(r) = response["$ref"].as_str() {
        response = resolve(doc, r);
    }
    if let Some(schema) = response.pointer("/content/application~1json/schema") {
        let mut out = Vec::new();
        mismatches(doc, schema, body, "$", &mut out);
        assert!(
            out.is_empty(),
            "{method} {path} {status} departs from the OpenAPI document:\n{}\n{body}",
            out.join("\n")
        );
    }
}

#[tokio::test]
async fn every_openapi_operation_is_routed_and_in_the_route_table() {
    let app = spawn_app(&[]).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let doc = openapi(&app).await;
    let generated: Value =
        serde_json::from_str(&relay::admin::openapi::document().unwrap()).unwrap();
    assert_eq!(doc, generated, "the served document is the generated one");

    let ops = operations(&doc);
    let mut public: Vec<String> = ops
        .iter()
        .filter(|op| !op.secured)
        .map(|op| format!("{} {}", op.method, op.path))
        .collect();
    public.sort();
    assert_eq!(public, PUBLIC, "only these routes need no token");
    // The table and the document's secured operations are the same set.
    let secured = secured_routes(&doc);
    for (method, path, _) in routes() {
        assert!(
            secured
                .iter()
                .any(|(m, p, _)| *m == method && template(p) == template(path)),
            "{method} {path} is in routes() but not in the OpenAPI document: annotate its \
             handler with #[utoipa::path] and list it in ApiDoc"
        );
    }
    assert_eq!(
        secured.len(),
        routes().len(),
        "routes() lists a route twice"
    );

    // Each documented operation reaches a handler: neither the `/api/v1/{*rest}`
    // fallback ("no route …") nor a 405 for a method the path does not have. Ids name
    // nothing, so nothing changes.
    let nothing = Ids {
        account: "acc_none",
        group: "0",
        key: "key_none",
        user: "usr_none",
        tenant: "none",
        target: "ntf_none",
    };
    for op in &ops {
        let path = nothing.fill(&op.path);
        let token = op.secured.then_some(admin.as_str());
        let (status, resp) = app.api(&op.method, &path, token, None).await;
        let fallback = resp["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no route"));
        assert!(
            status != 405 && !fallback,
            "{} {} is documented but not routed: {status} {resp}",
            op.method,
            op.path
        );
        if resp.is_object() {
            conforms(&doc, &op.method, &op.path, status, &resp);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn rejections_are_logged_and_counted_per_limit_within_the_tenant() {
    let t = two_tenants_with(&["--projectors", "on"]).await;
    let app = &t.app;
    let doc = openapi(app).await;
    let mock = MockUpstream::start().await;
    app.add_account(&mock, Acc::new("pool", KEY_A)).await;
    let (status, patched) = app
        .api(
            "PATCH",
            &format!("/api/v1/api-keys/{}", t.bob_key_id),
            Some(&t.admin),
            Some(json!({"rpm": 1})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let first = app.messages_as(&t.bob_key, &body(false)).send().await;
    assert_eq!(first.unwrap().status(), 200);
    let second = app.messages_as(&t.bob_key, &body(false)).send().await;
    assert_eq!(second.unwrap().status(), 429);

    // Bob sees his rejection counted under its limit, and logged with it.
    let path = "/api/v1/usage/rejections";
    let mine = wait_get(app, &t.bob, path, |b| b["total"] == 1).await;
    conforms(&doc, "GET", path, 200, &mine);
    assert_eq!(
        mine["items"],
        json!([{"rejected_by": "rpm", "requests": 1}]),
        "{mine}"
    );
    let (status, logs) = app
        .api("GET", "/api/v1/logs?rejected_by=rpm", Some(&t.bob), None)
        .await;
    assert_eq!(status, 200, "{logs}");
    conforms(&doc, "GET", "/api/v1/logs", status, &logs);
    let refused = logs["items"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{logs}");
    assert_eq!(refused[0]["rejected_by"], "rpm");
    assert_eq!(refused[0]["outcome"], "rejected");
    assert_eq!(refused[0]["status"], 429);
    let (_, all) = app.api("GET", "/api/v1/logs", Some(&t.bob), None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    // An administrator sees it for bob's tenant and in all tenants.
    for query in ["?tenant=bob", ""] {
        let (status, seen) = app
            .api("GET", &format!("{path}{query}"), Some(&t.admin), None)
            .await;
        assert_eq!((status, &seen["total"]), (200, &json!(1)), "{seen}");
    }
    // Alice sees none of it and cannot name bob's tenant.
    let (status, hers) = app.api("GET", path, Some(&t.alice), None).await;
    assert_eq!(status, 200, "{hers}");
    assert_eq!((&hers["total"], &hers["items"]), (&json!(0), &json!([])));
    let (status, err) = app
        .api("GET", &format!("{path}?tenant=bob"), Some(&t.alice), None)
        .await;
    assert_eq!(status, 404, "{err}");
    let (_, logs) = app
        .api("GET", "/api/v1/logs?rejected_by=rpm", Some(&t.alice), None)
        .await;
    assert_eq!(logs["items"], json!([]), "{logs}");
    // Bad ranges are refused in the usual shape.
    let (status, err) = app
        .api(
            "GET",
            &format!("{path}?from=2026-02-02&to=2026-02-01"),
            Some(&t.bob),
            None,
        )
        .await;
    assert_eq!((status, &err["code"]), (400, &json!(40001)), "{err}");
}

#[tokio::test]
async fn a_user_never_sees_or_changes_another_tenants_data() {
    let t = two_tenants().await;
    let app = &t.app;
    let doc = openapi(app).await;
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
    let (status, bt) = app
        .api(
            "POST",
            "/api/v1/notification-targets",
            Some(&t.bob),
            Some(json!({"type": "slack", "url": "https://hooks.example.com/bob", "events": ["budget.*"]})),
        )
        .await;
    assert_eq!(status, 201, "{bt}");
    let bob_target = bt["id"].as_str().unwrap().to_owned();
    let bobs = Ids {
        account: acc.as_str(),
        group: &group,
        key: &t.bob_key_id,
        user: &t.bob_id,
        tenant: "bob",
        target: &bob_target,
    };
    // Groups are shared configuration (a user picks one for a key): readable by all,
    // changed only by admins.
    let admin_only = |p: &str| p.contains("/admin/");
    for (method, path, body) in secured_routes(&doc) {
        let filled = bobs.fill(path);
        let (status, resp) = app.api(method, &filled, Some(&t.alice), body.clone()).await;
        let text = resp.to_string();
        assert!(
            !text.contains(&t.bob_key_id) && !text.contains("bob-key") && !text.contains("\"bob\""),
            "{method} {filled} leaked bob's data: {resp}"
        );
        assert!(status < 500, "{method} {filled}: {status} {resp}");
        if filled.contains(&t.bob_key_id)
            || filled.contains("tenant=bob")
            || filled.contains(&bob_target)
        {
            assert_eq!(status, 404, "{method} {filled}: {resp}");
        } else if admin_only(&filled) || (method != "GET" && filled.starts_with("/api/v1/groups")) {
            assert!(
                status == 403 || status == 404,
                "{method} {filled}: {status} {resp}"
            );
        }
        if status >= 400 {
            assert!(
                resp["code"].as_u64().unwrap() / 100 == u64::from(status),
                "{resp}"
            );
            assert!(resp["error"].is_string(), "{resp}");
        }
        conforms(&doc, method, path, status, &resp);
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
    let doc = openapi(app).await;
    let ids = Ids {
        account: "acc_x",
        group: "1",
        key: &t.bob_key_id,
        user: &t.bob_id,
        tenant: "bob",
        target: "ntf_x",
    };
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
        for (method, path, body) in secured_routes(&doc) {
            let path = ids.fill(path);
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
    // Well over a hundred refusals, recorded as a handful of aggregate events.
    let events = app.events().await;
    let aggregated: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            schema::Event::AdminAction(a) if a.action == "auth.admin_failures" => Some(a),
            _ => None,
        })
        .collect();
    assert!((1..=4).contains(&aggregated.len()), "{aggregated:?}");
    assert!(aggregated
        .iter()
        .all(|a| a.actor == "relay" && a.target == "admin-token:127.0.0.1"));
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
        (
            "GET",
            "/api/v1/usage?granularity=hour&from=2026-01-01&to=2026-03-01".into(),
            None,
            400,
        ),
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

/// The JSON properties of an operation's request body, references resolved.
fn body_properties(doc: &Value, method: &str, path: &str) -> Option<Vec<(String, Value)>> {
    let op = &doc["paths"][path][method.to_lowercase()];
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    if schema.is_null() {
        return None;
    }
    let schema = match schema["$ref"].as_str() {
        Some(r) => resolve(doc, r),
        None => schema,
    };
    Some(
        schema["properties"]
            .as_object()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn hostile_input_on_every_documented_operation_gets_a_4xx_never_a_5xx() {
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
    let ids = Ids {
        account: acc.as_str(),
        group: &group,
        key: &t.bob_key_id,
        user: &t.bob_id,
        tenant: "bob",
        target: "ntf_x",
    };
    let (_, doc) = app.api("GET", "/api/v1/openapi.json", None, None).await;
    let huge = "x".repeat(1 << 20);
    let mut tried = 0;
    for op in operations(&doc) {
        let path = ids.fill(&op.path);
        let token = op.secured.then_some(t.admin.as_str());
        let mut cases: Vec<(String, Option<Value>)> = Vec::new();
        if let Some(props) = body_properties(&doc, &op.method, &op.path) {
            cases.push((path.clone(), Some(json!([1, 2, 3]))));
            cases.push((path.clone(), Some(json!("a string"))));
            cases.push((path.clone(), Some(json!({"no_such_field": 1}))));
            for (name, schema) in props {
                let wrong =
                    if schema["type"] == "string" || schema["type"] == json!(["string", "null"]) {
                        json!(12345)
                    } else {
                        json!("not the right type")
                    };
                cases.push((path.clone(), Some(json!({ name.clone(): wrong }))));
                cases.push((path.clone(), Some(json!({ name.clone(): huge }))));
                cases.push((path.clone(), Some(json!({ name: {"deep": [[[1]]]} }))));
            }
        } else if op.method == "GET" {
            for q in [
                "page=-1",
                "limit=1000000",
                "page=abc",
                "from=yesterday",
                "to=9999-99-99",
                "limit=0",
                "before_position=-5",
                "tz=%00",
                "granularity=%FF",
            ] {
                let sep = if path.contains('?') { '&' } else { '?' };
                cases.push((format!("{path}{sep}{q}"), None));
            }
        }
        for (url, body) in cases {
            tried += 1;
            let (status, resp) = app.api(&op.method, &url, token, body.clone()).await;
            let shown = body
                .as_ref()
                .map(|b| b.to_string().chars().take(80).collect::<String>());
            assert!(
                status < 500,
                "{} {url} {shown:?}: {status} {resp}",
                op.method
            );
            if status >= 400 {
                assert_eq!(
                    resp["code"].as_u64().map(|c| c / 100),
                    Some(u64::from(status)),
                    "{} {url}: {resp}",
                    op.method
                );
                assert!(
                    resp["error"].as_str().is_some_and(|e| e.len() < 2000),
                    "{} {url}: {resp}",
                    op.method
                );
            }
        }
    }
    assert!(tried > 150, "only {tried} cases");
}
