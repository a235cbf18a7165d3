//! Deterministic token accounting for mock responses.
//!
//! The mock never tokenises anything: it estimates tokens as `ceil(bytes / 4)` of each
//! request item so that tests can compute the exact usage a request will be billed for,
//! with [`expected_usage`], without running the server.
//!
//! Rules (all deterministic functions of the request body):
//! - Items are walked in Anthropic's cache-prefix order: `tools` → `system` → `messages`.
//!   A text block or a plain-string `system`/`content` counts `ceil(len(text) / 4)`;
//!   any other item (tool definition, image, tool_result, …) counts
//!   `ceil(len(compact JSON) / 4)`.
//! - Every item carrying `cache_control` closes a cache segment (the tokens since the
//!   previous breakpoint); a top-level `cache_control` closes one more segment at the end.
//! - When the request has more than one message (a follow-up turn), every segment except
//!   the last is a cache **read**; the last segment is a cache **write**. On a first turn
//!   (one message) every segment is a write. A write is 1h when its `cache_control.ttl` is
//!   `"1h"`, otherwise 5m.
//! - `input_tokens` = tokens after the last breakpoint + 3 (framing overhead), so it is
//!   never zero.
//! - `output_tokens` = 12 for the text block, + 24 when a `tool_use` block is produced
//!   (a client tool in `tools` and `tool_choice.type` ≠ `"none"`), + 32 when a thinking
//!   block is produced (`thinking.type` is `"enabled"` or `"adaptive"`).
//! - Server tools: a `web_search_*` tool in `tools` makes the model search `max_uses`
//!   times (default 1), a `web_fetch_*` tool fetch `max_uses` times (default 1). Each use
//!   adds 8 output tokens (the query) and its results to `input_tokens` (1,500 tokens per
//!   search, 2,500 per fetch); `server_tool_use` counts the uses. Server tools are not
//!   client tools: they never produce a `tool_use` block.

use serde_json::Value;

/// Output tokens billed for the text block every response has.
pub const TEXT_OUTPUT_TOKENS: u64 = 12;
/// Output tokens billed for the tool_use block.
pub const TOOL_OUTPUT_TOKENS: u64 = 24;
/// Output tokens billed for the thinking block.
pub const THINKING_OUTPUT_TOKENS: u64 = 32;
/// Tokens added to `input_tokens` for message framing.
pub const FRAMING_INPUT_TOKENS: u64 = 3;
/// Output tokens billed per server-tool use (the generated query or URL).
pub const SERVER_TOOL_OUTPUT_TOKENS: u64 = 8;
/// Input tokens one web search adds (its results).
pub const SEARCH_RESULT_TOKENS: u64 = 1_500;
/// Input tokens one web fetch adds (the fetched document).
pub const FETCH_RESULT_TOKENS: u64 = 2_500;

/// The final usage the mock reports for a request (what a relay must bill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MockUsage {
    /// Uncached input tokens (after the last cache breakpoint).
    pub input_tokens: u64,
    /// Generated tokens, thinking included.
    pub output_tokens: u64,
    /// Tokens served from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Tokens written to the 5-minute cache.
    pub cache_creation_5m: u64,
    /// Tokens written to the 1-hour cache.
    pub cache_creation_1h: u64,
    /// `server_tool_use.web_search_requests`.
    pub web_search_requests: u64,
    /// `server_tool_use.web_fetch_requests`.
    pub web_fetch_requests: u64,
}

impl MockUsage {
    /// `cache_creation_input_tokens` as the API reports it: 5m + 1h writes.
    pub fn cache_creation_input_tokens(&self) -> u64 {
        self.cache_creation_5m + self.cache_creation_1h
    }

    /// Whether any server tool was used.
    pub fn used_server_tools(&self) -> bool {
        self.web_search_requests > 0 || self.web_fetch_requests > 0
    }

    /// Every field halved: what `message_start` reports when the mock restates usage in
    /// `message_delta` (so a relay that adds instead of overlaying is caught).
    pub fn provisional(&self) -> MockUsage {
        MockUsage {
            input_tokens: self.input_tokens / 2,
            output_tokens: 1,
            cache_read_input_tokens: self.cache_read_input_tokens / 2,
            cache_creation_5m: self.cache_creation_5m / 2,
            cache_creation_1h: self.cache_creation_1h / 2,
            web_search_requests: 0,
            web_fetch_requests: 0,
        }
    }

