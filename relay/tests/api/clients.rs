//! Real clients through the relay: the `anthropic` Python SDK 2.x (Bearer key), the
//! TypeScript SDK (`@anthropic-ai/sdk`, which many tools embed) and the Claude Code CLI.
//! They are what tenants run, so these tests use them unmodified. A missing client is a
//! test failure with instructions, never a skip.

use crate::{finished, spawn_app, usages, Acc, TestApp, KEY_A};
use bench::mock::MockUpstream;
use schema::Envelope;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

fn python() -> String {
    std::env::var("PYTHON_BIN").unwrap_or_else(|_| "python3".into())
}

fn node() -> String {
    std::env::var("NODE_BIN").unwrap_or_else(|_| "node".into())
}

fn claude() -> String {
    std::env::var("CLAUDE_BIN").unwrap_or_else(|_| "claude".into())
}

/// Runs an SDK script (`program -c SCRIPT`) with the relay's URL and key in `RELAY_URL`
/// and `RELAY_KEY` (and no `ANTHROPIC_*` credentials the SDK would pick up by itself),
/// and returns the JSON it prints. A client that cannot start or fails is a test
/// failure that says how to install it (`hint`).
async fn run_script(app: &TestApp, program: &str, args: [&str; 2], hint: &str) -> Value {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env("RELAY_URL", app.url(""))
        .env("RELAY_KEY", &app.key)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap_or_else(|_| panic!("{program} client timed out"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {hint}"));
    assert!(
        out.status.success(),
        "{program} client failed ({hint}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that the usage an SDK script saw (`create_usage` and `stream_usage`, each
/// `[input, output]`) is usage the relay recorded.
fn assert_sdk_usage_recorded(events: &[Envelope], v: &Value) {
    let recorded: Vec<[u64; 2]> = usages(events)
        .iter()
        .map(|u| [u.input_tokens, u.output_tokens])
        .collect();
    for field in ["create_usage", "stream_usage"] {
        let u = [v[field][0].as_u64().unwrap(), v[field][1].as_u64().unwrap()];
        assert!(recorded.contains(&u), "{recorded:?} vs {field} {u:?}");
    }
}

const PY_CLIENT: &str = r#"
import json, os, sys
import anthropic

client = anthropic.Anthropic(base_url=os.environ["RELAY_URL"], api_key=os.environ["RELAY_KEY"], max_retries=0)
out = {"version": anthropic.__version__}

msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                             messages=[{"role": "user", "content": "Say hello"}])
out["create_text"] = msg.content[0].text
out["create_usage"] = [msg.usage.input_tokens, msg.usage.output_tokens]

with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                            messages=[{"role": "user", "content": "Stream hello"}]) as stream:
    out["stream_text"] = "".join(stream.text_stream)
    final = stream.get_final_message()
out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]

tools = [{"name": "get_weather", "description": "Weather by city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
tool_msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, tools=tools,
                                  messages=[{"role": "user", "content": "Weather?"}])
out["tool_stop"] = tool_msg.stop_reason
out["tool_use"] = [[b.name, b.input] for b in tool_msg.content if b.type == "tool_use"]

with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, tools=tools,
                            messages=[{"role": "user", "content": "Weather, streamed?"}]) as stream:
    streamed = stream.get_final_message()
out["stream_tool_use"] = [[b.name, b.input] for b in streamed.content if b.type == "tool_use"]

try:
    anthropic.Anthropic(base_url=os.environ["RELAY_URL"], api_key="sk-relay-wrong", max_retries=0) \
        .messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    out["bad_key"] = "accepted"
except anthropic.AuthenticationError as e:
    out["bad_key"] = e.status_code

print(json.dumps(out))
"#;

#[tokio::test]
async fn python_sdk_creates_streams_and_uses_tools_through_the_relay() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let v = run_script(
        &app,
        &python(),
        ["-c", PY_CLIENT],
        "install Python 3 and `pip install 'anthropic>=2'` (or set PYTHON_BIN)",
    )
    .await;
    assert!(
        v["version"].as_str().unwrap().starts_with('2'),
        "expected anthropic 2.x, got {}",
        v["version"]
    );
    assert_eq!(v["create_text"], "Hello from the mock upstream.");
    assert_eq!(v["stream_text"], "Hello from the mock upstream.");
    assert_eq!(v["tool_stop"], "tool_use");
    assert_eq!(v["tool_use"][0][0], "get_weather");
    assert_eq!(v["tool_use"][0][1]["query"], "mock");
    assert_eq!(v["stream_tool_use"][0][1]["query"], "mock");
    assert_eq!(v["bad_key"], 401);

    // The SDK authenticated to the relay with Bearer; upstream got the account's key.
    let seen = mock.requests_for(KEY_A);
    assert_eq!(seen.len(), 4, "four upstream calls for four good requests");
    for r in &seen {
        assert_eq!(r.header("x-api-key"), Some(KEY_A));
        assert!(r.header("authorization").is_none());
    }
    // Usage the SDK saw equals usage the relay recorded.
    let events = app
        .wait_events("4 usage events", |e| usages(e).len() == 4)
        .await;
    assert_sdk_usage_recorded(&events, &v);
    // One request.finished per authenticated request; the refused key is audited.
    assert_eq!(finished(&events).len(), 4);
    assert!(events
        .iter()
        .any(|e| matches!(e.event, schema::Event::AuthFailed(_))));
    app.stop().await;
}

/// The TypeScript SDK's script; `require` finds the package through `NODE_PATH`.
const TS_CLIENT: &str = r#"
const Anthropic = require("@anthropic-ai/sdk");
const { VERSION } = require("@anthropic-ai/sdk/version");

