//! A real OAuth 2.0 token endpoint for the XOAUTH2 tests: HTTPS (its own
//! CA) on 127.0.0.1, hyper server. It checks what a provider checks --
//! the client secret (client credentials grant), the certificate client
//! assertion's PS256 signature, `x5t#S256`, `aud`, `iss`/`sub` and expiry
//! (Microsoft), or the service account's RS256 JWT bearer assertion with
//! its `sub` (Google) -- against the registered clients' public keys, and
//! issues short-lived random tokens that the test upstream server accepts
//! through [`TokenCheck`]. It counts requests and can misbehave on demand.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::upstream_server::{CertKind, Pki};

/// A registered OAuth client.
#[derive(Clone)]
pub enum Client {
    /// Client credentials with a secret.
    Secret { id: String, secret: String },
    /// Client credentials with a certificate assertion (DER certificate).
    Certificate { id: String, cert_der: Vec<u8> },
    /// A service account: its e-mail and RSA public key (PKCS#1 DER).
    ServiceAccount { email: String, public_key: Vec<u8> },
}

/// How the endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Checks and issues tokens.
    Normal,
    /// Closes every connection without an answer.
    Down,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 400 with an RFC 6749 error JSON.
    ErrorJson,
    /// HTTP 302 elsewhere.
    Redirect,
    /// A token without `expires_in`.
    NoExpiry,
    /// Answers only after this long.
    Slow(Duration),
}

struct Issued {
    subject: Option<String>,
    expires: Instant,
}

struct State {
    url: String,
    clients: Vec<Client>,
    lifetime: Mutex<Duration>,
    mode: Mutex<Mode>,
    tokens: Mutex<HashMap<String, Issued>>,
    requests: AtomicUsize,
    issued: AtomicUsize,
    refusals: Mutex<Vec<String>>,
    scopes: Mutex<Vec<String>>,
    refused_subjects: Mutex<Vec<String>>,
}

/// Checks XOAUTH2 credentials against the tokens the endpoint issued.
#[derive(Clone)]
pub struct TokenCheck(Arc<State>);

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck")
    }
}

impl TokenCheck {
    /// Whether `token` was issued, is unexpired and not revoked, and (for a
    /// token issued for a `sub`) `user` is that mailbox.
    pub fn accepts(&self, user: &str, token: &str) -> bool {
        let tokens = self.0.tokens.lock().unwrap();
        tokens.get(token).is_some_and(|t| {
            Instant::now() < t.expires
                && t.subject
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case(user))
        })
    }
}

/// A running token endpoint; stops when dropped.
pub struct TokenServer {
    pub addr: SocketAddr,
    pub pki: Arc<Pki>,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    /// Starts the endpoint for `clients`, issuing tokens valid for `lifetime`.
    pub async fn start(clients: Vec<Client>, lifetime: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pki = Arc::new(Pki::new(CertKind::Good));
        let state = Arc::new(State {
            url: format!(
                "https://localhost:{}/tenant-1/oauth2/v2.0/token",
                addr.port()
            ),
            clients,
            lifetime: Mutex::new(lifetime),
            mode: Mutex::new(Mode::Normal),
            tokens: Mutex::new(HashMap::new()),
            requests: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            refusals: Mutex::new(Vec::new()),
            scopes: Mutex::new(Vec::new()),
            refused_subjects: Mutex::new(Vec::new()),
        });
        let acceptor = pki.acceptor();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if *st.mode.lock().unwrap() == Mode::Down {
                        st.requests.fetch_add(1, Ordering::SeqCst);
                        drop(tcp);
                        return;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(st.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TokenServer {
            addr,
            pki,
            state,
            task,
        }
    }

    /// The token URL (its `aud`), `https://localhost:PORT/...`.
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    /// The CA that signed the endpoint's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_file.clone()
    }

    /// Requests received (including refused ones and, when down, connections).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Why requests were refused, in order.
    pub fn refusals(&self) -> Vec<String> {
        self.state.refusals.lock().unwrap().clone()
    }

    /// Scopes requested, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().unwrap() = lifetime;
    }

    /// Refuses service account tokens for mailbox `sub` (a user outside
    /// the delegation).
    pub fn refuse_subject(&self, sub: &str) {
        self.state
            .refused_subjects
            .lock()
            .unwrap()
            .push(sub.to_string());
    }

