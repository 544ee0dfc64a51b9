//! Configuration of the queue and delivery: `[queue]`, `[[upstream]]` and
//! `[[route]]`. The lead's `config.rs` composes these into the top-level
//! config; every default is documented on its field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::HashSet;

use crate::secret::Secret;

use super::route::{self, Router};
use super::DeliveryError;

/// `[queue]`: delivery workers, leases, retries and lifetimes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Claim loops per node. Each claimed message is delivered by a task of
    /// its own (a message never waits for another of its claim), and the
    /// node keeps at most `workers × batch` claimed messages that have not
    /// started yet (waiting for the throttle or a connection); what runs is
    /// bounded per upstream by its `max_connections`. Default 16.
    pub workers: usize,
    /// Due recipients whose messages one claim takes at most (a claim
    /// takes whole messages, so it can hold more). Default 32.
    pub batch: u32,
    /// How long a claim is leased before another node may take it over. A
    /// heartbeat renews the leases of every claimed message not yet
    /// recorded every `lease / 3`, so this is how long a crashed node's
    /// messages wait. `check-config` refuses a lease shorter than one
    /// delivery's timeouts (`connect_timeout + command_timeout +
    /// data_timeout` of each upstream): the heartbeat cannot reach a store
    /// that is away, and a delivery may not outlast its lease. Default `10m`.
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
    /// Longest a claimed message waits for a free connection of its
    /// upstream (all `max_connections` busy) before it is given back to the
    /// queue, due at once and without using up an attempt: a slow or hung
    /// upstream does not hold claimed mail, nor the room to claim more.
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub max_pool_wait: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 16,
            batch: 32,
            lease: Duration::from_secs(600),
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
            max_pool_wait: Duration::from_secs(10),
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
    /// XOAUTH2 with an OAuth 2.0 bearer token from `[upstream.oauth]`
    /// (Google's and Microsoft's SASL mechanism).
    Xoauth2,
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
    /// PEM client certificate chain presented when the upstream asks for
    /// one (mutual TLS); with `client_key`.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `client_certificate` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Allow `username`/`password` with `tls = "none"` to a host that is
    /// not loopback (the password then crosses the network in clear text).
    /// Default false: such a config is refused.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// AUTH username; no AUTH when unset. With `auth = "xoauth2"`,
    /// `"{sender}"` authenticates as the envelope sender's mailbox
    /// (connections are then pooled per mailbox).
    #[serde(default)]
    pub username: Option<String>,
    /// AUTH password: a string, `{ env = "VAR" }` or `{ file = "PATH" }`. Never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `auto` (default), `plain`, `login` or `xoauth2` (with `[upstream.oauth]`).
    #[serde(default)]
    pub auth: AuthMechanism,
    /// `[upstream.oauth]`: the token source of `auth = "xoauth2"`.
    #[serde(default)]
    pub oauth: Option<super::oauth::OAuthConfig>,
    /// Concurrent connections to this upstream per node. Default 8. A
    /// connection is taken until its message's outcome is committed, so this
    /// is also the most a crash of the node can make this upstream receive
    /// twice.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed. Default 100.
    #[serde(default = "default_max_messages")]
    pub max_messages_per_connection: u32,
    /// TCP connect, TLS handshake (implicit TLS) and the server's greeting
    /// together: an upstream that accepts TCP and never speaks is given up
    /// after this, not after `command_timeout`. Default `30s`.
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
    /// Header fields added above every message sent to this upstream, as a
    /// table of name to value (e.g. `{ "X-SES-CONFIGURATION-SET" = "main" }`).
    /// Checked by [`super::headers::check`]. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
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
            client_certificate: None,
            client_key: None,
            allow_plaintext_auth: false,
            username: None,
            password: None,
            auth: AuthMechanism::Auto,
            oauth: None,
            max_connections: default_max_connections(),
            max_messages_per_connection: default_max_messages(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            idle_timeout: default_idle_timeout(),
            rate: None,
            burst: default_burst(),
            throttle_patterns: default_throttle_patterns(),
            add_headers: BTreeMap::new(),
        }
    }

    /// Checks the AUTH keys and loads what they name (client certificate
    /// against its key, the OAuth credential), so that `check-config`
    /// reports what start would refuse.
    pub fn check_credentials(&self) -> Result<(), String> {
        let sender = self.username.as_deref() == Some(super::oauth::SENDER_PLACEHOLDER);
        if self.auth == AuthMechanism::Xoauth2 {
            let Some(oauth) = &self.oauth else {
                return Err("auth = \"xoauth2\" needs an [upstream.oauth] section".into());
            };
            if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(
                    "auth = \"xoauth2\" needs username (the mailbox, or \"{sender}\")".into(),
                );
            }
            if self.password.is_some() {
                return Err(
                    "password does not apply to auth = \"xoauth2\" (the token is the credential)"
                        .into(),
                );
            }
            if oauth.null_sender_mailbox.is_some() && !sender {
                return Err(
                    "oauth.null_sender_mailbox applies only with username = \"{sender}\"".into(),
                );
            }
            super::oauth::TokenSource::new(oauth)?;
        } else {
            if self.oauth.is_some() {
                return Err("[upstream.oauth] needs auth = \"xoauth2\"".into());
            }
            if sender {
                return Err("username = \"{sender}\" needs auth = \"xoauth2\"".into());
            }
            if self.password.is_some() != self.username.is_some() {
                return Err("username and password go together".into());
            }
        }
        match (&self.client_certificate, &self.client_key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                if self.tls == TlsMode::None {
                    return Err("client_certificate needs TLS (tls is \"none\")".into());
                }
                super::tls_client::ClientIdentity::load(c, k)
                    .map_err(|e| format!("client_certificate/client_key: {e}"))?;
            }
            _ => return Err("client_certificate and client_key go together".into()),
        }
        Ok(())
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

