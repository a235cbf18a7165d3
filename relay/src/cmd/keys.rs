//! `relay keys create|list|revoke|enable|disable|update`: thin adapters over
//! [`crate::services`], so the CLI and the admin API behave identically.

use super::{fail, Context};
use crate::cli::{KeyCreateArgs, KeyLimitsArgs, KeyUpdateArgs, KeysCommand};
use crate::services::keys::CreateKey;
use crate::services::{Actor, Services};
use std::io::Write;

/// Runs a `keys` subcommand.
pub async fn run(ctx: &Context, cmd: &KeysCommand) -> anyhow::Result<()> {
    let s = ctx.services()?;
    let cli = Actor::Cli;
    match cmd {
        KeysCommand::Create(args) => create(&s, args).await,
        KeysCommand::List => list(&s).await,
        KeysCommand::Revoke(a) => {
            let k = s.revoke_key(&cli, &a.id).await.map_err(fail)?;
            writeln!(std::io::stdout().lock(), "revoked {}", k.id)?;
            Ok(())
        }
        KeysCommand::Enable(a) | KeysCommand::Disable(a) => {
            let enable = matches!(cmd, KeysCommand::Enable(_));
            let k = s
                .update_key(&cli, &a.id, None, None, None, Some(enable))
                .await
                .map_err(fail)?;
            writeln!(std::io::stdout().lock(), "{} enabled={}", k.id, k.enabled)?;
            Ok(())
        }
        KeysCommand::Update(a) => update(&s, a).await,
        KeysCommand::Limits(a) => limits(&s, a).await,
    }
}

/// `none` clears a limit; anything else must parse.
fn field<T: std::str::FromStr>(
    name: &str,
    v: &Option<String>,
) -> anyhow::Result<Option<Option<T>>> {
    match v.as_deref().map(str::trim) {
        None => Ok(None),
        Some("none") | Some("") => Ok(Some(None)),
        Some(x) => x
            .parse()
            .map(|t| Some(Some(t)))
            .map_err(|_| anyhow::anyhow!("--{name}: {x:?} is not valid (or `none` to clear)")),
    }
}

fn comma_list(v: &Option<String>) -> Option<Option<Vec<String>>> {
    v.as_deref().map(|s| {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty() && *x != "none")
            .map(str::to_owned)
            .collect();
        Some(items)
    })
}

async fn limits(s: &Services, a: &KeyLimitsArgs) -> anyhow::Result<()> {
    let change = crate::limits::LimitsPatch {
        allowed_models: comma_list(&a.allowed_models),
        allowed_ips: comma_list(&a.allowed_ips),
        rpm: field("rpm", &a.rpm)?,
        max_concurrency: field("max-concurrency", &a.max_concurrency)?,
        daily_budget_usd: field("daily-budget-usd", &a.daily_budget_usd)?,
        weekly_budget_usd: field("weekly-budget-usd", &a.weekly_budget_usd)?,
        monthly_budget_usd: field("monthly-budget-usd", &a.monthly_budget_usd)?,
        total_budget_usd: field("total-budget-usd", &a.total_budget_usd)?,
    };
    let key = if change.is_empty() {
        s.get_key(&Actor::Cli, &a.id).await.map_err(fail)?
    } else {
        s.set_key_limits(&Actor::Cli, &a.id, &change)
            .await
            .map_err(fail)?
    };
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string(&key.limits)?
    )?;
    Ok(())
}

async fn create(s: &Services, args: &KeyCreateArgs) -> anyhow::Result<()> {
    if let Some(g) = &args.group {
        s.ensure_group(&Actor::Cli, g).await.map_err(fail)?;
    }
    let (key, secret) = s
        .create_key(
            &Actor::Cli,
            CreateKey {
                name: args.name.clone(),
                user_id: None,
                tenant: Some(args.tenant.clone()),
                group: args.group.clone(),
                expires_at: args.expires.clone(),
            },
        )
        .await
        .map_err(fail)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created key {} for tenant {} (shown once):",
        key.id, key.tenant
    )?;
    writeln!(out, "{}", secret.expose())?;
    Ok(())
}

async fn update(s: &Services, a: &KeyUpdateArgs) -> anyhow::Result<()> {
    if let Some(g) = a.group.as_deref().filter(|g| !g.is_empty()) {
        s.ensure_group(&Actor::Cli, g).await.map_err(fail)?;
    }
    let group = a
        .group
        .as_deref()
        .map(|g| Some(g).filter(|g| !g.is_empty()));
    let expires = if a.no_expiry {
        Some(None)
    } else {
        a.expires.as_deref().map(Some)
    };
    let k = s
        .update_key(&Actor::Cli, &a.id, a.name.as_deref(), group, expires, None)
        .await
        .map_err(fail)?;
    writeln!(std::io::stdout().lock(), "updated {} ({})", k.id, k.name)?;
    Ok(())
}

async fn list(s: &Services) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "id\tname\ttenant\tgroup\tkey\tenabled\texpires_at\tuser"
    )?;
    for k in s.keys.list_all().await? {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            k.id,
            k.name,
            k.tenant,
            k.group.as_deref().unwrap_or("-"),
            k.display(),
            k.enabled,
            k.expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
            k.user_id.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}
