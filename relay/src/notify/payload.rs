//! What is sent to each kind of target: the generic webhook's stable JSON body and its
//! signature, and the documented message formats of Slack, Feishu/Lark, DingTalk and
//! Telegram. Pure: the time is passed in, secrets are given opened.
//!
//! The webhook body and the signature recipe are documented in `docs/notifications.md`;
//! changing either breaks receivers.

use crate::crypto::{hmac_sha256, Secret};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The kinds of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A generic webhook: the JSON body below, signed.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// A Feishu/Lark custom bot webhook (signed when it has a secret).
    Feishu,
    /// A DingTalk custom robot webhook (signed when it has a secret).
    Dingtalk,
    /// A Telegram bot: the secret is the bot token, the address the chat id.
    Telegram,
    /// E-mail over SMTP: the URL is the server (`smtps://user@host`,
    /// `smtp://user@host:587?tls=required`), the address the recipients, the secret
    /// the password.
    Email,
}

impl TargetKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Slack => "slack",
            TargetKind::Feishu => "feishu",
            TargetKind::Dingtalk => "dingtalk",
            TargetKind::Telegram => "telegram",
            TargetKind::Email => "email",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            TargetKind::Webhook,
            TargetKind::Slack,
            TargetKind::Feishu,
            TargetKind::Dingtalk,
            TargetKind::Telegram,
            TargetKind::Email,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One alert, as read from the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The source event's id; also the delivery's idempotency key.
    pub id: String,
    /// Its kind (`account.banned`, `budget.threshold_crossed`, …).
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// The tenant it is about, if any.
    pub tenant: Option<String>,
    /// The key it is about, if any.
    pub api_key: Option<String>,
    /// The upstream account it is about, if any.
    pub account: Option<String>,
    /// One line.
    pub title: String,
    /// A sentence or two.
    pub message: String,
    /// Kind-specific facts.
    pub details: Value,
}

/// Where and what to send, with the secret opened.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The kind.
    pub kind: TargetKind,
    /// The URL (for Telegram, the API base, e.g. `https://api.telegram.org`).
    pub url: String,
    /// Telegram: the chat id.
    pub address: String,
    /// Webhook signing secret, Feishu/DingTalk signing secret, Telegram bot token.
    pub secret: Option<Secret>,
}

/// One HTTP request, ready to send (always a `POST` of JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The URL.
    pub url: String,
    /// Headers besides `content-type: application/json`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

/// Version of the webhook body.
pub const WEBHOOK_VERSION: u32 = 1;

/// The generic webhook body (see `docs/notifications.md`).
pub fn webhook_body(alert: &Alert) -> Value {
    json!({
        "version": WEBHOOK_VERSION,
        "id": alert.id,
        "type": alert.kind,
        "severity": alert.severity,
        "occurred_at": alert.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "title": alert.title,
        "message": alert.message,
        "tenant": alert.tenant,
        "api_key": alert.api_key,
        "account": alert.account,
        "details": alert.details,
    })
}

/// `v1=<hex HMAC-SHA256 of "{timestamp}.{body}" under the secret>`.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &str) -> String {
    let signed = format!("{timestamp}.{body}");
    format!(
        "v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), signed.as_bytes()))
    )
}

fn text_of(alert: &Alert) -> String {
    format!(
        "[{}] {}\n{}",
        alert.severity.to_uppercase(),
        alert.title,
        alert.message
    )
}

fn footer(alert: &Alert) -> String {
    format!(
        "{} · {}",
        alert.kind,
        alert.occurred_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// The request for `alert` to `dest` at `now`.
pub fn outgoing(dest: &Destination, alert: &Alert, now: DateTime<Utc>) -> Result<Outgoing, String> {
    let secret = dest.secret.as_ref().map(Secret::expose);
    match dest.kind {
        TargetKind::Webhook => {
            let body = webhook_body(alert).to_string();
            let ts = now.timestamp();
            let mut headers = vec![
                ("x-relay-event", alert.kind.clone()),
                ("x-relay-delivery", alert.id.clone()),
                ("x-relay-timestamp", ts.to_string()),
            ];
            if let Some(s) = secret {
                headers.push(("x-relay-signature", webhook_signature(s, ts, &body)));
            }
            Ok(Outgoing {
                url: dest.url.clone(),
                headers,
                body,
            })
        }
        TargetKind::Slack => Ok(Outgoing {
            url: dest.url.clone(),
            headers: Vec::new(),
            body: slack_body(alert).to_string(),
        }),
        TargetKind::Feishu => Ok(Outgoing {
            url: dest.url.clone(),
            headers: Vec::new(),
            body: feishu_body(alert, secret, now).to_string(),
        }),
        TargetKind::Dingtalk => {
            let mut url = dest.url.clone();
            if let Some(s) = secret {
                let ts = now.timestamp_millis();
                let sign =
                    STANDARD.encode(hmac_sha256(s.as_bytes(), format!("{ts}\n{s}").as_bytes()));
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("timestamp", &ts.to_string())
                    .append_pair("sign", &sign)
                    .finish();
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&query);
            }
            Ok(Outgoing {
                url,
                headers: Vec::new(),
                body: dingtalk_body(alert).to_string(),
            })
        }
        TargetKind::Email => Err("e-mail is sent over SMTP, not HTTP".into()),
        TargetKind::Telegram => {
            let token = secret.ok_or("a Telegram target needs its bot token as the secret")?;
            Ok(Outgoing {
                url: format!("{}/bot{token}/sendMessage", dest.url.trim_end_matches('/')),
                headers: Vec::new(),
                body: telegram_body(alert, &dest.address).to_string(),
            })
        }
    }
}

/// Slack incoming webhook: `text` (the notification fallback) and Block Kit blocks.
pub fn slack_body(alert: &Alert) -> Value {
    json!({
        "text": text_of(alert),
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*{}*\n{}", alert.title, alert.message),
                }
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": format!("{} · {}", alert.severity, footer(alert))}
                ]
            }
        ]
    })
}

