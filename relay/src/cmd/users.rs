//! `relay users create|list|set-role|reset-password|disable|enable`.

use super::{fail, Context};
use crate::cli::{UserCreateArgs, UsersCommand};
use crate::identity::{password, Role};
use crate::services::users::{CreateUser, UserChange};
use crate::services::{Actor, PageReq, Services};
use anyhow::Context as _;
use std::io::{Read, Write};

/// Runs a `users` subcommand.
pub async fn run(ctx: &Context, cmd: &UsersCommand) -> anyhow::Result<()> {
    let s = ctx.services()?;
    let cli = Actor::Cli;
    let mut out = std::io::stdout().lock();
    match cmd {
        UsersCommand::Create(a) => create(&s, a).await,
        UsersCommand::List => {
            writeln!(out, "id\tusername\temail\trole\tenabled\ttenant")?;
            let mut page = 1;
            loop {
                let p = s
                    .list_users(
                        &cli,
                        None,
                        PageReq {
                            page,
                            limit: PageReq::MAX_LIMIT,
                        },
                    )
                    .await
                    .map_err(fail)?;
                for u in &p.items {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        u.id,
                        u.username,
                        u.email,
                        u.role.as_str(),
                        u.enabled,
                        u.tenant
                    )?;
                }
                if p.items.len() < PageReq::MAX_LIMIT as usize {
                    return Ok(());
                }
                page += 1;
            }
        }
        UsersCommand::SetRole(a) => {
            let role = parse_role(&a.role)?;
            let u = s.user_by_name(&cli, &a.username).await.map_err(fail)?;
            let u = s
                .update_user(
                    &cli,
                    &u.id,
                    UserChange {
                        role: Some(role),
                        ..UserChange::default()
                    },
                )
                .await
                .map_err(fail)?;
            writeln!(out, "{} is now {}", u.username, u.role.as_str())?;
            Ok(())
        }
        UsersCommand::ResetPassword(a) => {
            let u = s.user_by_name(&cli, &a.username).await.map_err(fail)?;
            let (pass, generated) = password_from_stdin()?;
            s.update_user(
                &cli,
                &u.id,
                UserChange {
                    password: Some(pass.clone()),
                    ..UserChange::default()
                },
            )
            .await
            .map_err(fail)?;
            if generated {
                writeln!(out, "new password of {} (shown once):", u.username)?;
                writeln!(out, "{pass}")?;
            } else {
                writeln!(out, "password of {} reset", u.username)?;
            }
            Ok(())
        }
        UsersCommand::Disable(a) | UsersCommand::Enable(a) => {
            let enable = matches!(cmd, UsersCommand::Enable(_));
            let u = s.user_by_name(&cli, &a.username).await.map_err(fail)?;
            let u = s
                .update_user(
                    &cli,
                    &u.id,
                    UserChange {
                        enabled: Some(enable),
                        ..UserChange::default()
                    },
                )
                .await
                .map_err(fail)?;
            writeln!(out, "{} enabled={}", u.username, u.enabled)?;
            Ok(())
        }
    }
}

fn parse_role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| format!("role must be admin or user, not {s:?}"))
}

/// The password typed on stdin, or a generated one when stdin is empty.
fn password_from_stdin() -> anyhow::Result<(String, bool)> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read the password from stdin")?;
    let typed = input.trim_end_matches(['\r', '\n']).to_owned();
    if typed.is_empty() {
        Ok((password::generate(), true))
    } else {
        Ok((typed, false))
    }
}

async fn create(s: &Services, a: &UserCreateArgs) -> anyhow::Result<()> {
    let role = parse_role(&a.role)?;
    let (pass, generated) = password_from_stdin()?;
    let u = s
        .create_user(
            &Actor::Cli,
            CreateUser {
                username: a.username.clone(),
                email: a.email.clone(),
                password: pass.clone(),
                role: Some(role),
                tenant: a.tenant.clone(),
            },
        )
        .await
        .map_err(fail)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created {} user {} ({}) in tenant {}",
        u.role.as_str(),
        u.username,
        u.id,
        u.tenant
    )?;
    if generated {
        writeln!(out, "password (shown once):")?;
        writeln!(out, "{pass}")?;
    }
    Ok(())
}
