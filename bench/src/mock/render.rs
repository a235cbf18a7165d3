//! Rendering of mock responses: the non-streaming message JSON and the SSE transcript.
//!
//! Both are pure functions of a [`ResponsePlan`], which is itself a pure function of the
//! request body and the stream shape, so tests can compute the exact bytes the mock will
//! send with [`sse_transcript`] and assert byte-identical pass-through.
//!
//! Content, in index order: a thinking block (when `thinking` is enabled/adaptive: two
//! `thinking_delta`s then one `signature_delta`), a text block (`text_chunks`
//! `text_delta`s), a tool_use block (when `tools` is non-empty: `input_json_delta`
//! fragments starting with `""`, concatenating to `{"query": "mock"}`). One `ping` follows
//! the first `content_block_start`.

use bytes::Bytes;
use serde_json::Value;

use super::usage::{expected_usage, wants_thinking, wants_tool, MockUsage};

/// Words the text block is made of, cycled for longer streams.
const WORDS: [&str; 6] = ["Hello", " from", " the", " mock", " upstream", "."];
/// The thinking block's text, split into its two deltas.
const THINKING_PARTS: [&str; 2] = ["Let me think", " about this request."];
/// The thinking block's signature (sent once as `signature_delta`).
pub const THINKING_SIGNATURE: &str = "EqQBCkYIBxgCKkBmockSignatureForTests0123456789";
/// Fragments of the tool input JSON, the first one empty as the real API sends it.
const TOOL_INPUT_PARTS: [&str; 4] = ["", "{\"query\"", ": \"mo", "ck\"}"];

/// Everything that decides what a response contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    /// `msg_…` id, derived from the request body bytes so transcripts are reproducible.
    pub id: String,
    /// Echo of the request's model.
    pub model: String,
    /// Emit a thinking block first.
    pub thinking: bool,
    /// Emit a tool_use block calling this tool.
    pub tool: Option<String>,
    /// Final usage.
    pub usage: MockUsage,
    /// Number of `text_delta` events (≥ 1).
    pub text_chunks: usize,
    /// Restate input/cache counts in `message_delta` with the final values while
    /// `message_start` carries provisional (halved) ones.
    pub restate_usage: bool,
}

/// FNV-1a, used only to derive stable ids from request bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ResponsePlan {
    /// The plan for a parsed request body.
    pub fn for_request(body: &Value, text_chunks: usize, restate_usage: bool) -> ResponsePlan {
        let canonical = serde_json::to_vec(body).unwrap_or_default();
        ResponsePlan {
            id: format!("msg_01Mock{:016x}", fnv1a(&canonical)),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("claude-sonnet-4-6")
                .to_owned(),
            thinking: wants_thinking(body),
            tool: wants_tool(body).map(str::to_owned),
            usage: expected_usage(body),
            text_chunks: text_chunks.max(1),
            restate_usage,
        }
    }

    fn tool_id(&self) -> String {
        format!(
            "toolu_01Mock{}",
            &self.id[self.id.len().saturating_sub(12)..]
        )
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn text(&self) -> String {
        (0..self.text_chunks)
            .map(|i| WORDS[i % WORDS.len()])
            .collect()
    }
}

/// JSON string literal (quoted and escaped).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// The non-streaming `200` body for a plan.
pub fn message_json(plan: &ResponsePlan) -> Bytes {
    let mut content = Vec::new();
    if plan.thinking {
        content.push(format!(
            "{{\"type\":\"thinking\",\"thinking\":{},\"signature\":{}}}",
            quote(&THINKING_PARTS.concat()),
            quote(THINKING_SIGNATURE)
        ));
    }
    content.push(format!(
        "{{\"type\":\"text\",\"text\":{}}}",
        quote(&plan.text())
    ));
    if let Some(tool) = &plan.tool {
        content.push(format!(
            "{{\"type\":\"tool_use\",\"id\":{},\"name\":{},\"input\":{{\"query\":\"mock\"}}}}",
            quote(&plan.tool_id()),
            quote(tool)
        ));
    }
    Bytes::from(format!(
        "{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[{}],\"stop_reason\":\"{}\",\"stop_sequence\":null,\"usage\":{}}}",
        quote(&plan.id),
        quote(&plan.model),
        content.join(","),
        plan.stop_reason(),
        plan.usage.to_json()
    ))
}