    /// What `message_start` reports before any server tool ran: the input without the
    /// tools' results, no uses, 1 output token.
    pub fn before_server_tools(&self) -> MockUsage {
        MockUsage {
            input_tokens: self.input_tokens
                - self.web_search_requests * SEARCH_RESULT_TOKENS
                - self.web_fetch_requests * FETCH_RESULT_TOKENS,
            output_tokens: 1,
            web_search_requests: 0,
            web_fetch_requests: 0,
            ..*self
        }
    }

    /// `"server_tool_use":{…}` (no trailing comma).
    pub(crate) fn server_tool_json_member(&self) -> String {
        format!(
            "\"server_tool_use\":{{\"web_search_requests\":{},\"web_fetch_requests\":{}}}",
            self.web_search_requests, self.web_fetch_requests
        )
    }

    /// The input-side fields as compact JSON members (no braces), in the API's order,
    /// with the cache-write split reported as `split` says.
    pub(crate) fn input_json_members(&self, split: CacheSplit) -> String {
        let head = format!(
            "\"input_tokens\":{},\"cache_creation_input_tokens\":{},\"cache_read_input_tokens\":{}",
            self.input_tokens,
            self.cache_creation_input_tokens(),
            self.cache_read_input_tokens,
        );
        match split {
            CacheSplit::Full => format!(
                "{head},\"cache_creation\":{{\"ephemeral_5m_input_tokens\":{},\"ephemeral_1h_input_tokens\":{}}}",
                self.cache_creation_5m, self.cache_creation_1h
            ),
            CacheSplit::OneHourOnly => format!(
                "{head},\"cache_creation\":{{\"ephemeral_1h_input_tokens\":{}}}",
                self.cache_creation_1h
            ),
            CacheSplit::Absent => head,
        }
    }

    /// The full `usage` object of a non-streaming response, answered in `service_tier`.
    pub fn to_json(&self, service_tier: &str, split: CacheSplit) -> String {
        let tools = if self.used_server_tools() {
            format!(",{}", self.server_tool_json_member())
        } else {
            String::new()
        };
        format!(
            "{{{},\"output_tokens\":{}{tools},\"service_tier\":\"{service_tier}\",\"inference_geo\":\"global\"}}",
            self.input_json_members(split),
            self.output_tokens
        )
    }
}

/// How an answer reports its cache writes' split by lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheSplit {
    /// `cache_creation` with both `ephemeral_5m_input_tokens` and
    /// `ephemeral_1h_input_tokens`, as the API answers today.
    #[default]
    Full,
    /// `cache_creation` with the 1-hour count only: the rest of
    /// `cache_creation_input_tokens` is 5-minute writes.
    OneHourOnly,
    /// No `cache_creation` object (older API versions, some gateways): only the total,
    /// which a biller must take as 5-minute writes.
    Absent,
}

/// Estimated tokens of a string: `ceil(bytes / 4)`.
fn tokens_of_str(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4)
}

/// Estimated tokens of one request item (see the module rules).
fn tokens_of_item(item: &Value) -> u64 {
    match item {
        Value::String(s) => tokens_of_str(s),
        Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("text") => map
            .get("text")
            .and_then(Value::as_str)
            .map(tokens_of_str)
            .unwrap_or(0),
        other => tokens_of_str(&other.to_string()),
    }
}

/// A closed cache segment: its size and whether its breakpoint asked for the 1h TTL.
struct Segment {
    tokens: u64,
    one_hour: bool,
}

fn is_one_hour(cache_control: &Value) -> bool {
    cache_control.get("ttl").and_then(Value::as_str) == Some("1h")
}

/// Walks the cacheable items in prefix order, closing segments at breakpoints.
struct Walker {
    pending: u64,
    segments: Vec<Segment>,
}

impl Walker {
    fn item(&mut self, item: &Value) {
        self.pending += tokens_of_item(item);
        if let Some(cc) = item.get("cache_control") {
            self.close(is_one_hour(cc));
        }
    }

    fn close(&mut self, one_hour: bool) {
        self.segments.push(Segment {
            tokens: self.pending,
            one_hour,
        });
        self.pending = 0;
    }
}

/// Whether the mock answers this request with a tool_use block. Like a real model
/// finishing an agent turn, it answers a tool result with text, so agent loops (Claude
/// Code) terminate.
pub fn wants_tool(body: &Value) -> Option<&str> {
    let tools = body.get("tools")?.as_array()?;
    let answers_tool_result = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    if answers_tool_result {
        return None;
    }
    let choice_none = body
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        == Some("none");
    if choice_none {
        return None;
    }
    let first = tools.iter().find(|t| server_tool_kind(t).is_none())?;
    Some(first.get("name").and_then(Value::as_str).unwrap_or("tool"))
}

