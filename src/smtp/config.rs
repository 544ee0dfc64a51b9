//! `[smtp]` configuration: listeners, protocol limits, timeouts, caps.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// How a listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerMode {
    /// Submission (RFC 6409), plain text until STARTTLS (RFC 3207). Port 587.
    Starttls,
    /// Submissions (RFC 8314): TLS from the first byte. Port 465.
    ImplicitTls,
    /// No TLS, AUTH allowed in clear: loopback addresses only, for tests.
    Plain,
}

impl ListenerMode {
    /// The `tls_mode` label of this listener's metrics.
    pub fn metric_label(self) -> crate::metrics::TlsMode {
        use crate::metrics::TlsMode;
        match self {
            ListenerMode::Starttls => TlsMode::Starttls,
            ListenerMode::ImplicitTls => TlsMode::ImplicitTls,
            ListenerMode::Plain => TlsMode::Plain,
        }
    }
}

/// One `[[smtp.listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to bind, e.g. `"0.0.0.0:587"` or `"[::]:465"`.
    pub address: SocketAddr,
    /// `starttls`, `implicit-tls` or `plain` (loopback only).
    pub mode: ListenerMode,
    /// Expect a PROXY v1/v2 header from peers in `smtp.proxy_trusted`
    /// (default false).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Turn bare CR/LF in DATA into CRLF instead of refusing the message
    /// (default false; a user's `normalize_line_endings` overrides it).
    #[serde(default)]
    pub normalize_line_endings: bool,
    /// Client networks whose sessions ARE a named account, without AUTH:
    /// for printers and scanners that cannot log in, e.g.
    /// `{ "10.20.0.0/24" = "printers" }`. Such a session has the account's
    /// sender permissions and limits; every other client of the listener
    /// must log in. Anyone who can send from that network sends as that
    /// account: keep the networks small. Default: none.
    #[serde(default)]
    pub trusted_networks: BTreeMap<IpNet, String>,
    /// Trusted clients must start TLS before MAIL (default true; false lets
    /// devices without TLS send in clear text over a `starttls` listener).
    #[serde(default = "default_true")]
    pub trusted_require_tls: bool,
    /// Messages per client IP per `trusted_ip_window` for trusted sessions,
    /// refused at MAIL with `451 4.7.1` (default 120; 0: no per-IP limit).
    #[serde(default = "default_trusted_ip_messages")]
    pub trusted_ip_messages: u32,
    /// The window of `trusted_ip_messages` (default "1h").
    #[serde(default = "default_trusted_ip_window", with = "humantime_serde")]
    pub trusted_ip_window: Duration,
}

fn default_true() -> bool {
    true
}

fn default_trusted_ip_messages() -> u32 {
    120
}

fn default_trusted_ip_window() -> Duration {
    Duration::from_secs(3600)
}

/// A session whose client is on a listener's trusted network: it is
/// `account` without AUTH (see [`ListenerConfig::trusted_networks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedAccess {
    /// The network that matched.
    pub network: IpNet,
    /// The account the session is.
    pub account: String,
    /// TLS first, then MAIL.
    pub require_tls: bool,
    /// Messages per client IP per `ip_window` (0: no limit).
    pub ip_messages: u32,
    pub ip_window: Duration,
}

impl ListenerConfig {
    /// A listener on `address` in `mode` with every other key at its default.
    pub fn new(address: SocketAddr, mode: ListenerMode) -> Self {
        ListenerConfig {
            address,
            mode,
            proxy_protocol: false,
            normalize_line_endings: false,
            trusted_networks: BTreeMap::new(),
            trusted_require_tls: true,
            trusted_ip_messages: default_trusted_ip_messages(),
            trusted_ip_window: default_trusted_ip_window(),
        }
    }

    /// The trusted access of a client at `ip` on this listener: the most
    /// specific (longest-prefix) trusted network that contains it.
    pub fn trusted_access(&self, ip: IpAddr) -> Option<TrustedAccess> {
        self.trusted_networks
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(net, account)| TrustedAccess {
                network: *net,
                account: account.clone(),
                require_tls: self.trusted_require_tls,
                ip_messages: self.trusted_ip_messages,
                ip_window: self.trusted_ip_window,
            })
    }
}

/// Why the SMTP configuration is unusable. Names the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmtpConfigError {
    #[error("smtp.listener {address}: mode \"plain\" is only allowed on loopback addresses")]
    PlainNotLoopback { address: SocketAddr },
    #[error("smtp.listener {address}: mode \"{mode}\" needs [tls] cert and key")]
    TlsMissing {
        address: SocketAddr,
        mode: &'static str,
    },
    #[error("smtp.{key} must be at least {min}")]
    TooSmall { key: &'static str, min: u64 },
    #[error("smtp.listener {address}: trusted_networks {network}: {reason}")]
    Trusted {
        address: SocketAddr,
        network: IpNet,
        reason: String,
    },
    #[error("smtp.message_memory_budget ({budget}) must be at least smtp.max_message_size ({max}): a message of the largest size could never be received")]
    BudgetBelowMessageSize { budget: usize, max: usize },
}

