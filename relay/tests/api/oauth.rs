//! OAuth onboarding over HTTP against the mock OAuth server, and token refresh after a
//! 401: exactly one refresh, however many requests and relays see it.

use crate::admin::PgDb;
use crate::*;
use bench::mock::{MockUpstream, Step};
use projections::Dialect as _;
use relay::accounts::{AccountKind, NewAccount};
use relay::crypto::Secret;
use serde_json::json;

fn oauth_flags(mock: &MockUpstream) -> Vec<String> {
    vec![
        "--oauth-authorize-url".into(),
        format!("{}/oauth/authorize", mock.base_url()),
        "--oauth-token-url".into(),
        format!("{}/v1/oauth/token", mock.base_url()),
    ]
}

fn param(url: &str, name: &str) -> String {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_owned()
}

fn token_calls(mock: &MockUpstream) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.path == "/v1/oauth/token")
        .count()
}

#[tokio::test]
async fn the_onboarding_walks_from_auth_url_to_an_account_that_serves() {
    let mock = MockUpstream::start().await;
    let flags = oauth_flags(&mock);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;

    let (status, started) = app.api("POST", "/oauth/auth-url", Some(&admin), None).await;
    assert_eq!(status, 200, "{started}");
    let url = started["auth_url"].as_str().unwrap();
    let state = started["state"].as_str().unwrap().to_owned();
    assert_eq!(
        param(url, "client_id"),
        bench::mock::oauth::CLAUDE_CODE_CLIENT_ID
    );
    assert_eq!(param(url, "code_challenge_method"), "S256");
    assert_eq!(param(url, "state"), state);
    mock.register_oauth_code("the-code", &param(url, "code_challenge"));

    // Refusals store nothing: an unknown state, a garbled code, a missing state.
    for (body, what) in [
        (
            json!({"authorization_code": "the-code#not-a-state", "account_name": "max-1"}),
            "unknown state",
        ),
        (
            json!({"authorization_code": "the code!", "state": state, "account_name": "max-1"}),
            "garbled code",
        ),
        (
            json!({"authorization_code": "the-code", "account_name": "max-1"}),
            "no state",
        ),
    ] {
        let (status, r) = app
            .api("POST", "/oauth/token", Some(&admin), Some(body))
            .await;
        assert_eq!(
            (status, r["code"].as_u64()),
            (400, Some(40001)),
            "{what}: {r}"
        );
    }
    let (status, acc) = app
        .api(
            "POST",
            "/oauth/token",
            Some(&admin),
            Some(json!({
                "authorization_code": format!("the-code#{state}"),
                "account_name": "max-1",
                "request_url": mock.base_url(),
            })),
        )
        .await;
    assert_eq!(status, 201, "{acc}");
    assert_eq!(acc["platform_type"], "claude");
    assert!(
        !acc.to_string().contains("sk-ant-o"),
        "a token is shown: {acc}"
    );
    // The login is used up; a duplicate name is refused before any exchange.
    let (status, _) = app
        .api(
            "POST",
            "/oauth/token",
            Some(&admin),
            Some(
                json!({"authorization_code": format!("the-code#{state}"), "account_name": "max-2"}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    let (_, again) = app.api("POST", "/oauth/auth-url", Some(&admin), None).await;
    let (status, r) = app
        .api(
            "POST",
            "/oauth/token",
            Some(&admin),
            Some(json!({"authorization_code": format!("x#{}", again["state"].as_str().unwrap()), "account_name": "max-1"})),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    let (_, listed) = app.api("GET", "/oauth/accounts", Some(&admin), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    let (status, st) = app
        .api("GET", "/oauth/accounts/max-1/status", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["subscription_type"], "max");
    assert!(st["scopes"].as_str().unwrap().contains("user:inference"));
    assert_eq!(st["has_refresh_token"], true);
    assert!(st["expires_at"].is_string());
    assert_eq!(st["health"]["state"], "healthy");
    let (status, _) = app
        .api("GET", "/oauth/accounts/nobody/status", Some(&admin), None)
        .await;
    assert_eq!(status, 404);

    // The account serves /v1/messages with its access token as Bearer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.messages(&body(false)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let served = mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages")
        .unwrap();
    assert!(served
        .credential
        .unwrap()
        .starts_with("sk-ant-oat01-mock-access-"));
}

/// Adds an OAuth account whose access token upstream now refuses.
async fn stale_oauth_account(app: &TestApp, mock: &MockUpstream) {
    mock.register_refresh_token("sk-ant-ort01-initial");
    mock.set_default("sk-ant-oat01-stale", Step::unauthorized());
    app.state
        .accounts
        .add_with_tokens(
            NewAccount {
                name: "max".into(),
                kind: AccountKind::OAuth,
                base_url: mock.base_url(),
                credential: Secret::new("sk-ant-oat01-stale"),
                priority: 0,
                weight: 1,
                group: None,
                concurrency: 0,
                proxy_url: None,
            },
            Some(Secret::new("sk-ant-ort01-initial")),
            Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    relay::proxy::reload_accounts(&app.state).await.unwrap();
}

#[tokio::test]
async fn a_401_causes_exactly_one_refresh_for_50_concurrent_requests() {
    let mock = MockUpstream::start().await;
    let flags = oauth_flags(&mock);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app(&flags).await;
    stale_oauth_account(&app, &mock).await;
    let sends = (0..50).map(|_| app.messages(&body(false)).send());
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(token_calls(&mock), 1, "one refresh for every request");
    // The rotated refresh token is stored; the stale access token is gone.
    let acc = app.state.accounts.list().await.unwrap().remove(0);
    assert_ne!(acc.credential.expose(), "sk-ant-oat01-stale");
    assert!(acc
        .refresh_token
        .unwrap()
        .expose()
        .starts_with("sk-ant-ort01-mock-refresh-"));
    let events = app.events().await;
    let refreshes = events
        .iter()
        .filter(|e| matches!(&e.event, schema::Event::AdminAction(a) if a.action == "account.token_refreshed"))
        .count();
    assert_eq!(refreshes, 1);
}

#[tokio::test]
async fn two_relays_on_one_database_refresh_an_account_once() {
    let db = PgDb::new().await;
    let mock = MockUpstream::start().await;
    let flags = oauth_flags(&mock);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = spawn_app_on(Some(db.url.clone()), &flags).await;
    let b = spawn_app_on(Some(db.url.clone()), &flags).await;
    stale_oauth_account(&a, &mock).await;
    relay::proxy::reload_accounts(&b.state).await.unwrap();
    let sends = (0..25)
        .map(|_| a.messages(&body(false)).send())
        .chain((0..25).map(|_| b.messages_as(&a.key, &body(false)).send()));
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(token_calls(&mock), 1, "one refresh across both relays");
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn an_expired_login_is_refused_and_stores_nothing() {
    let mock = MockUpstream::start().await;
    let flags = oauth_flags(&mock);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app(&flags).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let (_, started) = app.api("POST", "/oauth/auth-url", Some(&admin), None).await;
    let state = started["state"].as_str().unwrap().to_owned();
    let url = started["auth_url"].as_str().unwrap().to_owned();
    mock.register_oauth_code("late-code", &param(&url, "code_challenge"));
    // The login's time runs out.
    sqlx::query(
        &app.state
            .db
            .sql("UPDATE oauth_pending SET expires_at_ms = 1 WHERE state = $1"),
    )
    .bind(&state)
    .execute(&app.state.db)
    .await
    .unwrap();
    let (status, r) = app
        .api(
            "POST",
            "/oauth/token",
            Some(&admin),
            Some(
                json!({"authorization_code": format!("late-code#{state}"), "account_name": "late"}),
            ),
        )
        .await;
    assert_eq!((status, r["code"].as_u64()), (400, Some(40001)), "{r}");
    assert!(r["error"].as_str().unwrap().contains("expired"), "{r}");
    assert_eq!(token_calls(&mock), 0, "the code was exchanged anyway");
    let (_, listed) = app.api("GET", "/oauth/accounts", Some(&admin), None).await;
    assert!(listed.as_array().unwrap().is_empty());
}
