//! The token endpoint conversation: one HTTP/1.1 POST of a form (RFC 6749
//! §4.4.2 client credentials, RFC 7523 §2.1 JWT bearer) over verified TLS,
//! and the parsing of its answer (RFC 6749 §5.1 success, §5.2 error).
//!
//! hyper's connection-level client is used directly: one connection per
//! request (a token is fetched about once an hour), no redirect is ever
//! followed (a 3xx is an error: the form carries the client's secret), the
//! answer is bounded to [`MAX_BODY`] bytes and the whole exchange to the
//! configured timeout. Neither the form nor the token ever reaches an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest token endpoint answer read.
pub const MAX_BODY: usize = 64 * 1024;

/// Why no token was obtained. Every variant is transient for the mail
/// waiting on it; none contains a secret, a token or the answer's body
/// (only the error fields of RFC 6749 §5.2, bounded and cleaned).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Connect, TLS, timeout or an HTTP 5xx: the endpoint is unavailable.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
    /// An RFC 6749 §5.2 error answer: the endpoint refused this client.
    #[error("token endpoint refused the request: HTTP {status}: {error}")]
    Refused { status: u16, error: String },
    /// An answer that is not a usable token (garbage, no expiry, a redirect).
    #[error("token endpoint answer unusable: {0}")]
    Invalid(String),
    /// The credential could not be used (a signing failure, the null sender).
    #[error("OAuth credential: {0}")]
    Credential(String),
}

impl TokenError {
    /// The `result` label of the token request metric.
    pub fn result(&self) -> &'static str {
        match self {
            TokenError::Refused { .. } => "refused",
            TokenError::Unavailable(_) => "unavailable",
            TokenError::Invalid(_) | TokenError::Credential(_) => "invalid",
        }
    }
}

/// An access token and its lifetime. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The bearer token (send only in AUTH XOAUTH2; never log).
    pub secret: String,
    /// `expires_in` of the answer.
    pub lifetime: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken {{ lifetime: {:?}, .. }}", self.lifetime)
    }
}

/// Where tokens come from: a parsed `https://` (or loopback `http://`) URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as configured (also the `aud` of assertions).
    pub url: String,
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Parses `url`. Plain `http://` is accepted only for a loopback host
    /// (tests): the form carries credentials.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("token_url {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("token_url {url:?} must start with https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("token_url {url:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        if !https && !["127.0.0.1", "::1", "localhost"].contains(&host.as_str()) {
            return Err(format!(
                "token_url {url:?}: plain http is allowed for loopback only; use https://"
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Endpoint {
            url: url.to_string(),
            https,
            host,
            port,
            path,
        })
    }

    /// POSTs `form` and parses the answer, all within `timeout`.
    pub async fn request(
        &self,
        tls: &TlsConnector,
        form: String,
        timeout: Duration,
    ) -> Result<AccessToken, TokenError> {
        let (status, location, body) =
            tokio::time::timeout(timeout, self.post(tls, form))
                .await
                .map_err(|_| TokenError::Unavailable(format!("no answer within {timeout:?}")))??;
        parse_answer(status, location.as_deref(), &body)
    }

    async fn post(
        &self,
        tls: &TlsConnector,
        form: String,
    ) -> Result<(u16, Option<String>, Bytes), TokenError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            TokenError::Unavailable(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unavailable("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let authority = if (self.https && self.port == 443) || (!self.https && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = hyper::Request::post(self.path.as_str())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("postgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| TokenError::Invalid(format!("cannot build the request: {e}")))?;
        if self.https {
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| unavailable("bad TLS name for", &e))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| unavailable("TLS with", &e))?;
            exchange(stream, request).await
        } else {
            exchange(tcp, request).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Option<String>, Bytes), TokenError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| TokenError::Unavailable(format!("HTTP: {e}")))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| TokenError::Unavailable(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(clean);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                TokenError::Invalid(format!(
                    "answer body unreadable or over {MAX_BODY} bytes: {e}"
                ))
            })?
            .to_bytes();
        Ok((status, location, body))
    }
    .await;
    driver.abort();
    result
}

