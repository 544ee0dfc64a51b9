//! The `postgate` command: parses the command line and calls into the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use postgate::accounts::{self, format_ms, DEFAULT_LABEL};
use postgate::config::Config;

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
    },
    /// Validate the configuration and print it with secrets redacted (exit 2 when invalid).
    CheckConfig,
    /// Apply pending database migrations.
    Migrate,
    /// Manage users and their credentials.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage which sender addresses a user may use.
    #[command(subcommand)]
    Sender(SenderCommand),
    /// Read a password on stdin and print its argon2id PHC hash (for plain-SQL account management).
    HashPassword,
    /// Show or reset rate-limit counters and lockouts (shared backends;
    /// with backend = "local" use the HTTP admin endpoint /admin/limits).
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Inspect and act on the queue (works against the live store).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Manage DKIM signing keys.
    #[command(subcommand)]
    Dkim(DkimCommand),
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
    Upstream(UpstreamCommand),
}

#[derive(Subcommand)]
enum UpstreamCommand {
    /// Connect to upstream NAME, verify TLS, fetch a token (OAuth), AUTH,
    /// MAIL and RCPT, then RSET and QUIT (nothing is sent); prints each
    /// step and its reply; exits 1 naming the step that failed.
    Test {
        /// The [[upstream]] name.
        name: String,
        /// Envelope sender (and mailbox for username = "{sender}").
        /// Default postmaster@<server.hostname>.
        #[arg(long)]
        from: Option<String>,
        /// Recipient for RCPT. Default: the sender.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Messages in the queue, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A message's envelope, recipients and delivery log (never the body).
    Show { id: String },
    /// Make every pending recipient of a message due now.
    Retry { id: String },
    /// Remove a message from the queue (logged as "deleted"; no DSN).
    Delete { id: String },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Print the current counters and lockouts.
    Show,
    /// Clear the counters and lockouts of an IP address, a username, uid:ID or cred:ID.
    Reset { target: String },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Create and store a key; prints the DNS TXT record to publish.
    Generate {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// rsa-sha256 or ed25519-sha256.
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size: 2048 (default), 3072 or 4096.
        #[arg(long)]
        bits: Option<u32>,
    },
    /// Store a key from a PEM file (PKCS#8, or PKCS#1 for RSA); prints the DNS TXT record.
    Import {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// PEM file with the private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// List keys (never the private part).
    List,
    /// Stop signing with a key (its DNS record can go once signed mail has been delivered).
    Retire {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
    },
}

#[derive(Args)]
struct PasswordSource {
    /// Read the password from standard input (one line).
    #[arg(long, conflicts_with = "generate")]
    password_stdin: bool,
    /// Generate a random password and print it once.
    #[arg(long)]
    generate: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user with a credential named "default".
    Add {
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Set a new password on a credential (default: "default").
    Passwd {
        name: String,
        #[arg(long, default_value = DEFAULT_LABEL)]
        label: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Disable a user: logins fail as for an unknown user.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Delete a user, its credentials and sender permissions.
    Delete { name: String },
    /// List users.
    List,
    /// Manage a user's named credentials (one per device or application).
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(Subcommand)]
enum CredentialCommand {
    /// Add a credential LABEL to user NAME.
    Add {
        name: String,
        label: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List the credentials of user NAME.
    List { name: String },
    /// Remove credential LABEL of user NAME.
    Revoke { name: String, label: String },
}

#[derive(Subcommand)]
enum SenderCommand {
    /// Allow NAME to send as PATTERN (`user@domain` or `@domain`).
    Allow { name: String, pattern: String },
    /// Remove a permission.
    Revoke { name: String, pattern: String },
    /// List the permissions of NAME.
    List { name: String },
}

/// A failure to report: message and exit code.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
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

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    match config_file(cli) {
        Some(path) => Config::load(&path).map_err(|e| Failure(e.to_string(), 2)),
        None => Ok(Config::default()),
    }
}

/// Opens the store; migrates it first when `store.migrate_on_start` is set
/// (the default), so a fresh SQLite file is usable at once.
async fn open_store(
    config: &Config,
) -> Result<std::sync::Arc<dyn postgate::store::Store>, Failure> {
    let (url, options) = (config.store.url.expose(), config.store.options());
    if config.store.migrate_on_start {
        Ok(postgate::store::open_and_migrate(url, &options).await?)
    } else {
        Ok(postgate::store::open(url, &options).await?)
    }
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

fn read_password(src: &PasswordSource) -> Result<(String, bool), Failure> {
    if src.generate {
        return Ok((postgate::password::generate_password(), true));
    }
    if !src.password_stdin {
        return Err(Failure("give --password-stdin or --generate".into(), 2));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(Failure("empty password on standard input".into(), 1));
    }
    Ok((pw, false))
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Health { path, timeout } => {
            let config = load_config(&cli)?;
            let target = postgate::http::probe::target(config.http.address);
            let status = postgate::http::probe::get_status(target, path, *timeout).await?;
            println!("{target}{path}: {status}");
            if status == 200 {
                Ok(())
            } else {
                Err(Failure(format!("{target}{path} answered {status}"), 1))
            }
        }
        Command::CheckConfig => {
            let config = load_config(&cli)?;
            config
                .validate_for_serve(&config_name(&cli))
                .map_err(|e| Failure(e.to_string(), 2))?;
            config
                .check_strict(&config_name(&cli))
                .map_err(|e| Failure(e.to_string(), 2))?;
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Serve => {
            let config = load_config(&cli)?;
            config
                .validate_for_serve(&config_name(&cli))
                .map_err(|e| Failure(e.to_string(), 2))?;
            serve(config, config_file(&cli)).await
        }
        Command::Dev { dir } => {
            let config = postgate::quickstart::prepare(dir).await?;
            serve(config, None).await
        }
        Command::Migrate => {
            let config = load_config(&cli)?;
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
            let params = load_config(&cli)?.auth.hash;
            println!("{}", postgate::password::hash(pw, &params)?);
            Ok(())
        }
        Command::User(cmd) => user(&cli, cmd).await,
        Command::Dkim(cmd) => dkim(&cli, cmd).await,
        Command::Limits(cmd) => limits(&cli, cmd).await,
        Command::Queue(cmd) => queue(&cli, cmd).await,
        Command::Sender(cmd) => sender(&cli, cmd).await,
        Command::Upstream(cmd) => upstream(&cli, cmd).await,
    }
}

async fn upstream(cli: &Cli, cmd: &UpstreamCommand) -> Result<(), Failure> {
    let UpstreamCommand::Test { name, from, to } = cmd;
    let config = load_config(cli)?;
    let Some(cfg) = config.upstreams.iter().find(|u| &u.name == name) else {
        let known: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        return Err(Failure(
            format!(
                "no [[upstream]] named {name:?} (configured: {})",
                known.join(", ")
            ),
            2,
        ));
    };
    cfg.check_credentials()
        .map_err(|e| Failure(format!("upstream {name:?}: {e}"), 2))?;
    let sender_mailbox = cfg.username.as_deref() == Some("{sender}");
    let from = match from {
        Some(f) => f.clone(),
        None if sender_mailbox => {
            return Err(Failure(
                "--from is required: the upstream authenticates as the sender (username = \"{sender}\")".into(),
                2,
            ))
        }
        None => format!("postmaster@{}", config.server.hostname),
    };
    let to = to.clone().unwrap_or_else(|| from.clone());
    let up = postgate::delivery::upstream::Upstream::new(cfg.clone(), &config.server.hostname)
        .map_err(|e| Failure(e.to_string(), 2))?;
    println!("upstream {name} ({}:{})", cfg.host, cfg.port());
    let mut print = |step: &str, detail: &str| println!("  {step:<9} ok   {detail}");
    match postgate::delivery::probe::run(&up, &from, &to, &mut print).await {
        Ok(()) => {
            println!("upstream {name}: all steps passed");
            Ok(())
        }
        Err(f) => {
            println!("  {:<9} FAIL {}", f.step, f.error);
            Err(Failure(format!("upstream {name}: {f}"), 1))
        }
    }
}

async fn user(cli: &Cli, cmd: &UserCommand) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store(&config).await?;
    let params = config.auth.hash;
    match cmd {
        UserCommand::Add { name, password } => {
            let (pw, generated) = read_password(password)?;
            accounts::user_add(&*store, name, DEFAULT_LABEL, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Passwd {
            name,
            label,
            password,
        } => {
            let (pw, generated) = read_password(password)?;
            accounts::user_passwd(&*store, name, label, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Disable { name } => store.user_set_enabled(name, false).await?,
        UserCommand::Enable { name } => store.user_set_enabled(name, true).await?,
        UserCommand::Delete { name } => store.user_delete(name).await?,
        UserCommand::List => {
            println!(
                "{:<32} {:<8} {:>11} {:>7}  created",
                "username", "enabled", "credentials", "senders"
            );
            for u in accounts::user_list(&*store).await? {
                println!(
                    "{:<32} {:<8} {:>11} {:>7}  {}",
                    u.username,
                    if u.enabled { "yes" } else { "no" },
                    u.credentials,
                    u.senders,
                    format_ms(u.created_at)
                );
            }
        }
        UserCommand::Credential(CredentialCommand::Add {
            name,
            label,
            password,
        }) => {
            let (pw, generated) = read_password(password)?;
            accounts::credential_add(&*store, name, label, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Credential(CredentialCommand::List { name }) => {
            println!(
                "{:<24} {:<8} {:<22} last used",
                "label", "enabled", "created"
            );
            for c in accounts::credential_list(&*store, name).await? {
                println!(
                    "{:<24} {:<8} {:<22} {}",
                    c.label,
                    if c.enabled { "yes" } else { "no" },
                    format_ms(c.created_at),
                    c.last_used_at
                        .map(format_ms)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        UserCommand::Credential(CredentialCommand::Revoke { name, label }) => {
            store.credential_revoke(name, label).await?
        }
    }
    Ok(())
}

async fn sender(cli: &Cli, cmd: &SenderCommand) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store(&config).await?;
    match cmd {
        SenderCommand::Allow { name, pattern } => {
            accounts::sender_allow(&*store, name, pattern).await?;
        }
        SenderCommand::Revoke { name, pattern } => {
            accounts::sender_revoke(&*store, name, pattern).await?
        }
        SenderCommand::List { name } => {
            for p in store.sender_list(name).await? {
                println!("{p}");
            }
        }
    }
    Ok(())
}

async fn dkim(cli: &Cli, cmd: &DkimCommand) -> Result<(), Failure> {
    use postgate::dkim;
    use postgate::store::DkimAlgorithm;
    let config = load_config(cli)?;
    let store = open_store(&config).await?;
    match cmd {
        DkimCommand::Generate {
            domain,
            selector,
            algorithm,
            bits,
        } => {
            let alg = DkimAlgorithm::parse(algorithm)?;
            print!(
                "{}",
                dkim::cli_generate(&*store, domain, selector, alg, *bits).await?
            );
        }
        DkimCommand::Import {
            domain,
            selector,
            algorithm,
            key,
        } => {
            let alg = DkimAlgorithm::parse(algorithm)?;
            print!(
                "{}",
                dkim::cli_import(&*store, domain, selector, alg, key).await?
            );
        }
        DkimCommand::List => print!("{}", dkim::cli_list(&*store).await?),
        DkimCommand::Retire { domain, selector } => {
            print!("{}", dkim::cli_retire(&*store, domain, selector).await?)
        }
    }
    Ok(())
}

async fn limits(cli: &Cli, cmd: &LimitsCommand) -> Result<(), Failure> {
    use postgate::limits::{clock::SystemClock, config::LimitsBackend, operator, Limiter};
    let config = load_config(cli)?;
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

async fn queue(cli: &Cli, cmd: &QueueCommand) -> Result<(), Failure> {
    use postgate::delivery::admin;
    let config = load_config(cli)?;
    let store = open_store(&config).await?;
    match cmd {
        QueueCommand::List { limit } => {
            println!(
                "{:<32} {:<30} {:>9} {:>5}/{:<5} {:<20} next attempt",
                "id", "sender", "size", "left", "rcpts", "received"
            );
            for e in admin::list(&*store, *limit).await? {
                println!(
                    "{:<32} {:<30} {:>9} {:>5}/{:<5} {:<20} {}",
                    e.id,
                    if e.sender.is_empty() {
                        "<> (DSN)"
                    } else {
                        &e.sender
                    },
                    e.size,
                    e.pending,
                    e.recipients,
                    format_ms(e.received_at),
                    e.next_attempt_at
                        .map(format_ms)
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        QueueCommand::Show { id } => {
            let d = admin::show(&*store, id).await?;
            let e = &d.entry;
            println!("id:        {}", e.id);
            println!(
                "sender:    {}",
                if e.sender.is_empty() { "<>" } else { &e.sender }
            );
            println!("user:      {}", e.username.as_deref().unwrap_or("-"));
            println!("size:      {}", e.size);
            println!("received:  {}", format_ms(e.received_at));
            println!("expires:   {}", format_ms(d.expires_at));
            println!("recipients:");
            for r in &d.recipients {
                println!(
                    "  {:<40} {:<9} attempts={} next={} upstream={} reply={}",
                    r.address,
                    r.status,
                    r.attempts,
                    format_ms(r.next_attempt_at),
                    r.last_upstream.as_deref().unwrap_or("-"),
                    r.last_reply.as_deref().unwrap_or("-")
                );
            }
            println!("log:");
            for l in &d.log {
                println!(
                    "  {} {:<40} {:<9} attempt={} upstream={} {}",
                    format_ms(l.at),
                    l.recipient,
                    l.outcome,
                    l.attempt,
                    l.upstream.as_deref().unwrap_or("-"),
                    l.reply.as_deref().unwrap_or("")
                );
            }
        }
        QueueCommand::Retry { id } => {
            let n = admin::retry(&*store, id).await?;
            println!("{n} recipient(s) of {id} due now");
        }
        QueueCommand::Delete { id } => {
            admin::delete(&*store, id).await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