    /// Revokes every token issued so far.
    pub fn revoke_all(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    /// The checker the upstream server uses for AUTH XOAUTH2.
    pub fn checker(&self) -> TokenCheck {
        TokenCheck(self.state.clone())
    }
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64d(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// Verifies a compact JWT's signature with an RSA public key (PKCS#1 DER)
/// and returns (header, claims).
fn verify_jwt(
    jwt: &str,
    public_key: &[u8],
    alg: &str,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("not a compact JWT".into());
    }
    let header: serde_json::Value =
        serde_json::from_slice(&b64d(parts[0]).ok_or("header b64")?).map_err(|e| e.to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64d(parts[1]).ok_or("claims b64")?).map_err(|e| e.to_string())?;
    if header["alg"] != alg {
        return Err(format!("alg {} (want {alg})", header["alg"]));
    }
    let params: &dyn aws_lc_rs::signature::VerificationAlgorithm = match alg {
        "PS256" => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        _ => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
    };
    let sig = b64d(parts[2]).ok_or("signature b64")?;
    aws_lc_rs::signature::UnparsedPublicKey::new(params, public_key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "bad signature".to_string())?;
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if exp <= unix_now() {
        return Err("assertion expired".into());
    }
    Ok((header, claims))
}

/// The RSA public key (PKCS#1 DER) of a DER certificate.
fn cert_public_key(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

impl State {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode.lock().unwrap().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        match mode {
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Garbage => {
                return Response::new(Full::new(Bytes::from_static(b"<html>oops</html>")))
            }
            Mode::ErrorJson => {
                return json(
                    400,
                    r#"{"error":"unauthorized_client","error_description":"AADSTS700016: application not found in the directory"}"#.into(),
                )
            }
            Mode::Redirect => {
                return Response::builder()
                    .status(302)
                    .header("location", "https://elsewhere.example/token")
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
            _ => {}
        }
        let subject = match self.check(&form) {
            Ok(s) => s,
            Err(why) => {
                self.refusals.lock().unwrap().push(why.clone());
                return json(
                    401,
                    format!(
                        r#"{{"error":"invalid_client","error_description":{:?}}}"#,
                        why
                    ),
                );
            }
        };
        if let Some(scope) = form.get("scope") {
            self.scopes.lock().unwrap().push(scope.clone());
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let token = format!("zz-token-{n}.{}", uuid::Uuid::new_v4().simple());
        let lifetime = *self.lifetime.lock().unwrap();
        self.tokens.lock().unwrap().insert(
            token.clone(),
            Issued {
                subject,
                expires: Instant::now() + lifetime,
            },
        );
        if mode == Mode::NoExpiry {
            return json(
                200,
                format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#),
            );
        }
        json(
            200,
            format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}}}"#,
                lifetime.as_secs()
            ),
        )
    }

    /// The token's subject (a mailbox for a service account) or why not.
    fn check(&self, form: &HashMap<String, String>) -> Result<Option<String>, String> {
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        match get("grant_type").as_str() {
            "client_credentials" => {
                let id = get("client_id");
                if let Some(assertion) = form.get("client_assertion") {
                    if get("client_assertion_type")
                        != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    {
                        return Err("bad client_assertion_type".into());
                    }
                    let cert = self
                        .clients
                        .iter()
                        .find_map(|c| match c {
                            Client::Certificate { id: i, cert_der } if *i == id => Some(cert_der),
                            _ => None,
                        })
                        .ok_or("unknown certificate client")?;
                    let (h, c) = verify_jwt(assertion, &cert_public_key(cert), "PS256")?;
                    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(<sha2::Sha256 as sha2::Digest>::digest(cert));
                    if h["x5t#S256"] != thumb.as_str() {
                        return Err("x5t#S256 does not match the certificate".into());
                    }
                    if c["aud"] != self.url.as_str()
                        || c["iss"] != id.as_str()
                        || c["sub"] != id.as_str()
                    {
                        return Err("aud/iss/sub wrong".into());
                    }
                    return Ok(None);
                }
                let ok = self.clients.iter().any(|c| {
                    matches!(c, Client::Secret { id: i, secret } if *i == id && *secret == get("client_secret"))
                });
                if ok {
                    Ok(None)
                } else {
                    Err("bad client secret".into())
                }
            }
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                let assertion = get("assertion");
                let mut last = "unknown service account".to_string();
                for c in &self.clients {
                    if let Client::ServiceAccount { email, public_key } = c {
                        match verify_jwt(&assertion, public_key, "RS256") {
                            Ok((_, claims)) => {
                                if claims["iss"] != email.as_str()
                                    || claims["aud"] != self.url.as_str()
                                {
                                    return Err("iss/aud wrong".into());
                                }
                                if claims["scope"] != "https://mail.google.com/" {
                                    return Err("scope wrong".into());
                                }
                                let sub = claims["sub"].as_str().ok_or("no sub")?;
                                if self
                                    .refused_subjects
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .any(|s| s == sub)
                                {
                                    return Err(format!("invalid_grant for {sub}"));
                                }
                                return Ok(Some(sub.to_string()));
                            }
                            Err(e) => last = e,
                        }
                    }
                }
                Err(last)
            }
            other => Err(format!("unsupported grant_type {other:?}")),
        }
    }
}
