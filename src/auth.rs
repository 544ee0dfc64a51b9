//! AUTH against the store: who a session is, and the real [`Authenticator`].
//!
//! Passwords are verified off the async threads (`spawn_blocking`) behind a
//! semaphore sized to the CPUs, so a login storm queues for the hashing
//! CPUs instead of starving every other session. Unknown and disabled users
//! are verified against a dummy hash, so timing does not reveal whether a
//! user exists.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, StoreOperation};
use crate::password::{self, HashParams, Verification};
use crate::smtp::ports::{AccountLimits, AuthOutcome, Authenticator};
pub use crate::smtp::ports::{CredentialTag, Identity};
use crate::store::{self, AccountStore, LimitOverrides, LoginCredential};
use crate::time::now_ms;

/// The [`CredentialTag`] of `password_hash`.
pub fn credential_tag(password_hash: &str) -> CredentialTag {
    use sha2::{Digest, Sha256};
    Sha256::digest(password_hash.as_bytes()).into()
}

/// The identity of `credential` of `record`, which matched with the stored
/// hash whose tag is `tag`.
pub fn identity_of(
    record: &store::LoginRecord,
    credential: &LoginCredential,
    tag: CredentialTag,
) -> Identity {
    Identity {
        user_id: record.user_id,
        username: record.username.clone(),
        credential_id: credential.id,
        credential_label: credential.label.clone(),
        senders: record.senders.clone(),
        limits: merge_limits(&record.limits, &credential.limits).into(),
        user_limits: record.limits.clone().into(),
        normalize_line_endings: record.normalize_line_endings,
        credential_tag: tag,
    }
}

/// `[auth]` configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// argon2id parameters for new hashes and rehash-on-login
    /// (default: OWASP, 19 MiB, 2 iterations, 1 lane).
    pub hash: HashParams,
    /// Password verifications running at once (default: the CPU count).
    pub max_concurrent_verifications: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hash: HashParams::default(),
            max_concurrent_verifications: crate::cpus(),
        }
    }
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth: {0}")]
    Password(#[from] password::PasswordError),
    #[error("auth: max_concurrent_verifications must be at least 1")]
    Concurrency,
}

/// The store's overrides as the session carries them (see [`Identity`]).
impl From<LimitOverrides> for AccountLimits {
    fn from(l: LimitOverrides) -> Self {
        AccountLimits {
            messages_per_minute: l.messages_per_minute,
            messages_per_hour: l.messages_per_hour,
            messages_per_day: l.messages_per_day,
            recipients_per_day: l.recipients_per_day,
            concurrent_sessions: l.concurrent_sessions,
        }
    }
}

/// Credential overrides on top of user overrides, field by field.
pub fn merge_limits(user: &LimitOverrides, credential: &LimitOverrides) -> LimitOverrides {
    LimitOverrides {
        messages_per_minute: credential.messages_per_minute.or(user.messages_per_minute),
        messages_per_hour: credential.messages_per_hour.or(user.messages_per_hour),
        messages_per_day: credential.messages_per_day.or(user.messages_per_day),
        recipients_per_day: credential.recipients_per_day.or(user.recipients_per_day),
        concurrent_sessions: credential.concurrent_sessions.or(user.concurrent_sessions),
    }
}

