//! AUTH in a session: RFC 4954 SASL exchanges (PLAIN, LOGIN), over TLS
//! only, with the brute-force checks of the limits before each verification.

use bytes::Bytes;

use super::{Input, Session};
use crate::metrics::AuthResult;
use crate::smtp::command::{self, Mechanism};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials, Exchange, Step};
use crate::submission::{self, Login};

impl Session {
    /// AUTH: RFC 4954 §4.
    pub async fn on_auth(&mut self, mechanism: Mechanism, initial: Option<String>) -> Reply {
        if !self.auth_allowed_here() {
            return Reply::tls_required();
        }
        if self.helo.is_none() {
            return Reply::bad_sequence("send EHLO first");
        }
        if self.identity.is_some() {
            return Reply::bad_sequence("already authenticated");
        }
        if self.txn.is_some() {
            return Reply::bad_sequence("AUTH not allowed during a mail transaction");
        }
        let name = match mechanism {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Other => return Reply::unknown_mechanism(),
        };
        match sasl::start(mechanism, initial.as_deref()) {
            Ok(step) => self.sasl_step(step, name).await,
            Err(e) => {
                self.settings.metrics.auth(name, AuthResult::Error);
                Reply::from(&e)
            }
        }
    }

    pub(super) async fn on_sasl_line(
        &mut self,
        exchange: Exchange,
        mechanism: &'static str,
        line: Result<Bytes, command::CommandError>,
    ) -> Reply {
        // A cancelled or garbled exchange ends the attempt (RFC 4954 §4).
        let failed = |reply: Reply| {
            self.settings.metrics.auth(mechanism, AuthResult::Error);
            reply
        };
        let text = match line.and_then(|l| command::strip_line(&l).map(<[u8]>::to_vec)) {
            Ok(t) => t,
            Err(e) => return failed(Reply::from(&e)),
        };
        let Ok(text) = String::from_utf8(text) else {
            return failed(Reply::from(&sasl::SaslError::Base64));
        };
        match exchange.respond(&text) {
            Ok(step) => self.sasl_step(step, mechanism).await,
            Err(e) => failed(Reply::from(&e)),
        }
    }

    async fn sasl_step(&mut self, step: Step, mechanism: &'static str) -> Reply {
        match step {
            Step::Challenge(exchange, challenge) => {
                self.input = Input::Sasl(exchange, mechanism);
                Reply::challenge(challenge)
            }
            Step::Done(credentials) => self.verify(credentials, mechanism).await,
        }
    }

    async fn verify(&mut self, c: Credentials, mechanism: &'static str) -> Reply {
        let limits = self.ports.limits.clone();
        let authenticator = self.ports.authenticator.clone();
        let login = submission::login(
            &*limits,
            self.ip,
            &c.username,
            self.settings.auth_failure_delay,
            authenticator.authenticate(&c.username, &c.password, self.ip),
        )
        .await;
        let m = self.settings.metrics.clone();
        match login {
            Login::Limited(refusal) => {
                tracing::info!(session = %self.id, username = %c.username, reason = %refusal.reason, "auth rate-limited");
                // The refusal itself is counted by the SessionLimits implementation.
                m.auth(mechanism, AuthResult::LockedOut);
                Reply::auth_limited(&refusal)
            }
            Login::Ok(identity) => match limits.session_start(&identity).await {
                Ok(slot) => {
                    tracing::info!(session = %self.id, username = %identity.username,
                        credential = %identity.credential_label, mechanism, "auth ok");
                    m.auth(mechanism, AuthResult::Success);
                    self._slot = Some(slot);
                    self.identity = Some(identity);
                    self.mechanism = mechanism;
                    Reply::auth_ok()
                }
                Err(refusal) => {
                    // Right password, but no 235: a temporary refusal.
                    m.auth(mechanism, AuthResult::Error);
                    Reply::session_limited(&refusal)
                }
            },
            Login::Failed => {
                tracing::info!(session = %self.id, username = %c.username, mechanism, "auth failed");
                m.auth(mechanism, AuthResult::Failed);
                Reply::auth_failed()
            }
            Login::Unavailable => {
                m.auth(mechanism, AuthResult::Error);
                Reply::auth_unavailable()
            }
        }
    }
}