/// A server tool the mock runs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTool {
    /// `web_search_*`.
    WebSearch,
    /// `web_fetch_*`.
    WebFetch,
}

impl ServerTool {
    /// The tool's `name` in `server_tool_use` blocks.
    pub fn name(self) -> &'static str {
        match self {
            ServerTool::WebSearch => "web_search",
            ServerTool::WebFetch => "web_fetch",
        }
    }
}

/// The server tool a `tools` entry declares (by its versioned `type`), if any.
fn server_tool_kind(tool: &Value) -> Option<ServerTool> {
    let kind = tool.get("type").and_then(Value::as_str)?;
    if kind.starts_with("web_search_") {
        Some(ServerTool::WebSearch)
    } else if kind.starts_with("web_fetch_") {
        Some(ServerTool::WebFetch)
    } else {
        None
    }
}

/// The server-tool uses the mock performs for `body`, in order: each declared server
/// tool `max_uses` times (default 1).
pub fn server_tool_uses(body: &Value) -> Vec<ServerTool> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tools {
        if let Some(kind) = server_tool_kind(t) {
            let n = t.get("max_uses").and_then(Value::as_u64).unwrap_or(1);
            out.extend(std::iter::repeat_n(kind, usize::try_from(n).unwrap_or(0)));
        }
    }
    out
}

/// Whether the mock answers this request with a thinking block.
pub fn wants_thinking(body: &Value) -> bool {
    matches!(
        body.get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str),
        Some("enabled") | Some("adaptive")
    )
}

/// Total prompt tokens (what `count_tokens` answers): input + cache read + cache writes.
pub fn prompt_tokens(body: &Value) -> u64 {
    let u = expected_usage(body);
    u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens()
}