/// One SSE event: `event:` line, one-line `data:`, blank line.
pub fn sse_event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The `event: error` a stream ends with on a mid-stream failure. The data line contains
/// the compact `"type":"overloaded_error"` substring Claude Code matches.
pub fn error_event(error_type: &str) -> Bytes {
    let message = match error_type {
        "overloaded_error" => "Overloaded",
        "api_error" => "Internal server error",
        _ => "Mock upstream error",
    };
    sse_event(
        "error",
        &format!(
            "{{\"type\":\"error\",\"error\":{{\"type\":{},\"message\":{}}}}}",
            quote(error_type),
            quote(message)
        ),
    )
}

/// Which events of a transcript are paced (text deltas are; structure events are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Sent right after the previous event.
    Immediate,
    /// The n-th paced event (1-based), due at `start + n × interval`.
    Paced(u32),
}

/// The SSE events for a plan, each with its pacing class.
pub fn sse_events(plan: &ResponsePlan) -> Vec<(Bytes, Pace)> {
    let mut out = Vec::with_capacity(plan.text_chunks + 16);
    let mut paced = 0u32;
    let mut push = |out: &mut Vec<(Bytes, Pace)>, name: &str, data: String, is_paced: bool| {
        let pace = if is_paced {
            paced += 1;
            Pace::Paced(paced)
        } else {
            Pace::Immediate
        };
        out.push((sse_event(name, &data), pace));
    };

    let start_usage = if plan.restate_usage {
        plan.usage.provisional()
    } else {
        MockUsage {
            output_tokens: 1,
            ..plan.usage
        }
    };
    push(
        &mut out,
        "message_start",
        format!(
            "{{\"type\":\"message_start\",\"message\":{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{}}}}}",
            quote(&plan.id),
            quote(&plan.model),
            start_usage.to_json()
        ),
        false,
    );

    let mut index = 0usize;
    let mut pinged = false;
    let mut block_start = |out: &mut Vec<(Bytes, Pace)>, index: usize, block: String| {
        out.push((
            sse_event(
                "content_block_start",
                &format!(
                    "{{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{block}}}"
                ),
            ),
            Pace::Immediate,
        ));
        if !pinged {
            pinged = true;
            out.push((sse_event("ping", "{\"type\": \"ping\"}"), Pace::Immediate));
        }
    };
    let delta = |index: usize, delta: String| {
        format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{delta}}}")
    };
    let stop = |index: usize| format!("{{\"type\":\"content_block_stop\",\"index\":{index}}}");

    if plan.thinking {
        block_start(
            &mut out,
            index,
            "{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}".to_owned(),
        );
        for part in THINKING_PARTS {
            push(
                &mut out,
                "content_block_delta",
                delta(
                    index,
                    format!(
                        "{{\"type\":\"thinking_delta\",\"thinking\":{}}}",
                        quote(part)
                    ),
                ),
                true,
            );
        }
        push(
            &mut out,
            "content_block_delta",
            delta(
                index,
                format!(
                    "{{\"type\":\"signature_delta\",\"signature\":{}}}",
                    quote(THINKING_SIGNATURE)
                ),
            ),
            false,
        );
        push(&mut out, "content_block_stop", stop(index), false);
        index += 1;
    }

    block_start(
        &mut out,
        index,
        "{\"type\":\"text\",\"text\":\"\"}".to_owned(),
    );
    for i in 0..plan.text_chunks {
        push(
            &mut out,
            "content_block_delta",
            delta(
                index,
                format!(
                    "{{\"type\":\"text_delta\",\"text\":{}}}",
                    quote(WORDS[i % WORDS.len()])
                ),
            ),
            true,
        );
    }
    push(&mut out, "content_block_stop", stop(index), false);
    index += 1;

    if let Some(tool) = &plan.tool {
        block_start(
            &mut out,
            index,
            format!(
                "{{\"type\":\"tool_use\",\"id\":{},\"name\":{},\"input\":{{}}}}",
                quote(&plan.tool_id()),
                quote(tool)
            ),
        );
        for part in TOOL_INPUT_PARTS {
            push(
                &mut out,
                "content_block_delta",
                delta(
                    index,
                    format!(
                        "{{\"type\":\"input_json_delta\",\"partial_json\":{}}}",
                        quote(part)
                    ),
                ),
                true,
            );
        }
        push(&mut out, "content_block_stop", stop(index), false);
    }

    let delta_usage = if plan.restate_usage {
        format!(
            "{{{},\"output_tokens\":{}}}",
            plan.usage.input_json_members(),
            plan.usage.output_tokens
        )
    } else {
        format!("{{\"output_tokens\":{}}}", plan.usage.output_tokens)
    };
    push(
        &mut out,
        "message_delta",
        format!(
            "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},\"usage\":{}}}",
            plan.stop_reason(),
            delta_usage
        ),
        false,
    );
    push(
        &mut out,
        "message_stop",
        "{\"type\":\"message_stop\"}".to_owned(),
        false,
    );
    out
}

