//! Sessions from a listener's trusted network (`trusted_networks`): devices
//! that cannot log in (printers, scanners) are the network's account at
//! MAIL, with its sender permissions and limits, and each message they
//! start is charged to their client IP.

use super::Session;
use crate::metrics::RejectReason;
use crate::smtp::command::MailParams;
use crate::smtp::ports::AuthOutcome;
use crate::smtp::reply::Reply;

/// The `mechanism` of a session that is its network's account.
pub(super) const NETWORK: &str = "network";

impl Session {
    /// MAIL: a session without AUTH on a trusted network first becomes the
    /// network's account; a transaction it starts is then charged to its
    /// client IP (`trusted_ip_messages`), refused with `451 4.7.1`.
    pub(super) async fn on_mail_any(&mut self, m: MailParams) -> Reply {
        if let Some(refusal) = self.become_network_account().await {
            return refusal;
        }
        let reply = self.on_mail(m).await;
        if reply.code != 250 || self.mechanism != NETWORK {
            return reply;
        }
        let Some(trusted) = self.settings.trusted.clone() else {
            return reply;
        };
        let limited = self
            .ports
            .limits
            .trusted_message(self.ip, trusted.ip_messages, trusted.ip_window)
            .await;
        match limited {
            Ok(()) => reply,
            Err(refusal) => {
                tracing::info!(session = %self.id, reason = %refusal.reason, "trusted network message rate-limited");
                self.settings.metrics.rejected(RejectReason::RateLimited);
                self.txn = None;
                Reply::message_limited(&refusal)
            }
        }
    }

    /// Makes a session on a trusted network its account, once, before its
    /// first MAIL (a session that logged in keeps its login). `Some(reply)`
    /// refuses the MAIL; `None` lets `on_mail` decide as usual.
    async fn become_network_account(&mut self) -> Option<Reply> {
        if self.identity.is_some() || self.helo.is_none() || self.txn.is_some() {
            return None;
        }
        let trusted = self.settings.trusted.clone()?;
        if trusted.require_tls && self.tls.is_none() {
            return None;
        }
        match self.ports.authenticator.account(&trusted.account).await {
            AuthOutcome::Ok(identity) => match self.ports.limits.session_start(&identity).await {
                Ok(slot) => {
                    tracing::info!(session = %self.id, username = %identity.username,
                        network = %trusted.network, "trusted network session");
                    self._slot = Some(slot);
                    self.identity = Some(identity);
                    self.mechanism = NETWORK;
                    None
                }
                Err(refusal) => Some(Reply::session_limited(&refusal)),
            },
            AuthOutcome::Failed => {
                // A config naming a missing or disabled account: the device
                // must log in like anyone else (530 from on_mail).
                tracing::warn!(session = %self.id, account = %trusted.account,
                    network = %trusted.network, "trusted network account is unknown or disabled");
                None
            }
            AuthOutcome::Unavailable => Some(Reply::new(
                451,
                "4.3.0",
                "account store unavailable, try again later",
            )),
        }
    }
}
