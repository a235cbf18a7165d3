//! `relay keys create|list`.

use super::Context;
use crate::cli::{KeyCreateArgs, KeysCommand};
use crate::keys::{KeyStore, NewKey};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use schema::TenantId;
use std::io::Write;

/// Runs a `keys` subcommand.
pub async fn run(ctx: &Context, cmd: &KeysCommand) -> anyhow::Result<()> {
    let store = KeyStore::new(ctx.db.clone());
    match cmd {
        KeysCommand::Create(args) => create(ctx, &store, args).await,
        KeysCommand::List => list(&store).await,
    }
}

async fn create(ctx: &Context, store: &KeyStore, args: &KeyCreateArgs) -> anyhow::Result<()> {
    let tenant = TenantId::parse(&args.tenant).context("invalid --tenant")?;
    let expires_at = args
        .expires
        .as_deref()
        .map(|s| parse_expiry(s, Utc::now()))
        .transpose()?;
    let (key, secret) = store
        .create(NewKey {
            name: args.name.clone(),
            tenant,
            group: args.group.clone(),
            expires_at,
        })
        .await?;
    ctx.record_admin(
        "key.create",
        &format!("key:{}", key.id),
        &format!(
            "created key {} ({}) for tenant {}{}",
            key.id,
            key.name,
            key.tenant,
            key.group
                .as_deref()
                .map(|g| format!(" in group {g}"))
                .unwrap_or_default()
        ),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created key {} for tenant {} (shown once):",
        key.id, key.tenant
    )?;
    writeln!(out, "{}", secret.expose())?;
    Ok(())
}

async fn list(store: &KeyStore) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "id\tname\ttenant\tgroup\tprefix\tenabled\texpires_at")?;
    for k in store.list().await? {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}…\t{}\t{}",
            k.id,
            k.name,
            k.tenant,
            k.group.as_deref().unwrap_or("-"),
            k.prefix,
            k.enabled,
            k.expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into())
        )?;
    }
    Ok(())
}

/// Parses an expiry: RFC 3339, or a duration from `now` (`30d`, `12h`, `15m`).
pub fn parse_expiry(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = parse_duration(s)?;
    Ok(now + d)
}

/// Parses `15m`, `2h`, `7d`, `30s` into a duration.
pub fn parse_duration(s: &str) -> anyhow::Result<chrono::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 30s, 15m, 2h, 7d"))?;
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    };
    d.with_context(|| format!("invalid duration {s:?}: use e.g. 30s, 15m, 2h, 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_expiries_parse() {
        let now = Utc::now();
        assert_eq!(
            parse_expiry("7d", now).unwrap(),
            now + chrono::Duration::days(7)
        );
        assert!(parse_expiry("2026-12-01T00:00:00Z", now).is_ok());
        assert!(parse_expiry("soon", now).is_err());
        assert!(parse_duration("5x").is_err());
    }
}
