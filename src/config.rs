//! Configuration: one TOML file, validated once at start.
//!
//! Every key is documented in `deploy/postgate.example.toml`. Unknown keys and
//! bad values are rejected with the file, line and key path. Each subsystem
//! owns the struct of its section; this module composes them and owns the
//! cross-cutting pieces: loading and error reporting. Secrets are
//! [`crate::secret::Secret`] (re-exported here).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;

mod checks;

/// A configuration error naming the file, line (when known) and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// `[server]`: identity of this node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in the SMTP greeting, EHLO reply, Received and Message-ID.
    /// Default: the machine's host name.
    pub hostname: String,
    /// Identifies this node in queue leases. Default: `HOSTNAME-PID`.
    pub node_id: Option<String>,
    /// How long SIGTERM waits for sessions and deliveries in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: system_hostname(),
            node_id: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// The effective node id.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.hostname, std::process::id()))
    }
}

/// The machine's host name, or `localhost`.
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `[store]`: where all state lives.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded, one node) or `postgres://USER:PASS@HOST/DB`.
    /// A secret: may be `{ env = "DATABASE_URL" }`.
    pub url: Secret,
    /// Connection pool size (sessions, the API, administration).
    pub max_connections: u32,
    /// PostgreSQL: connections of delivery's own pool (claims, outcome
    /// commits, lease renewals, DSNs), apart from `max_connections`, so a
    /// burst of submissions never queues delivery's commits behind its own:
    /// an upstream connection waits for its last outcome's commit before it
    /// carries the next message (issue #13). SQLite has one writer: unused.
    pub delivery_connections: u32,
    /// How long to wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: Secret::inline("sqlite://postgate.db"),
            max_connections: 16,
            delivery_connections: 4,
            connect_timeout: Duration::from_secs(5),
            migrate_on_start: true,
        }
    }
}

