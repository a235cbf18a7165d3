//! Scripted behaviour, per upstream credential.
//!
//! Each credential has a FIFO of [`Step`]s, consumed one per `POST /v1/messages` or
//! `/v1/messages/count_tokens` request that passed authentication, and a default step used
//! when the FIFO is empty (itself [`Step::Ok`] unless set).

use std::time::Duration;

/// What the mock does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Normal answer.
    Ok,
    /// An HTTP error in Anthropic's envelope (with top-level `request_id`).
    Error {
        /// HTTP status (429, 529, 500, 401, 403, …).
        status: u16,
        /// `error.type`, e.g. `rate_limit_error`.
        error_type: String,
        /// `error.message`.
        message: String,
        /// `retry-after` header, seconds.
        retry_after: Option<u64>,
        /// Extra response headers (unified rate-limit headers, `x-should-retry`, …).
        headers: Vec<(String, String)>,
    },
    /// Delay the response head by this long, then answer normally.
    SlowFirstByte(Duration),
    /// Streams: go silent for `duration` after `after_events` events, then finish
    /// normally. Non-streaming requests: delay the response by `duration`.
    Stall {
        /// Events sent before the silence.
        after_events: usize,
        /// Length of the silence.
        duration: Duration,
    },
    /// Streams: `event: error` with this `error.type` after `after_events` events and no
    /// `message_stop`. Non-streaming requests: the matching HTTP error (529 for
    /// `overloaded_error`, else 500).
    MidStreamError {
        /// Events sent before the error.
        after_events: usize,
        /// `overloaded_error` or `api_error`.
        error_type: String,
    },
    /// Streams: abort the connection after `after_events` events (no `message_stop`,
    /// no terminating chunk). Non-streaming requests: like [`Step::Reset`].
    Drop {
        /// Events sent before the abort.
        after_events: usize,
    },
    /// Close the connection without any response (a connection error for the client).
    Reset,
}

impl Step {
    /// An error step with Anthropic's envelope and no extra headers.
    pub fn error(status: u16, error_type: &str, message: &str) -> Step {
        Step::Error {
            status,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 429 `rate_limit_error` with `retry-after`.
    pub fn rate_limited(retry_after_secs: u64) -> Step {
        Step::Error {
            status: 429,
            error_type: "rate_limit_error".to_owned(),
            message: "This request would exceed your account's rate limit. Please try again later."
                .to_owned(),
            retry_after: Some(retry_after_secs),
            headers: Vec::new(),
        }
    }

    /// 429 for a subscription account whose 5h window is drained: `retry-after` plus the
    /// unified headers with `status: rejected` and `reset` = `reset_epoch_secs`.
    pub fn unified_rejected(reset_epoch_secs: u64, retry_after_secs: u64) -> Step {
        let reset = reset_epoch_secs.to_string();
        Step::Error {
            status: 429,
            error_type: "rate_limit_error".to_owned(),
            message: "This request would exceed your account's rate limit. Please try again later."
                .to_owned(),
            retry_after: Some(retry_after_secs),
            headers: vec![
                (
                    "anthropic-ratelimit-unified-status".into(),
                    "rejected".into(),
                ),
                ("anthropic-ratelimit-unified-reset".into(), reset.clone()),
                (
                    "anthropic-ratelimit-unified-representative-claim".into(),
                    "five_hour".into(),
                ),
                (
                    "anthropic-ratelimit-unified-5h-status".into(),
                    "rejected".into(),
                ),
                (
                    "anthropic-ratelimit-unified-5h-utilization".into(),
                    "1.04".into(),
                ),
                ("anthropic-ratelimit-unified-5h-reset".into(), reset),
            ],
        }
    }

    /// 429 for a subscription account whose binding limit is `claim` (`five_hour`,
    /// `seven_day`, `seven_day_opus`, `seven_day_sonnet`, `seven_day_overage_included`,
    /// `overage`), drained until `reset_epoch_secs`: `unified-status: rejected`, the
    /// representative claim, the top-level reset and that window's status, utilization
    /// and reset, and `retry-after` to the same instant. The other windows keep the
    /// mock's healthy values (their own, different resets).
    pub fn claim_rejected(claim: &str, reset_epoch_secs: u64) -> Step {
        let window = match claim {
            "five_hour" => "5h",
            "seven_day" => "7d",
            "seven_day_overage_included" => "7d_oi",
            other => other,
        };
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let reset = reset_epoch_secs.to_string();
        let h = |name: &str| format!("anthropic-ratelimit-unified-{name}");
        Step::Error {
            status: 429,
            error_type: "rate_limit_error".to_owned(),
            message: "This request would exceed your account's rate limit. Please try again later."
                .to_owned(),
            retry_after: Some(reset_epoch_secs.saturating_sub(now).max(1)),
            headers: vec![
                (h("status"), "rejected".into()),
                (h("reset"), reset.clone()),
                (h("representative-claim"), claim.into()),
                (h(&format!("{window}-status")), "rejected".into()),
                (h(&format!("{window}-utilization")), "1.02".into()),
                (h(&format!("{window}-reset")), reset),
            ],
        }
    }

    /// 529 `overloaded_error`.
    pub fn overloaded() -> Step {
        Step::error(529, "overloaded_error", "Overloaded")
    }

    /// 500 `api_error`.
    pub fn server_error() -> Step {
        Step::error(500, "api_error", "Internal server error")
    }

    /// 401 `authentication_error` ("invalid x-api-key").
    pub fn unauthorized() -> Step {
        Step::error(401, "authentication_error", "invalid x-api-key")
    }

    /// Adds a response header to an [`Step::Error`] (no effect on other steps).
    pub fn with_header(mut self, name: &str, value: &str) -> Step {
        if let Step::Error { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}
