//! `relay accounts add|list`.

use super::Context;
use crate::accounts::{AccountKind, AccountStore, NewAccount};
use crate::cli::{AccountAddArgs, AccountsCommand, OAuthLoginArgs};
use crate::crypto::Secret;
use crate::oauth;
use crate::startup;
use anyhow::Context as _;
use std::io::{Read, Write};

/// Runs an `accounts` subcommand.
pub async fn run(ctx: &Context, cmd: &AccountsCommand) -> anyhow::Result<()> {
    let store = AccountStore::new(ctx.db.clone(), startup::cipher(&ctx.common)?);
    match cmd {
        AccountsCommand::Add(args) => add(ctx, &store, args).await,
        AccountsCommand::OauthLogin(args) => oauth_login(ctx, &store, args).await,
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

async fn oauth_login(
    ctx: &Context,
    store: &AccountStore,
    args: &OAuthLoginArgs,
) -> anyhow::Result<()> {
    let pkce = oauth::Pkce::generate();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Open this URL, log in, and paste the code shown (code#state):"
        )?;
        writeln!(out, "{}", pkce.authorize_url(&args.authorize_url))?;
        out.flush()?;
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the code from stdin")?;
    let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(proxy) = &args.account.proxy {
        http = http.proxy(reqwest::Proxy::all(proxy).context("invalid --proxy")?);
    }
    let tokens = oauth::exchange_code(
        &http.build()?,
        &args.token_url,
        &pkce,
        &line,
        chrono::Utc::now(),
    )
    .await?;
    let a = &args.account;
    let id = store
        .add_with_tokens(
            NewAccount {
                name: a.name.clone(),
                kind: AccountKind::OAuth,
                base_url: a.base_url.clone(),
                credential: tokens.access_token,
                priority: a.priority,
                weight: a.weight,
                group: a.group.clone(),
                concurrency: a.concurrency,
                proxy_url: a.proxy.clone(),
            },
            tokens.refresh_token,
            Some(tokens.expires_at),
        )
        .await?;
    ctx.record_admin(
        "account.add",
        &format!("account:{id}"),
        &format!(
            "added oauth account {id} ({}) by login{}; access token expires {}",
            a.name,
            tokens.email.map(|e| format!(" as {e}")).unwrap_or_default(),
            tokens.expires_at.to_rfc3339()
        ),
    )
    .await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}

async fn list(store: &AccountStore) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "id\tname\tkind\tbase_url\tpriority\tweight\tgroup\tconcurrency\tproxy\tenabled"
    )?;
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
            a.proxy_url
                .as_deref()
                .map(redact_proxy)
                .unwrap_or_else(|| "-".into()),
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
