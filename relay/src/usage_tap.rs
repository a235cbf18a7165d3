//! The usage tap: reads token usage out of upstream responses without touching the
//! bytes the client receives.
//!
//! Streams go through [`SseTap`], an incremental SSE parser fed the very chunks that
//! are forwarded. Chunks may split events, lines and even the `data:` prefix anywhere,
//! so the tap keeps only the current line, and only when that line matters
//! (`event:` lines and the `data:` of `message_start`, `message_delta` and `error`);
//! the bulk of a stream (`content_block_delta`) is skipped without copying.
//!
//! Accounting rule (see the API reference §2.3): final usage is the `message_start`
//! usage overlaid field by field by the **last** `message_delta` usage. Delta counters
//! are cumulative totals, never added. Non-streaming answers go through [`JsonTap`],
//! which reads the `usage` of the complete JSON body.

use memchr::memchr;
use serde::Deserialize;
use std::borrow::Cow;

/// Token usage as reported by upstream, every field optional so that a later report
/// can overlay an earlier one field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `input_tokens`.
    pub input_tokens: Option<u64>,
    /// `output_tokens`.
    pub output_tokens: Option<u64>,
    /// `cache_creation_input_tokens` (5m + 1h writes).
    pub cache_creation_input_tokens: Option<u64>,
    /// `cache_read_input_tokens`.
    pub cache_read_input_tokens: Option<u64>,
    /// `cache_creation.ephemeral_5m_input_tokens`.
    pub cache_creation_5m: Option<u64>,
    /// `cache_creation.ephemeral_1h_input_tokens`.
    pub cache_creation_1h: Option<u64>,
    /// `server_tool_use.web_search_requests`.
    pub web_search_requests: Option<u64>,
    /// `server_tool_use.web_fetch_requests`.
    pub web_fetch_requests: Option<u64>,
    /// `service_tier`.
    pub service_tier: Option<String>,
    /// `speed`.
    pub speed: Option<String>,
    /// `inference_geo`.
    pub inference_geo: Option<String>,
}

/// Final token counts, with the cache writes split into their two prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Uncached input.
    pub input: u64,
    /// Output, thinking included.
    pub output: u64,
    /// Cache reads.
    pub cache_read: u64,
    /// 5-minute cache writes.
    pub cache_write_5m: u64,
    /// 1-hour cache writes.
    pub cache_write_1h: u64,
    /// Web searches.
    pub web_search_requests: u64,
    /// Web fetches.
    pub web_fetch_requests: u64,
}