/// The exact usage the mock reports for `body` (final values: the non-streaming `usage`,
/// and the cumulative totals a stream ends with).
pub fn expected_usage(body: &Value) -> MockUsage {
    let mut w = Walker {
        pending: 0,
        segments: Vec::new(),
    };
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        tools.iter().for_each(|t| w.item(t));
    }
    match body.get("system") {
        Some(Value::Array(blocks)) => blocks.iter().for_each(|b| w.item(b)),
        Some(other @ Value::String(_)) => w.item(other),
        _ => {}
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for m in messages {
        match m.get("content") {
            Some(Value::Array(blocks)) => blocks.iter().for_each(|b| w.item(b)),
            Some(other) => w.item(other),
            None => {}
        }
    }
    if let Some(cc) = body.get("cache_control") {
        w.close(is_one_hour(cc));
    }

    let follow_up = messages.len() > 1;
    let last = w.segments.len().saturating_sub(1);
    let mut usage = MockUsage {
        input_tokens: w.pending + FRAMING_INPUT_TOKENS,
        ..MockUsage::default()
    };
    for (i, seg) in w.segments.iter().enumerate() {
        if follow_up && i != last {
            usage.cache_read_input_tokens += seg.tokens;
        } else if seg.one_hour {
            usage.cache_creation_1h += seg.tokens;
        } else {
            usage.cache_creation_5m += seg.tokens;
        }
    }
    usage.output_tokens = TEXT_OUTPUT_TOKENS
        + if wants_tool(body).is_some() {
            TOOL_OUTPUT_TOKENS
        } else {
            0
        }
        + if wants_thinking(body) {
            THINKING_OUTPUT_TOKENS
        } else {
            0
        };
    for tool in server_tool_uses(body) {
        usage.output_tokens += SERVER_TOOL_OUTPUT_TOKENS;
        match tool {
            ServerTool::WebSearch => {
                usage.web_search_requests += 1;
                usage.input_tokens += SEARCH_RESULT_TOKENS;
            }
            ServerTool::WebFetch => {
                usage.web_fetch_requests += 1;
                usage.input_tokens += FETCH_RESULT_TOKENS;
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_request_has_only_uncached_input() {
        // "Hello" is 5 bytes → 2 tokens, + 3 framing.
        let body =
            json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":"Hello"}]});
        let u = expected_usage(&body);
        assert_eq!(u.input_tokens, 2 + FRAMING_INPUT_TOKENS);
        assert_eq!(u.cache_read_input_tokens, 0);
        assert_eq!(u.cache_creation_input_tokens(), 0);
        assert_eq!(u.output_tokens, TEXT_OUTPUT_TOKENS);
    }

    #[test]
    fn first_turn_writes_5m_and_1h_segments_separately() {
        let system_text = "s".repeat(400); // 100 tokens
        let user_text = "u".repeat(80); // 20 tokens
        let body = json!({
            "model":"m","max_tokens":10,
            "system":[{"type":"text","text":system_text,"cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "messages":[{"role":"user","content":[
                {"type":"text","text":user_text,"cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"tail"}
            ]}]
        });
        let u = expected_usage(&body);
        assert_eq!(u.cache_creation_1h, 100);
        assert_eq!(u.cache_creation_5m, 20);
        assert_eq!(u.cache_read_input_tokens, 0);
        assert_eq!(u.input_tokens, 1 + FRAMING_INPUT_TOKENS);
    }

    #[test]
    fn follow_up_turn_reads_earlier_segments_and_writes_the_last() {
        let body = json!({
            "model":"m","max_tokens":10,
            "system":[{"type":"text","text":"s".repeat(400),"cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "messages":[
                {"role":"user","content":"a".repeat(40)},
                {"role":"assistant","content":"b".repeat(40)},
                {"role":"user","content":[{"type":"text","text":"c".repeat(40),"cache_control":{"type":"ephemeral"}}]}
            ]
        });
        let u = expected_usage(&body);
        assert_eq!(u.cache_read_input_tokens, 100);
        // Three 40-byte texts since the system breakpoint: 10 tokens each.
        assert_eq!(u.cache_creation_5m, 30);
        assert_eq!(u.cache_creation_1h, 0);
        assert_eq!(u.input_tokens, FRAMING_INPUT_TOKENS);
    }

    #[test]
    fn tools_and_thinking_add_output_tokens() {
        let body = json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"}],
            "tools":[{"name":"get_weather","input_schema":{"type":"object"}}],
            "thinking":{"type":"enabled","budget_tokens":1024}});
        let u = expected_usage(&body);
        assert_eq!(
            u.output_tokens,
            TEXT_OUTPUT_TOKENS + TOOL_OUTPUT_TOKENS + THINKING_OUTPUT_TOKENS
        );
        assert_eq!(wants_tool(&body), Some("get_weather"));
        let none = json!({"tools":[{"name":"t"}],"tool_choice":{"type":"none"}});
        assert_eq!(wants_tool(&none), None);
    }

    #[test]
    fn a_tool_result_is_answered_with_text_so_agent_loops_end() {
        let body = json!({"model":"m","max_tokens":10,"tools":[{"name":"t"}],"messages":[
            {"role":"user","content":"x"},
            {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"t","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}]}]});
        assert_eq!(wants_tool(&body), None);
    }

    #[test]
    fn server_tools_add_uses_results_and_output_but_no_tool_use_block() {
        let body = json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"}],
            "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2},
                     {"type":"web_fetch_20250910","name":"web_fetch"}]});
        let u = expected_usage(&body);
        assert_eq!((u.web_search_requests, u.web_fetch_requests), (2, 1));
        assert_eq!(wants_tool(&body), None, "server tools are not client tools");
        let tools_tokens: u64 = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(tokens_of_item)
            .sum();
        assert_eq!(
            u.input_tokens,
            tools_tokens
                + 1
                + FRAMING_INPUT_TOKENS
                + 2 * SEARCH_RESULT_TOKENS
                + FETCH_RESULT_TOKENS
        );
        assert_eq!(
            u.output_tokens,
            TEXT_OUTPUT_TOKENS + 3 * SERVER_TOOL_OUTPUT_TOKENS
        );
        let start = u.before_server_tools();
        assert_eq!(start.input_tokens, tools_tokens + 1 + FRAMING_INPUT_TOKENS);
        assert!(!start.used_server_tools());
    }

    #[test]
    fn top_level_cache_control_closes_a_final_segment() {
        let body = json!({"model":"m","max_tokens":10,"cache_control":{"type":"ephemeral","ttl":"1h"},
            "messages":[{"role":"user","content":[{"type":"text","text":"z".repeat(16)}]}]});
        let u = expected_usage(&body);
        assert_eq!(u.cache_creation_1h, 4);
        assert_eq!(u.input_tokens, FRAMING_INPUT_TOKENS);
    }
}
