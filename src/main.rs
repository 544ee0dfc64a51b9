//! The `postgate` command: parses the command line and calls into the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use postgate::config::Config;

mod cli;

use cli::{load_config, Failure};

/// postgate: authenticated SMTP submission relay.
#[derive(Parser)]
#[command(name = "postgate", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file. Without it, ./postgate.toml is used when present,
    /// else the built-in defaults (SQLite file ./postgate.db).
    #[arg(long, short, global = true, env = "POSTGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: SMTP listeners, delivery workers, HTTP endpoints.
    Serve,
    /// Try postgate out: creates DIR with a development certificate, a
    /// config on the embedded SQLite store and a user, prints how to send a
    /// first message, then serves on 127.0.0.1.
    Dev {
        /// Where the development files live.
        #[arg(long, default_value = "dev-data")]
        dir: PathBuf,
        /// STARTTLS submission port on 127.0.0.1 [default: 5587].
        #[arg(long)]
        smtp_port: Option<u16>,
        /// Implicit-TLS submission port on 127.0.0.1 [default: 5465].
        #[arg(long)]
        smtps_port: Option<u16>,
        /// HTTP port (metrics, health) on 127.0.0.1 [default: 9587].
        #[arg(long)]
        http_port: Option<u16>,
        /// The SMTP sink to relay to, without TLS [default: 127.0.0.1:2525].
        #[arg(long, value_name = "HOST:PORT")]
        sink: Option<std::net::SocketAddr>,
    },
    /// Validate the configuration and print it with secrets redacted (exit 2 when invalid).
    CheckConfig {
        /// Check everything but files: certificates, keys and `{ file = ... }`
        /// secrets are not read (for CI, before the config reaches its host).
        #[arg(long)]
        no_files: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Manage users and their credentials.
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Manage which sender addresses a user may use.
    #[command(subcommand)]
    Sender(cli::sender::SenderCommand),
    /// Read a password on stdin and print its argon2id PHC hash (for plain-SQL account management).
    HashPassword,
    /// Show or reset rate-limit counters and lockouts (shared backends: in
    /// the store; backend = "local": through the running node's admin endpoint).
    #[command(subcommand)]
    Limits(cli::limits::LimitsCommand),
    /// Inspect and act on the queue (works against the live store).
    #[command(subcommand)]
    Queue(cli::queue::QueueCommand),
    /// Show delivery events (the outbox webhooks read).
    #[command(subcommand)]
    Events(cli::events::EventsCommand),
    /// Manage DKIM signing keys.
    #[command(subcommand)]
    Dkim(cli::dkim::DkimCommand),
    /// Ask the running node's HTTP server for its health (exit 0 on 200,
    /// 1 otherwise): the container health check, as the image has no curl.
    Health {
        /// Path to ask: /healthz (alive) or /readyz (can accept and commit mail).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this long (e.g. 3s).
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Check an upstream before sending real mail through it.
    #[command(subcommand)]
    Upstream(cli::upstream::UpstreamCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postgate: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("postgate: error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The config file in use: `-c`, else ./postgate.toml when present, else
/// none (built-in defaults).
fn config_file(cli: &Cli) -> Option<PathBuf> {
    match &cli.config {
        Some(p) => Some(p.clone()),
        None if std::path::Path::new("postgate.toml").exists() => {
            Some(PathBuf::from("postgate.toml"))
        }
        None => None,
    }
}

/// The error with its key's line when the config file can be read again.
fn locate(e: postgate::config::ConfigError, path: Option<&std::path::Path>) -> String {
    let path = path.unwrap_or(std::path::Path::new("postgate.toml"));
    match std::fs::read_to_string(path) {
        Ok(text) => e.located(&text).to_string(),
        Err(_) => e.to_string(),
    }
}

/// [`load_config`] for `check-config --no-files`.
fn load_config_without_files(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if std::path::Path::new("postgate.toml").exists() => PathBuf::from("postgate.toml"),
        None => return Ok(Config::default()),
    };
    Config::load_without_files(&path).map_err(|e| Failure(e.to_string(), 2))
}

fn config_name(cli: &Cli) -> String {
    cli.config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "postgate.toml".into())
}

/// Starts logging, binds, wires SIGTERM/SIGINT to a graceful shutdown and
/// SIGHUP to a reload, and runs until shut down.
async fn serve(config: Config, config_file: Option<PathBuf>) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    postgate::logging::init(&config.log)?;
    let bound = postgate::run::Bound::bind(&config).await?;
    let control = postgate::run::Control {
        config_file,
        ..Default::default()
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let signals = control.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); signals.shutdown.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT received"); signals.shutdown.cancel(); }
                _ = hup.recv() => { tracing::info!("SIGHUP received: reloading"); signals.reload.notify_one(); }
            }
        }
    });
    postgate::run::run(config, bound, control).await?;
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Health { path, timeout } => {
            let config = load_config(cli.config.as_deref())?;
            let target = postgate::http::probe::target(config.http.address);
            let status = postgate::http::probe::get_status(target, path, *timeout).await?;
            println!("{target}{path}: {status}");
            if status == 200 {
                Ok(())
            } else {
                Err(Failure(format!("{target}{path} answered {status}"), 1))
            }
        }
        Command::CheckConfig { no_files } => {
            let config = if *no_files {
                load_config_without_files(cli.config.as_deref())?
            } else {
                load_config(cli.config.as_deref())?
            };
            let name = config_name(&cli);
            let checked = if *no_files {
                config.validate_for_serve_without_files(&name)
            } else {
                config.validate_for_serve(&name)
            };
            checked.map_err(|e| Failure(locate(e, cli.config.as_deref()), 2))?;
            config
                .check_strict(&name)
                .map_err(|e| Failure(e.to_string(), 2))?;
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Serve => {
            let config = load_config(cli.config.as_deref())?;
            config
                .validate_for_serve(&config_name(&cli))
                .map_err(|e| Failure(locate(e, cli.config.as_deref()), 2))?;
            serve(config, config_file(&cli)).await
        }
        Command::Dev {
            dir,
            smtp_port,
            smtps_port,
            http_port,
            sink,
        } => {
            use postgate::quickstart::DevOptions;
            let d = DevOptions::default();
            let options = DevOptions {
                smtp_port: smtp_port.unwrap_or(d.smtp_port),
                smtps_port: smtps_port.unwrap_or(d.smtps_port),
                http_port: http_port.unwrap_or(d.http_port),
                sink: sink.unwrap_or(d.sink),
                // Options given: the config follows them (a dev config is
                // written by `dev`, not edited by hand).
                rewrite_config: smtp_port.is_some()
                    || smtps_port.is_some()
                    || http_port.is_some()
                    || sink.is_some(),
            };
            let config = postgate::quickstart::prepare(dir, &options).await?;
            serve(config, None).await
        }
        Command::Migrate => {
            let config = load_config(cli.config.as_deref())?;
            postgate::store::open_and_migrate(config.store.url.expose(), &config.store.options())
                .await?;
            println!("migrations applied");
            Ok(())
        }
        Command::HashPassword => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let pw = input.lines().next().unwrap_or("");
            // The configured argon2id parameters ([auth.hash]), so SQL-made
            // accounts are not rehashed at their first login.
            let params = load_config(cli.config.as_deref())?.auth.hash;
            println!("{}", postgate::password::hash(pw, &params)?);
            Ok(())
        }
        Command::User(cmd) => cli::user::run(cli.config.as_deref(), cmd).await,
        Command::Dkim(cmd) => cli::dkim::run(cli.config.as_deref(), cmd).await,
        Command::Events(cmd) => cli::events::run(cli.config.as_deref(), cmd).await,
        Command::Limits(cmd) => cli::limits::run(cli.config.as_deref(), cmd).await,
        Command::Queue(cmd) => cli::queue::run(cli.config.as_deref(), cmd).await,
        Command::Sender(cmd) => cli::sender::run(cli.config.as_deref(), cmd).await,
        Command::Upstream(cmd) => cli::upstream::run(cli.config.as_deref(), cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every positional argument of every (sub)command has a description in
    /// `--help` (issue #14), and clap's own consistency checks pass.
    #[test]
    fn every_positional_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "postgate", &mut missing);
        assert!(missing.is_empty(), "undescribed positionals: {missing:?}");
    }
}