/// `[[route]]`: recipients whose domain, sender domain and/or user match
/// (every key given must match) go through `upstreams` in order; the first
/// matching route in config order wins. A route with none of
/// `recipient_domain`, `sender_domain`, `user` is the default route (at
/// most one); without one, the default route is every upstream in config
/// order. Domains: `"example.com"` matches that domain exactly,
/// `".example.com"` its subdomains.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domain to match (case-insensitive; leading dot: subdomains).
    #[serde(default)]
    pub recipient_domain: Option<String>,
    /// Sender domain to match (case-insensitive; leading dot: subdomains).
    #[serde(default)]
    pub sender_domain: Option<String>,
    /// Authenticated username to match (case-insensitive).
    #[serde(default)]
    pub user: Option<String>,
    /// Upstream names in fail-over order. Required, non-empty.
    pub upstreams: Vec<String>,
}

impl RouteConfig {
    /// A route without conditions: the default route.
    pub fn is_default(&self) -> bool {
        self.sender_domain.is_none() && self.recipient_domain.is_none() && self.user.is_none()
    }
}

/// `[delivery]`: how postgate's own messages go out.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// The address DSNs come from (header From), e.g.
    /// `postmaster@example.com`: one the upstream providers accept. DSNs
    /// are routed as if sent from it and DKIM-signed with its domain's
    /// keys; their envelope sender stays empty (RFC 5321 §4.5.5). Default:
    /// `MAILER-DAEMON@` the server's host name.
    pub dsn_from: Option<String>,
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
    /// `[delivery] dsn_from`: header From of DSNs, and the sender their
    /// route is chosen for. `None`: `MAILER-DAEMON@hostname`, and routes
    /// see the null sender (only recipient-domain rules and the default
    /// route can match).
    pub dsn_from: Option<String>,
    /// Signs DSNs like intake signs messages (the node's signer); `None`
    /// leaves them unsigned.
    pub dsn_signer: Option<Arc<crate::dkim::Signer>>,
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
            if let Err(e) = u.check_credentials() {
                return bad(format!("upstream {:?}: {e}", u.name));
            }
            if let Err(e) = super::headers::check_all(&u.add_headers) {
                return bad(format!("upstream {:?}: add_headers: {e}", u.name));
            }
        }
        if let Some(from) = &self.dsn_from {
            check_dsn_from(from)
                .map_err(|e| DeliveryError::Config(format!("[delivery] dsn_from: {e}")))?;
        }
        let mut defaults = 0;
        for (i, r) in self.routes.iter().enumerate() {
            if r.upstreams.is_empty() {
                return bad("a [[route]] needs at least one upstream".into());
            }
            if let Some(n) = r.upstreams.iter().find(|n| !names.contains(n.as_str())) {
                return bad(format!("[[route]] names unknown upstream {n:?}"));
            }
            for (key, value) in [
                ("sender_domain", &r.sender_domain),
                ("recipient_domain", &r.recipient_domain),
            ] {
                if let Some(v) = value {
                    if let Err(e) = route::DomainMatch::parse(v) {
                        return bad(format!("[[route]] #{}: {key}: {e}", i + 1));
                    }
                }
            }
            if r.is_default() {
                defaults += 1;
            }
        }
        if defaults > 1 {
            return bad(
                "more than one default [[route]] (without recipient_domain, sender_domain or user)"
                    .into(),
            );
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

    /// Checks that `[queue] lease` covers one delivery's timeouts to every
    /// upstream (`connect_timeout + command_timeout + data_timeout`): the
    /// heartbeat keeps longer deliveries leased while the store answers,
    /// but a lease that runs out under a delivery still in progress means
    /// a second node sends the message again. `check-config` refuses a
    /// config that fails this; `serve` warns.
    pub fn check_lease(&self) -> Result<(), DeliveryError> {
        let Some((name, floor)) = self
            .upstreams
            .iter()
            .map(|u| {
                (
                    &u.name,
                    u.connect_timeout + u.command_timeout + u.data_timeout,
                )
            })
            .max_by_key(|(_, d)| *d)
        else {
            return Ok(());
        };
        if self.queue.lease < floor {
            return Err(DeliveryError::Config(format!(
                "[queue] lease {} is shorter than one delivery's timeouts to upstream {name:?} \
                 (connect_timeout + command_timeout + data_timeout = {}): raise lease or lower those timeouts",
                humantime::format_duration(self.queue.lease),
                humantime::format_duration(floor),
            )));
        }
        Ok(())
    }

    /// The routing table; call after [`validate`](Self::validate), which
    /// refuses domains that do not parse.
    pub(super) fn router(&self) -> Router {
        let mut default = None;
        let mut rules = Vec::new();
        let domain =
            |d: &Option<String>| d.as_deref().and_then(|d| route::DomainMatch::parse(d).ok());
        for r in &self.routes {
            if r.is_default() {
                default = Some(r.upstreams.clone());
            } else {
                rules.push(route::Rule {
                    sender_domain: domain(&r.sender_domain),
                    recipient_domain: domain(&r.recipient_domain),
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

/// Checks `[delivery] dsn_from`: a bare address `local@domain` (no angle
/// brackets, no display name, no spaces or control characters).
fn check_dsn_from(from: &str) -> Result<(), String> {
    let how = "write a bare address such as \"postmaster@example.com\"";
    let Some((local, domain)) = from.rsplit_once('@') else {
        return Err(format!("{from:?} is not an address: {how}"));
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\"".contains(c);
    if local.is_empty() || local.chars().any(bad_char) || local.contains('@') {
        return Err(format!("{from:?} is not an address: {how}"));
    }
    match route::DomainMatch::parse(domain) {
        Ok(route::DomainMatch::Exact(_)) => Ok(()),
        _ => Err(format!("{from:?} has no valid domain: {how}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_routes(routes: Vec<RouteConfig>) -> DeliveryConfig {
        DeliveryConfig {
            upstreams: vec![UpstreamConfig::new("a", "h", 25, TlsMode::None)],
            routes,
            ..DeliveryConfig::default()
        }
    }

    fn route(sender: Option<&str>, recipient: Option<&str>) -> RouteConfig {
        RouteConfig {
            sender_domain: sender.map(String::from),
            recipient_domain: recipient.map(String::from),
            user: None,
            upstreams: vec!["a".into()],
        }
    }

    #[test]
    fn at_domains_are_refused_with_how_to_write_them() {
        let e = with_routes(vec![
            route(None, Some("x.org")),
            route(Some("@example.com"), None),
        ])
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("[[route]] #2: sender_domain"), "{e}");
        assert!(e.contains("without the @"), "{e}");
        assert!(e.contains("\"example.com\""), "{e}");
        let e = with_routes(vec![route(None, Some("@x.org"))])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[route]] #1: recipient_domain"), "{e}");
        with_routes(vec![
            route(Some(".example.com"), Some("x.org")),
            route(None, None),
        ])
        .validate()
        .unwrap();
    }

    #[test]
    fn recipient_domain_alone_is_not_a_default_route() {
        // Two routes without sender/user: only one of them is the default.
        with_routes(vec![route(None, Some("x.org")), route(None, None)])
            .validate()
            .unwrap();
        let e = with_routes(vec![route(None, None), route(None, None)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one default"), "{e}");
    }

    #[test]
    fn dsn_from_and_add_headers_are_checked() {
        let mut c = with_routes(vec![]);
        for good in ["postmaster@example.com", "bounces+x@mail.example.org"] {
            c.dsn_from = Some(good.into());
            c.validate().unwrap();
        }
        for bad in [
            "postmaster",
            "<postmaster@example.com>",
            "a b@example.com",
            "@example.com",
            "p@",
            "p@.example.com",
            "Postmaster <p@example.com>",
        ] {
            c.dsn_from = Some(bad.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("[delivery] dsn_from"), "{bad}: {e}");
        }
        c.dsn_from = None;
        c.upstreams[0]
            .add_headers
            .insert("X-Set".into(), "a\r\nBcc: x@y.z".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("upstream \"a\": add_headers"), "{e}");
        assert!(e.contains("CR or LF"), "{e}");
    }
}