/// Feishu/Lark custom bot: a text message; with a secret, `timestamp` (seconds) and
/// `sign` = base64(HMAC-SHA256 under the key `"{timestamp}\n{secret}"` of nothing).
pub fn feishu_body(alert: &Alert, secret: Option<&str>, now: DateTime<Utc>) -> Value {
    let mut body = json!({
        "msg_type": "text",
        "content": {"text": format!("{}\n{}", text_of(alert), footer(alert))},
    });
    if let (Some(s), Some(obj)) = (secret, body.as_object_mut()) {
        let ts = now.timestamp();
        let sign = STANDARD.encode(hmac_sha256(format!("{ts}\n{s}").as_bytes(), b""));
        obj.insert("timestamp".into(), Value::String(ts.to_string()));
        obj.insert("sign".into(), Value::String(sign));
    }
    body
}

/// DingTalk custom robot: a markdown message (the signature goes in the URL).
pub fn dingtalk_body(alert: &Alert) -> Value {
    json!({
        "msgtype": "markdown",
        "markdown": {
            "title": alert.title,
            "text": format!(
                "### [{}] {}\n\n{}\n\n> {}",
                alert.severity.to_uppercase(),
                alert.title,
                alert.message,
                footer(alert)
            ),
        }
    })
}

/// Telegram `sendMessage`: plain text (no parse mode, so nothing needs escaping).
pub fn telegram_body(alert: &Alert, chat_id: &str) -> Value {
    json!({
        "chat_id": chat_id,
        "text": format!("{}\n{}", text_of(alert), footer(alert)),
        "disable_web_page_preview": true,
    })
}

/// An e-mail's subject and plain-text body.
pub fn email_text(alert: &Alert) -> (String, String) {
    (
        format!("[relay {}] {}", alert.severity, alert.title),
        format!(
            "{}\n\n{}\nEvent id: {}\n",
            alert.message,
            footer(alert),
            alert.id
        ),
    )
}

/// Whether a response means the message was accepted. Besides a 2xx status, Feishu
/// answers `{"code": 0}`, DingTalk `{"errcode": 0}` and Telegram `{"ok": true}`; they
/// report refusals (a bad signature, a wrong chat) in the body of a 200.
pub fn accepted(kind: TargetKind, status: u16, body: &str) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}: {}", clip(body)));
    }
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let refused = match kind {
        TargetKind::Feishu => json
            .get("code")
            .or_else(|| json.get("StatusCode"))
            .and_then(Value::as_i64)
            .is_some_and(|c| c != 0),
        TargetKind::Dingtalk => json
            .get("errcode")
            .and_then(Value::as_i64)
            .is_some_and(|c| c != 0),
        TargetKind::Telegram => json.get("ok").and_then(Value::as_bool) == Some(false),
        TargetKind::Webhook | TargetKind::Slack | TargetKind::Email => false,
    };
    if refused {
        Err(format!("refused: {}", clip(body)))
    } else {
        Ok(())
    }
}