impl Usage {
    /// Overlays `later` on `self`: every field `later` reports replaces ours.
    pub fn overlay(&mut self, later: Usage) {
        fn put<T>(dst: &mut Option<T>, src: Option<T>) {
            if src.is_some() {
                *dst = src;
            }
        }
        put(&mut self.input_tokens, later.input_tokens);
        put(&mut self.output_tokens, later.output_tokens);
        put(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        put(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
        put(&mut self.cache_creation_5m, later.cache_creation_5m);
        put(&mut self.cache_creation_1h, later.cache_creation_1h);
        put(&mut self.web_search_requests, later.web_search_requests);
        put(&mut self.web_fetch_requests, later.web_fetch_requests);
        put(&mut self.service_tier, later.service_tier);
        put(&mut self.speed, later.speed);
        put(&mut self.inference_geo, later.inference_geo);
    }

    /// The billable counts. Cache writes use the `cache_creation` split when present;
    /// writes the split does not account for (or all of them, when it is absent) count
    /// as 5-minute writes, the cheaper and documented default.
    pub fn tokens(&self) -> Tokens {
        let total_writes = self.cache_creation_input_tokens.unwrap_or(0);
        let w1h = self.cache_creation_1h.unwrap_or(0);
        let w5m_split = self.cache_creation_5m.unwrap_or(0);
        let w5m = w5m_split.max(total_writes.saturating_sub(w1h));
        Tokens {
            input: self.input_tokens.unwrap_or(0),
            output: self.output_tokens.unwrap_or(0),
            cache_read: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_5m: w5m,
            cache_write_1h: w1h,
            web_search_requests: self.web_search_requests.unwrap_or(0),
            web_fetch_requests: self.web_fetch_requests.unwrap_or(0),
        }
    }

    /// Whether upstream reported anything at all.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// The wire shape of a `usage` object; unknown fields are skipped.
#[derive(Deserialize, Default)]
struct WireUsage<'a> {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<WireCacheCreation>,
    #[serde(default)]
    server_tool_use: Option<WireServerToolUse>,
    #[serde(default, borrow)]
    service_tier: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    speed: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    inference_geo: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct WireCacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct WireServerToolUse {
    #[serde(default)]
    web_search_requests: Option<u64>,
    #[serde(default)]
    web_fetch_requests: Option<u64>,
}

impl From<WireUsage<'_>> for Usage {
    fn from(w: WireUsage<'_>) -> Self {
        let (c5, c1) = w
            .cache_creation
            .map(|c| (c.ephemeral_5m_input_tokens, c.ephemeral_1h_input_tokens))
            .unwrap_or((None, None));
        let (ws, wf) = w
            .server_tool_use
            .map(|s| (s.web_search_requests, s.web_fetch_requests))
            .unwrap_or((None, None));
        Usage {
            input_tokens: w.input_tokens,
            output_tokens: w.output_tokens,
            cache_creation_input_tokens: w.cache_creation_input_tokens,
            cache_read_input_tokens: w.cache_read_input_tokens,
            cache_creation_5m: c5,
            cache_creation_1h: c1,
            web_search_requests: ws,
            web_fetch_requests: wf,
            service_tier: w.service_tier.map(Cow::into_owned),
            speed: w.speed.map(Cow::into_owned),
            inference_geo: w.inference_geo.map(Cow::into_owned),
        }
    }
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    usage: Option<WireUsage<'a>>,
}

#[derive(Deserialize)]
struct WireMessageStart<'a> {
    #[serde(borrow)]
    message: WireMessage<'a>,
}

#[derive(Deserialize)]
struct WireMessageDelta<'a> {
    #[serde(default, borrow)]
    usage: Option<WireUsage<'a>>,
}

#[derive(Deserialize)]
struct WireErrorBody<'a> {
    #[serde(borrow)]
    error: WireError<'a>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireTyped<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// An upstream error body's `error.type` and `error.message`, if the bytes are one.
pub fn parse_error_body(body: &[u8]) -> Option<(String, String)> {
    let e: WireErrorBody<'_> = serde_json::from_slice(body).ok()?;
    Some((
        e.error.kind.into_owned(),
        e.error.message.map(Cow::into_owned).unwrap_or_default(),
    ))
}

/// What an SSE event is, as far as the tap cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` line yet in this event.
    Unnamed,
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    Other,
}

impl Kind {
    fn from_name(name: &[u8]) -> Kind {
        match name {
            b"message_start" => Kind::MessageStart,
            b"message_delta" => Kind::MessageDelta,
            b"message_stop" => Kind::MessageStop,
            b"error" => Kind::Error,
            _ => Kind::Other,
        }
    }

    /// Whether the event's data must be kept for parsing.
    fn wants_data(self) -> bool {
        matches!(
            self,
            Kind::Unnamed | Kind::MessageStart | Kind::MessageDelta | Kind::Error
        )
    }
}

/// How the tap treats the bytes of the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineMode {
    /// Too few bytes seen to know what the line is; they are kept.
    Undecided,
    /// The line matters: keep it whole.
    Keep,
    /// The line does not matter: skip to its end.
    Skip,
}

/// Longest line kept for parsing; a `message_start` is a few hundred bytes, so this
/// only guards memory against a hostile or broken upstream.
const MAX_KEPT_LINE: usize = 1 << 20;

