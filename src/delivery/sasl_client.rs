//! The client side of SMTP AUTH (RFC 4954) towards upstreams: PLAIN
//! (RFC 4616), LOGIN, and XOAUTH2 (Google's and Microsoft's bearer token
//! mechanism). Credentials and tokens go only onto the wire, never into a
//! returned error (errors carry the upstream's reply).

use base64::Engine;

use super::config::AuthMechanism;
use super::upstream::{Connection, Reply, SendError};

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
