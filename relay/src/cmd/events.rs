//! `relay events tail [--from-seq N | --since DURATION] [--type TYPE] [--no-follow]`:
//! prints events from the log (SQLite or JetStream) as JSON lines — the canonical
//! envelope plus its log `position` — then follows new ones.
//!
//! `--since` scans from the start of the log and skips events that occurred earlier
//! (the log is ordered by position, not time). `--type` takes an event type
//! (`usage.recorded`) or a category (`usage`, `request`, `account`, `admin`).

use super::Context;
use crate::cli::TailArgs;
use futures::StreamExt;
use schema::{Category, Envelope};
use std::io::Write;

/// Which events to print.
enum TypeFilter {
    All,
    Category(Category),
    Type(Category, &'static str),
}

const TYPES: [(&str, Category); 5] = [
    ("request.finished", Category::Request),
    ("usage.recorded", Category::Usage),
    ("account.health_changed", Category::Account),
    ("admin.action", Category::Admin),
    ("auth.failed", Category::Admin),
];

fn type_filter(arg: Option<&str>) -> anyhow::Result<TypeFilter> {
    let Some(arg) = arg else {
        return Ok(TypeFilter::All);
    };
    if let Some((name, category)) = TYPES.iter().find(|(n, _)| *n == arg) {
        return Ok(TypeFilter::Type(*category, name));
    }
    if let Some(c) = Category::parse(arg) {
        return Ok(TypeFilter::Category(c));
    }
    anyhow::bail!(
        "unknown event type {arg:?}; use one of {} or a category (request, usage, account, admin)",
        TYPES.map(|t| t.0).join(", ")
    )
}

/// One output line: the envelope's JSON with `position` added.
pub fn json_line(position: u64, envelope: &Envelope) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(envelope)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("position".into(), position.into());
    }
    Ok(serde_json::to_string(&value)?)
}

/// Runs the command.
pub async fn run(ctx: &Context, args: &TailArgs) -> anyhow::Result<()> {
    let filter = type_filter(args.event_type.as_deref())?;
    let since = match &args.since {
        Some(s) => Some(
            chrono::Utc::now()
                - crate::services::keys::parse_duration(s).ok_or_else(|| {
                    anyhow::anyhow!("invalid duration {s:?}: use e.g. 30s, 15m, 2h, 7d")
                })?,
        ),
        None => None,
    };
    let after = args.from_seq.unwrap_or(0);
    let head = ctx.log.head().await?;
    if args.no_follow && after >= head {
        return Ok(());
    }
    // Without following, the command must see the head position to know it is done,
    // so it reads unfiltered and filters here.
    let category = match filter {
        _ if args.no_follow => None,
        TypeFilter::All => None,
        TypeFilter::Category(c) | TypeFilter::Type(c, _) => Some(c),
    };
    let mut stream = ctx.log.subscribe(after, category).await?;
    while let Some(item) = stream.next().await {
        let event = item?;
        let position = event.position;
        let wanted = match filter {
            TypeFilter::Type(_, name) => event.envelope.event.type_name() == name,
            TypeFilter::Category(c) => event.envelope.category() == c,
            TypeFilter::All => true,
        } && since.is_none_or(|t| event.envelope.occurred_at >= t);
        if wanted {
            let line = json_line(position, &event.envelope)?;
            let mut out = std::io::stdout().lock();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                // A closed pipe (`| head`) ends the command quietly.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        if args.no_follow && position >= head {
            break;
        }
    }
    Ok(())
}
