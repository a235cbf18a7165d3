//! Property tests of the parsers that read untrusted bytes: the SSE usage tap, the JSON
//! summary and the request-field reader. They never panic, and the tap reads the same
//! usage however the bytes are split and whatever comments and line endings they carry.

use proptest::prelude::*;
use relay::usage_tap::{summarize_json, SseTap};

fn tap(chunks: &[&[u8]]) -> SseTap {
    let mut t = SseTap::new();
    for c in chunks {
        t.feed(c);
    }
    t
}

/// Splits `bytes` at the given cut points.
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        out.push(&bytes[at..p]);
        at = p;
    }
    out.push(&bytes[at..]);
    out
}

/// A well-formed Messages stream with the given usage, line ending and comments.
fn stream(input: u64, cache_read: u64, outputs: &[u64], crlf: bool, comments: bool) -> Vec<u8> {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut events = vec![format!(
        "event: message_start{nl}data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-6\",\"usage\":{{\"input_tokens\":{input},\"cache_read_input_tokens\":{cache_read},\"output_tokens\":1}}}}}}{nl}{nl}"
    )];
    for (i, out) in outputs.iter().enumerate() {
        if comments {
            events.push(format!(": keepalive {i}{nl}{nl}"));
        }
        events.push(format!(
            "event: content_block_delta{nl}data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"x{i}\"}}}}{nl}{nl}"
        ));
        events.push(format!(
            "event: message_delta{nl}data: {{\"type\":\"message_delta\",\"delta\":{{}},\"usage\":{{\"output_tokens\":{out}}}}}{nl}{nl}"
        ));
    }
    events.push(format!(
        "event: message_stop{nl}data: {{\"type\":\"message_stop\"}}{nl}{nl}"
    ));
    events.concat().into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_tap_never_panics_and_ignores_how_bytes_are_split(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = tap(&[&bytes]);
        let parts = tap(&split(&bytes, &cuts));
        prop_assert_eq!(whole.usage().tokens(), parts.usage().tokens());
        prop_assert_eq!(whole.model(), parts.model());
        prop_assert_eq!(whole.events(), parts.events());
        prop_assert_eq!(whole.saw_stop(), parts.saw_stop());
    }

    #[test]
    fn the_tap_reads_the_usage_of_any_split_stream(
        input in 0u64..10_000_000,
        cache_read in 0u64..1_000_000,
        outputs in proptest::collection::vec(1u64..100_000, 1..6),
        crlf in any::<bool>(),
        comments in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..32),
    ) {
        let bytes = stream(input, cache_read, &outputs, crlf, comments);
        let t = tap(&split(&bytes, &cuts));
        let tokens = t.usage().tokens();
        prop_assert_eq!(tokens.input, input);
        prop_assert_eq!(tokens.cache_read, cache_read);
        // message_delta usage is cumulative: the last one is final.
        prop_assert_eq!(tokens.output, *outputs.last().unwrap_or(&0));
        prop_assert!(t.saw_stop());
        prop_assert_eq!(t.model(), Some("claude-sonnet-4-6"));
    }

    #[test]
    fn json_summaries_and_request_fields_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let _ = summarize_json(&bytes);
        if let Ok(info) = relay::proxy::request::parse_body(&bytes) {
            // Only a JSON object with a bounded model and messages gets through.
            prop_assert_eq!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'{'));
            prop_assert!(!info.model.is_empty() && info.model.len() <= 256);
        }
    }

    #[test]
    fn request_fields_are_read_from_any_valid_object(
        model in "[a-z0-9.-]{1,64}",
        max_tokens in proptest::option::of(0u64..1_000_000),
        stream in any::<bool>(),
        pad in "[ \\t\\r\\n]{0,8}",
    ) {
        let mut body = serde_json::json!({"model": model, "messages": [], "stream": stream});
        if let Some(m) = max_tokens {
            body["max_tokens"] = m.into();
        }
        let text = format!("{pad}{body}{pad}");
        let info = relay::proxy::request::parse_body(text.as_bytes()).unwrap();
        prop_assert_eq!(info.model.as_ref(), model.as_str());
        prop_assert_eq!(info.stream, stream);
        prop_assert_eq!(info.max_tokens, max_tokens);
    }
}
