//! Configuration of the queue and delivery: `[queue]`, `[[upstream]]` and
//! `[[route]]`. The lead's `config.rs` composes these into the top-level
//! config; every default is documented on its field.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::HashSet;

use crate::config::Secret;

use super::route::{self, Router};
use super::DeliveryError;

/// `[queue]`: delivery workers, leases, retries and lifetimes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Delivery workers per node (each claims and delivers). Default 16.
    pub workers: usize,
    /// Due recipients whose messages one worker claims at a time (a claim
    /// takes whole messages, so it can hold more). Default 32.
    pub batch: u32,
    /// How long a claim is leased before another node may take it over
    /// (must exceed the time to deliver one batch). Default `5m`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Delay after the first failed attempt. Default `1m`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest delay between attempts. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Backoff growth per failed attempt. Default `2.0`.
    pub retry_multiplier: f64,
    /// Relative jitter of each delay, 0.0 to 1.0. Default `0.2`.
    pub retry_jitter: f64,
    /// Maximum time in the queue before a message expires and bounces
    /// (RFC 5321 §4.5.4.1 suggests at least 4-5 days). Default `5d`.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// How long delivery log rows are kept. Default `30d`.
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// How often an idle worker looks for due mail. Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Consecutive transient failures that open an upstream's circuit. Default 5.
    pub circuit_failures: u32,
    /// How long an open circuit waits before one probe. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub circuit_cooldown: Duration,
    /// Longest a worker waits for an upstream's rate limit before deferring
    /// the message instead. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub max_throttle_wait: Duration,
    /// RFC 3461 NOTIFY=DELAY: a recipient that asked for delay
    /// notifications and is still queued this long after the message
    /// arrived gets one delay warning (once). `0s` turns warnings off.
    /// One not shorter than `lifetime` never fires. Default `4h`.
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// RFC 3461 RET=FULL: the largest message (octets) a failed DSN returns
    /// in full; a larger one is returned as its header section only.
    /// Default 1048576 (1 MiB).
    pub dsn_return_max: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 16,
            batch: 32,
            lease: Duration::from_secs(300),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            retry_multiplier: 2.0,
            retry_jitter: 0.2,
            lifetime: Duration::from_secs(5 * 86400),
            log_retention: Duration::from_secs(30 * 86400),
            poll_interval: Duration::from_millis(500),
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            max_throttle_wait: Duration::from_secs(10),
            delay_warning: Duration::from_secs(4 * 3600),
            dsn_return_max: 1 << 20,
        }
    }
}

/// How a connection to an upstream is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connect, then STARTTLS (RFC 3207); refused STARTTLS is a
    /// transient failure, never a fall-back to clear text. Port 587 by default.
    Starttls,
    /// TLS from the first byte (RFC 8314). Port 465 by default.
    Implicit,
    /// No TLS at all. Only when named explicitly (a local test MTA). Port 25 by default.
    None,
}

/// SASL mechanism towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    /// PLAIN when offered, else LOGIN.
    #[default]
    Auto,
    /// RFC 4616.
    Plain,
    /// The LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

/// `[[upstream]]`: one relay postgate delivers to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique name, used by routes, logs and the delivery log. Required.
    pub name: String,
    /// Host name or IP address. Required.
    pub host: String,
    /// Port. Default by `tls`: 587 (starttls), 465 (implicit), 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `implicit` or `none`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// PEM file of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Base64 SHA-256 of the server certificate's SubjectPublicKeyInfo; when
    /// set, the certificate must also match it (checked after normal verification).
    #[serde(default)]
    pub spki_pin: Option<String>,
    /// Name to verify the certificate against (and send as SNI). Default `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// AUTH username; no AUTH when unset.
    #[serde(default)]
    pub username: Option<String>,
    /// AUTH password: a string, `{ env = "VAR" }` or `{ file = "PATH" }`. Never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `auto` (default), `plain` or `login`.
    #[serde(default)]
    pub auth: AuthMechanism,
    /// Concurrent connections to this upstream per node. Default 8.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed. Default 100.
    #[serde(default = "default_max_messages")]
    pub max_messages_per_connection: u32,
    /// TCP connect plus TLS handshake. Default `30s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Each reply to a command (RFC 5321 §4.5.3.2 suggests minutes). Default `60s`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Sending the body and waiting for the reply after it
    /// (RFC 5321 §4.5.3.2.6: 10 minutes). Default `5m`.
    #[serde(default = "default_data_timeout", with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long an idle pooled connection is kept. Default `30s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Messages per second to this upstream (provider quota), paced by the
    /// node's limiter: for all nodes together with the `postgres` limits
    /// backend, per node with `local`. Unlimited when unset.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Messages that may go at once within the rate. Default 1.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Case-insensitive substrings of a 4xx reply meaning "you are sending
    /// too fast": the upstream is paused, the message's attempts are not used up.
    /// Default `["throttl", "maximum sending rate", "rate limit", "too many messages"]`.
    #[serde(default = "default_throttle_patterns")]
    pub throttle_patterns: Vec<String>,
}

