//! Rendering of mock responses: the non-streaming message JSON and the SSE transcript.
//!
//! Both are pure functions of a [`ResponsePlan`], which is itself a pure function of the
//! request body and the stream shape, so tests can compute the exact bytes the mock will
//! send with [`sse_transcript`] and assert byte-identical pass-through.
//!
//! Content, in index order: a thinking block (when `thinking` is enabled/adaptive: two
//! `thinking_delta`s then one `signature_delta`), a text block (`text_chunks`
//! `text_delta`s), a tool_use block (when `tools` is non-empty: `input_json_delta`
//! fragments starting with `""`, concatenating to `{"query": "mock"}`). Server tools
//! (`web_search_*`, `web_fetch_*` in `tools`) come between thinking and text: per use a
//! `server_tool_use` block and its result block; their usage (`server_tool_use` counts
//! and the grown input) arrives restated in `message_delta`, as the API sends it. One
//! `ping` follows the first `content_block_start`.
//!
//! [`SseFraming`] reshapes the bytes on the wire (CRLF, `:` comments, events split
//! across frames, several events per frame) without changing what they mean.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::usage::{
    expected_usage, server_tool_uses, wants_thinking, wants_tool, CacheSplit, MockUsage, ServerTool,
};

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
    /// Server-tool uses, in order (each: a `server_tool_use` block and its result).
    pub server_tools: Vec<ServerTool>,
    /// `usage.service_tier` of the answer (`standard`, `priority`, `batch`).
    pub service_tier: String,
    /// How the SSE bytes are framed.
    pub framing: SseFraming,
    /// How the usage reports the cache-write split.
    pub cache_split: CacheSplit,
}

/// How the mock frames SSE bytes on the wire. All off (the default): one body frame
/// per event, LF line ends, no comments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SseFraming {
    /// CRLF line ends.
    pub crlf: bool,
    /// `:` comments: a comment block before `message_start`, and a comment line between
    /// the `event:` and `data:` lines of `message_start` and `message_delta`.
    pub comments: bool,
    /// Every event split over three frames: inside the `event:` line, inside the `data:`
    /// prefix, and before the last byte (between `\r` and `\n` with CRLF).
    pub split: bool,
    /// Three frames (events, or pieces of them) per body chunk.
    pub coalesce: bool,
    /// No `event:` lines: each event is its `data:` line alone, named by the `type` in
    /// its JSON (valid SSE; a parser must not depend on the event name).
    pub unnamed: bool,
}

impl SseFraming {
    /// Every reshaping at once.
    pub fn all() -> SseFraming {
        SseFraming {
            crlf: true,
            comments: true,
            split: true,
            coalesce: true,
            unnamed: false,
        }
    }