/// The store-backed [`Authenticator`].
pub struct StoreAuthenticator {
    store: Arc<dyn AccountStore>,
    params: HashParams,
    dummy: Arc<str>,
    verifications: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl StoreAuthenticator {
    /// Builds the authenticator; computes the dummy hash once (~20 ms).
    pub fn new(store: Arc<dyn AccountStore>, config: &AuthConfig) -> Result<Self, AuthError> {
        if config.max_concurrent_verifications == 0 {
            return Err(AuthError::Concurrency);
        }
        Ok(StoreAuthenticator {
            store,
            params: config.hash,
            dummy: password::dummy_hash(&config.hash)?.into(),
            verifications: Arc::new(Semaphore::new(config.max_concurrent_verifications)),
            metrics: Metrics::detached(),
        })
    }

    /// Times the store operations of each login (`login_lookup`,
    /// `credential_used`) into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// `login_lookup`, timed.
    async fn login_lookup(&self, name: &str) -> store::StoreResult<Option<store::LoginRecord>> {
        let started = Instant::now();
        let r = self.store.login_lookup(name).await;
        self.timed(StoreOperation::LoginLookup, started, r.is_err());
        r
    }

    fn timed(&self, operation: StoreOperation, started: Instant, failed: bool) {
        self.metrics
            .store_operation(operation, started.elapsed(), failed);
    }

    /// Verifies `password` against each hash (or the dummy hash when there
    /// is none) on a blocking thread; the index of the first match and
    /// whether it needs rehashing.
    async fn verify(&self, password: &str, hashes: Vec<String>) -> Option<(usize, bool)> {
        let Ok(_permit) = self.verifications.clone().acquire_owned().await else {
            return None;
        };
        let password = password.to_string();
        let params = self.params;
        let dummy = self.dummy.clone();
        tokio::task::spawn_blocking(move || {
            if hashes.is_empty() {
                let _ = password::verify(&password, &dummy, &params);
                return None;
            }
            hashes.iter().enumerate().find_map(|(i, h)| {
                match password::verify(&password, h, &params) {
                    Verification::Match { needs_upgrade } => Some((i, needs_upgrade)),
                    Verification::Mismatch => None,
                }
            })
        })
        .await
        .ok()
        .flatten()
    }
}

#[async_trait]
impl Authenticator for StoreAuthenticator {
    async fn authenticate(&self, username: &str, password: &str, _ip: IpAddr) -> AuthOutcome {
        let record = match store::normalize_username(username) {
            Ok(name) => match self.login_lookup(&name).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "login lookup failed");
                    return AuthOutcome::Unavailable;
                }
            },
            Err(_) => None,
        };
        let credentials: Vec<LoginCredential> = record
            .as_ref()
            .map(|r| r.credentials.clone())
            .unwrap_or_default();
        let hashes = credentials
            .iter()
            .map(|c| c.password_hash.clone())
            .collect();
        let Some((index, needs_upgrade)) = self.verify(password, hashes).await else {
            return AuthOutcome::Failed;
        };
        let (Some(record), Some(credential)) = (record, credentials.get(index)) else {
            return AuthOutcome::Failed;
        };
        let upgraded = if needs_upgrade {
            let password = password.to_string();
            let params = self.params;
            let _permit = self.verifications.clone().acquire_owned().await;
            tokio::task::spawn_blocking(move || password::hash(&password, &params).ok())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let started = Instant::now();
        let used = self
            .store
            .credential_used(credential.id, now_ms(), upgraded.as_deref())
            .await;
        self.timed(StoreOperation::CredentialUsed, started, used.is_err());
        // The hash stored from now on: the upgraded one once it is written.
        let stored = match (&used, &upgraded) {
            (Ok(()), Some(new_hash)) => new_hash.as_str(),
            _ => credential.password_hash.as_str(),
        };
        if let Err(e) = &used {
            // The login itself is valid; only the bookkeeping failed.
            tracing::warn!(error = %e, "recording credential use failed");
        }
        AuthOutcome::Ok(identity_of(&record, credential, credential_tag(stored)))
    }

    /// One store lookup, no password hashing: the user must still be
    /// enabled and the credential still hold the hash the login matched.
    async fn recheck(&self, identity: &Identity) -> AuthOutcome {
        let record = match self.login_lookup(&identity.username).await {
            Ok(Some(r)) => r,
            Ok(None) => return AuthOutcome::Failed,
            Err(e) => {
                tracing::warn!(error = %e, "login lookup failed");
                return AuthOutcome::Unavailable;
            }
        };
        let current = record.credentials.iter().find(|c| {
            c.id == identity.credential_id
                && credential_tag(&c.password_hash) == identity.credential_tag
        });
        match current {
            Some(c) if record.user_id == identity.user_id => {
                AuthOutcome::Ok(identity_of(&record, c, identity.credential_tag))
            }
            _ => AuthOutcome::Failed,
        }
    }

    async fn account(&self, username: &str) -> AuthOutcome {
        let Ok(name) = store::normalize_username(username) else {
            return AuthOutcome::Failed;
        };
        match self.login_lookup(&name).await {
            Ok(Some(record)) => AuthOutcome::Ok(network_identity(&record)),
            Ok(None) => AuthOutcome::Failed,
            Err(e) => {
                tracing::warn!(error = %e, "login lookup failed");
                AuthOutcome::Unavailable
            }
        }
    }
}