/// Incremental SSE parser extracting usage, the model, stream end and errors.
#[derive(Debug)]
pub struct SseTap {
    /// Bytes of the current line, while undecided or kept.
    line: Vec<u8>,
    /// Treatment of the current line.
    mode: LineMode,
    /// Whether any byte of the current line has been seen.
    mid_line: bool,
    /// Whether the current event has a non-blank line (so it is not yet dispatched).
    in_event: bool,
    /// The current event's kind.
    kind: Kind,
    /// The current event's data (lines joined by `\n`).
    data: Vec<u8>,
    /// Whether `data` holds at least one line.
    has_data: bool,
    /// Usage so far.
    usage: Usage,
    /// `message.model` from `message_start`.
    model: Option<String>,
    /// A `message_stop` event was seen.
    saw_stop: bool,
    /// A `message_delta` event was seen.
    saw_delta: bool,
    /// The `error.type` of an `event: error`, if one was seen.
    error: Option<String>,
    /// Events completed.
    events: u64,
}

impl Default for SseTap {
    fn default() -> Self {
        Self::new()
    }
}

impl SseTap {
    /// A tap at the start of a stream.
    pub fn new() -> Self {
        Self {
            line: Vec::with_capacity(64),
            mode: LineMode::Undecided,
            mid_line: false,
            in_event: false,
            kind: Kind::Unnamed,
            data: Vec::new(),
            has_data: false,
            usage: Usage::default(),
            model: None,
            saw_stop: false,
            saw_delta: false,
            error: None,
            events: 0,
        }
    }

    /// Feeds the next forwarded chunk.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match memchr(b'\n', chunk) {
                Some(i) => {
                    self.take(&chunk[..i]);
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.take(chunk);
                    break;
                }
            }
        }
    }

    /// Whether the bytes forwarded so far end exactly at an event boundary, so that an
    /// SSE comment or a synthetic event can be inserted without corrupting an event.
    pub fn at_boundary(&self) -> bool {
        !self.mid_line && !self.in_event
    }

    /// Whether `message_stop` was seen: the stream is complete.
    pub fn saw_stop(&self) -> bool {
        self.saw_stop
    }

    /// Whether a `message_delta` was seen (final output usage known).
    pub fn saw_delta(&self) -> bool {
        self.saw_delta
    }

    /// The `error.type` of an upstream `event: error`, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The model named by `message_start`.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Usage so far (final once [`SseTap::saw_stop`]).
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Number of complete events seen.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn take(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        self.mid_line = true;
        match self.mode {
            LineMode::Skip => {}
            LineMode::Keep => {
                if self.line.len() + part.len() <= MAX_KEPT_LINE {
                    self.line.extend_from_slice(part);
                } else {
                    // An absurd line cannot be a usage report; stop keeping it.
                    self.line.clear();
                    self.mode = LineMode::Skip;
                }
            }
            LineMode::Undecided => {
                self.line.extend_from_slice(part);
                if self.line.len() >= 6 {
                    self.classify();
                }
            }
        }
    }

    /// Decides from the line's first bytes whether to keep it.
    fn classify(&mut self) {
        let keep = if self.line.starts_with(b"event:") {
            true
        } else if self.line.starts_with(b"data:") {
            self.kind.wants_data()
        } else {
            false
        };
        if keep {
            self.mode = LineMode::Keep;
        } else {
            self.mode = LineMode::Skip;
            self.line.clear();
        }
    }

    fn end_line(&mut self) {
        if self.mode == LineMode::Undecided {
            self.classify_short_line();
        }
        let mode = self.mode;
        self.mode = LineMode::Undecided;
        self.mid_line = false;
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match mode {
            LineMode::Skip => {
                self.in_event = true;
            }
            LineMode::Keep | LineMode::Undecided => {
                if line.is_empty() && mode == LineMode::Undecided {
                    self.dispatch();
                } else {
                    self.in_event = true;
                    self.field(&line);
                }
            }
        }
        line.clear();
        self.line = line;
    }

    /// A line that ended before six bytes: blank, a short field, or a comment.
    fn classify_short_line(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if line.is_empty() {
            return;
        }
        if line.starts_with(b"data:") && self.kind.wants_data() {
            self.mode = LineMode::Keep;
        } else {
            self.mode = LineMode::Skip;
        }
    }

    fn field(&mut self, line: &[u8]) {
        if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            self.kind = Kind::from_name(v);
        } else if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(v);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self) {
        if !self.in_event {
            return;
        }
        self.in_event = false;
        self.events += 1;
        let mut kind = self.kind;
        if kind == Kind::Unnamed && self.has_data {
            // Anthropic always names events; an unnamed one is classified by its
            // `type`, which equals the event name.
            kind = serde_json::from_slice::<WireTyped<'_>>(&self.data)
                .map(|t| Kind::from_name(t.kind.as_bytes()))
                .unwrap_or(Kind::Other);
        }
        match kind {
            Kind::MessageStart => {
                if let Ok(m) = serde_json::from_slice::<WireMessageStart<'_>>(&self.data) {
                    if let Some(model) = m.message.model {
                        self.model = Some(model.into_owned());
                    }
                    if let Some(u) = m.message.usage {
                        self.usage.overlay(u.into());
                    }
                }
            }
            Kind::MessageDelta => {
                self.saw_delta = true;
                if let Ok(d) = serde_json::from_slice::<WireMessageDelta<'_>>(&self.data) {
                    if let Some(u) = d.usage {
                        self.usage.overlay(u.into());
                    }
                }
            }
            Kind::MessageStop => self.saw_stop = true,
            Kind::Error => {
                let kind = serde_json::from_slice::<WireErrorBody<'_>>(&self.data)
                    .map(|e| e.error.kind.into_owned())
                    .unwrap_or_else(|_| "api_error".to_owned());
                self.error = Some(kind);
            }
            Kind::Unnamed | Kind::Other => {}
        }
        self.kind = Kind::Unnamed;
        self.data.clear();
        self.has_data = false;
    }
}

