//! The edge against hostile and broken clients: slow headers, connection floods,
//! bounded shutdown, oversized heads and URIs, framework errors in the right shape, and
//! bodies that are not what the Messages API accepts.

use crate::*;
use bench::mock::{MockConfig, MockUpstream};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads until the server closes the connection (or `limit` passes); the bytes read.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_header_connections_are_cut_off() {
    let app = spawn_app(&["--header-read-timeout-secs", "1"]).await;
    let addr = app.addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<TcpStream> = (0..500)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-slow: ")
                    .unwrap();
                s
            })
            .collect();
        let mut closed = 0;
        for s in conns.iter_mut() {
            if read_to_close(s, Duration::from_secs(10)).is_some() {
                closed += 1;
            }
        }
        closed
    })
    .await
    .unwrap();
    assert_eq!(closed, 500, "slow-header connections left open");
    // Idle keep-alive connections are reaped the same way.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let got =
        tokio::task::spawn_blocking(move || read_to_close(&mut idle, Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("an idle connection stayed open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_connection_flood_is_refused_cheaply_and_health_keeps_answering() {
    let health_port = free_port();
    let health = format!("127.0.0.1:{health_port}");
    let app = spawn_app(&["--max-connections", "50", "--health-addr", &health]).await;
    let addr = app.addr;
    let (refused, held) = tokio::task::spawn_blocking(move || {
        // Each held connection has been served once (keep-alive), so it holds a slot.
        let held: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "closed before answering");
                    head.extend_from_slice(&buf[..n]);
                }
                assert!(head.starts_with(b"HTTP/1.1 200"));
                s
            })
            .collect();
        let mut refused = 0;
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).unwrap();
            let got = read_to_close(&mut s, Duration::from_secs(5)).unwrap_or_default();
            let text = String::from_utf8_lossy(&got);
            if text.starts_with("HTTP/1.1 503") && text.contains("overloaded_error") {
                refused += 1;
            }
        }
        (refused, held)
    })
    .await
    .unwrap();
    assert_eq!(
        refused, 20,
        "connections over the cap were not refused at once"
    );
    let r = app
        .http
        .get(format!("http://{health}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
    // The main listener serves again once the flood is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app
        .http
        .get(app.url("/health"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_ends_after_the_grace_even_with_a_slow_stream() {
    let mock = MockUpstream::start_with(MockConfig {
        event_interval: Duration::from_millis(500),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut app = spawn_app(&["--shutdown-grace-secs", "1"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let r = app.messages(&body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    app.begin_shutdown();
    let ended = app.wait_server(Duration::from_secs(20)).await;
    assert!(ended, "the server did not stop");
    let took = started.elapsed();
    eprintln!("shutdown with a slow stream in flight took {took:?} (grace 1 s)");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    drop(r);
}

#[tokio::test]
async fn oversized_heads_and_uris_and_wrong_methods_get_anthropic_shaped_errors() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let big = "x".repeat(70 * 1024);
    let r = app
        .messages(&body(false))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "invalid_request_error");
    let long = format!("/v1/messages?{}", "a".repeat(10_000));
    let r = app
        .http
        .post(app.url(&long))
        .header("x-api-key", &app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "error");
    let r = app.http.get(app.url("/v1/messages")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["type"].as_str(), b["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    let r = app
        .http
        .delete(app.url("/api/v1/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], 40501, "{b}");
    assert_eq!(mock.request_count(), 0, "something reached upstream");
}

#[tokio::test]
async fn bodies_that_are_not_messages_requests_are_refused_before_upstream() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    for bad in [
        serde_json::json!(["claude-sonnet-4-5"]),
        serde_json::json!("claude-sonnet-4-5"),
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 10}),
        serde_json::json!({"model": "m".repeat(1_100_000), "max_tokens": 1, "messages": []}),
    ] {
        let r = app.messages(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b.to_string().len() < 2000, "the error echoes the input");
    }
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn one_poisonous_request_leaves_the_account_in_service() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("only", KEY_A)).await;
    // Upstream fails this one request.
    mock.script(KEY_A, [bench::mock::Step::server_error()]);
    let r = app.messages(&body(false)).send().await.unwrap();
    assert!(r.status().is_server_error());
    // The only account is still in service for everyone else.
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events = app.events().await;
    assert!(
        health(&events).is_empty(),
        "the account was cooled down: {:?}",
        health(&events)
    );
}

#[tokio::test]
async fn a_flood_of_wrong_keys_is_throttled_and_recorded_as_a_handful_of_events() {
    let app = spawn_app(&[]).await;
    let sends = (0..300).map(|i| {
        app.messages_as(&format!("sk-relay-wrong-{i}"), &body(false))
            .send()
    });
    let mut codes = std::collections::BTreeMap::new();
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        *codes.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&401), Some(&60), "{codes:?}");
    assert_eq!(codes.get(&429), Some(&240), "{codes:?}");
    let events = app.events().await;
    let failed: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.event {
            schema::Event::AuthFailed(a) => a.failures_in_window,
            _ => None,
        })
        .collect();
    // 300 failures (those answered before a lookup are not even counted): 1st, 10th
    // and perhaps 100th recorded.
    assert!(
        failed.len() <= 3 && failed.starts_with(&[1, 10]),
        "aggregate auth.failed events: {failed:?}"
    );
    // A good key from the same address is throttled too until the minute ends:
    // the address, not the key, is what floods.
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
}

/// Requests hyper refuses before any handler runs (a malformed request line, a header
/// line without a colon, an unsupported version) get Anthropic's shape, not an empty
/// body; a good request on a fresh connection is untouched.
#[tokio::test]
async fn requests_hyper_cannot_parse_get_anthropic_shaped_errors() {
    let app = spawn_app(&[]).await;
    let addr = app.addr;
    let answers = tokio::task::spawn_blocking(move || {
        [
            &b"GARBAGE\r\n\r\n"[..],
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
            b"GET /health HTTP/9.9\r\n\r\n",
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ]
        .map(|req| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req).unwrap();
            String::from_utf8(read_to_close(&mut s, Duration::from_secs(5)).unwrap()).unwrap()
        })
    })
    .await
    .unwrap();
    for bad in &answers[..3] {
        let (head, body) = bad.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 4") || head.starts_with("HTTP/1.1 505"),
            "{bad}"
        );
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {bad}"));
        assert_eq!(v["type"], "error", "{bad}");
        assert!(
            v["error"]["type"].is_string() && v["error"]["message"].is_string(),
            "{bad}"
        );
    }
    assert!(answers[0].starts_with("HTTP/1.1 400 "), "{}", answers[0]);
    assert!(answers[3].starts_with("HTTP/1.1 200 "), "{}", answers[3]);
    assert!(!answers[3].contains("\"type\":\"error\""), "{}", answers[3]);
    app.stop().await;
}
