//! OAuth 2.0 access tokens for AUTH XOAUTH2 towards upstreams
//! (`auth = "xoauth2"` with `[upstream.oauth]`).
//!
//! - `microsoft`: client credentials grant (RFC 6749 §4.4) with a client
//!   secret, or with a certificate: a PS256 client assertion (RFC 7523
//!   §2.2) carrying the certificate's `x5t#S256`.
//! - `google`: a service account's JWT bearer grant (RFC 7523 §2.1),
//!   impersonating the mailbox in `sub` (domain-wide delegation).
//! - `generic`: client credentials with a client secret.
//!
//! [`source::TokenSource`] loads and checks the credential (at
//! `check-config` and start); [`cache::TokenCache`] fetches, caches and
//! refreshes tokens, once however many sessions wait. Tokens, secrets and
//! keys never reach a log line, an error or a metric.

pub mod cache;
pub mod endpoint;
pub mod jwt;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub use cache::TokenCache;
pub use endpoint::{AccessToken, TokenError};
pub use source::TokenSource;

/// Who issues the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft Entra ID (Exchange Online), app-only.
    Microsoft,
    /// Google, a service account with domain-wide delegation.
    Google,
    /// Any other provider: client credentials with a client secret.
    Generic,
}

/// `[upstream.oauth]`: where an `auth = "xoauth2"` upstream gets its tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// `microsoft`, `google` or `generic`. Required.
    pub provider: Provider,
    /// Microsoft: the tenant (domain or directory ID) in the token URL.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Microsoft and generic: the application (client) ID. Required there.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Microsoft and generic: the client secret (a Secret). Never logged.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Microsoft: PEM certificate uploaded to the app registration (instead
    /// of a client secret), with `client_key`.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Microsoft: PEM RSA private key of `client_certificate`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Google: the service account key JSON (a Secret, usually `{ file = ... }`).
    #[serde(default)]
    pub service_account_key: Option<Secret>,
    /// Token endpoint; default per provider (required for generic).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Scope requested; default per provider (required for generic).
    #[serde(default)]
    pub scope: Option<String>,
    /// PEM CA certificates to trust for the token endpoint instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for the token endpoint's answer. Default `30s`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// With `username = "{sender}"`: the mailbox to authenticate as for
    /// mail with the null sender (bounces). Without it such mail waits.
    #[serde(default)]
    pub null_sender_mailbox: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The default token endpoint of Microsoft Entra ID for `tenant`.
pub fn microsoft_token_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
}
/// The default scope for Exchange Online SMTP.
pub const MICROSOFT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Google's token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The Gmail scope covering SMTP.
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// The SASL username that stands for the envelope sender's mailbox.
pub const SENDER_PLACEHOLDER: &str = "{sender}";