/// Largest non-streaming body the tap keeps for parsing; bigger bodies are still
/// forwarded, but their usage is then unknown.
pub const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// Collects a non-streaming body to read its `usage` (and error) at the end.
#[derive(Debug, Default)]
pub struct JsonTap {
    /// The body so far.
    buf: Vec<u8>,
    /// The body outgrew [`MAX_JSON_BODY`].
    overflowed: bool,
}

/// What a complete non-streaming body said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JsonSummary {
    /// `usage`, when present.
    pub usage: Usage,
    /// `model`, when present.
    pub model: Option<String>,
    /// `error.type` and `error.message`, for error bodies.
    pub error: Option<(String, String)>,
}

impl JsonTap {
    /// Feeds the next forwarded chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + chunk.len() > MAX_JSON_BODY {
            self.overflowed = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The body seen so far (empty after an overflow).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Parses what was collected.
    pub fn summary(&self) -> JsonSummary {
        summarize_json(&self.buf)
    }
}

/// Reads `usage`, `model` and `error` from a complete JSON body.
pub fn summarize_json(body: &[u8]) -> JsonSummary {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(default, borrow)]
        model: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        usage: Option<WireUsage<'a>>,
        #[serde(default, borrow)]
        error: Option<WireError<'a>>,
    }
    match serde_json::from_slice::<Body<'_>>(body) {
        Ok(b) => JsonSummary {
            usage: b.usage.map(Usage::from).unwrap_or_default(),
            model: b.model.map(Cow::into_owned),
            error: b.error.map(|e| {
                (
                    e.kind.into_owned(),
                    e.message.map(Cow::into_owned).unwrap_or_default(),
                )
            }),
        },
        Err(_) => JsonSummary::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-6\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":2234,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":50,\"cache_creation\":{\"ephemeral_5m_input_tokens\":40,\"ephemeral_1h_input_tokens\":60},\"output_tokens\":3,\"service_tier\":\"standard\"}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
        "\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":10}}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":9281,\"output_tokens\":42 }}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    fn check(tap: &SseTap) {
        assert!(tap.saw_stop());
        assert!(tap.at_boundary());
        assert_eq!(tap.model(), Some("claude-sonnet-4-6"));
        let t = tap.usage().tokens();
        assert_eq!(t.input, 9281, "message_delta restates input: overlay");
        assert_eq!(t.output, 42, "last delta wins, never summed");
        assert_eq!(t.cache_read, 50);
        assert_eq!(t.cache_write_5m, 40);
        assert_eq!(t.cache_write_1h, 60);
        assert_eq!(tap.usage().service_tier.as_deref(), Some("standard"));
        assert_eq!(tap.events(), 8);
    }

    #[test]
    fn whole_stream_at_once() {
        let mut tap = SseTap::new();
        tap.feed(STREAM.as_bytes());
        check(&tap);
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let bytes = STREAM.as_bytes();
        for i in 0..bytes.len() {
            let mut tap = SseTap::new();
            tap.feed(&bytes[..i]);
            tap.feed(&bytes[i..]);
            check(&tap);
        }
    }

    #[test]
    fn byte_by_byte_with_crlf() {
        let crlf = STREAM.replace('\n', "\r\n");
        let mut tap = SseTap::new();
        for b in crlf.as_bytes() {
            tap.feed(std::slice::from_ref(b));
        }
        check(&tap);
    }

    #[test]
    fn boundary_tracking() {
        let mut tap = SseTap::new();
        assert!(tap.at_boundary());
        tap.feed(b"event: ping\n");
        assert!(!tap.at_boundary());
        tap.feed(b"data: {}\n");
        assert!(!tap.at_boundary());
        tap.feed(b"\n");
        assert!(tap.at_boundary());
        tap.feed(b"ev");
        assert!(!tap.at_boundary());
    }

    #[test]
    fn cache_writes_without_split_are_5m() {
        let mut tap = SseTap::new();
        tap.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":700,\"output_tokens\":1}}}\n\n");
        let t = tap.usage().tokens();
        assert_eq!(t.cache_write_5m, 700);
        assert_eq!(t.cache_write_1h, 0);
        assert!(!tap.saw_stop());
    }

    #[test]
    fn mid_stream_error_is_seen() {
        let mut tap = SseTap::new();
        tap.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(tap.error(), Some("overloaded_error"));
    }

    #[test]
    fn unnamed_events_are_classified_by_type() {
        let mut tap = SseTap::new();
        tap.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\ndata: {\"type\":\"message_stop\"}\n\n");
        assert_eq!(tap.usage().tokens().output, 7);
        assert!(tap.saw_stop());
    }

    #[test]
    fn json_body_usage() {
        let mut tap = JsonTap::default();
        let body = br#"{"id":"msg","type":"message","model":"claude-haiku-4-5","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":12,"output_tokens":3,"cache_creation_input_tokens":10,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":10},"server_tool_use":{"web_search_requests":2}}}"#;
        tap.feed(&body[..20]);
        tap.feed(&body[20..]);
        let s = tap.summary();
        assert_eq!(s.model.as_deref(), Some("claude-haiku-4-5"));
        let t = s.usage.tokens();
        assert_eq!(
            (t.input, t.output, t.cache_write_5m, t.cache_write_1h),
            (12, 3, 0, 10)
        );
        assert_eq!(t.web_search_requests, 2);
        let e = summarize_json(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        );
        assert_eq!(
            e.error,
            Some(("rate_limit_error".into(), "slow down".into()))
        );
    }
}
