//! The web console: its static files and headers, and the two acceptance flows in
//! headless Chromium (`relay/tests/console/flows.cjs`, run with `node`, with
//! `playwright-core` from `NODE_PATH` driving Debian's `chromium`). A missing tool is a
//! test failure that says how to install it, never a skip.

use crate::{spawn_app, ADMIN_PASSWORD};
use bench::mock::MockUpstream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const HINT: &str = "run the tests with .ci/test, or install Debian's chromium \
    (apt-get install chromium) and playwright-core (npm install playwright-core, \
    then NODE_PATH=<that>/node_modules)";

/// Where screenshots go: `target/console-screenshots/` of the build directory.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let app = spawn_app(&[]).await;
    let page = app.http.get(app.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    let script = html
        .split('"')
        .find(|s| s.starts_with("/console/app.js?v="))
        .expect("the page loads its script by version");

    let js = app.http.get(app.url(script)).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        js.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // Another version (a page cached before an upgrade) is not cached for a year.
    let stale = app
        .http
        .get(app.url("/console/app.css?v=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    app.stop().await;
}

#[tokio::test]
async fn admin_and_tenant_flows_in_headless_chromium() {
    let secret = "c".repeat(40);
    let app = spawn_app(&["--projectors", "on", "--jwt-secret", &secret]).await;
    let mock = MockUpstream::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/flows.cjs");
    let shots = screenshot_dir();
    let node = std::env::var("NODE_BIN").unwrap_or_else(|_| "node".into());
    let run = tokio::process::Command::new(&node)
        .arg(&script)
        .env("RELAY_URL", app.url(""))
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("MOCK_URL", mock.base_url())
        .env("SCREENSHOT_DIR", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the console flows timed out")
        .unwrap_or_else(|e| panic!("cannot run {node}: {e}; {HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console flows failed ({HINT}):\n{stdout}\n{stderr}"
    );
    // The steps, for `--nocapture`.
    println!("{stdout}");
    assert!(stdout.contains("admin flow: ok"), "{stdout}");
    assert!(stdout.contains("tenant flow: ok"), "{stdout}");
    for page in ["admin-dashboard", "admin-accounts", "tenant-keys"] {
        for width in [1280, 375] {
            let shot = shots.join(format!("{page}-{width}.png"));
            assert!(shot.is_file(), "no screenshot {}", shot.display());
        }
    }
    app.stop().await;
}
