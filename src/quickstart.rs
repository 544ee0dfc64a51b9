//! `postgate dev`: everything needed to try postgate on one machine, made
//! once in a directory: a self-signed certificate for `localhost`, a config
//! on the embedded SQLite store listening on 127.0.0.1 only, and a user
//! `dev` who may send as `@example.test`. Running it again reuses the files
//! (and prints the same password).

use std::path::Path;

use crate::config::Config;

/// Ports of the development listeners (unprivileged, loopback only).
pub const SUBMISSION_PORT: u16 = 5587;
pub const SUBMISSIONS_PORT: u16 = 5465;
pub const HTTP_PORT: u16 = 9587;
/// Where the development config relays to: any SMTP sink on this port.
pub const SINK_PORT: u16 = 2525;

/// What `postgate dev` may be told (issue #14): the ports of its
/// listeners and where it relays to, when the defaults are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevOptions {
    /// STARTTLS submission port on 127.0.0.1 (default [`SUBMISSION_PORT`]).
    pub smtp_port: u16,
    /// Implicit-TLS submission port on 127.0.0.1 (default [`SUBMISSIONS_PORT`]).
    pub smtps_port: u16,
    /// HTTP port on 127.0.0.1 (default [`HTTP_PORT`]).
    pub http_port: u16,
    /// The SMTP sink relayed to without TLS (default `127.0.0.1:2525`).
    pub sink: std::net::SocketAddr,
    /// Rewrite `postgate.toml` from these options even if it exists (the
    /// CLI sets it when any option was given).
    pub rewrite_config: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            smtp_port: SUBMISSION_PORT,
            smtps_port: SUBMISSIONS_PORT,
            http_port: HTTP_PORT,
            sink: std::net::SocketAddr::from(([127, 0, 0, 1], SINK_PORT)),
            rewrite_config: false,
        }
    }
}

/// Why the development setup failed.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Account(#[from] crate::accounts::AccountError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuickstartError + '_ {
    move |source| QuickstartError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to a new file `path` with mode 0600 (replacing any
/// old file): every file `dev` writes is private to its user.
fn write_private(path: &Path, contents: &str) -> Result<(), QuickstartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

/// The development config for files in `dir` (absolute).
pub fn dev_config_text(dir: &Path, o: &DevOptions) -> String {
    let d = dir.display();
    let (smtp, smtps, http) = (o.smtp_port, o.smtps_port, o.http_port);
    let (sink_host, sink_port) = (o.sink.ip(), o.sink.port());
    format!(
        r#"# Development configuration written by `postgate dev`. Loopback only.
[server]
hostname = "localhost"
shutdown_grace = "5s"

[store]
url = "sqlite://{d}/postgate.db"

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"

[[smtp.listener]]
address = "127.0.0.1:{smtp}"
mode = "starttls"

[[smtp.listener]]
address = "127.0.0.1:{smtps}"
mode = "implicit-tls"

[http]
address = "127.0.0.1:{http}"

# Delivery to a local SMTP sink without TLS (e.g. `python3 -m aiosmtpd -n
# -l {sink_host}:{sink_port}`). A real upstream uses tls = "starttls" or "implicit".
[[upstream]]
name = "local-sink"
host = "{sink_host}"
port = {sink_port}
tls = "none"

[queue]
retry_initial = "10s"
retry_max = "1m"
"#
    )
}

/// Creates (or reuses) the development files in `dir`, prints how to send a
/// first message, and returns the config to serve.
pub async fn prepare(dir: &Path, options: &DevOptions) -> Result<Config, QuickstartError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        let (cert_pem, key_pem) = crate::tls::self_signed(&["localhost".into()])?;
        write_private(&cert, &cert_pem)?;
        write_private(&key, &key_pem)?;
    }
    let config_path = dir.join("postgate.toml");
    if !config_path.exists() || options.rewrite_config {
        write_private(&config_path, &dev_config_text(&dir, options))?;
    }
    let config = Config::load(&config_path)?;
    let store =
        crate::store::open_and_migrate(config.store.url.expose(), &config.store.options()).await?;
    let password_path = dir.join("dev-password");
    let password = match std::fs::read_to_string(&password_path) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            let p = crate::password::generate_password();
            crate::accounts::user_add(
                &*store,
                "dev",
                crate::accounts::DEFAULT_LABEL,
                &p,
                &config.auth.hash,
            )
            .await?;
            crate::accounts::sender_allow(&*store, "dev", "@example.test").await?;
            write_private(&password_path, &format!("{p}\n"))?;
            p
        }
    };
    // The ports of the config in use (a reused one may differ from the flags).
    let port_of = |mode| {
        config
            .smtp
            .listeners
            .iter()
            .find(|l| l.mode == mode)
            .map_or(0, |l| l.address.port())
    };
    let smtp = port_of(crate::smtp::config::ListenerMode::Starttls);
    let smtps = port_of(crate::smtp::config::ListenerMode::ImplicitTls);
    let http = config.http.address.port();
    println!(
        "postgate development node (files in {d})
  submission  127.0.0.1:{smtp} (STARTTLS)   submissions 127.0.0.1:{smtps} (implicit TLS)
  metrics     http://127.0.0.1:{http}/metrics
  login       user dev, password {password} (also in {d}/dev-password); may send as @example.test
  config      {d}/postgate.toml (use it with any postgate command: -c {d}/postgate.toml)

Send a first message (in another terminal):
  swaks --server 127.0.0.1:{smtp} --tls --auth-user dev --auth-password '{password}' \\
        --from dev@example.test --to someone@example.net
  curl --ssl-reqd --cacert {d}/cert.pem --url smtp://localhost:{smtp} --user 'dev:{password}' \\
        --mail-from dev@example.test --mail-rcpt someone@example.net --upload-file message.eml
Then look at the queue:  postgate -c {d}/postgate.toml queue list
",
        d = dir.display()
    );
    Ok(config)
}