(async () => {
  const client = new Anthropic({ baseURL: process.env.RELAY_URL, apiKey: process.env.RELAY_KEY, maxRetries: 0 });
  const out = { version: VERSION };
  const messages = [{ role: "user", content: "Say hello" }];

  const msg = await client.messages.create({ model: "claude-sonnet-4-6", max_tokens: 64, messages });
  out.create_text = msg.content[0].text;
  out.create_usage = [msg.usage.input_tokens, msg.usage.output_tokens];

  const stream = client.messages.stream({ model: "claude-sonnet-4-6", max_tokens: 64,
                                          messages: [{ role: "user", content: "Stream hello" }] });
  let text = "";
  stream.on("text", (t) => { text += t; });
  const final = await stream.finalMessage();
  out.stream_text = text;
  out.stream_usage = [final.usage.input_tokens, final.usage.output_tokens];

  const tools = [{ name: "get_weather", description: "Weather by city",
                   input_schema: { type: "object", properties: { city: { type: "string" } } } }];
  const toolMsg = await client.messages.create({ model: "claude-sonnet-4-6", max_tokens: 64, tools,
                                                 messages: [{ role: "user", content: "Weather?" }] });
  out.tool_stop = toolMsg.stop_reason;
  out.tool_use = toolMsg.content.filter((b) => b.type === "tool_use").map((b) => [b.name, b.input]);

  const streamed = await client.messages.stream({ model: "claude-sonnet-4-6", max_tokens: 64, tools,
                                                  messages: [{ role: "user", content: "Weather, streamed?" }] })
    .finalMessage();
  out.stream_tool_use = streamed.content.filter((b) => b.type === "tool_use").map((b) => [b.name, b.input]);

  const counted = await client.messages.countTokens({ model: "claude-sonnet-4-6", messages });
  out.count_tokens = counted.input_tokens;

  try {
    await new Anthropic({ baseURL: process.env.RELAY_URL, apiKey: "sk-relay-wrong", maxRetries: 0 })
      .messages.create({ model: "claude-sonnet-4-6", max_tokens: 8, messages: [{ role: "user", content: "x" }] });
    out.bad_key = "accepted";
  } catch (e) {
    if (!(e instanceof Anthropic.AuthenticationError)) throw e;
    out.bad_key = [e.status, e.type];
  }

  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test]
async fn typescript_sdk_creates_streams_counts_tokens_and_uses_tools_through_the_relay() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let v = run_script(
        &app,
        &node(),
        ["-e", TS_CLIENT],
        "install Node.js 18 or newer (or set NODE_BIN), `npm install @anthropic-ai/sdk` and \
         set NODE_PATH to that node_modules",
    )
    .await;
    assert!(v["version"].is_string(), "no SDK version in {v}");
    assert_eq!(v["create_text"], "Hello from the mock upstream.");
    assert_eq!(v["stream_text"], "Hello from the mock upstream.");
    assert_eq!(v["tool_stop"], "tool_use");
    assert_eq!(v["tool_use"][0][0], "get_weather");
    assert_eq!(v["tool_use"][0][1]["query"], "mock");
    assert_eq!(v["stream_tool_use"][0][0], "get_weather");
    assert_eq!(v["stream_tool_use"][0][1]["query"], "mock");
    let counted = bench::mock::prompt_tokens(&serde_json::json!({
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "Say hello"}]
    }));
    assert_eq!(v["count_tokens"], counted);
    assert_eq!(v["bad_key"][0], 401);
    assert_eq!(v["bad_key"][1], "authentication_error");

    // The SDK's own headers reached upstream; the relay key did not.
    let seen = mock.requests_for(KEY_A);
    assert_eq!(seen.len(), 5, "five upstream calls for five good requests");
    for r in &seen {
        assert_eq!(r.header("x-api-key"), Some(KEY_A));
        assert!(r.header("authorization").is_none());
        assert_eq!(r.header("x-stainless-lang"), Some("js"));
    }
    assert_eq!(
        seen.iter()
            .filter(|r| r.path == "/v1/messages/count_tokens")
            .count(),
        1
    );
    // Usage the SDK saw equals usage the relay recorded; count_tokens is free.
    let events = app
        .wait_events("4 usage events and 5 finished requests", |e| {
            usages(e).len() == 4 && finished(e).len() == 5
        })
        .await;
    assert_sdk_usage_recorded(&events, &v);
    app.stop().await;
}

#[tokio::test]
async fn claude_code_cli_gets_its_reply_through_the_relay() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let home = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(claude())
        .args(["-p", "Say hello"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", app.url(""))
        .env("ANTHROPIC_AUTH_TOKEN", &app.key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .expect("claude timed out")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; `npm install @anthropic-ai/claude-code` and set CLAUDE_BIN",
                claude()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "claude failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Hello from the mock upstream."),
        "unexpected reply: {stdout}"
    );
    // Claude Code's traffic went through the relay with its own headers intact.
    let seen = mock.requests_for(KEY_A);
    assert!(!seen.is_empty());
    let first = &seen[0];
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.query.as_deref(), Some("beta=true"));
    assert!(first
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("claude-cli/")));
    assert!(first.header("x-claude-code-session-id").is_some());
    assert!(
        first.header("authorization").is_none(),
        "relay key leaked upstream"
    );
    let events = app
        .wait_events("usage for every upstream call", |e| {
            usages(e).len() == seen.len()
        })
        .await;
    assert!(finished(&events)
        .iter()
        .all(|f| f.status == 200 && f.stream));
    app.stop().await;
}
