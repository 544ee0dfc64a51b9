//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954). PURE.
//!
//! [`start`] takes the mechanism and optional initial response of the AUTH
//! command; [`Exchange::respond`] takes each client response line. Either
//! gives a challenge to send (334) or the decoded credentials.

use base64::Engine as _;

use crate::smtp::command::Mechanism;

/// Longest username accepted (matches the store's limit).
pub const MAX_USERNAME: usize = 255;
/// Longest password accepted.
pub const MAX_PASSWORD: usize = 1024;

/// Base64 of "Username:" and "Password:", the LOGIN challenges.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// Why an AUTH exchange failed before any password check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client answered `*` (RFC 4954 §4).
    #[error("authentication cancelled")]
    Cancelled,
    #[error("invalid base64")]
    Base64,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Decoded credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// An exchange waiting for the client's next response line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    Plain,
    LoginUsername,
    LoginPassword { username: String },
}

/// The next step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `334 <challenge>` and wait for a response line.
    Challenge(Exchange, &'static str),
    /// The exchange is complete.
    Done(Credentials),
}

/// Starts PLAIN or LOGIN with the AUTH command's optional initial response
/// (`=` means an empty one, RFC 4954 §4). `Mechanism::Other` is the
/// caller's to refuse; here it is malformed.
pub fn start(mechanism: Mechanism, initial: Option<&str>) -> Result<Step, SaslError> {
    match (mechanism, initial) {
        (Mechanism::Plain, None) => Ok(Step::Challenge(Exchange::Plain, "")),
        (Mechanism::Plain, Some(ir)) => Exchange::Plain.respond(ir),
        (Mechanism::Login, None) => Ok(Step::Challenge(Exchange::LoginUsername, LOGIN_USERNAME)),
        (Mechanism::Login, Some(ir)) => Exchange::LoginUsername.respond(ir),
        (Mechanism::Other, _) => Err(SaslError::Malformed("unsupported mechanism")),
    }
}

impl Exchange {
    /// Takes one response line (without CRLF).
    pub fn respond(self, line: &str) -> Result<Step, SaslError> {
        let line = line.trim_end_matches([' ', '\t']);
        if line == "*" {
            return Err(SaslError::Cancelled);
        }
        let bytes = decode(line)?;
        match self {
            Exchange::Plain => plain(&bytes).map(Step::Done),
            Exchange::LoginUsername => {
                let username = text(bytes, MAX_USERNAME, "username")?;
                Ok(Step::Challenge(
                    Exchange::LoginPassword { username },
                    LOGIN_PASSWORD,
                ))
            }
            Exchange::LoginPassword { username } => Ok(Step::Done(Credentials {
                username,
                password: text(bytes, MAX_PASSWORD, "password")?,
            })),
        }
    }
}

fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    if line == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::Base64)
}

fn text(bytes: Vec<u8>, max: usize, what: &'static str) -> Result<String, SaslError> {
    if bytes.is_empty() || bytes.len() > max || bytes.contains(&0) {
        return Err(SaslError::Malformed(what));
    }
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed(what))
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. An authorization
/// identity other than the authentication identity is refused: users
/// cannot act for each other.
fn plain(bytes: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN needs authzid NUL authcid NUL password",
        ));
    };
    let username = text(authc.to_vec(), MAX_USERNAME, "username")?;
    let password = text(pass.to_vec(), MAX_PASSWORD, "password")?;
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
        return Err(SaslError::Malformed("authorization identity differs"));
    }
    Ok(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Step {
        Step::Done(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let ir = b64(b"\0bob\0s3cret");
        assert_eq!(
            start(Mechanism::Plain, Some(&ir)),
            Ok(creds("bob", "s3cret"))
        );
        let Ok(Step::Challenge(ex, "")) = start(Mechanism::Plain, None) else {
            panic!()
        };
        assert_eq!(ex.respond(&b64(b"bob\0bob\0pw")), Ok(creds("bob", "pw")));
    }

    #[test]
    fn plain_refuses_malformed_and_foreign_authzid() {
        assert!(matches!(
            Exchange::Plain.respond(&b64(b"bob\0pw")),
            Err(SaslError::Malformed(_))
        ));
        assert!(Exchange::Plain.respond(&b64(b"alice\0bob\0pw")).is_err());
        assert!(Exchange::Plain.respond(&b64(b"\0bob\0")).is_err());
        assert!(Exchange::Plain.respond(&b64(b"\0bob\0pw\0x")).is_err());
        assert!(Exchange::Plain.respond(&b64(b"\0b\xffob\0pw")).is_err());
        assert_eq!(Exchange::Plain.respond("=").ok(), None);
    }

    #[test]
    fn login_two_steps_and_initial_username() {
        let Ok(Step::Challenge(ex, c)) = start(Mechanism::Login, None) else {
            panic!()
        };
        assert_eq!(c, "VXNlcm5hbWU6");
        let Ok(Step::Challenge(ex, c)) = ex.respond(&b64(b"bob")) else {
            panic!()
        };
        assert_eq!(c, "UGFzc3dvcmQ6");
        assert_eq!(ex.respond(&b64(b"pw")), Ok(creds("bob", "pw")));
        let Ok(Step::Challenge(ex, _)) = start(Mechanism::Login, Some(&b64(b"bob"))) else {
            panic!()
        };
        assert_eq!(
            ex,
            Exchange::LoginPassword {
                username: "bob".into()
            }
        );
    }

    #[test]
    fn cancel_and_invalid_base64() {
        assert_eq!(Exchange::Plain.respond("*"), Err(SaslError::Cancelled));
        assert_eq!(
            Exchange::LoginUsername.respond("*"),
            Err(SaslError::Cancelled)
        );
        assert_eq!(
            start(Mechanism::Plain, Some("*")),
            Err(SaslError::Cancelled)
        );
        assert_eq!(
            Exchange::Plain.respond("!!notbase64"),
            Err(SaslError::Base64)
        );
        assert_eq!(
            Exchange::LoginUsername.respond("YWJj="),
            Err(SaslError::Base64)
        );
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "bob".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
