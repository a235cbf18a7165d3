//! Request bodies and headers the driver sends.

use bytes::Bytes;
use serde_json::{json, Value};

/// A minimal Messages request (a chat turn).
pub fn small(stream: bool) -> Bytes {
    Bytes::from(
        json!({
            "model": "claude-sonnet-4-6",
            "max_tokens": 1024,
            "stream": stream,
            "messages": [{"role": "user", "content": "Hello, how are you today?"}]
        })
        .to_string(),
    )
}

/// Deterministic filler prose of `len` bytes.
fn filler(len: usize, seed: usize) -> String {
    const WORDS: [&str; 12] = [
        "the",
        "relay",
        "forwards",
        "each",
        "request",
        "unchanged",
        "while",
        "usage",
        "events",
        "flow",
        "into",
        "projections",
    ];
    let mut s = String::with_capacity(len + 16);
    let mut i = seed;
    while s.len() < len {
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.truncate(len);
    s
}

/// A Claude-Code-shaped request of about `target_bytes`: billing and identity system
/// blocks, a large cached system prompt, ~20 tool definitions, a conversation with
/// tool_use / tool_result turns, `metadata.user_id`, adaptive thinking.
pub fn claude_code(stream: bool, target_bytes: usize) -> Bytes {
    let tools: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "name": format!("Tool{i}"),
                "description": filler(1500, i),
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": filler(200, i + 100)},
                        "limit": {"type": "integer"}
                    },
                    "required": ["path"]
                }
            })
        })
        .collect();
    let mut messages = Vec::new();
    for turn in 0..12 {
        messages.push(
            json!({"role": "user", "content": [{"type": "text", "text": filler(1200, turn)}]}),
        );
        messages.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": filler(400, turn + 50)},
            {"type": "tool_use", "id": format!("toolu_{turn:04}"), "name": "Tool1", "input": {"path": "/src/main.rs"}}
        ]}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("toolu_{turn:04}"), "content": filler(2500, turn + 200)}
        ]}));
    }
    let mut body = json!({
        "model": "claude-opus-4-7",
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.abc; cc_entrypoint=cli;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "tools": tools,
        "messages": messages,
        "metadata": {"user_id": "{\"device_id\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"account_uuid\":\"\",\"session_id\":\"5f0c0c52-1111-4222-8333-444455556666\"}"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"}
    });
    // Grow the big system prompt until the whole body reaches the target size.
    let current = body.to_string().len();
    let pad = target_bytes.saturating_sub(current);
    body["system"][2]["text"] = Value::String(filler(pad, 999));
    Bytes::from(body.to_string())
}

/// Headers Claude Code 2.1.330 sends.
pub fn claude_code_headers() -> Vec<(&'static str, String)> {
    vec![
        (
            "user-agent",
            "claude-cli/2.1.330 (external, cli)".to_owned(),
        ),
        ("x-app", "cli".to_owned()),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14".to_owned(),
        ),
        (
            "anthropic-dangerous-direct-browser-access",
            "true".to_owned(),
        ),
        (
            "x-claude-code-session-id",
            "5f0c0c52-1111-4222-8333-444455556666".to_owned(),
        ),
        ("x-stainless-lang", "js".to_owned()),
        ("x-stainless-package-version", "0.128.0".to_owned()),
        ("x-stainless-runtime", "node".to_owned()),
        ("x-stainless-retry-count", "0".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_code_body_is_valid_json_near_the_target_size() {
        let b = claude_code(true, 200_000);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream"], true);
        assert!((199_000..=201_000).contains(&b.len()), "{}", b.len());
    }
}
