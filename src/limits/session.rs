//! The limiter as the SMTP session sees it: [`SessionLimits`] over
//! [`Limiter`], with each refusal counted in metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::metrics::Metrics;
use crate::smtp::ports::{AccountLimits, Identity, LimitRefusal, SessionLimits};
use crate::smtp::session::metrics::limit_labels;
use crate::store::LimitOverrides;

use super::{credential_only, Account, Limiter};

/// [`SessionLimits`] backed by a [`Limiter`].
pub struct LimiterPorts {
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
}

impl LimiterPorts {
    /// Wraps `limiter`; refusals count in `metrics`.
    pub fn new(limiter: Arc<Limiter>, metrics: Arc<Metrics>) -> Self {
        LimiterPorts { limiter, metrics }
    }

    fn refused(&self, r: LimitRefusal) -> LimitRefusal {
        let (scope, kind) = limit_labels(&r);
        self.metrics.rate_limited(scope, kind);
        r
    }
}

#[async_trait]
impl SessionLimits for LimiterPorts {
    async fn connection(&self, ip: IpAddr) -> Result<(), LimitRefusal> {
        self.limiter
            .connection(ip)
            .await
            .map_err(|r| self.refused(r))
    }

    async fn auth_allowed(&self, ip: IpAddr, username: &str) -> Result<Duration, LimitRefusal> {
        self.limiter
            .auth_allowed(ip, username)
            .await
            .map_err(|r| self.refused(r))
    }

    async fn auth_result(&self, ip: IpAddr, username: &str, success: bool) {
        self.limiter.auth_result(ip, username, success).await
    }

    async fn auth_abandoned(&self, ip: IpAddr, username: &str) {
        self.limiter.auth_abandoned(ip, username).await
    }

    async fn session_start(
        &self,
        identity: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal> {
        self.limiter
            .session_start(identity.user_id, &identity.user_limits.into())
            .map(|guard| Box::new(guard) as Box<dyn std::any::Any + Send + Sync>)
            .map_err(|r| self.refused(r))
    }

    async fn trusted_message(
        &self,
        ip: IpAddr,
        messages: u32,
        window: Duration,
    ) -> Result<(), LimitRefusal> {
        self.limiter
            .trusted_message(ip, messages, window)
            .await
            .map_err(|r| self.refused(r))
    }

    async fn mail_allowed(&self, identity: &Identity) -> Result<(), LimitRefusal> {
        let (user, credential) = overrides(identity);
        self.limiter
            .mail_check(&account(identity, &user, &credential))
            .await
            .map_err(|r| self.refused(r))
    }

    async fn rcpt_allowed(&self, identity: &Identity, recipients: u32) -> Result<(), LimitRefusal> {
        let (user, credential) = overrides(identity);
        self.limiter
            .rcpt_check(&account(identity, &user, &credential), recipients)
            .await
            .map_err(|r| self.refused(r))
    }

    async fn message_committed(&self, identity: &Identity, recipients: u32) {
        let (user, credential) = overrides(identity);
        self.limiter
            .message_charge(&account(identity, &user, &credential), recipients)
            .await
    }
}

/// The session's limits in the limiter's terms: the user's overrides and
/// the credential's own (see [`credential_only`]).
fn overrides(identity: &Identity) -> (LimitOverrides, LimitOverrides) {
    let user = identity.user_limits.into();
    let credential = credential_only(&user, &identity.limits.into());
    (user, credential)
}

fn account<'a>(
    identity: &'a Identity,
    user_limits: &'a LimitOverrides,
    credential_limits: &'a LimitOverrides,
) -> Account<'a> {
    Account {
        user_id: identity.user_id,
        username: &identity.username,
        user_limits,
        credential_id: identity.credential_id,
        credential_label: &identity.credential_label,
        credential_limits,
    }
}

/// The session's overrides for the limiter (see [`Identity`]).
impl From<AccountLimits> for LimitOverrides {
    fn from(l: AccountLimits) -> Self {
        LimitOverrides {
            messages_per_minute: l.messages_per_minute,
            messages_per_hour: l.messages_per_hour,
            messages_per_day: l.messages_per_day,
            recipients_per_day: l.recipients_per_day,
            concurrent_sessions: l.concurrent_sessions,
        }
    }
}