impl SmtpConfigError {
    /// The configuration key at fault, e.g. `smtp.session_lifetime`.
    pub fn key(&self) -> String {
        match self {
            SmtpConfigError::PlainNotLoopback { .. }
            | SmtpConfigError::TlsMissing { .. }
            | SmtpConfigError::Trusted { .. } => "smtp.listener".into(),
            SmtpConfigError::TooSmall { key, .. } => {
                format!("smtp.{}", key.split(' ').next().unwrap_or(key))
            }
            SmtpConfigError::BudgetBelowMessageSize { .. } => "smtp.message_memory_budget".into(),
        }
    }
}

/// `[smtp]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Listeners (`[[smtp.listener]]`). Default: `0.0.0.0:587` starttls and
    /// `0.0.0.0:465` implicit-tls.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Largest message accepted, in octets (default 25 MiB); advertised as SIZE.
    pub max_message_size: usize,
    /// Recipients per message (default 100, RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Error replies per session before `421` and close (default 10).
    pub max_errors: usize,
    /// Deadline for one whole command line, counted from the previous
    /// reply (default 5m, RFC 5321 §4.5.3.2.7, Postfix's `smtpd_timeout`):
    /// a client trickling a line byte by byte is cut at it too.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Waiting for more message data, per read (default 3m, RFC 5321
    /// §4.5.3.2.5).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Deadline for the whole content of one message: from `354` to the
    /// final dot, or from the first BDAT to the last chunk (default 10m).
    #[serde(with = "humantime_serde")]
    pub data_phase_timeout: Duration,
    /// Total lifetime of a session, TLS handshake included (default 1h).
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Message bytes all sessions of this node may hold in memory while
    /// receiving (default 512 MiB; at least `max_message_size`). When
    /// spent, MAIL with a SIZE that does not fit, DATA and BDAT get
    /// `452 4.3.1` and the session goes on.
    pub message_memory_budget: usize,
    /// TLS handshake and PROXY header (default 30s).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A failed AUTH is answered no sooner than this after its password
    /// check began (default 1s), so the reply's timing does not tell how
    /// many credentials were tried (unknown user: one dummy check; a user
    /// with three credentials: three). Costs no CPU.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// Concurrent connections, all listeners (default 10000).
    pub max_connections: usize,
    /// Concurrent connections per client IP (default 50).
    pub max_connections_per_ip: usize,
    /// Peers allowed to send a PROXY header, as CIDR networks (default none).
    #[serde(deserialize_with = "networks")]
    pub proxy_trusted: Vec<IpNet>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listeners: vec![
                ListenerConfig::new(
                    "0.0.0.0:587".parse().expect("literal"),
                    ListenerMode::Starttls,
                ),
                ListenerConfig::new(
                    "0.0.0.0:465".parse().expect("literal"),
                    ListenerMode::ImplicitTls,
                ),
            ],
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            data_phase_timeout: Duration::from_secs(600),
            session_lifetime: Duration::from_secs(3600),
            message_memory_budget: 512 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            auth_failure_delay: Duration::from_secs(1),
            max_connections: 10_000,
            max_connections_per_ip: 50,
            proxy_trusted: Vec::new(),
        }
    }
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("invalid network {s:?}")))
        })
        .collect()
}