/// The exact SSE events (one `Bytes` per event, in order) the mock sends for a streaming
/// request `body` under the default configuration (6 text chunks, no restated usage).
/// Use [`super::MockUpstream::sse_transcript`] for a mock started with other settings.
pub fn sse_transcript(body: &Value) -> Vec<Bytes> {
    let plan = ResponsePlan::for_request(body, super::DEFAULT_TEXT_CHUNKS, false);
    sse_events(&plan).into_iter().map(|(b, _)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(event: &Bytes) -> (String, Value) {
        let s = std::str::from_utf8(event).unwrap();
        assert!(
            s.ends_with("\n\n"),
            "event must end with a blank line: {s:?}"
        );
        let mut lines = s.trim_end().lines();
        let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        assert!(lines.next().is_none(), "one data line per event");
        (name.to_owned(), serde_json::from_str(data).unwrap())
    }

    #[test]
    fn every_event_names_its_type_and_the_sequence_is_well_formed() {
        let body = json!({"model":"claude-sonnet-4-6","max_tokens":100,"stream":true,
            "messages":[{"role":"user","content":"hi"}],
            "tools":[{"name":"lookup","input_schema":{"type":"object"}}],
            "thinking":{"type":"enabled","budget_tokens":1024}});
        let events: Vec<_> = sse_transcript(&body).iter().map(parse).collect();
        for (name, data) in &events {
            assert_eq!(data["type"].as_str(), Some(name.as_str()));
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "message_start");
        assert_eq!(names[1], "content_block_start");
        assert_eq!(names[2], "ping");
        assert_eq!(names[names.len() - 2], "message_delta");
        assert_eq!(names[names.len() - 1], "message_stop");
        let deltas: Vec<&str> = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| d["delta"]["type"].as_str().unwrap())
            .collect();
        let sig = deltas.iter().position(|t| *t == "signature_delta").unwrap();
        assert!(deltas[..sig].iter().all(|t| *t == "thinking_delta"));
        assert_eq!(deltas.iter().filter(|t| **t == "text_delta").count(), 6);
        let json_parts: Vec<&str> = events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(json_parts[0], "");
        let input: Value = serde_json::from_str(&json_parts.concat()).unwrap();
        assert_eq!(input, json!({"query":"mock"}));
        let (_, md) = &events[names.len() - 2];
        assert_eq!(md["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            md["usage"]["output_tokens"].as_u64().unwrap(),
            expected_usage(&body).output_tokens
        );
    }

    #[test]
    fn restated_usage_differs_between_start_and_delta_and_delta_is_final() {
        let body = json!({"model":"m","max_tokens":10,
            "system":[{"type":"text","text":"s".repeat(400),"cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":"x".repeat(100)}]});
        let plan = ResponsePlan::for_request(&body, 3, true);
        let events: Vec<_> = sse_events(&plan).iter().map(|(b, _)| parse(b)).collect();
        let start = &events[0].1["message"]["usage"];
        let delta = &events[events.len() - 2].1["usage"];
        let final_usage = expected_usage(&body);
        assert_eq!(
            delta["input_tokens"].as_u64().unwrap(),
            final_usage.input_tokens
        );
        assert_eq!(
            delta["cache_creation"]["ephemeral_5m_input_tokens"]
                .as_u64()
                .unwrap(),
            final_usage.cache_creation_5m
        );
        assert_ne!(start["input_tokens"], delta["input_tokens"]);
        assert_ne!(
            start["cache_creation_input_tokens"],
            delta["cache_creation_input_tokens"]
        );
    }

    #[test]
    fn nonstreaming_body_has_the_final_usage_and_blocks() {
        let body = json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"}],
            "tools":[{"name":"t"}]});
        let plan = ResponsePlan::for_request(&body, 6, false);
        let v: Value = serde_json::from_slice(&message_json(&plan)).unwrap();
        assert_eq!(v["content"][0]["text"], "Hello from the mock upstream.");
        assert_eq!(v["content"][1]["type"], "tool_use");
        assert_eq!(v["stop_reason"], "tool_use");
        let u = expected_usage(&body);
        assert_eq!(v["usage"]["input_tokens"].as_u64().unwrap(), u.input_tokens);
        assert_eq!(
            v["usage"]["output_tokens"].as_u64().unwrap(),
            u.output_tokens
        );
    }

    #[test]
    fn error_event_has_the_compact_overloaded_substring() {
        let e = error_event("overloaded_error");
        let s = std::str::from_utf8(&e).unwrap();
        assert!(s.starts_with("event: error\n"));
        assert!(s.contains("\"type\":\"overloaded_error\""));
    }
}
