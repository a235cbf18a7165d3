//! `relay accounts add|list`.

use super::Context;
use crate::accounts::{AccountKind, AccountStore, NewAccount};
use crate::cli::{AccountAddArgs, AccountsCommand};
use crate::crypto::Secret;
use crate::startup;
use anyhow::Context as _;
use std::io::{Read, Write};

/// Runs an `accounts` subcommand.
pub async fn run(ctx: &Context, cmd: &AccountsCommand) -> anyhow::Result<()> {
    let store = AccountStore::new(ctx.db.clone(), startup::cipher(&ctx.common)?);
    match cmd {
        AccountsCommand::Add(args) => add(ctx, &store, args).await,
        AccountsCommand::List => list(&store).await,
    }
}

async fn add(ctx: &Context, store: &AccountStore, args: &AccountAddArgs) -> anyhow::Result<()> {
    // The credential comes from stdin so it never appears in shell history or `ps`.
    let mut credential = String::new();
    std::io::stdin()
        .read_to_string(&mut credential)
        .context("cannot read the credential from stdin")?;
    let credential = credential.trim().to_owned();
    let kind = if credential.starts_with("sk-ant-oat") {
        AccountKind::OAuth
    } else {
        AccountKind::ApiKey
    };
    let id = store
        .add(NewAccount {
            name: args.name.clone(),
            kind,
            base_url: args.base_url.clone(),
            credential: Secret::new(credential),
            priority: args.priority,
            weight: args.weight,
            group: args.group.clone(),
            concurrency: args.concurrency,
            proxy_url: args.proxy.clone(),
        })
        .await?;
    ctx.record_admin(
        "account.add",
        &format!("account:{id}"),
        &format!(
            "added {} account {} ({}) base_url={} priority={} weight={} group={}",
            kind.as_str(),
            id,
            args.name,
            args.base_url,
            args.priority,
            args.weight,
            args.group.as_deref().unwrap_or("-")
        ),
    )
    .await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}

async fn list(store: &AccountStore) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "id\tname\tkind\tbase_url\tpriority\tweight\tgroup\tconcurrency\tproxy\tenabled")?;
    for a in store.list().await? {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            a.id,
            a.name,
            a.kind.as_str(),
            a.base_url,
            a.priority,
            a.weight,
            a.group.as_deref().unwrap_or("-"),
            a.concurrency,
            a.proxy_url.as_deref().map(redact_proxy).unwrap_or_else(|| "-".into()),
            a.enabled
        )?;
    }
    Ok(())
}

/// Hides a proxy URL's password.
pub fn redact_proxy(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}
