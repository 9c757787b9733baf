//! `dsql-pgx token`: print an IAM auth token (and nothing else) on stdout.

use std::io::Write;

use serde::Serialize;

use crate::auth::{Action, TokenSigner};
use crate::cli::{Format, TokenArgs};
use crate::output::Output;
use crate::settings::{self, ProcessEnv};

#[derive(Serialize)]
struct TokenJson<'a> {
    token: &'a str,
    hostname: &'a str,
    region: &'a str,
    action: &'a str,
    expires_at: String,
}

/// Signs and prints one token.
pub async fn run(args: TokenArgs, out: &Output) -> anyhow::Result<()> {
    let target = settings::target(&args.target, &ProcessEnv)?;
    let action = if args.admin {
        Action::DbConnectAdmin
    } else {
        Action::for_user(&target.user)
    };
    let signer = TokenSigner::new(&target).await;
    let token = signer.sign(action).await?;
    let mut stdout = std::io::stdout().lock();
    if out.format == Format::Json {
        let json = TokenJson {
            token: token.value.expose(),
            hostname: signer.hostname(),
            region: signer.region(),
            action: action.as_str(),
            expires_at: humantime::format_rfc3339_seconds(token.expires_at).to_string(),
        };
        serde_json::to_writer(&mut stdout, &json)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", token.value.expose())?;
    }
    stdout.flush()?;
    Ok(())
}