impl StoreConfig {
    /// Options for [`crate::store::open`].
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
        }
    }

    /// Options for delivery's own pool ([`crate::store::open_for_delivery`]).
    pub fn delivery_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.delivery_connections,
            connect_timeout: self.connect_timeout,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub smtp: crate::smtp::config::SmtpConfig,
    /// Required by `starttls` and `implicit-tls` listeners.
    pub tls: Option<crate::tls::TlsConfig>,
    pub auth: crate::auth::AuthConfig,
    pub auth_cache: crate::auth_cache::AuthCacheConfig,
    pub limits: crate::limits::LimitsConfig,
    pub queue: crate::delivery::config::QueueConfig,
    /// `[[upstream]]`: the relays postgate delivers to (at least one to serve).
    #[serde(rename = "upstream")]
    pub upstreams: Vec<crate::delivery::config::UpstreamConfig>,
    /// `[[route]]`: recipient domain / sender domain / user to an ordered
    /// list of upstreams.
    #[serde(rename = "route")]
    pub routes: Vec<crate::delivery::config::RouteConfig>,
    /// `[delivery]`: the DSN sender.
    #[serde(rename = "delivery")]
    pub delivery_settings: crate::delivery::config::DeliverySettings,
    pub dkim: crate::dkim::DkimConfig,
    pub fixups: crate::fixups::FixupsConfig,
    pub http: crate::http::HttpConfig,
    /// `[api]`: the HTTP submission API (off by default).
    pub api: crate::http::api::ApiConfig,
    pub log: crate::logging::LogConfig,
    /// `[events]`: the delivery events outbox (issue #17).
    pub events: crate::events::EventsConfig,
    /// `[[webhook]]`: where events are POSTed (each implies `[events]`).
    #[serde(rename = "webhook")]
    pub webhooks: Vec<crate::events::WebhookConfig>,
    /// `[journal]` or `[[journal]]`: archive addresses that get a copy of
    /// every accepted message (optionally per user or sender domain).
    #[serde(deserialize_with = "crate::journal::deserialize_rules")]
    pub journal: Vec<crate::journal::JournalRule>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &file)
    }

    /// Like [`load`](Self::load), but reads no other file: secrets given as
    /// `{ file = ... }` are left unread (their checks are skipped). With
    /// [`validate_for_serve_without_files`](Self::validate_for_serve_without_files),
    /// what `check-config --no-files` runs in CI, before the config
    /// reaches the host that has the certificates and secret files.
    pub fn load_without_files(path: &Path) -> Result<Config, ConfigError> {
        crate::secret::without_files(|| Config::load(path))
    }

    /// Parses and validates TOML `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                file: file.to_string(),
                line,
                column,
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: inner.message().to_string(),
            }
        })?;
        config.validate(file).map_err(|e| e.located(text))?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        let url = self.store.url.expose();
        let known_scheme = url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://");
        if !known_scheme && !self.store.url.is_unread() {
            return Err(invalid(
                "store.url",
                "must start with sqlite:, postgres:// or postgresql://".into(),
            ));
        }
        if self.store.max_connections == 0 {
            return Err(invalid(
                "store.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.store.delivery_connections == 0 {
            return Err(invalid(
                "store.delivery_connections",
                "must be at least 1".into(),
            ));
        }
        if let Err(e) = crate::password::validate_params(&self.auth.hash) {
            return Err(invalid("auth.hash", e.to_string()));
        }
        let backend = if url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        if let Err(e) = self.limits.validate(backend) {
            return Err(invalid("limits.backend", e));
        }
        if let Err(e) = self.fixups.validate() {
            return Err(invalid("fixups.remove_headers", e.to_string()));
        }
        let token_unread = self
            .http
            .admin_token
            .as_ref()
            .is_some_and(Secret::is_unread);
        if let Err(e) = self.http.validate() {
            // `check-config --no-files`: a token from an unread file is unknown.
            if !(token_unread && e.key() == "http.admin_token") {
                return Err(invalid(&e.key(), e.to_string()));
            }
        }
        if self.server.hostname.is_empty() || self.server.hostname.contains(char::is_whitespace) {
            return Err(invalid(
                "server.hostname",
                "must be a host name without spaces".into(),
            ));
        }
        if let Some(id) = &self.server.node_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid(
                    "server.node_id",
                    "must be 1 to 64 visible ASCII characters (it names this node's queue leases)"
                        .into(),
                ));
            }
        }
        checks::check_values(self).map_err(|(key, message)| invalid(&key, message))?;
        crate::events::validate(&self.events, &self.webhooks)
            .map_err(|(key, message)| invalid(&key, message))?;
        crate::journal::validate(&self.journal).map_err(|(key, message)| invalid(&key, message))?;
        self.api
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        if self.api.enabled && self.tls.is_none() {
            return Err(invalid(
                "api.enabled",
                "the API is HTTPS only: it needs [tls] (cert and key)".into(),
            ));
        }
        Ok(())
    }

    /// Whether the store writes delivery events: `[events] enabled` or
    /// any `[[webhook]]`.
    pub fn events_enabled(&self) -> bool {
        self.events.enabled || !self.webhooks.is_empty()
    }

    /// The checks only `serve` needs (listeners need a certificate, the
    /// certificate files must load); `check-config` runs them too. `file`
    /// names the configuration in errors.
    pub fn validate_for_serve(&self, file: &str) -> Result<(), ConfigError> {
        self.serve_checks(file, true)
    }

    /// [`validate_for_serve`](Self::validate_for_serve) without reading
    /// the certificate and key files (`check-config --no-files`).
    pub fn validate_for_serve_without_files(&self, file: &str) -> Result<(), ConfigError> {
        self.serve_checks(file, false)
    }

    fn serve_checks(&self, file: &str, read_files: bool) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        self.smtp
            .validate(self.tls.is_some())
            .map_err(|e| invalid(&e.key(), e.to_string()))?;
        if let Some(tls) = self.tls.as_ref().filter(|_| read_files) {
            crate::tls::ServerTls::load(tls).map_err(|e| invalid("tls", e.to_string()))?;
        }
        if self.upstreams.is_empty() {
            return Err(invalid(
                "upstream",
                "at least one [[upstream]] is needed to serve".into(),
            ));
        }
        self.delivery()
            .validate()
            .map_err(|e| invalid("upstream/route/queue", e.to_string()))?;
        Ok(())
    }

    /// The checks only `check-config` makes (`serve` logs them as warnings
    /// instead, so a running fleet is not stopped by a stricter check):
    /// `[queue] lease` must cover one delivery's timeouts
    /// ([`DeliveryConfig::check_lease`](crate::delivery::DeliveryConfig::check_lease)).
    pub fn check_strict(&self, file: &str) -> Result<(), ConfigError> {
        self.delivery()
            .check_lease()
            .map_err(|e| ConfigError::Invalid {
                file: file.to_string(),
                key: "queue.lease".into(),
                message: e.to_string(),
            })
    }

    /// What [`crate::delivery::Delivery::start`] needs from this config.
    pub fn delivery(&self) -> crate::delivery::config::DeliveryConfig {
        crate::delivery::config::DeliveryConfig {
            queue: self.queue.clone(),
            upstreams: self.upstreams.clone(),
            routes: self.routes.clone(),
            hostname: self.server.hostname.clone(),
            node_id: self.server.node_id(),
            dsn_from: self.delivery_settings.dsn_from.clone(),
            // The node's signer is made from the store at start (run.rs).
            dsn_signer: None,
        }
    }

    /// The top-level sections (`smtp`, `upstream`, `route`, ...) whose
    /// settings differ between `self` and `other`, sorted by name.
    /// Secrets are compared as written (inline, `{ env }`, `{ file }`),
    /// redacted: a new value behind the same file or variable is not seen.
    pub fn changed_sections(&self, other: &Config) -> Vec<String> {
        let (Ok(a), Ok(b)) = (serde_json::to_value(self), serde_json::to_value(other)) else {
            return vec!["(the configuration cannot be compared)".to_string()];
        };
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        a.iter()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(b.keys().filter(|k| !a.contains_key(k.as_str())).cloned())
            .collect()
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.store.url.expose(), "sqlite://postgate.db");
        assert!(c.store.migrate_on_start);
    }

    #[test]
    fn delivery_pool_of_zero_connections_is_refused_by_name() {
        let e = Config::parse("[store]\ndelivery_connections = 0\n", "p.toml").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("store.delivery_connections"), "{text}");
        assert!(text.contains("must be at least 1"), "{text}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err =
            Config::parse("[store]\nmax_connections = 4\nurll = \"x\"\n", "p.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.toml:3:1: store"), "{msg}");
        assert!(msg.contains("unknown field `urll`"), "{msg}");
    }

    #[test]
    fn node_id_defaults_to_host_and_pid_and_is_checked() {
        let c = Config::parse("[server]\nhostname = \"mx1\"\n", "p.toml").unwrap();
        assert_eq!(c.server.node_id(), format!("mx1-{}", std::process::id()));
        assert_eq!(c.delivery().node_id, c.server.node_id());
        let c = Config::parse("[server]\nnode_id = \"relay-7\"\n", "p.toml").unwrap();
        assert_eq!(c.delivery().node_id, "relay-7");
        for bad in ["", "two words"] {
            let err = Config::parse(&format!("[server]\nnode_id = {bad:?}\n"), "p.toml");
            let msg = err.unwrap_err().to_string();
            assert!(msg.contains("server.node_id"), "{msg}");
        }
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = Config::parse("[store]\nconnect_timeout = \"soon\"\n", "p.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.toml:2:"), "{msg}");
        assert!(msg.contains("store.connect_timeout"), "{msg}");
    }

    #[test]
    fn secrets_from_env_and_file_are_redacted() {
        std::env::set_var("POSTGATE_TEST_SECRET_URL", "postgres://u:hunter2@db/pg");
        let c = Config::parse(
            "[store]\nurl = { env = \"POSTGATE_TEST_SECRET_URL\" }\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.store.url.expose(), "postgres://u:hunter2@db/pg");
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("from env POSTGATE_TEST_SECRET_URL"),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "sqlite://from-file.db\n").unwrap();
        let c = Config::parse(
            &format!(
                "[store]\nurl = {{ file = {:?} }}\n",
                f.display().to_string()
            ),
            "t",
        )
        .unwrap();
        assert_eq!(c.store.url.expose(), "sqlite://from-file.db");
    }

    #[test]
    fn missing_secret_source_is_an_error() {
        let err = Config::parse(
            "[store]\nurl = { env = \"POSTGATE_DOES_NOT_EXIST\" }\n",
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("POSTGATE_DOES_NOT_EXIST is not set"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = Config::parse("[store]\nurl = \"mysql://x\"\n", "t.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.toml:2:1: store.url: must start with sqlite:, postgres:// or postgresql://"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// deploy/postgate.example.toml documents every key and must load as-is.
    #[test]
    fn example_config_loads_as_is() {
        let text = include_str!("../deploy/postgate.example.toml");
        let c =
            Config::parse(text, "deploy/postgate.example.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.hostname, "relay.example.com");
    }

    /// Every key of the configuration (as rendered from the defaults and from
    /// the example itself) is written, set or commented out, in the example.
    #[test]
    fn example_config_documents_every_key() {
        let text = include_str!("../deploy/postgate.example.toml");
        let example = Config::parse(text, "example").unwrap();
        let mut missing = Vec::new();
        for rendered in [
            Config::default().to_redacted_toml(),
            example.to_redacted_toml(),
        ] {
            let value: toml::Value = toml::from_str(&rendered).unwrap();
            collect_missing(&value, "", text, &mut missing);
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "keys not documented in deploy/postgate.example.toml: {missing:?}"
        );
    }

    fn collect_missing(v: &toml::Value, path: &str, text: &str, missing: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let documented = text.lines().any(|l| {
                        let l = l.trim_start_matches(['#', ' ']);
                        l.starts_with(&format!("{k} ="))
                            || l.starts_with(&format!("[{p}]"))
                            || l.starts_with(&format!("[[{p}]]"))
                    });
                    if !documented {
                        missing.push(p.clone());
                    }
                    collect_missing(v, &p, text, missing);
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    collect_missing(item, path, text, missing);
                }
            }
            _ => {}
        }
    }
}
