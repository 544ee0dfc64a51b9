//! The client side of SMTP AUTH (RFC 4954) towards upstreams: which user
//! an upstream authenticates as for a sender (`"{sender}"`), the OAuth
//! token for XOAUTH2 with its one refresh after a 535, and the mechanisms
//! on the wire: PLAIN (RFC 4616), LOGIN, and XOAUTH2 (Google's and
//! Microsoft's bearer token mechanism). Credentials and tokens go only onto
//! the wire, never into a returned error (errors carry the upstream's reply).

use base64::Engine;

use super::config::AuthMechanism;
use super::oauth::{TokenCache, TokenError, SENDER_PLACEHOLDER};
use super::probe::Steps;
use super::upstream::{Connection, Reply, SendError, Upstream};

impl Upstream {
    /// The SASL user for mail from `sender`: `username`, or the sender's
    /// mailbox with `username = "{sender}"` (`oauth.null_sender_mailbox`
    /// for the null sender). `None` without AUTH.
    pub fn mailbox(&self, sender: &str) -> Result<Option<String>, SendError> {
        match self.cfg.username.as_deref() {
            None => Ok(None),
            Some(SENDER_PLACEHOLDER) if sender.is_empty() => self
                .cfg
                .oauth
                .as_ref()
                .and_then(|o| o.null_sender_mailbox.clone())
                .map(Some)
                .ok_or_else(|| {
                    SendError::OAuth(TokenError::Credential(
                        "null sender and username = \"{sender}\": set oauth.null_sender_mailbox"
                            .into(),
                    ))
                }),
            Some(SENDER_PLACEHOLDER) => Ok(Some(sender.to_string())),
            Some(u) => Ok(Some(u.to_string())),
        }
    }

    /// Which pooled sessions may carry mail from `sender`: per mailbox with
    /// `username = "{sender}"`, else one pool for all.
    pub fn pool_key(&self, sender: &str) -> String {
        if self.cfg.username.as_deref() == Some(SENDER_PLACEHOLDER) {
            sender.to_ascii_lowercase()
        } else {
            String::new()
        }
    }

    /// Whether `e` concerns only the mailbox of this one sender (its AUTH
    /// was refused, its token refused, no mailbox for the null sender), not
    /// the upstream: with `username = "{sender}"` such failures must not
    /// open the circuit for every other sender.
    pub fn mailbox_specific(&self, e: &SendError) -> bool {
        if self.cfg.username.as_deref() != Some(SENDER_PLACEHOLDER) {
            return false;
        }
        match e {
            SendError::Refused { stage, .. } => *stage == "AUTH",
            SendError::OAuth(t) => !matches!(t, TokenError::Unavailable(_)),
            _ => false,
        }
    }

    /// AUTH XOAUTH2 as `user` with a cached or new token. A 535 to a cached
    /// token (revoked, expired early) drops it and retries once with a new one.
    pub(super) async fn xoauth2(
        &self,
        conn: &mut Connection,
        user: &str,
        steps: &mut (dyn Steps + Send),
    ) -> Result<(), SendError> {
        let cache = self.oauth.as_ref().ok_or_else(|| {
            SendError::OAuth(TokenError::Credential(
                "no [upstream.oauth] token source".into(),
            ))
        })?;
        let oauth_err = SendError::OAuth;
        steps.begin("token");
        let lease = cache.token(user).await.map_err(oauth_err)?;
        steps.done(&lease_summary(&lease, cache));
        steps.begin("AUTH");
        match conn.auth_xoauth2(user, &lease.secret).await {
            Ok(reply) => steps.done(&reply.text),
            Err(SendError::Refused { reply, .. }) if reply.code == 535 && !lease.fresh => {
                steps.done(&format!("{reply} (cached token refused: refreshing once)"));
                cache.invalidate(user, &lease.secret).await;
                steps.begin("token");
                let lease = cache.token(user).await.map_err(oauth_err)?;
                steps.done(&lease_summary(&lease, cache));
                steps.begin("AUTH");
                let reply = conn.auth_xoauth2(user, &lease.secret).await?;
                steps.done(&reply.text);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

fn lease_summary(lease: &super::oauth::cache::Lease, cache: &TokenCache) -> String {
    format!(
        "{} token from {}, expires in {}s",
        if lease.fresh { "new" } else { "cached" },
        cache.source().token_url(),
        lease.expires_in.as_secs()
    )
}

impl Connection {
    /// AUTH PLAIN or LOGIN as `user`; the 235 reply.
    pub(super) async fn auth(
        &mut self,
        mech: AuthMechanism,
        user: &str,
        pass: &str,
    ) -> Result<Reply, SendError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let use_plain = match mech {
            AuthMechanism::Plain => true,
            AuthMechanism::Login => false,
            AuthMechanism::Auto | AuthMechanism::Xoauth2 => {
                self.caps.auth_plain || !self.caps.auth_login
            }
        };
        if !self.caps.auth_plain && !self.caps.auth_login {
            return Err(SendError::Protocol("upstream does not offer AUTH".into()));
        }
        let reply = if use_plain {
            // RFC 4616 §2: authzid NUL authcid NUL passwd.
            let token = b64.encode(format!("\0{user}\0{pass}"));
            self.command(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH")
                .await?
        } else {
            let r = self.command(b"AUTH LOGIN\r\n", "AUTH").await?;
            if r.code != 334 {
                return Err(refused(r));
            }
            let r = self
                .command(format!("{}\r\n", b64.encode(user)).as_bytes(), "AUTH")
                .await?;
            if r.code != 334 {
                return Err(refused(r));
            }
            self.command(format!("{}\r\n", b64.encode(pass)).as_bytes(), "AUTH")
                .await?
        };
        if reply.code != 235 {
            return Err(refused(reply));
        }
        Ok(reply)
    }

    /// AUTH XOAUTH2 as `user` with bearer `token`; the 235 reply. A refusal
    /// is `Refused` with the final reply (a 334 error challenge is answered
    /// with an empty line first, as the mechanism requires).
    pub(super) async fn auth_xoauth2(
        &mut self,
        user: &str,
        token: &str,
    ) -> Result<Reply, SendError> {
        if !self.caps.auth_xoauth2 {
            return Err(SendError::Protocol(
                "upstream does not offer AUTH XOAUTH2".into(),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let initial = b64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
        // RFC 4954 §4: the initial response may make the line long; servers
        // accept up to 12288 octets.
        let mut reply = self
            .command(format!("AUTH XOAUTH2 {initial}\r\n").as_bytes(), "AUTH")
            .await?;
        if reply.code == 334 {
            // The challenge is a base64 JSON error; an empty response ends
            // the exchange and the server then sends its final 5xx.
            reply = self.command(b"\r\n", "AUTH").await?;
        }
        if reply.code != 235 {
            return Err(refused(reply));
        }
        Ok(reply)
    }
}

fn refused(reply: Reply) -> SendError {
    SendError::Refused {
        stage: "AUTH",
        reply,
    }
}