/// At most 200 characters of a response body, for the delivery log.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert() -> Alert {
        Alert {
            id: "0190f5a2-0000-7000-8000-000000000001".into(),
            kind: "budget.threshold_crossed".into(),
            severity: "warning".into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap(),
            tenant: Some("acme".into()),
            api_key: None,
            account: None,
            title: "Budget of tenant:acme passed 80%".into(),
            message: "monthly_budget_usd of tenant:acme passed 80%: $8 of $10".into(),
            details: json!({"percent": 80, "target": "tenant:acme"}),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    fn dest(kind: TargetKind, secret: Option<&str>) -> Destination {
        Destination {
            kind,
            url: "https://hooks.example/abc".into(),
            address: "-100123".into(),
            secret: secret.map(Secret::new),
        }
    }

    #[test]
    fn webhook_body_is_the_documented_shape_and_signed() {
        let out = outgoing(&dest(TargetKind::Webhook, Some("s3cret")), &alert(), now()).unwrap();
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(
            body,
            json!({
                "version": 1,
                "id": "0190f5a2-0000-7000-8000-000000000001",
                "type": "budget.threshold_crossed",
                "severity": "warning",
                "occurred_at": "2026-11-03T12:00:00.000Z",
                "title": "Budget of tenant:acme passed 80%",
                "message": "monthly_budget_usd of tenant:acme passed 80%: $8 of $10",
                "tenant": "acme",
                "api_key": null,
                "account": null,
                "details": {"percent": 80, "target": "tenant:acme"}
            })
        );
        let header = |n: &str| {
            out.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("x-relay-timestamp"), "1800000000");
        // The documented recipe, computed independently of `webhook_signature`.
        let expected = hex::encode(hmac_sha256(
            b"s3cret",
            format!("1800000000.{}", out.body).as_bytes(),
        ));
        assert_eq!(header("x-relay-signature"), format!("v1={expected}"));
    }

    #[test]
    fn chat_payloads_match_their_documented_shapes() {
        let a = alert();
        let text = "[WARNING] Budget of tenant:acme passed 80%\n\
                    monthly_budget_usd of tenant:acme passed 80%: $8 of $10";
        let footer = "budget.threshold_crossed · 2026-11-03T12:00:00Z";
        let slack = outgoing(&dest(TargetKind::Slack, None), &a, now()).unwrap();
        assert_eq!(slack.url, "https://hooks.example/abc");
        assert_eq!(
            serde_json::from_str::<Value>(&slack.body).unwrap(),
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": "*Budget of tenant:acme passed 80%*\nmonthly_budget_usd of tenant:acme passed 80%: $8 of $10"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("warning · {footer}")}]}
                ]
            })
        );
        // Feishu: https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot
        let feishu = outgoing(&dest(TargetKind::Feishu, Some("fs")), &a, now()).unwrap();
        let sign = STANDARD.encode(hmac_sha256(b"1800000000\nfs", b""));
        assert_eq!(
            serde_json::from_str::<Value>(&feishu.body).unwrap(),
            json!({
                "msg_type": "text",
                "content": {"text": format!("{text}\n{footer}")},
                "timestamp": "1800000000",
                "sign": sign,
            })
        );
        let unsigned = outgoing(&dest(TargetKind::Feishu, None), &a, now()).unwrap();
        assert!(!unsigned.body.contains("sign"));
        // DingTalk: https://open.dingtalk.com/document/robots/custom-robot-access
        let ding = outgoing(&dest(TargetKind::Dingtalk, Some("ds")), &a, now()).unwrap();
        let sign = STANDARD.encode(hmac_sha256(b"ds", b"1800000000000\nds"));
        let sign: String = url::form_urlencoded::byte_serialize(sign.as_bytes()).collect();
        assert_eq!(
            ding.url,
            format!("https://hooks.example/abc?timestamp=1800000000000&sign={sign}")
        );
        assert_eq!(
            serde_json::from_str::<Value>(&ding.body).unwrap(),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "Budget of tenant:acme passed 80%",
                    "text": format!("### [WARNING] Budget of tenant:acme passed 80%\n\nmonthly_budget_usd of tenant:acme passed 80%: $8 of $10\n\n> {footer}"),
                }
            })
        );
        // Telegram: https://core.telegram.org/bots/api#sendmessage
        let tg = outgoing(&dest(TargetKind::Telegram, Some("123:ABC")), &a, now()).unwrap();
        assert_eq!(tg.url, "https://hooks.example/abc/bot123:ABC/sendMessage");
        assert_eq!(
            serde_json::from_str::<Value>(&tg.body).unwrap(),
            json!({"chat_id": "-100123", "text": format!("{text}\n{footer}"), "disable_web_page_preview": true})
        );
        assert!(outgoing(&dest(TargetKind::Telegram, None), &a, now()).is_err());
        assert_eq!(
            email_text(&a),
            (
                "[relay warning] Budget of tenant:acme passed 80%".to_owned(),
                format!(
                    "monthly_budget_usd of tenant:acme passed 80%: $8 of $10\n\n{footer}\n\
                     Event id: 0190f5a2-0000-7000-8000-000000000001\n"
                )
            )
        );
    }

    #[test]
    fn refusals_in_a_200_body_count_as_failures() {
        use TargetKind as K;
        for (kind, status, body, ok) in [
            (K::Webhook, 204, "", true),
            (K::Webhook, 500, "boom", false),
            (K::Slack, 200, "ok", true),
            (K::Slack, 404, "no_service", false),
            (K::Feishu, 200, r#"{"code":0,"msg":"success"}"#, true),
            (
                K::Feishu,
                200,
                r#"{"code":19021,"msg":"sign match fail"}"#,
                false,
            ),
            (K::Dingtalk, 200, r#"{"errcode":0,"errmsg":"ok"}"#, true),
            (
                K::Dingtalk,
                200,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#,
                false,
            ),
            (K::Telegram, 200, r#"{"ok":true,"result":{}}"#, true),
            (
                K::Telegram,
                200,
                r#"{"ok":false,"description":"chat not found"}"#,
                false,
            ),
        ] {
            assert_eq!(
                accepted(kind, status, body).is_ok(),
                ok,
                "{kind:?} {status} {body}"
            );
        }
    }
}
