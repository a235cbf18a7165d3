//! Upstream traffic through HTTP and SOCKS5 proxies (tiny test proxies that record
//! their use), and the global proxy overriding an account's own.

use crate::*;
use bench::mock::MockUpstream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy listening on 127.0.0.1 that counts the connections it forwarded.
struct TestProxy {
    port: u16,
    used: Arc<AtomicUsize>,
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// HTTP proxy: `CONNECT host:port` tunnels, and absolute-form requests
/// (`POST http://host:port/path`) are forwarded to that host as they are.
async fn http_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let used = Arc::new(AtomicUsize::new(0));
    let counter = used.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or("").to_owned();
                let mut parts = line.split(' ');
                let method = parts.next().unwrap_or("");
                let target = parts.next().unwrap_or("");
                let hostport = if method == "CONNECT" {
                    target.to_owned()
                } else {
                    let rest = target.strip_prefix("http://").unwrap_or(target);
                    rest.split('/').next().unwrap_or("").to_owned()
                };
                let Ok(mut upstream) = TcpStream::connect(&hostport).await else {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if method == "CONNECT" {
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                } else if upstream.write_all(&buf).await.is_err() {
                    return;
                }
                pipe(client, upstream).await;
            });
        }
    });
    TestProxy { port, used }
}

/// SOCKS5 proxy without authentication (CONNECT only; IPv4, IPv6 and names).
async fn socks5_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let used = Arc::new(AtomicUsize::new(0));
    let counter = used.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut hdr = [0u8; 2];
                if c.read_exact(&mut hdr).await.is_err() || hdr[0] != 5 {
                    return;
                }
                let mut methods = vec![0u8; hdr[1] as usize];
                if c.read_exact(&mut methods).await.is_err() || !methods.contains(&0) {
                    return;
                }
                if c.write_all(&[5, 0]).await.is_err() {
                    return;
                }
                let mut req = [0u8; 4];
                if c.read_exact(&mut req).await.is_err() || req[1] != 1 {
                    return;
                }
                let host = match req[3] {
                    1 => {
                        let mut a = [0u8; 4];
                        c.read_exact(&mut a).await.unwrap();
                        std::net::Ipv4Addr::from(a).to_string()
                    }
                    4 => {
                        let mut a = [0u8; 16];
                        c.read_exact(&mut a).await.unwrap();
                        format!("[{}]", std::net::Ipv6Addr::from(a))
                    }
                    _ => {
                        let mut len = [0u8; 1];
                        c.read_exact(&mut len).await.unwrap();
                        let mut name = vec![0u8; len[0] as usize];
                        c.read_exact(&mut name).await.unwrap();
                        String::from_utf8(name).unwrap()
                    }
                };
                let mut port = [0u8; 2];
                c.read_exact(&mut port).await.unwrap();
                let port = u16::from_be_bytes(port);
                let Ok(upstream) = TcpStream::connect(format!("{host}:{port}")).await else {
                    let _ = c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.is_err() {
                    return;
                }
                pipe(c, upstream).await;
            });
        }
    });
    TestProxy { port, used }
}

async fn one_request(app: &TestApp, mock: &MockUpstream) {
    let body = body(true);
    let resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap(),
        mock.sse_transcript(&body).concat()
    );
}

#[tokio::test]
async fn account_proxies_http_and_socks5() {
    let mock = MockUpstream::start().await;
    let http = http_proxy().await;
    let socks = socks5_proxy().await;
    let app = spawn_app(&[]).await;
    let mut a = Acc::new("via-http", KEY_A).priority(0);
    a.proxy = Some(format!("http://127.0.0.1:{}", http.port));
    app.add_account(&mock, a).await;
    one_request(&app, &mock).await;
    assert!(
        http.used.load(Ordering::SeqCst) >= 1,
        "the HTTP proxy carried the request"
    );
    assert_eq!(mock.requests()[0].credential.as_deref(), Some(KEY_A));

    let mut b = Acc::new("via-socks", KEY_B).priority(0);
    b.proxy = Some(format!("socks5://127.0.0.1:{}", socks.port));
    let b_id = app.add_account(&mock, b).await;
    // Take the HTTP-proxied account out so the SOCKS one serves.
    let snapshot = app.state.proxy.pool.snapshot();
    let a_rt = snapshot
        .slots
        .iter()
        .find(|s| s.account.name == "via-http")
        .unwrap()
        .rt
        .clone();
    app.state.proxy.pool.observe(
        &a_rt,
        relay::pool::health::Signal::Status {
            status: 401,
            evidence: Default::default(),
        },
        chrono::Utc::now(),
    );
    one_request(&app, &mock).await;
    assert!(
        socks.used.load(Ordering::SeqCst) >= 1,
        "the SOCKS5 proxy carried the request"
    );
    assert_eq!(mock.requests()[1].credential.as_deref(), Some(KEY_B));
    let events = app.wait_events("usage", |e| usages(e).len() == 2).await;
    assert_eq!(usages(&events)[1].account, b_id);
    app.stop().await;
}

#[tokio::test]
async fn global_proxy_wins_over_the_account_proxy() {
    let mock = MockUpstream::start().await;
    let http = http_proxy().await;
    let socks = socks5_proxy().await;
    let port = socks.port.to_string();
    let app = spawn_app(&[
        "--global-proxy-enabled",
        "--global-proxy-type",
        "socks5",
        "--global-proxy-host",
        "127.0.0.1",
        "--global-proxy-port",
        &port,
    ])
    .await;
    let mut a = Acc::new("a", KEY_A);
    a.proxy = Some(format!("http://127.0.0.1:{}", http.port));
    app.add_account(&mock, a).await;
    one_request(&app, &mock).await;
    assert!(socks.used.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        http.used.load(Ordering::SeqCst),
        0,
        "the account proxy is bypassed"
    );
    app.stop().await;
}
