//! Alerts and webhooks: events in the log become deliveries to local receivers, once
//! each, signed, retried while the receiver is down, never re-sent by a rebuild, and
//! never across tenants.

use crate::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use chrono::Utc;
use schema::{
    AccountHealthChanged, AdminAction, AdminVerb, ApiKeyId, HealthEvidence, HealthReason,
    HealthState,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Fast delivery for tests: poll every 50 ms, retry after 100 ms, 200 ms, 400 ms, …
const FAST: [&str; 6] = [
    "--notify-poll-ms",
    "50",
    "--notify-retry-base-ms",
    "100",
    "--notify-retry-max-ms",
    "400",
];

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    uri: String,
    headers: HeaderMap,
    body: String,
    at: tokio::time::Instant,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }
}

/// A local HTTP receiver that records every request; answers 503 while `failing`.
struct Receiver {
    addr: std::net::SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    failing: Arc<AtomicBool>,
}

impl Receiver {
    async fn start() -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let (h, f) = (hits.clone(), failing.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (h, f) = (h.clone(), f.clone());
            async move {
                h.lock().unwrap().push(Hit {
                    uri: uri.to_string(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: tokio::time::Instant::now(),
                });
                if f.load(Ordering::SeqCst) {
                    (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance")
                } else {
                    (StatusCode::OK, "ok")
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            hits,
            failing,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The alert types received, in order.
    fn types(&self) -> Vec<String> {
        self.hits()
            .iter()
            .map(|h| h.json()["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls until a request whose body contains `needle` arrived (10 s).
    async fn wait_for(&self, needle: &str) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let hits = self.hits();
            if hits.iter().any(|h| h.body.contains(needle)) {
                return hits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request containing {needle} arrived: {hits:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn health_change(account: &str, from: HealthState, to: HealthState) -> Envelope {
    let reason = match to {
        HealthState::RateLimited => HealthReason::RateLimited,
        HealthState::Banned => HealthReason::Forbidden,
        HealthState::Unauthorized => HealthReason::Unauthorized,
        _ => HealthReason::CooldownExpired,
    };
    let now = Utc::now();
    Envelope::new(
        Uuid::now_v7(),
        now,
        Event::AccountHealthChanged(AccountHealthChanged {
            account: AccountId::parse(account).unwrap(),
            from,
            to,
            reason,
            until: (to == HealthState::RateLimited).then(|| now + chrono::Duration::seconds(60)),
            evidence: HealthEvidence::default(),
        }),
    )
    .with_account(Some(AccountId::parse(account).unwrap()))
}

fn relay_action(verb: AdminVerb, target: &str, summary: &str) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::AdminAction(AdminAction::new("relay", verb, target, summary)),
    )
}

fn tenant_budget(tenant: &str, pct: u32) -> Envelope {
    relay_action(
        AdminVerb::BudgetThreshold,
        &format!("tenant:{tenant}"),
        &format!("monthly_budget_usd of tenant:{tenant} passed {pct}%: $8 of $10"),
    )
    .with_key(Some(TenantId::parse(tenant).unwrap()), None)
}

fn key_budget(key: &str, pct: u32) -> Envelope {
    relay_action(
        AdminVerb::BudgetThreshold,
        &format!("key:{key}"),
        &format!("daily_budget_usd of key:{key} passed {pct}%: $5 of $10"),
    )
    .with_key(None, Some(ApiKeyId::parse(key).unwrap()))
}

/// Creates a webhook target as `token`; returns its id.
async fn webhook(app: &TestApp, token: &str, url: &str, events: &[&str], extra: Value) -> String {
    let mut body = json!({"type": "webhook", "url": url, "secret": "whsec-test", "events": events});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, t) = app
        .api(
            "POST",
            "/api/v1/notification-targets",
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    t["id"].as_str().unwrap().to_owned()
}

/// The delivery log as `token` sees it at `path`.
async fn log(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let (status, page) = app.api("GET", path, Some(token), None).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Runs the projections until they reach the log's head (for relays without
/// in-process projectors).
async fn project(app: &TestApp) {
    app.events().await;
    let prices = relay::projectors::price_table(&app.state.common).unwrap();
    projections::Projector::group(
        app.state.db.clone(),
        app.state.log.clone(),
        projections::all(prices),
    )
    .run_until_caught_up()
    .await
    .unwrap();
}

/// The documented recipe: hex HMAC-SHA256 of "{timestamp}.{body}" under the secret.
fn verifies(hit: &Hit, secret: &str) -> bool {
    let ts = hit.header("x-relay-timestamp");
    let signed = format!("{ts}.{}", hit.body);
    let expected = format!(
        "v1={}",
        hex::encode(relay::crypto::hmac_sha256(
            secret.as_bytes(),
            signed.as_bytes()
        ))
    );
    hit.header("x-relay-signature") == expected
}

#[tokio::test]
async fn each_trigger_is_delivered_once_signed_and_the_secret_never_shown() {
    let receiver = Receiver::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let id = webhook(
        &app,
        &admin,
        &receiver.url("/hook/s3cr3t-path"),
        &["*"],
        json!({}),
    )
    .await;

    // The target as shown: no secret, no URL path.
    let (status, shown) = app
        .api(
            "GET",
            &format!("/api/v1/notification-targets/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let text = shown.to_string();
    assert!(
        !text.contains("whsec-test") && !text.contains("s3cr3t-path"),
        "{shown}"
    );
    assert_eq!(shown["has_secret"], true);
    assert_eq!(shown["tenant"], Value::Null);

    let limited = health_change("acc_1", HealthState::Healthy, HealthState::RateLimited);
    let events = [
        limited.clone(),
        health_change("acc_2", HealthState::Healthy, HealthState::Banned),
        health_change("acc_3", HealthState::Healthy, HealthState::Unauthorized),
        health_change("acc_1", HealthState::RateLimited, HealthState::Healthy),
        // Short cooldowns are not alerts.
        health_change("acc_4", HealthState::Healthy, HealthState::Overloaded),
        relay_action(
            AdminVerb::AccountTokenRefreshFailed,
            "account:acc_5",
            "token refresh for acc_5 failed: invalid_grant",
        ),
        tenant_budget("tenant_a", 80),
        // The same event again.
        limited.clone(),
    ];
    for e in events {
        app.state.publisher.publish(e);
    }
    let sentinel = tenant_budget("tenant_a", 100);
    app.state.publisher.publish(sentinel.clone());
    let hits = receiver.wait_for(&sentinel.id.to_string()).await;
    assert_eq!(
        receiver.types(),
        [
            "account.rate_limited",
            "account.banned",
            "account.unauthorized",
            "account.recovered",
            "account.token_refresh_failed",
            "budget.threshold_crossed",
            "budget.threshold_crossed",
        ]
    );
    for h in &hits {
        assert_eq!(h.uri, "/hook/s3cr3t-path");
        assert!(verifies(h, "whsec-test"), "{h:?}");
        assert!(!verifies(h, "another-secret"));
        assert_eq!(h.header("x-relay-event"), h.json()["type"]);
        assert_eq!(h.header("x-relay-delivery"), h.json()["id"]);
    }
    let first = hits[0].json();
    assert_eq!(first["id"], limited.id.to_string());
    assert_eq!(first["version"], 1);
    assert_eq!(first["account"], "acc_1");
    assert_eq!(first["details"]["reason"], "rate_limited");
    assert!(first["details"]["until"].is_string(), "{first}");
    assert_eq!(hits[5].json()["details"]["percent"], 80);
    assert_eq!(hits[5].json()["tenant"], "tenant_a");

    // The log shows each delivery once, delivered.
    let deliveries = log(&app, &admin, "/api/v1/admin/notifications?limit=100").await;
    assert_eq!(deliveries.len(), 7, "{deliveries:#?}");
    assert!(deliveries
        .iter()
        .all(|d| d["status"] == "delivered" && d["attempts"] == 1));

    // A test message, signed like the rest, lands in the log too.
    let (status, test) = app
        .api(
            "POST",
            &format!("/api/v1/notification-targets/{id}/test"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["status"], "delivered");
    assert_eq!(test["kind"], "test");
    let last = receiver.hits().pop().unwrap();
    assert_eq!(last.json()["type"], "test");
    assert!(verifies(&last, "whsec-test"));

    // Every change is audited, without the secret or the URL path.
    let (status, _) = app
        .api(
            "PATCH",
            &format!("/api/v1/notification-targets/{id}"),
            Some(&admin),
            Some(json!({"secret": "rotated-secret", "events": ["account.*"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .api(
            "DELETE",
            &format!("/api/v1/notification-targets/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let audited: Vec<(String, String)> = app
        .wait_events("four audit events", |ev| {
            ev.iter()
                .filter(|e| matches!(&e.event, Event::AdminAction(a) if a.action.starts_with("notification_target.")))
                .count()
                == 4
        })
        .await
        .iter()
        .filter_map(|e| match &e.event {
            Event::AdminAction(a) if a.action.starts_with("notification_target.") => {
                Some((a.action.clone(), a.summary.clone()))
            }
            _ => None,
        })
        .collect();
    let verbs: Vec<&str> = audited.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(
        verbs,
        [
            "notification_target.create",
            "notification_target.test",
            "notification_target.update",
            "notification_target.delete"
        ]
    );
    for (_, summary) in &audited {
        assert!(
            !summary.contains("whsec")
                && !summary.contains("rotated")
                && !summary.contains("s3cr3t"),
            "{summary}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_alert_with_backoff_once_it_is_back() {
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(
        &app,
        &admin,
        &receiver.url("/hook"),
        &["account.*"],
        json!({}),
    )
    .await;
    let banned = health_change("acc_1", HealthState::Healthy, HealthState::Banned);
    app.state.publisher.publish(banned.clone());

    // Retried while the receiver answers 503, the failure logged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let d = log(&app, &admin, "/api/v1/admin/notifications").await;
        if d.len() == 1 && d[0]["attempts"].as_i64().unwrap() >= 3 {
            break d[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no retries: {d:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(pending["response_status"], 503);
    assert!(
        pending["last_error"].as_str().unwrap().contains("503"),
        "{pending}"
    );
    // Backoff: attempt n+1 waits at least half of 100 ms × 2^(n−1) (jitter ½..1).
    let hits = receiver.hits();
    for (n, pair) in hits.windows(2).take(3).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let least = Duration::from_millis(50 << n);
        assert!(
            gap >= least,
            "gap {n} is {gap:?}, expected at least {least:?}"
        );
    }

    receiver.failing.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let done = loop {
        let d = log(&app, &admin, "/api/v1/admin/notifications").await;
        if d[0]["status"] == "delivered" {
            break d[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never delivered: {d:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hits = receiver.hits();
    // Every attempt reached the receiver; the last one landed; nothing after it.
    assert_eq!(hits.len() as i64, done["attempts"].as_i64().unwrap());
    assert!(hits.iter().all(|h| h.json()["id"] == banned.id.to_string()));
    assert_eq!(done["response_status"], 200);
    assert_eq!(done["last_error"], "");
    app.stop().await;
}

#[tokio::test]
async fn deliveries_past_the_maximum_age_are_marked_failed() {
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let mut flags = vec!["--projectors", "on", "--notify-max-age-secs", "0"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(
        &app,
        &admin,
        &receiver.url("/hook"),
        &["account.*"],
        json!({}),
    )
    .await;
    app.state.publisher.publish(health_change(
        "acc_1",
        HealthState::Healthy,
        HealthState::Banned,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = log(&app, &admin, "/api/v1/admin/notifications").await;
        if d.len() == 1 && d[0]["status"] == "failed" {
            assert_eq!(d[0]["attempts"], 1, "{d:#?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not failed: {d:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_or_a_lost_cursor_sends_nothing_again_and_new_targets_get_no_history() {
    let receiver = Receiver::start().await;
    let later = Receiver::start().await;
    // Projectors off: the test runs them, and rebuilds one, itself.
    let app = spawn_app(&FAST).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(&app, &admin, &receiver.url("/hook"), &["*"], json!({})).await;
    let first = health_change("acc_1", HealthState::Healthy, HealthState::Banned);
    app.state.publisher.publish(first.clone());
    project(&app).await;
    receiver.wait_for(&first.id.to_string()).await;

    // Rebuild the outbox from the log, and lose the notifier's cursor as well.
    rebuild_outbox(&app).await;
    sqlx::query("DELETE FROM notifier_cursor")
        .execute(&app.state.db)
        .await
        .unwrap();
    // A target created now receives nothing that happened before it.
    webhook(&app, &admin, &later.url("/later"), &["*"], json!({})).await;
    let sentinel = tenant_budget("tenant_a", 50);
    app.state.publisher.publish(sentinel.clone());
    project(&app).await;
    receiver.wait_for(&sentinel.id.to_string()).await;
    later.wait_for(&sentinel.id.to_string()).await;
    assert_eq!(
        receiver.types(),
        ["account.banned", "budget.threshold_crossed"]
    );
    assert_eq!(later.types(), ["budget.threshold_crossed"]);
    app.stop().await;
}

#[tokio::test]
async fn tenant_targets_receive_only_their_own_tenants_alerts_on_sqlite() {
    tenant_targets_receive_only_their_own_tenants_alerts(None).await;
}

#[tokio::test]
async fn tenant_targets_receive_only_their_own_tenants_alerts_on_postgresql() {
    let db = crate::admin::PgDb::new().await;
    tenant_targets_receive_only_their_own_tenants_alerts(Some(db.url.clone())).await;
    db.drop_db().await;
}

async fn tenant_targets_receive_only_their_own_tenants_alerts(database_url: Option<String>) {
    let operator = Receiver::start().await;
    let alices = Receiver::start().await;
    let bobs = Receiver::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app_on(database_url, &flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let mut tokens = Vec::new();
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
        tokens.push(app.login(name, &format!("{name}-password")).await);
    }
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let (_, bk) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(bob),
            Some(json!({"name": "bob-key"})),
        )
        .await;
    let bob_key = bk["api_key"]["id"].as_str().unwrap().to_owned();

    webhook(&app, &admin, &operator.url("/op"), &["*"], json!({})).await;
    // A user's target is their tenant's, whatever it asks for.
    let alice_target = webhook(&app, alice, &alices.url("/a"), &["budget.*"], json!({})).await;
    let bob_target = webhook(&app, bob, &bobs.url("/b"), &["*"], json!({})).await;
    for (token, body, status) in [
        // Account health is for the operator only.
        (
            alice,
            json!({"type": "webhook", "url": alices.url("/x"), "secret": "s", "events": ["account.*"]}),
            400,
        ),
        // Another tenant's target cannot be made.
        (
            alice,
            json!({"type": "webhook", "url": alices.url("/x"), "secret": "s", "events": ["*"], "tenant": "bob"}),
            404,
        ),
        // A webhook is always signed.
        (
            alice,
            json!({"type": "webhook", "url": alices.url("/x"), "events": ["*"]}),
            400,
        ),
    ] {
        let (s, resp) = app
            .api(
                "POST",
                "/api/v1/notification-targets",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(s, status, "{resp}");
    }
    // Alice sees only her target; bob's reads as not found.
    let (_, mine) = app
        .api("GET", "/api/v1/notification-targets", Some(alice), None)
        .await;
    assert_eq!(mine["total"], 1, "{mine}");
    assert_eq!(mine["items"][0]["id"], alice_target);
    assert_eq!(mine["items"][0]["tenant"], "alice");
    for method in ["GET", "DELETE"] {
        let (s, _) = app
            .api(
                method,
                &format!("/api/v1/notification-targets/{bob_target}"),
                Some(alice),
                None,
            )
            .await;
        assert_eq!(s, 404);
    }

    let alice_budget = tenant_budget("alice", 80);
    // Carries only the key: routed by the key's tenant.
    let bob_budget = key_budget(&bob_key, 50);
    let banned = health_change("acc_1", HealthState::Healthy, HealthState::Banned);
    for e in [alice_budget.clone(), bob_budget.clone(), banned.clone()] {
        app.state.publisher.publish(e);
    }
    let sentinel_a = tenant_budget("alice", 100);
    let sentinel_b = tenant_budget("bob", 100);
    app.state.publisher.publish(sentinel_a.clone());
    app.state.publisher.publish(sentinel_b.clone());
    operator.wait_for(&sentinel_b.id.to_string()).await;
    alices.wait_for(&sentinel_a.id.to_string()).await;
    bobs.wait_for(&sentinel_b.id.to_string()).await;
    let ids = |r: &Receiver| -> Vec<String> {
        r.hits()
            .iter()
            .map(|h| h.json()["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let s = |e: &Envelope| e.id.to_string();
    assert_eq!(ids(&alices), [s(&alice_budget), s(&sentinel_a)]);
    assert_eq!(ids(&bobs), [s(&bob_budget), s(&sentinel_b)]);
    assert_eq!(
        ids(&operator),
        [
            s(&alice_budget),
            s(&bob_budget),
            s(&banned),
            s(&sentinel_a),
            s(&sentinel_b)
        ]
    );
    assert_eq!(bobs.hits()[0].json()["tenant"], "bob");
    assert_eq!(bobs.hits()[0].json()["api_key"], bob_key);

    // Each tenant's delivery log holds its own deliveries only; the operator's log is
    // for administrators.
    let mine = log(&app, alice, "/api/v1/notifications?limit=100").await;
    assert_eq!(mine.len(), 2, "{mine:#?}");
    assert!(mine
        .iter()
        .all(|d| d["tenant"] == "alice" && d["target_id"] == alice_target));
    let (s403, _) = app
        .api("GET", "/api/v1/admin/notifications", Some(alice), None)
        .await;
    assert_eq!(s403, 403);
    assert_eq!(
        log(&app, &admin, "/api/v1/admin/notifications?limit=100")
            .await
            .len(),
        9
    );
    app.stop().await;
}

#[tokio::test]
async fn deliveries_over_a_targets_rate_limit_are_dropped_and_logged() {
    let receiver = Receiver::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(
        &app,
        &admin,
        &receiver.url("/hook"),
        &["account.*"],
        json!({"rate_limit_per_minute": 2}),
    )
    .await;
    for n in 1..=4 {
        app.state.publisher.publish(health_change(
            &format!("acc_{n}"),
            HealthState::Healthy,
            HealthState::Banned,
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = log(&app, &admin, "/api/v1/admin/notifications?limit=100").await;
        let count = |s: &str| d.iter().filter(|x| x["status"] == s).count();
        if count("delivered") == 2 && count("dropped") == 2 {
            assert!(d
                .iter()
                .filter(|x| x["status"] == "dropped")
                .all(|x| x["last_error"].as_str().unwrap().contains("rate limit")));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.hits().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn chat_targets_receive_their_own_message_formats() {
    let receiver = Receiver::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    for body in [
        json!({"type": "slack", "url": receiver.url("/slack"), "events": ["*"]}),
        json!({"type": "feishu", "url": receiver.url("/feishu"), "secret": "fs", "events": ["*"]}),
        json!({"type": "dingtalk", "url": receiver.url("/ding?access_token=t"), "secret": "ds", "events": ["*"]}),
        json!({"type": "telegram", "url": receiver.url(""), "secret": "123:ABC", "address": "-1001", "events": ["*"]}),
    ] {
        let (status, t) = app
            .api(
                "POST",
                "/api/v1/notification-targets",
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        assert!(!t.to_string().contains("123:ABC") && !t.to_string().contains("access_token"));
    }
    let e = health_change("acc_1", HealthState::Healthy, HealthState::Banned);
    app.state.publisher.publish(e);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.hits().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            receiver.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hits = receiver.hits();
    hits.sort_by(|a, b| a.uri.cmp(&b.uri));
    let paths: Vec<String> = hits
        .iter()
        .map(|h| h.uri.split('?').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/bot123:ABC/sendMessage", "/ding", "/feishu", "/slack"]
    );
    assert_eq!(hits[0].json()["chat_id"], "-1001");
    assert!(hits[0].json()["text"]
        .as_str()
        .unwrap()
        .contains("acc_1 is banned"));
    assert!(
        hits[1].uri.contains("access_token=t&timestamp="),
        "{}",
        hits[1].uri
    );
    assert!(hits[1].uri.contains("&sign="));
    assert_eq!(hits[1].json()["msgtype"], "markdown");
    assert_eq!(hits[2].json()["msg_type"], "text");
    assert!(hits[2].json()["sign"].is_string());
    assert!(hits[3].json()["blocks"].is_array());
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_429_reaches_the_operator_as_a_rate_limit_alert_with_its_back_at() {
    let receiver = Receiver::start().await;
    let mock = bench::mock::MockUpstream::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(
        &app,
        &admin,
        &receiver.url("/hook"),
        &["account.*"],
        json!({}),
    )
    .await;
    let a = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    mock.script(KEY_A, [bench::mock::Step::rate_limited(30)]);
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let hits = receiver.wait_for("account.rate_limited").await;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    let alert = hits[0].json();
    assert_eq!(alert["account"], a.as_str());
    assert_eq!(alert["details"]["upstream_status"], 429);
    let until = alert["details"]["until"].as_str().unwrap();
    let back = chrono::DateTime::parse_from_rfc3339(until).unwrap();
    let wait = back.with_timezone(&Utc) - Utc::now();
    assert!(
        wait > chrono::Duration::seconds(20) && wait <= chrono::Duration::seconds(31),
        "{alert}"
    );
    assert!(alert["message"].as_str().unwrap().contains("back at"));
    assert!(verifies(&hits[0], "whsec-test"));
    app.stop().await;
}

/// A tiny SMTP server that accepts every message and keeps what it received.
struct SmtpSink {
    addr: std::net::SocketAddr,
    mails: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(smtp_session(stream, kept.clone()));
            }
        });
        SmtpSink { addr, mails }
    }
}

/// One SMTP session: every command is accepted; `DATA` is kept, envelope included.
async fn smtp_session(stream: tokio::net::TcpStream, mails: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut envelope = String::new();
    w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if cmd.starts_with("MAIL") || cmd.starts_with("RCPT") {
            envelope.push_str(&line);
            b"250 OK\r\n"
        } else if cmd == "DATA" {
            w.write_all(b"354 go on\r\n").await.unwrap();
            let mut data = envelope.clone();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).await.unwrap_or(0) == 0 || l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            mails.lock().unwrap().push(data);
            b"250 queued\r\n"
        } else if cmd == "QUIT" {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 OK\r\n"
        };
        w.write_all(reply).await.unwrap();
    }
}

#[tokio::test]
async fn an_email_target_gets_the_alert_over_smtp() {
    let sink = SmtpSink::start().await;
    let mut flags = vec!["--projectors", "on"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let url = format!("smtp://{}?from=alerts@relay.example", sink.addr);
    let (status, t) = app
        .api(
            "POST",
            "/api/v1/notification-targets",
            Some(&admin),
            Some(json!({"type": "email", "url": url, "address": "ops@example.com, oncall@example.com", "events": ["account.*"]})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["address"], "ops@example.com,oncall@example.com");
    let (status, e) = app
        .api(
            "POST",
            "/api/v1/notification-targets",
            Some(&admin),
            Some(
                json!({"type": "email", "url": url, "address": "not an address", "events": ["*"]}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    let banned = health_change("acc_9", HealthState::Healthy, HealthState::Banned);
    app.state.publisher.publish(banned.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mail = loop {
        if let Some(m) = sink.mails.lock().unwrap().first().cloned() {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(mail.contains("MAIL FROM:<alerts@relay.example>"), "{mail}");
    assert!(
        mail.contains("RCPT TO:<ops@example.com>") && mail.contains("RCPT TO:<oncall@example.com>"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: [relay critical] Account acc_9 is banned"),
        "{mail}"
    );
    assert!(mail.contains(&banned.id.to_string()), "{mail}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = log(&app, &admin, "/api/v1/admin/notifications").await;
        if d.len() == 1 && d[0]["status"] == "delivered" {
            assert_eq!(d[0]["response_status"], 250);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.mails.lock().unwrap().len(), 1);
    app.stop().await;
}

/// A notifier for `app` that the test drives itself (`--notifier off` keeps the
/// relay's own from running), and the ops alerts of this process.
fn notifier(
    app: &TestApp,
) -> (
    relay::notify::worker::Notifier,
    relay::notify::ops::OpsAlerts,
) {
    let store =
        relay::notify::NotifyStore::new(app.state.db.clone(), app.state.accounts.cipher().clone());
    let alerts = relay::notify::ops::OpsAlerts::new(store.clone(), app.state.publisher.clone());
    let n = relay::notify::notifier(&app.state, store, alerts.clone()).unwrap();
    (n, alerts)
}

/// Creates a user, and with it a tenant, named `name`; returns the user's token.
async fn tenant_user(app: &TestApp, admin: &str, name: &str) -> String {
    let (status, u) = app
        .api(
            "POST",
            "/api/v1/admin/users",
            Some(admin),
            Some(
                json!({"username": name, "email": format!("{name}@example.com"),
                        "password": format!("{name}-password")}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{u}");
    app.login(name, &format!("{name}-password")).await
}

/// Rebuilds the outbox from the log after wiping it entirely (the rows the relay
/// wrote itself too) and forgets the notifier's cursors.
async fn wipe_and_rebuild_the_outbox(app: &TestApp) {
    for table in ["notification_outbox", "notifier_cursor"] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&app.state.db)
            .await
            .unwrap();
    }
    rebuild_outbox(app).await;
}

/// Rebuilds the `notifications` projection (the outbox) from the log.
async fn rebuild_outbox(app: &TestApp) {
    app.events().await;
    let prices = relay::projectors::price_table(&app.state.common).unwrap();
    projections::rebuild(
        &app.state.db,
        app.state.log.clone(),
        &projections::all(prices),
        "notifications",
        &mut |_, _| {},
    )
    .await
    .unwrap();
}

/// The `admin.action` events of one verb in the log.
async fn actions(app: &TestApp, verb: AdminVerb) -> Vec<Envelope> {
    app.events()
        .await
        .into_iter()
        .filter(|e| matches!(&e.event, Event::AdminAction(a) if a.verb() == Some(verb)))
        .collect()
}

#[tokio::test]
async fn projector_lag_is_alerted_once_with_its_all_clear_and_a_rebuild_resends_nothing() {
    let receiver = Receiver::start().await;
    let mut flags = vec!["--notifier", "off", "--notify-lag-events", "4"];
    flags.extend(FAST);
    // Projectors off: the log grows, the read models do not.
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(&app, &admin, &receiver.url("/ops"), &["ops.*"], json!({})).await;
    let (n, _) = notifier(&app);
    n.pass(Utc::now()).await.unwrap();
    assert_eq!(receiver.types(), Vec::<String>::new(), "not lagging yet");

    for i in 0..10 {
        app.state.publisher.publish(relay_action(
            AdminVerb::KeyUpdate,
            &format!("key:key_{i}"),
            "renamed",
        ));
    }
    app.events().await;
    // Ten events behind, over the threshold of four: one alert, sent in this pass
    // although no projector runs (the row is written straight into the outbox).
    n.pass(Utc::now()).await.unwrap();
    n.pass(Utc::now()).await.unwrap();
    assert_eq!(receiver.types(), ["ops.projector_lagging"]);
    let alert = receiver.hits()[0].json();
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["details"]["target"], "projections");
    assert!(
        alert["message"].as_str().unwrap().contains("events behind"),
        "{alert}"
    );
    assert!(verifies(&receiver.hits()[0], "whsec-test"));
    // Recorded for audit, under the alert's id.
    let audited = actions(&app, AdminVerb::OpsProjectorLagging).await;
    assert_eq!(audited.len(), 1);
    assert_eq!(alert["id"], audited[0].id.to_string());

    // The projectors catch up: the all clear, once. The audit event reaches the
    // outbox under the same id and is not sent again.
    project(&app).await;
    n.pass(Utc::now()).await.unwrap();
    n.pass(Utc::now()).await.unwrap();
    project(&app).await;
    n.pass(Utc::now()).await.unwrap();
    assert_eq!(receiver.types(), ["ops.projector_lagging", "ops.recovered"]);
    let outbox: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notification_outbox WHERE kind LIKE 'ops.%'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(outbox, 2);

    // Even with the outbox wiped and rebuilt from the log, nothing is sent again.
    wipe_and_rebuild_the_outbox(&app).await;
    let rebuilt: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notification_outbox WHERE kind LIKE 'ops.%'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(rebuilt, 2, "the log re-creates the alerts' rows");
    n.pass(Utc::now()).await.unwrap();
    assert_eq!(receiver.types(), ["ops.projector_lagging", "ops.recovered"]);
    let deliveries = log(&app, &admin, "/api/v1/admin/notifications?limit=100").await;
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    assert!(deliveries.iter().all(|d| d["status"] == "delivered"));
    app.stop().await;
}

#[tokio::test]
async fn a_growing_spool_and_quarantine_are_alerted_once_each_and_never_again() {
    use relay::notify::watch::Backlog;
    let receiver = Receiver::start().await;
    let tenant = Receiver::start().await;
    let mut flags = vec!["--notifier", "off", "--notify-spool-events", "100"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    webhook(&app, &admin, &receiver.url("/ops"), &["*"], json!({})).await;
    // A tenant's catch-all target: ops alerts are for the operator only.
    let alice = tenant_user(&app, &admin, "alice").await;
    webhook(&app, &alice, &tenant.url("/t"), &["*"], json!({})).await;
    let (n, alerts) = notifier(&app);
    let mut watcher = relay::notify::ops::PublisherWatcher::new(alerts.clone(), 100);
    let backlog = |spool, quarantine| Backlog {
        spool_events: spool,
        quarantine_events: quarantine,
    };
    // The spool passes the threshold and keeps growing: one alert. It drains: the all
    // clear. Events are quarantined: one alert for the growth.
    let mut raised = Vec::new();
    for (spool, quarantine) in [
        (0, 0),
        (50, 0),
        (101, 0),
        (5000, 0),
        (20, 0),
        (0, 2),
        (0, 2),
    ] {
        raised.extend(
            watcher
                .check(Utc::now(), backlog(spool, quarantine))
                .await
                .unwrap(),
        );
        n.pass(Utc::now()).await.unwrap();
    }
    assert_eq!(raised.len(), 3);
    assert_eq!(
        receiver.types(),
        ["ops.spool_growing", "ops.recovered", "ops.quarantine_grew"]
    );
    let ids: Vec<String> = receiver
        .hits()
        .iter()
        .map(|h| h.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, raised.iter().map(Uuid::to_string).collect::<Vec<_>>());
    let spool = receiver.hits()[0].json();
    let process = alerts.process();
    assert_eq!(spool["details"]["target"], format!("spool:{process}"));
    assert!(
        spool["message"]
            .as_str()
            .unwrap()
            .contains("holds 101 events"),
        "{spool}"
    );
    assert_eq!(receiver.hits()[2].json()["severity"], "critical");
    assert!(tenant.hits().is_empty(), "{:?}", tenant.types());

    // The audit events arrive in the log and the outbox: nothing new is sent, neither
    // then nor after the outbox is wiped and rebuilt.
    assert_eq!(actions(&app, AdminVerb::OpsSpoolGrowing).await.len(), 1);
    assert_eq!(actions(&app, AdminVerb::OpsQuarantineGrew).await.len(), 1);
    project(&app).await;
    n.pass(Utc::now()).await.unwrap();
    wipe_and_rebuild_the_outbox(&app).await;
    n.pass(Utc::now()).await.unwrap();
    assert_eq!(receiver.hits().len(), 3, "{:?}", receiver.types());
    assert!(tenant.hits().is_empty());
    // The audit log shows them.
    let (status, audit) = app
        .api("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let audit = audit.to_string();
    for verb in ["ops.spool_growing", "ops.recovered", "ops.quarantine_grew"] {
        assert!(audit.contains(verb), "{verb} not in {audit}");
    }
    app.stop().await;
}

#[tokio::test]
async fn each_tenant_gets_its_own_daily_digest_once_and_the_operator_all_of_them_on_sqlite() {
    each_tenant_gets_its_own_daily_digest_once_and_the_operator_all_of_them(None).await;
}

#[tokio::test]
async fn each_tenant_gets_its_own_daily_digest_once_and_the_operator_all_of_them_on_postgresql() {
    let db = crate::admin::PgDb::new().await;
    each_tenant_gets_its_own_daily_digest_once_and_the_operator_all_of_them(Some(db.url.clone()))
        .await;
    db.drop_db().await;
}

async fn each_tenant_gets_its_own_daily_digest_once_and_the_operator_all_of_them(
    database_url: Option<String>,
) {
    let mock = MockUpstream::start().await;
    let operator = Receiver::start().await;
    let alices = Receiver::start().await;
    let bobs = Receiver::start().await;
    let mut flags = vec!["--notifier", "off", "--notify-digest-hour", "0"];
    flags.extend(FAST);
    let app = spawn_app_on(database_url, &flags).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let mut keys = Vec::new();
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let token = tenant_user(&app, &admin, name).await;
        let (status, k) = app
            .api(
                "POST",
                "/api/v1/api-keys",
                Some(&token),
                Some(json!({"name": format!("{name}-key")})),
            )
            .await;
        assert_eq!(status, 201, "{k}");
        keys.push(
            k["key"]
                .as_str()
                .unwrap_or_else(|| panic!("{k}"))
                .to_owned(),
        );
        tokens.push(token);
    }
    webhook(&app, &admin, &operator.url("/op"), &["digest.*"], json!({})).await;
    webhook(&app, &tokens[0], &alices.url("/a"), &["*"], json!({})).await;
    webhook(
        &app,
        &tokens[1],
        &bobs.url("/b"),
        &["digest.daily"],
        json!({}),
    )
    .await;

    // Today: alice makes two requests, bob one.
    let day = Utc::now().date_naive();
    for key in [&keys[0], &keys[0], &keys[1]] {
        let r = app
            .messages_as(key, &crate::body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    project(&app).await;
    let (n, _) = notifier(&app);
    // Today has not ended: no digest.
    n.pass(Utc::now()).await.unwrap();
    assert!(operator.hits().is_empty());
    // Tomorrow, just after midnight (BILLING_TIMEZONE is UTC here).
    let tomorrow = (day + chrono::Days::new(1))
        .and_hms_opt(0, 0, 1)
        .unwrap()
        .and_utc();
    n.pass(tomorrow).await.unwrap();
    n.pass(tomorrow + chrono::Duration::hours(5)).await.unwrap();

    let usage = projections::read::usage_totals(
        &app.state.db,
        &projections::read::UsageFilter {
            from_day: day,
            to_day: day,
            period: projections::read::Period::Day,
            group_by: projections::read::GroupBy {
                tenant: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let of = |tenant: &str| {
        usage
            .iter()
            .find(|u| u.tenant.as_deref() == Some(tenant))
            .unwrap()
            .clone()
    };
    let check = |hit: &Hit, tenant: &str| {
        let d = hit.json();
        let u = of(tenant);
        assert_eq!(d["type"], "digest.daily");
        assert_eq!(d["tenant"], tenant);
        assert_eq!(
            d["id"],
            relay::notify::digest::digest_id(tenant, day).to_string()
        );
        assert_eq!(d["details"]["day"], day.to_string());
        assert_eq!(d["details"]["requests"], u.requests);
        assert_eq!(d["details"]["output_tokens"], u.output_tokens);
        assert!(u.cost > rust_decimal::Decimal::ZERO);
        assert_eq!(d["details"]["cost_usd"], u.cost.to_string());
        assert!(verifies(hit, "whsec-test"));
    };
    assert_eq!(of("alice").requests, 2);
    assert_eq!(of("bob").requests, 1);
    assert_eq!(alices.hits().len(), 1, "{:?}", alices.types());
    check(&alices.hits()[0], "alice");
    assert_eq!(bobs.hits().len(), 1, "{:?}", bobs.types());
    check(&bobs.hits()[0], "bob");
    let op = operator.hits();
    assert_eq!(op.len(), 2, "{:?}", operator.types());
    for (hit, tenant) in op.iter().zip(["alice", "bob"]) {
        check(hit, tenant);
    }

    // A restart with the cursor lost and the outbox rebuilt: the same digests, under
    // the same ids, are not sent again.
    wipe_and_rebuild_the_outbox(&app).await;
    let (again, _) = notifier(&app);
    again.pass(tomorrow).await.unwrap();
    let made: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notification_outbox WHERE kind = 'digest.daily'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(made, 2, "made again, under the same ids");
    assert_eq!(operator.hits().len(), 2);
    assert_eq!(alices.hits().len(), 1);
    assert_eq!(bobs.hits().len(), 1);
    let mine = log(&app, &tokens[0], "/api/v1/notifications?limit=100").await;
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0]["kind"], "digest.daily");
    app.stop().await;
}

/// A tiny SMTP server that takes mail only after `AUTH PLAIN` or `AUTH LOGIN` with
/// the one user and password it knows; it keeps what it received and every
/// credential it was offered.
struct AuthSmtpSink {
    addr: std::net::SocketAddr,
    mails: Arc<Mutex<Vec<String>>>,
    /// (mechanism, user, password) of every AUTH attempt.
    logins: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl AuthSmtpSink {
    async fn start(user: &'static str, password: &'static str) -> AuthSmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = AuthSmtpSink {
            addr,
            mails: Arc::default(),
            logins: Arc::default(),
        };
        let (mails, logins) = (sink.mails.clone(), sink.logins.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(auth_smtp_session(
                    stream,
                    (user, password),
                    mails.clone(),
                    logins.clone(),
                ));
            }
        });
        sink
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One session of [`AuthSmtpSink`]: `MAIL` before a successful `AUTH` gets 530.
async fn auth_smtp_session(
    stream: tokio::net::TcpStream,
    (user, password): (&str, &str),
    mails: Arc<Mutex<Vec<String>>>,
    logins: Arc<Mutex<Vec<(String, String, String)>>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut envelope = String::new();
    let mut authed = false;
    w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
    async fn next(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
        let mut line = String::new();
        (r.read_line(&mut line).await.unwrap_or(0) > 0).then_some(line)
    }
    while let Some(line) = next(&mut r).await {
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n".into()
        } else if upper.starts_with("AUTH ") {
            let mut words = cmd.split_whitespace().skip(1);
            let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
            let (u, p) = match mechanism.as_str() {
                "PLAIN" => {
                    let initial = match words.next() {
                        Some(i) => i.to_owned(),
                        None => {
                            w.write_all(b"334 \r\n").await.unwrap();
                            next(&mut r).await.unwrap_or_default()
                        }
                    };
                    let decoded = unb64(&initial);
                    let mut parts = decoded.split('\0').skip(1);
                    (
                        parts.next().unwrap_or("").to_owned(),
                        parts.next().unwrap_or("").to_owned(),
                    )
                }
                "LOGIN" => {
                    w.write_all(format!("334 {}\r\n", b64("Username:")).as_bytes())
                        .await
                        .unwrap();
                    let u = unb64(&next(&mut r).await.unwrap_or_default());
                    w.write_all(format!("334 {}\r\n", b64("Password:")).as_bytes())
                        .await
                        .unwrap();
                    let p = unb64(&next(&mut r).await.unwrap_or_default());
                    (u, p)
                }
                _ => (String::new(), String::new()),
            };
            logins
                .lock()
                .unwrap()
                .push((mechanism, u.clone(), p.clone()));
            if u == user && p == password {
                authed = true;
                "235 2.7.0 accepted\r\n".into()
            } else {
                "535 5.7.8 bad credentials\r\n".into()
            }
        } else if upper.starts_with("MAIL") && !authed {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") {
            envelope.push_str(&line);
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            w.write_all(b"354 go on\r\n").await.unwrap();
            let mut data = envelope.clone();
            while let Some(l) = next(&mut r).await {
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            mails.lock().unwrap().push(data);
            "250 queued\r\n".into()
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "250 OK\r\n".into()
        };
        w.write_all(reply.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn an_email_target_authenticates_to_its_smtp_server_with_the_sealed_password() {
    let sink = AuthSmtpSink::start("alerts-user", "smtp-pass-123").await;
    let mut flags = vec!["--notifier", "off"];
    flags.extend(FAST);
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let mut ids = Vec::new();
    for (password, address) in [
        ("smtp-pass-123", "ops@example.com"),
        ("wrong-password", "wrong@example.com"),
    ] {
        let url = format!("smtp://alerts-user@{}?from=alerts@relay.example", sink.addr);
        let (status, t) = app
            .api(
                "POST",
                "/api/v1/notification-targets",
                Some(&admin),
                Some(json!({"type": "email", "url": url, "address": address,
                            "secret": password, "events": ["account.*"]})),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        assert!(!t.to_string().contains(password), "{t}");
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    let banned = health_change("acc_9", HealthState::Healthy, HealthState::Banned);
    app.state.publisher.publish(banned.clone());
    project(&app).await;
    let (n, _) = notifier(&app);
    n.pass(Utc::now()).await.unwrap();

    // The right password: authenticated, then delivered.
    let mails = sink.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert!(mail.contains("MAIL FROM:<alerts@relay.example>"), "{mail}");
    assert!(mail.contains("RCPT TO:<ops@example.com>"), "{mail}");
    assert!(!mail.contains("wrong@example.com"), "{mail}");
    assert!(
        mail.contains("Subject: [relay critical] Account acc_9 is banned"),
        "{mail}"
    );
    assert!(mail.contains(&banned.id.to_string()), "{mail}");
    let logins = sink.logins.lock().unwrap().clone();
    assert!(
        logins.iter().any(|(m, u, p)| (m == "PLAIN" || m == "LOGIN")
            && u == "alerts-user"
            && p == "smtp-pass-123"),
        "{logins:?}"
    );
    assert!(
        logins.iter().any(|(_, _, p)| p == "wrong-password"),
        "{logins:?}"
    );
    // The wrong one: refused, not delivered, retried later; the log says why without
    // the password.
    let d = log(&app, &admin, "/api/v1/admin/notifications?limit=10").await;
    let of = |id: &str| d.iter().find(|x| x["target_id"] == id).unwrap().clone();
    assert_eq!(of(&ids[0])["status"], "delivered", "{d:#?}");
    assert_eq!(of(&ids[0])["response_status"], 250);
    let failed = of(&ids[1]);
    assert_eq!(failed["status"], "pending", "{failed}");
    assert_eq!(failed["attempts"], 1);
    assert!(
        failed["last_error"].as_str().unwrap().contains("535"),
        "{failed}"
    );
    assert!(!d.iter().any(|x| x.to_string().contains("wrong-password")));
    app.stop().await;
}
