//! `relay accounts add|oauth-login|list|update|remove|enable|disable|reset`: thin
//! adapters over [`crate::services`].

use super::{fail, Context};
use crate::accounts::AccountStore;
use crate::cli::{AccountAddArgs, AccountUpdateArgs, AccountsCommand, OAuthLoginArgs};
use crate::oauth;
use crate::services::accounts::{redact_url, CreateAccount, PlatformType, UpdateAccount};
use crate::services::{Actor, Services};
use anyhow::Context as _;
use std::io::{Read, Write};

/// Runs an `accounts` subcommand.
pub async fn run(ctx: &Context, cmd: &AccountsCommand) -> anyhow::Result<()> {
    let s = ctx.services()?;
    let cli = Actor::Cli;
    let mut out = std::io::stdout().lock();
    match cmd {
        AccountsCommand::Add(args) => add(&s, args).await,
        AccountsCommand::OauthLogin(args) => oauth_login(&s, args).await,
        AccountsCommand::List => list(&s.accounts).await,
        AccountsCommand::Update(a) => update(&s, a).await,
        AccountsCommand::Remove(a) => {
            let id = resolve(&s, &a.account).await?;
            s.delete_account(&cli, &id).await.map_err(fail)?;
            writeln!(out, "removed {id}")?;
            Ok(())
        }
        AccountsCommand::Enable(a) | AccountsCommand::Disable(a) => {
            let enable = matches!(cmd, AccountsCommand::Enable(_));
            let id = resolve(&s, &a.account).await?;
            let v = s
                .set_account_enabled(&cli, &id, enable)
                .await
                .map_err(fail)?;
            writeln!(out, "{} enabled={}", v.id, v.enabled)?;
            Ok(())
        }
        AccountsCommand::Reset(a) => {
            let id = resolve(&s, &a.account).await?;
            let v = s.reset_account(&cli, &id).await.map_err(fail)?;
            writeln!(out, "{} reset to healthy", v.id)?;
            Ok(())
        }
    }
}

/// An account id from an id or a name.
async fn resolve(s: &Services, id_or_name: &str) -> anyhow::Result<String> {
    for a in s.accounts.list().await? {
        if a.id.as_str() == id_or_name || a.name == id_or_name {
            return Ok(a.id.to_string());
        }
    }
    anyhow::bail!("no account with id or name {id_or_name:?}")
}

fn read_credential() -> anyhow::Result<String> {
    // The credential comes from stdin so it never appears in shell history or `ps`.
    let mut credential = String::new();
    std::io::stdin()
        .read_to_string(&mut credential)
        .context("cannot read the credential from stdin")?;
    Ok(credential.trim().to_owned())
}

fn create_input(args: &AccountAddArgs, secret: String) -> CreateAccount {
    CreateAccount {
        name: args.name.clone(),
        platform_type: None,
        request_url: Some(args.base_url.clone()),
        secret_key: secret,
        group_id: None,
        group: args.group.clone(),
        priority: Some(i64::from(args.priority)),
        weight: Some(i64::from(args.weight)),
        proxy: args.proxy.clone(),
        concurrency: Some(i64::from(args.concurrency)),
        enabled: None,
        refresh_token: None,
        expires_at: None,
    }
}

async fn add(s: &Services, args: &AccountAddArgs) -> anyhow::Result<()> {
    let credential = read_credential()?;
    let v = s
        .create_account(&Actor::Cli, create_input(args, credential))
        .await
        .map_err(fail)?;
    writeln!(std::io::stdout().lock(), "{}", v.id)?;
    Ok(())
}

async fn update(s: &Services, a: &AccountUpdateArgs) -> anyhow::Result<()> {
    let id = resolve(s, &a.account).await?;
    let group_id = match a.group.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(g) => Some(Some(s.ensure_group(&Actor::Cli, g).await.map_err(fail)?.id)),
    };
    let secret_key = if a.credential_stdin {
        Some(read_credential()?)
    } else {
        None
    };
    let v = s
        .update_account(
            &Actor::Cli,
            &id,
            UpdateAccount {
                name: a.name.clone(),
                platform_type: None,
                request_url: a.base_url.clone(),
                secret_key,
                group_id,
                priority: a.priority,
                weight: a.weight,
                proxy: a.proxy.clone().map(|p| Some(p).filter(|p| !p.is_empty())),
                concurrency: a.concurrency,
                enabled: None,
            },
        )
        .await
        .map_err(fail)?;
    writeln!(std::io::stdout().lock(), "updated {} ({})", v.id, v.name)?;
    Ok(())
}

async fn oauth_login(s: &Services, args: &OAuthLoginArgs) -> anyhow::Result<()> {
    let cfg = oauth::OAuthConfig {
        authorize_url: args.authorize_url.clone(),
        token_url: args.token_url.clone(),
        ..oauth::OAuthConfig::default()
    };
    let pkce = oauth::Pkce::generate();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Open this URL, log in, and paste the code shown (code#state):"
        )?;
        writeln!(out, "{}", pkce.authorize_url(&cfg))?;
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
    let tokens =
        oauth::exchange_code(&http.build()?, &cfg, &pkce, &line, chrono::Utc::now()).await?;
    let mut input = create_input(&args.account, tokens.access_token.expose().to_owned());
    input.platform_type = Some(PlatformType::Claude);
    input.refresh_token = tokens.refresh_token;
    input.expires_at = Some(tokens.expires_at);
    let v = s.create_account(&Actor::Cli, input).await.map_err(fail)?;
    writeln!(std::io::stdout().lock(), "{}", v.id)?;
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
            redact_url(&a.base_url),
            a.priority,
            a.weight,
            a.group.as_deref().unwrap_or("-"),
            a.concurrency,
            a.proxy_url
                .as_deref()
                .map(redact_url)
                .unwrap_or_else(|| "-".into()),
            a.enabled
        )?;
    }
    Ok(())
}
