//! `postgate limits show|reset`: rate-limit counters and lockouts.

use std::path::Path;

use clap::Subcommand;

use super::{load_config, open_store, Failure};

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Print the current counters and lockouts.
    Show,
    /// Clear the counters and lockouts of an IP address, a username, uid:ID or cred:ID.
    Reset { target: String },
}

/// Runs one `limits` command.
pub async fn run(config_path: Option<&Path>, cmd: &LimitsCommand) -> Result<(), Failure> {
    use postgate::limits::{clock::SystemClock, config::LimitsBackend, operator, Limiter};
    let config = load_config(config_path)?;
    if config.limits.backend == LimitsBackend::Local {
        return Err(Failure(
            format!(
                "limits.backend is \"local\": the counters live in the serving process; use GET/POST {}/admin/limits with the admin token",
                format_args!("http://{}", config.http.address)
            ),
            1,
        ));
    }
    let store = open_store(&config).await?;
    let limit_store: std::sync::Arc<dyn postgate::store::LimitStore> = store.clone();
    let limiter = Limiter::new(
        config.limits.clone(),
        Some(limit_store),
        std::sync::Arc::new(SystemClock),
    )?;
    match cmd {
        LimitsCommand::Show => print!("{}", operator::show(&limiter).await?),
        LimitsCommand::Reset { target } => {
            let n = operator::reset(&limiter, &*store, target).await?;
            println!("removed {n} counter(s) of {target}");
        }
    }
    Ok(())
}