    /// Whether the bytes are reshaped at all.
    pub fn is_plain(&self) -> bool {
        *self == SseFraming::default()
    }
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
            server_tools: server_tool_uses(body),
            service_tier: "standard".to_owned(),
            framing: SseFraming::default(),
            cache_split: CacheSplit::default(),
        }
    }

    fn server_tool_id(&self, n: usize) -> String {
        format!(
            "srvtoolu_01Mock{}{n:02}",
            &self.id[self.id.len().saturating_sub(10)..]
        )
    }

    /// The `server_tool_use` block (with its full input) and the result block of use `n`.
    fn server_tool_blocks(&self, n: usize, tool: ServerTool) -> (String, String) {
        let id = quote(&self.server_tool_id(n));
        let input = match tool {
            ServerTool::WebSearch => "{\"query\":\"mock\"}",
            ServerTool::WebFetch => "{\"url\":\"https://example.com/mock\"}",
        };
        let call = format!(
            "{{\"type\":\"server_tool_use\",\"id\":{id},\"name\":\"{}\",\"input\":{input}}}",
            tool.name()
        );
        let result = match tool {
            ServerTool::WebSearch => format!(
                "{{\"type\":\"web_search_tool_result\",\"tool_use_id\":{id},\"content\":[{{\"type\":\"web_search_result\",\"title\":\"Mock result\",\"url\":\"https://example.com/mock\",\"encrypted_content\":\"EqMockEncryptedContent\",\"page_age\":null}}]}}"
            ),
            ServerTool::WebFetch => format!(
                "{{\"type\":\"web_fetch_tool_result\",\"tool_use_id\":{id},\"content\":{{\"type\":\"web_fetch_result\",\"url\":\"https://example.com/mock\",\"content\":{{\"type\":\"document\",\"source\":{{\"type\":\"text\",\"media_type\":\"text/plain\",\"data\":\"Mock page.\"}}}},\"retrieved_at\":\"2026-01-01T00:00:00Z\"}}}}"
            ),
        };
        (call, result)
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
    for (n, tool) in plan.server_tools.iter().enumerate() {
        let (call, result) = plan.server_tool_blocks(n, *tool);
        content.push(call);
        content.push(result);
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
        plan.usage.to_json(&plan.service_tier, plan.cache_split)
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

/// An `input_json_delta` carrying `part` of a tool input.
fn input_json_delta(part: &str) -> String {
    format!(
        "{{\"type\":\"input_json_delta\",\"partial_json\":{}}}",
        quote(part)
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

    // Before any server tool ran, the input lacks the tools' results.
    let known = if plan.server_tools.is_empty() {
        plan.usage
    } else {
        plan.usage.before_server_tools()
    };
    let start_usage = if plan.restate_usage {
        known.provisional()
    } else {
        MockUsage {
            output_tokens: 1,
            ..known
        }
    };
    push(
        &mut out,
        "message_start",
        format!(
            "{{\"type\":\"message_start\",\"message\":{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{}}}}}",
            quote(&plan.id),
            quote(&plan.model),
            start_usage.to_json(&plan.service_tier, plan.cache_split)
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

    for (n, tool) in plan.server_tools.iter().enumerate() {
        let (_, result) = plan.server_tool_blocks(n, *tool);
        block_start(
            &mut out,
            index,
            format!(
                "{{\"type\":\"server_tool_use\",\"id\":{},\"name\":\"{}\",\"input\":{{}}}}",
                quote(&plan.server_tool_id(n)),
                tool.name()
            ),
        );
        let parts: [&str; 3] = match tool {
            ServerTool::WebSearch => ["", "{\"query\"", ":\"mock\"}"],
            ServerTool::WebFetch => ["", "{\"url\"", ":\"https://example.com/mock\"}"],
        };
        for part in parts {
            push(
                &mut out,
                "content_block_delta",
                delta(index, input_json_delta(part)),
                true,
            );
        }
        push(&mut out, "content_block_stop", stop(index), false);
        index += 1;
        // Result blocks arrive complete in their start event.
        block_start(&mut out, index, result);
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
                delta(index, input_json_delta(part)),
                true,
            );
        }
        push(&mut out, "content_block_stop", stop(index), false);
    }

    let delta_usage = if !plan.server_tools.is_empty() {
        // The API restates the grown input and reports the uses here.
        format!(
            "{{{},\"output_tokens\":{},{}}}",
            plan.usage.input_json_members(plan.cache_split),
            plan.usage.output_tokens,
            plan.usage.server_tool_json_member()
        )
    } else if plan.restate_usage {
        format!(
            "{{{},\"output_tokens\":{}}}",
            plan.usage.input_json_members(plan.cache_split),
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
    frame(out, plan.framing)
}

/// Reshapes events into body frames as [`SseFraming`] says. A frame takes the pace of
/// the first paced event that starts in it.
pub fn frame(events: Vec<(Bytes, Pace)>, f: SseFraming) -> Vec<(Bytes, Pace)> {
    if f.is_plain() {
        return events;
    }
    let mut pieces: Vec<(Bytes, Pace)> = Vec::with_capacity(events.len() * 3 + 1);
    let line_end = if f.crlf { "\r\n" } else { "\n" };
    if f.comments {
        pieces.push((
            Bytes::from(format!(": mock upstream comment{line_end}{line_end}")),
            Pace::Immediate,
        ));
    }
    for (event, pace) in events {
        let mut text = String::from_utf8_lossy(&event).into_owned();
        if f.comments
            && (text.starts_with("event: message_start\n")
                || text.starts_with("event: message_delta\n"))
        {
            if let Some(end) = text.find('\n') {
                text.insert_str(end + 1, ": a comment inside the event\n");
            }
        }
        if f.unnamed {
            text = text
                .split_inclusive('\n')
                .filter(|line| !line.starts_with("event:"))
                .collect();
        }
        if f.crlf {
            text = text.replace('\n', "\r\n");
        }
        let bytes = Bytes::from(text);
        if !f.split {
            pieces.push((bytes, pace));
            continue;
        }
        let mut cuts = vec![3, bytes.len().saturating_sub(1)];
        if let Some(d) = memchr::memmem::find(&bytes, b"data:") {
            cuts.push(d + 3);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut from = 0;
        for cut in cuts.into_iter().filter(|c| *c > 0 && *c < bytes.len()) {
            let first = from == 0;
            pieces.push((
                bytes.slice(from..cut),
                if first { pace } else { Pace::Immediate },
            ));
            from = cut;
        }
        pieces.push((
            bytes.slice(from..),
            if from == 0 { pace } else { Pace::Immediate },
        ));
    }
    if !f.coalesce {
        return pieces;
    }
    pieces
        .chunks(3)
        .map(|group| {
            let mut buf = BytesMut::new();
            for (b, _) in group {
                buf.extend_from_slice(b);
            }
            let pace = group
                .iter()
                .map(|(_, p)| *p)
                .find(|p| *p != Pace::Immediate)
                .unwrap_or(Pace::Immediate);
            (buf.freeze(), pace)
        })
        .collect()
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

    /// The bytes with comments dropped and CRLF turned into LF.
    fn unshaped(bytes: &[u8]) -> String {
        let text = String::from_utf8(bytes.to_vec())
            .unwrap()
            .replace("\r\n", "\n");
        let kept: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with(':'))
            .collect();
        kept.concat().trim_start_matches('\n').to_owned()
    }

    #[test]
    fn framing_reshapes_the_bytes_but_not_the_events() {
        let body = json!({"model":"m","max_tokens":10,"stream":true,
            "messages":[{"role":"user","content":"hi"}]});
        let mut plan = ResponsePlan::for_request(&body, 6, true);
        let plain: Vec<Bytes> = sse_events(&plan).into_iter().map(|(b, _)| b).collect();
        for framing in [
            SseFraming {
                crlf: true,
                ..Default::default()
            },
            SseFraming {
                comments: true,
                ..Default::default()
            },
            SseFraming {
                split: true,
                ..Default::default()
            },
            SseFraming {
                coalesce: true,
                ..Default::default()
            },
            SseFraming::all(),
        ] {
            plan.framing = framing;
            let frames: Vec<(Bytes, Pace)> = sse_events(&plan);
            let wire: Vec<u8> = frames.iter().flat_map(|(b, _)| b.to_vec()).collect();
            assert_eq!(
                unshaped(&wire),
                String::from_utf8(plain.concat()).unwrap(),
                "{framing:?}"
            );
            if framing.crlf {
                assert!(!String::from_utf8_lossy(&wire)
                    .replace("\r\n", "")
                    .contains('\n'));
            }
            if framing.comments {
                let text = String::from_utf8_lossy(&wire).into_owned();
                assert!(text.starts_with(": "), "{text}");
                assert!(
                    text.contains("event: message_delta\n: ")
                        || text.contains("event: message_delta\r\n: ")
                );
            }
            if framing.split {
                // Some frame ends inside an event (not after a blank line).
                assert!(frames
                    .iter()
                    .any(|(b, _)| !b.ends_with(b"\n\n") && !b.ends_with(b"\r\n\r\n")));
            }
            if framing.coalesce && !framing.split {
                assert!(
                    frames.len() < plain.len()
                        && frames.iter().any(|(b, _)| b
                            .windows(7)
                            .filter(|w| w == b"event: ")
                            .count()
                            > 1)
                );
            }
            // Paced events keep their order.
            let paced: Vec<u32> = frames
                .iter()
                .filter_map(|(_, p)| match p {
                    Pace::Paced(n) => Some(*n),
                    Pace::Immediate => None,
                })
                .collect();
            assert!(paced.windows(2).all(|w| w[0] < w[1]), "{paced:?}");
        }
    }

    #[test]
    fn a_web_search_stream_restates_usage_with_its_searches_in_message_delta() {
        let body = json!({"model":"m","max_tokens":10,"stream":true,
            "messages":[{"role":"user","content":"news?"}],
            "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2}]});
        let events: Vec<_> = sse_transcript(&body).iter().map(parse).collect();
        let u = expected_usage(&body);
        let start = &events[0].1["message"]["usage"];
        assert_eq!(
            start["input_tokens"].as_u64().unwrap(),
            u.before_server_tools().input_tokens
        );
        assert!(start.get("server_tool_use").is_none());
        let delta = &events[events.len() - 2].1["usage"];
        assert_eq!(delta["input_tokens"].as_u64().unwrap(), u.input_tokens);
        assert_eq!(delta["server_tool_use"]["web_search_requests"], 2);
        let blocks: Vec<&str> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            blocks,
            [
                "server_tool_use",
                "web_search_tool_result",
                "server_tool_use",
                "web_search_tool_result",
                "text"
            ]
        );
        let plan = ResponsePlan::for_request(&body, 6, false);
        let v: Value = serde_json::from_slice(&message_json(&plan)).unwrap();
        assert_eq!(v["usage"]["server_tool_use"]["web_search_requests"], 2);
        assert_eq!(v["content"][0]["type"], "server_tool_use");
        assert_eq!(v["content"][1]["type"], "web_search_tool_result");
        assert_eq!(v["stop_reason"], "end_turn");
    }

    #[test]
    fn error_event_has_the_compact_overloaded_substring() {
        let e = error_event("overloaded_error");
        let s = std::str::from_utf8(&e).unwrap();
        assert!(s.starts_with("event: error\n"));
        assert!(s.contains("\"type\":\"overloaded_error\""));
    }
}
