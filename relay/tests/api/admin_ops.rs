//! Operator actions that reach beyond one request: testing an account with a real
//! request, and changes made on one relay holding on another that shares the database.

use crate::admin::PgDb;
use crate::*;
use bench::mock::{MockUpstream, Step};
use serde_json::json;

#[tokio::test]
async fn testing_an_account_sends_one_minimal_request_and_records_its_usage() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let acc = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let (status, r) = app
        .api(
            "POST",
            &format!("/api/v1/admin/accounts/{acc}/test"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["status"], 200);
    assert!(r["input_tokens"].as_u64().unwrap() > 0);
    let sent = mock.requests_for(KEY_A);
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["model"], relay::account_probe::DEFAULT_MODEL);

    // A refusal is reported, not raised.
    mock.script(KEY_A, [Step::unauthorized()]);
    let (status, r) = app
        .api(
            "POST",
            &format!("/api/v1/admin/accounts/{acc}/test"),
            Some(&admin),
            Some(json!({"model": "claude-sonnet-4-6"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_u64()),
        (Some(false), Some(401))
    );
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("authentication_error"));

    let events = app.events().await;
    let usage = usages(&events);
    assert_eq!(
        usage.len(),
        2,
        "both attempts reached upstream and are recorded"
    );
    let tests = events
        .iter()
        .filter(|e| matches!(&e.event, schema::Event::AdminAction(a) if a.action == "account.test"))
        .count();
    assert_eq!(tests, 2);
    let (status, _) = app
        .api(
            "POST",
            "/api/v1/admin/accounts/acc_nope/test",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .api(
            "POST",
            &format!("/api/v1/admin/accounts/{acc}/test"),
            Some(&admin),
            Some(json!({"model": 5})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_key_revoked_or_a_user_disabled_on_one_relay_is_refused_by_another() {
    let db = PgDb::new().await;
    let mock = MockUpstream::start().await;
    // Scale mode: the relays share the database and JWT_SECRET.
    let secret = "s".repeat(40);
    let flags = ["--jwt-secret", secret.as_str()];
    let a = spawn_app_on(Some(db.url.clone()), &flags).await;
    let b = spawn_app_on(Some(db.url.clone()), &flags).await;
    a.add_account(&mock, Acc::new("a", KEY_A)).await;
    relay::proxy::reload_accounts(&b.state).await.unwrap();
    let admin = a.login("admin", ADMIN_PASSWORD).await;
    let (_, user) = a
        .api("POST", "/api/v1/admin/users", Some(&admin), Some(json!({"username": "carol", "email": "c@example.com", "password": "carol-password"})))
        .await;
    let carol = a.login("carol", "carol-password").await;
    let mut keys = Vec::new();
    for name in ["k1", "k2"] {
        let (_, k) = a
            .api(
                "POST",
                "/api/v1/api-keys",
                Some(&carol),
                Some(json!({"name": name})),
            )
            .await;
        keys.push((
            k["api_key"]["id"].as_str().unwrap().to_owned(),
            k["key"].as_str().unwrap().to_owned(),
        ));
    }
    let (status, _) = b.api("GET", "/api/v1/auth/me", Some(&carol), None).await;
    assert_eq!(status, 200, "B accepts A's token");
    // Both keys work on relay B (and are now in its cache).
    for (_, key) in &keys {
        assert_eq!(
            b.messages_as(key, &body(false))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Revoked on A: refused by B once its cache entry (at most CACHE_TTL old) lapses.
    let (status, _) = a
        .api(
            "DELETE",
            &format!("/api/v1/api-keys/{}", keys[0].0),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let refused_after = |key: String| {
        let b = &b;
        async move {
            let start = std::time::Instant::now();
            loop {
                let s = b
                    .messages_as(&key, &body(false))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if s == 401 {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "still served after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let took = refused_after(keys[0].1.clone()).await;
    eprintln!("revocation reached the other relay after {took:?}");
    // The other key still works; then its owner is disabled on A.
    assert_eq!(
        b.messages_as(&keys[1].1, &body(false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = a
        .api(
            "PATCH",
            &format!("/api/v1/admin/users/{}", user["id"].as_str().unwrap()),
            Some(&admin),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let took = refused_after(keys[1].1.clone()).await;
    eprintln!("user disable reached the other relay after {took:?}");
    // Carol's token is refused by B: B reads the user row on every admin call.
    let (status, _) = b.api("GET", "/api/v1/auth/me", Some(&carol), None).await;
    assert_eq!(status, 401);
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}