fn default_tls() -> TlsMode {
    TlsMode::Starttls
}
fn default_max_connections() -> usize {
    8
}
fn default_max_messages() -> u32 {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_burst() -> u32 {
    1
}
fn default_throttle_patterns() -> Vec<String> {
    [
        "throttl",
        "maximum sending rate",
        "rate limit",
        "too many messages",
    ]
    .map(String::from)
    .to_vec()
}

impl UpstreamConfig {
    /// A config for `host:port` with every default; `tls` as given.
    pub fn new(name: &str, host: &str, port: u16, tls: TlsMode) -> Self {
        UpstreamConfig {
            name: name.into(),
            host: host.into(),
            port: Some(port),
            tls,
            ca_file: None,
            spki_pin: None,
            tls_server_name: None,
            username: None,
            password: None,
            auth: AuthMechanism::Auto,
            max_connections: default_max_connections(),
            max_messages_per_connection: default_max_messages(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            idle_timeout: default_idle_timeout(),
            rate: None,
            burst: default_burst(),
            throttle_patterns: default_throttle_patterns(),
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Starttls => 587,
            TlsMode::Implicit => 465,
            TlsMode::None => 25,
        })
    }
}

/// `[[route]]`: messages whose sender domain and/or user match go through
/// `upstreams` in order. A route with neither `sender_domain` nor `user` is
/// the default route (at most one); without one, the default route is every
/// upstream in config order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Sender domain to match (exact, case-insensitive).
    #[serde(default)]
    pub sender_domain: Option<String>,
    /// Authenticated username to match (case-insensitive).
    #[serde(default)]
    pub user: Option<String>,
    /// Upstream names in fail-over order. Required, non-empty.
    pub upstreams: Vec<String>,
}

/// Everything [`super::Delivery::start`] needs.
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    /// `[queue]`.
    pub queue: QueueConfig,
    /// `[[upstream]]`, at least one.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[route]]`.
    pub routes: Vec<RouteConfig>,
    /// This node's name: EHLO name towards upstreams and Reporting-MTA of DSNs
    /// (`[server].hostname`).
    pub hostname: String,
    /// Identifies this node in queue leases (`[server].node_id()`); a random
    /// suffix is added per start, so a restarted node never reuses a lease.
    pub node_id: String,
}

impl DeliveryConfig {
    /// Checks the config: unique upstream names, routes name existing
    /// upstreams, at most one default route, sane queue numbers. No upstream
    /// at all is allowed (a node that only accepts: [`Delivery::start`]
    /// then warns and delivers nothing).
    ///
    /// [`Delivery::start`]: super::Delivery::start
    pub fn validate(&self) -> Result<(), DeliveryError> {
        let bad = |s: String| Err(DeliveryError::Config(s));
        let mut names = HashSet::new();
        for u in &self.upstreams {
            if u.name.is_empty() || !names.insert(u.name.as_str()) {
                return bad(format!("upstream name {:?} is empty or used twice", u.name));
            }
            if u.host.is_empty() {
                return bad(format!("upstream {:?}: host is empty", u.name));
            }
            if u.password.is_some() != u.username.is_some() {
                return bad(format!(
                    "upstream {:?}: username and password go together",
                    u.name
                ));
            }
        }
        let mut defaults = 0;
        for r in &self.routes {
            if r.upstreams.is_empty() {
                return bad("a [[route]] needs at least one upstream".into());
            }
            if let Some(n) = r.upstreams.iter().find(|n| !names.contains(n.as_str())) {
                return bad(format!("[[route]] names unknown upstream {n:?}"));
            }
            if r.sender_domain.is_none() && r.user.is_none() {
                defaults += 1;
            }
        }
        if defaults > 1 {
            return bad("more than one default [[route]] (without sender_domain or user)".into());
        }
        let q = &self.queue;
        if q.workers == 0 || q.batch == 0 {
            return bad("[queue] workers and batch must be at least 1".into());
        }
        if q.lease < Duration::from_secs(1) {
            return bad("[queue] lease must be at least 1s".into());
        }
        if q.retry_multiplier.is_nan()
            || q.retry_multiplier < 1.0
            || !(0.0..=1.0).contains(&q.retry_jitter)
        {
            return bad("[queue] retry_multiplier must be >= 1, retry_jitter in 0..1".into());
        }
        Ok(())
    }

    pub(super) fn router(&self) -> Router {
        let mut default = None;
        let mut rules = Vec::new();
        for r in &self.routes {
            if r.sender_domain.is_none() && r.user.is_none() {
                default = Some(r.upstreams.clone());
            } else {
                rules.push(route::Rule {
                    sender_domain: r.sender_domain.clone(),
                    user: r.user.clone(),
                    upstreams: r.upstreams.clone(),
                });
            }
        }
        let default =
            default.unwrap_or_else(|| self.upstreams.iter().map(|u| u.name.clone()).collect());
        Router::new(rules, default)
    }
}