/// PURE: the token in an answer, or why there is none.
pub fn parse_answer(
    status: u16,
    location: Option<&str>,
    body: &[u8],
) -> Result<AccessToken, TokenError> {
    if (300..400).contains(&status) {
        return Err(TokenError::Invalid(format!(
            "HTTP {status} redirect to {} (redirects are not followed: check token_url)",
            location.unwrap_or("nowhere")
        )));
    }
    let json: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(body).ok();
    if status != 200 {
        // RFC 6749 §5.2: error, error_description.
        let described = json.as_ref().and_then(|j| {
            let error = j.get("error")?.as_str()?;
            let desc = j
                .get("error_description")
                .and_then(|d| d.as_str())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            Some(clean(&format!("{error}{desc}")))
        });
        return match (described, status) {
            (_, s) if s >= 500 => Err(TokenError::Unavailable(format!("HTTP {s}"))),
            (Some(error), s) => Err(TokenError::Refused { status: s, error }),
            (None, s) => Err(TokenError::Refused {
                status: s,
                error: "answer is not an OAuth error JSON".into(),
            }),
        };
    }
    let Some(json) = json else {
        return Err(TokenError::Invalid(
            "HTTP 200 but the body is not a JSON object".into(),
        ));
    };
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Invalid("no access_token in the answer".into()))?;
    // RFC 6749 §7.1: XOAUTH2 sends a bearer token.
    match json.get("token_type").and_then(|t| t.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        other => {
            return Err(TokenError::Invalid(format!(
                "token_type is {} (need Bearer)",
                other.map(clean).unwrap_or_else(|| "missing".into())
            )))
        }
    }
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(TokenError::Invalid(
            "access_token has characters a bearer token cannot have".into(),
        ));
    }
    // RFC 6749 §5.1 makes expires_in only RECOMMENDED, but without it
    // postgate cannot refresh in time: treat it as unusable (issue 11).
    let expires_in = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let lifetime = match expires_in {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        Some(_) => return Err(TokenError::Invalid("expires_in is 0".into())),
        None => {
            return Err(TokenError::Invalid(
                "no expires_in (a token without a known expiry is not used)".into(),
            ))
        }
    };
    Ok(AccessToken {
        secret: token.to_string(),
        lifetime,
    })
}

/// Provider text made safe for a log line: printable, at most 300 characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

/// The TLS connector for a token endpoint trusting `roots`.
pub fn connector(roots: rustls::RootCertStore) -> Result<TlsConnector, String> {
    Ok(TlsConnector::from(Arc::new(
        super::super::tls_client::client_config(roots, None)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_answer_gives_the_token() {
        let t = parse_answer(
            200,
            None,
            br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3599}"#,
        )
        .unwrap();
        assert_eq!(t.secret, "abc.def");
        assert_eq!(t.lifetime, Duration::from_secs(3599));
        assert!(
            !format!("{t:?}").contains("abc.def"),
            "Debug hides the token"
        );
        // Some endpoints send expires_in as a string.
        let t = parse_answer(
            200,
            None,
            br#"{"access_token":"x","token_type":"bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn bad_answers_are_clear_errors_without_the_body() {
        let cases: &[(u16, &[u8], &str)] = &[
            (200, b"<html>hello</html>", "not a JSON object"),
            (200, br#"{"access_token":"sekrit","token_type":"Bearer"}"#, "no expires_in"),
            (200, br#"{"access_token":"sekrit","token_type":"Bearer","expires_in":0}"#, "expires_in is 0"),
            (200, br#"{"access_token":"sekrit","token_type":"mac","expires_in":5}"#, "need Bearer"),
            (200, br#"{"token_type":"Bearer","expires_in":5}"#, "no access_token"),
            (200, b"{\"access_token\":\"a b\",\"token_type\":\"Bearer\",\"expires_in\":5}", "cannot have"),
            (400, br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret"}"#, "HTTP 400: invalid_client: AADSTS7000215"),
            (401, b"nope sekrit", "not an OAuth error JSON"),
            (503, b"busy", "unavailable: HTTP 503"),
        ];
        for (status, body, want) in cases {
            let e = parse_answer(*status, None, body).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{status} {:?}: {e}",
                String::from_utf8_lossy(body)
            );
            assert!(!e.contains("sekrit"), "{e}");
        }
    }

    #[test]
    fn a_redirect_is_refused() {
        let e = parse_answer(302, Some("https://evil.example/"), b"").unwrap_err();
        assert!(matches!(e, TokenError::Invalid(_)));
        assert!(
            e.to_string().contains("redirect to https://evil.example/"),
            "{e}"
        );
    }

    #[test]
    fn endpoint_urls() {
        let e = Endpoint::parse("https://login.microsoftonline.com/t/oauth2/v2.0/token").unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, "/t/oauth2/v2.0/token"));
        assert!(Endpoint::parse("http://127.0.0.1:8080/token").is_ok());
        let err = Endpoint::parse("http://login.example.com/token").unwrap_err();
        assert!(err.contains("loopback only"), "{err}");
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