/// The identity of `record` for a session on a trusted network: the user's
/// senders and limits, no credential (none was used).
fn network_identity(record: &store::LoginRecord) -> Identity {
    Identity {
        user_id: record.user_id,
        username: record.username.clone(),
        credential_id: 0,
        credential_label: "network".to_string(),
        senders: record.senders.clone(),
        limits: record.limits.clone().into(),
        user_limits: record.limits.clone().into(),
        normalize_line_endings: record.normalize_line_endings,
        credential_tag: [0; 32],
    }
}

/// An [`Authenticator`] that remembers successful logins in an
/// [`crate::auth_cache::AuthCache`] (keyed by an HMAC of user and password),
/// so reconnecting clients skip argon2; concurrent identical logins share one
/// verification. Failures are never cached.
///
/// A login answered from the cache is re-checked against the store
/// ([`Authenticator::recheck`]: one lookup, no hashing), so a password
/// change, credential revocation, disable or delete takes effect at the
/// very next login on every node, whether or not a change notification
/// has arrived yet, and the identity (sender permissions, limit overrides)
/// is always the current one. Notifications only keep the cache tidy.
pub struct CachedAuthenticator {
    inner: Arc<dyn Authenticator>,
    cache: Arc<crate::auth_cache::AuthCache<Identity, ()>>,
}

impl CachedAuthenticator {
    /// Caches the successes of `inner` in `cache`.
    pub fn new(
        inner: Arc<dyn Authenticator>,
        cache: Arc<crate::auth_cache::AuthCache<Identity, ()>>,
    ) -> Self {
        CachedAuthenticator { inner, cache }
    }
}

#[async_trait]
impl Authenticator for CachedAuthenticator {
    async fn authenticate(&self, username: &str, password: &str, ip: IpAddr) -> AuthOutcome {
        let key = store::normalize_username(username).unwrap_or_else(|_| username.to_string());
        // Two passes at most: a cached login whose recheck fails is dropped
        // and the password verified afresh (it may still be right, e.g.
        // after its hash was upgraded elsewhere).
        for _ in 0..2 {
            let verified_here = AtomicBool::new(false);
            let inner = self.inner.clone();
            let verified = self
                .cache
                .get_or_verify(&key, password.as_bytes(), || async {
                    verified_here.store(true, Ordering::Relaxed);
                    match inner.authenticate(username, password, ip).await {
                        AuthOutcome::Ok(identity) => Ok(Some(identity)),
                        AuthOutcome::Failed => Ok(None),
                        AuthOutcome::Unavailable => Err(()),
                    }
                })
                .await;
            let identity = match verified {
                Ok(Some(identity)) => identity,
                Ok(None) => return AuthOutcome::Failed,
                Err(()) => return AuthOutcome::Unavailable,
            };
            if verified_here.load(Ordering::Relaxed) {
                return AuthOutcome::Ok(identity);
            }
            match self.inner.recheck(&identity).await {
                AuthOutcome::Failed => self.cache.invalidate_user(&key),
                current => return current,
            }
        }
        AuthOutcome::Failed
    }

    /// Not cached: one lookup per trusted session, always current.
    async fn account(&self, username: &str) -> AuthOutcome {
        self.inner.account(username).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_limits_override_user_limits() {
        let user = LimitOverrides {
            messages_per_minute: Some(10),
            messages_per_day: Some(100),
            ..Default::default()
        };
        let cred = LimitOverrides {
            messages_per_minute: Some(1),
            ..Default::default()
        };
        let m = merge_limits(&user, &cred);
        assert_eq!(m.messages_per_minute, Some(1));
        assert_eq!(m.messages_per_day, Some(100));
        assert_eq!(m.messages_per_hour, None);
    }

    #[test]
    fn config_defaults_to_cpu_count() {
        let c: AuthConfig = toml::from_str("").unwrap();
        assert!(c.max_concurrent_verifications >= 1);
        assert_eq!(c.hash, HashParams::default());
        assert!(toml::from_str::<AuthConfig>("bogus = 1").is_err());
    }
}