impl SmtpConfig {
    /// Checks the rules serde cannot: `plain` only on loopback, TLS
    /// present for TLS listeners, sane minimums.
    pub fn validate(&self, tls_configured: bool) -> Result<(), SmtpConfigError> {
        for l in &self.listeners {
            match l.mode {
                ListenerMode::Plain if !l.address.ip().is_loopback() => {
                    return Err(SmtpConfigError::PlainNotLoopback { address: l.address })
                }
                ListenerMode::Starttls if !tls_configured => {
                    return Err(SmtpConfigError::TlsMissing {
                        address: l.address,
                        mode: "starttls",
                    })
                }
                ListenerMode::ImplicitTls if !tls_configured => {
                    return Err(SmtpConfigError::TlsMissing {
                        address: l.address,
                        mode: "implicit-tls",
                    })
                }
                _ => {}
            }
            for (network, account) in &l.trusted_networks {
                let problem = if crate::store::normalize_username(account).is_err() {
                    Some(format!("{account:?} is not a valid username"))
                } else if network.prefix_len() == 0 {
                    Some("a trusted network cannot be every address".to_string())
                } else if l.trusted_ip_window.is_zero() {
                    Some("trusted_ip_window must be more than 0".to_string())
                } else {
                    None
                };
                if let Some(reason) = problem {
                    return Err(SmtpConfigError::Trusted {
                        address: l.address,
                        network: *network,
                        reason,
                    });
                }
            }
        }
        let mins: [(&'static str, u64, u64); 7] = [
            ("max_message_size", self.max_message_size as u64, 1024),
            ("max_recipients", self.max_recipients as u64, 1),
            ("max_connections", self.max_connections as u64, 1),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip as u64,
                1,
            ),
            (
                "command_timeout (ms)",
                self.command_timeout.as_millis() as u64,
                1,
            ),
            (
                "data_phase_timeout (ms)",
                self.data_phase_timeout.as_millis() as u64,
                1,
            ),
            (
                "session_lifetime (ms)",
                self.session_lifetime.as_millis() as u64,
                1,
            ),
        ];
        for (key, value, min) in mins {
            if value < min {
                return Err(SmtpConfigError::TooSmall { key, min });
            }
        }
        if self.message_memory_budget < self.max_message_size {
            return Err(SmtpConfigError::BudgetBelowMessageSize {
                budget: self.message_memory_budget,
                max: self.max_message_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_and_defaults() {
        let c: SmtpConfig = toml::from_str(
            r#"
            max_recipients = 10
            command_timeout = "30s"
            proxy_trusted = ["10.0.0.0/8", "192.0.2.7"]
            [[listener]]
            address = "127.0.0.1:2525"
            mode = "plain"
            [[listener]]
            address = "[::]:465"
            mode = "implicit-tls"
            proxy_protocol = true
            "#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[1].mode, ListenerMode::ImplicitTls);
        assert_eq!(c.command_timeout, Duration::from_secs(30));
        assert_eq!(c.max_message_size, 25 * 1024 * 1024);
        assert!(c.proxy_trusted[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(c.validate(true).is_ok());
        assert!(matches!(
            c.validate(false),
            Err(SmtpConfigError::TlsMissing { .. })
        ));
    }

    #[test]
    fn rejects_plain_off_loopback_and_unknown_keys() {
        let c: SmtpConfig =
            toml::from_str("[[listener]]\naddress = \"0.0.0.0:25\"\nmode = \"plain\"\n").unwrap();
        let e = c.validate(true).unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        assert!(toml::from_str::<SmtpConfig>("nonsense = 1").is_err());
        assert!(toml::from_str::<SmtpConfig>("proxy_trusted = [\"nope\"]").is_err());
    }

    #[test]
    fn trusted_networks_match_the_longest_prefix_and_are_validated() {
        let c: SmtpConfig = toml::from_str(
            r#"
            [[listener]]
            address = "0.0.0.0:587"
            mode = "starttls"
            trusted_networks = { "10.20.0.0/16" = "office", "10.20.5.0/24" = "printers" }
            trusted_require_tls = false
            trusted_ip_messages = 30
            trusted_ip_window = "10m"
            "#,
        )
        .unwrap();
        let l = &c.listeners[0];
        let printer = l.trusted_access("10.20.5.9".parse().unwrap()).unwrap();
        assert_eq!(printer.account, "printers");
        assert!(!printer.require_tls);
        assert_eq!(
            (printer.ip_messages, printer.ip_window),
            (30, Duration::from_secs(600))
        );
        assert_eq!(
            l.trusted_access("10.20.9.9".parse().unwrap())
                .unwrap()
                .account,
            "office"
        );
        assert_eq!(l.trusted_access("10.21.0.1".parse().unwrap()), None);
        assert!(c.validate(true).is_ok());
        // Defaults: none trusted; TLS required; 120 per hour.
        let d = SmtpConfig::default();
        assert!(d.listeners[0].trusted_networks.is_empty());
        assert!(d.listeners[0].trusted_require_tls);

        for (net, account, want) in [
            ("0.0.0.0/0", "printers", "every address"),
            ("10.0.0.0/8", "", "not a valid username"),
        ] {
            let text = format!(
                "[[listener]]\naddress = \"0.0.0.0:587\"\nmode = \"starttls\"\ntrusted_networks = {{ \"{net}\" = \"{account}\" }}\n"
            );
            let c: SmtpConfig = toml::from_str(&text).unwrap();
            let e = c.validate(true).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("trusted_networks"), "{e}");
        }
        assert!(toml::from_str::<SmtpConfig>(
            "[[listener]]\naddress = \"0.0.0.0:587\"\nmode = \"starttls\"\ntrusted_networks = { \"nope\" = \"x\" }\n"
        )
        .is_err());
    }

    #[test]
    fn deadlines_and_memory_budget_defaults_and_checks() {
        let c = SmtpConfig::default();
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert_eq!(c.data_phase_timeout, Duration::from_secs(600));
        assert_eq!(c.session_lifetime, Duration::from_secs(3600));
        assert_eq!(c.message_memory_budget, 512 * 1024 * 1024);
        let c: SmtpConfig = toml::from_str(
            "data_phase_timeout = \"30s\"\nsession_lifetime = \"2h\"\nmessage_memory_budget = 1048576",
        )
        .unwrap();
        assert_eq!(c.data_phase_timeout, Duration::from_secs(30));
        assert_eq!(c.session_lifetime, Duration::from_secs(7200));
        let e = c.validate(true).unwrap_err().to_string();
        assert!(e.contains("smtp.message_memory_budget (1048576)"), "{e}");
        let c: SmtpConfig = toml::from_str("session_lifetime = \"0s\"").unwrap();
        let e = c.validate(true).unwrap_err().to_string();
        assert!(e.contains("smtp.session_lifetime"), "{e}");
    }
}
