//! The HTTP submission API (issue 17): `POST /v1/messages` and
//! `GET /v1/messages/{id}` on an HTTPS listener of its own (`[api]`, off by
//! default), with the SMTP listeners' certificate (`[tls]`, reloaded with
//! it on SIGHUP).
//!
//! A submission meets the rules of SMTP submission through the same code
//! (`crate::submission`): the brute-force limits and the same credentials
//! (HTTP Basic) or an API token bound to a credential (Bearer), the
//! sender policy, the message and recipient quotas, the recipient and size
//! caps, then the intake (header From policy, fixups, DKIM) and its
//! durable commit before `202 Accepted`. A refusal carries the SMTP reply
//! code, enhanced code and text; `status.rs` picks the HTTP status.
//! Connections are capped and request heads bounded in time as on the
//! operations server (`http/conns.rs`); request bodies are read under the
//! node's memory budget for message content, shared with the SMTP sessions.
//!
//! Unlike SMTP the request is all or nothing: a recipient SMTP would
//! refuse with `452 4.5.3` or `451 4.7.1` refuses the whole request.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Identity;
use crate::intake::{ClientInfo, Submission, TlsInfo};
use crate::smtp::budget::{Lease, MemoryBudget};
use crate::smtp::data::Body as Content;
use crate::smtp::data::DataError;
use crate::smtp::ports::Recipient;
use crate::smtp::ports::{LimitRefusal, SessionLimits};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Ports, SessionMetrics};
use crate::store::Store;
use crate::submission::{self, Cause, Login, Refusal};

pub mod request;
pub mod status;
pub mod token;

/// The routes the API serves (the OpenAPI document names each).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/messages"),
    ("get", "/v1/messages/{id}"),
    ("get", "/v1/openapi.yaml"),
];

/// The OpenAPI 3 document of the API, served at `/v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// `[api]`: the HTTP submission API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API (default false). Needs `[tls]`.
    pub enabled: bool,
    /// HTTPS address (default `0.0.0.0:8443`).
    pub address: SocketAddr,
    /// Open connections at most (default 256); at the cap the one waiting
    /// longest for a request head is closed to make room.
    pub max_connections: usize,
    /// The TLS handshake and each request head must arrive within this
    /// (default 5s).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A whole request (body read, checks, commit) must finish within this
    /// (default 60s), else `408`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bare LF or CR in a message become CRLF (default true: a JSON string
    /// usually has LF line ends, and an HTTP body has no end-of-data marker
    /// to smuggle). A user's own `normalize_line_endings` wins.
    pub normalize_line_endings: bool,
    /// How long `GET /v1/messages/{id}` knows a message (default 7d).
    #[serde(with = "humantime_serde")]
    pub status_retention: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            address: SocketAddr::from(([0, 0, 0, 0], 8443)),
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            normalize_line_endings: true,
            status_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ApiConfig {
    /// The first invalid key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_connections == 0 {
            return Err(("api.max_connections".into(), "must be at least 1".into()));
        }
        for (key, d) in [
            ("api.header_read_timeout", self.header_read_timeout),
            ("api.request_timeout", self.request_timeout),
            ("api.status_retention", self.status_retention),
        ] {
            if d.is_zero() {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}

/// What the API needs from the node.
pub struct ApiState {
    pub config: ApiConfig,
    pub store: Arc<dyn Store>,
    /// The SMTP session's ports: the same authenticator, intake and limits.
    pub ports: Ports,
    /// `smtp.max_message_size`.
    pub max_message_size: usize,
    /// `smtp.max_recipients`.
    pub max_recipients: usize,
    /// `smtp.auth_failure_delay`.
    pub auth_failure_delay: Duration,
    pub metrics: SessionMetrics,
    /// The node's budget of message bytes in memory, shared with the SMTP
    /// sessions (`smtp.message_memory_budget`).
    pub memory: Arc<MemoryBudget>,
}

/// Binds `[api] address` and makes the API's state from the node's parts.
pub async fn start(
    config: &crate::config::Config,
    store: Arc<dyn Store>,
    ports: Ports,
    metrics: &Arc<crate::metrics::Metrics>,
    memory: Arc<MemoryBudget>,
) -> Result<(TcpListener, ApiState), crate::run::RunError> {
    let address = config.api.address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| crate::run::RunError::ApiBind { address, source })?;
    let state = ApiState {
        config: config.api.clone(),
        store,
        ports,
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        auth_failure_delay: config.smtp.auth_failure_delay,
        metrics: SessionMetrics::new(metrics.clone()),
        memory,
    };
    Ok((listener, state))
}

/// Serves the API over TLS on `listener` until `shutdown`, then lets
/// requests in flight finish (a few seconds) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: crate::tls::ServerTls,
    state: ApiState,
    shutdown: CancellationToken,
) {
    let state = Arc::new(state);
    let tls = Arc::new(tls);
    let tracker = TaskTracker::new();
    let conns = super::conns::Conns::new(state.config.max_connections);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "api listening");
    }
    tracker.spawn(prune_loop(state.clone(), shutdown.clone()));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = conns.admit() => c,
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let ip = peer.ip();
            if let Err(r) = state.ports.limits.connection(ip).await {
                tracing::info!(%ip, reason = %r.reason, "api connection refused by a limit");
                return;
            }
            let timeout = state.config.header_read_timeout;
            let (stream, tls_info) = match tls.accept(stream, timeout).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%ip, error = %e, "api TLS handshake failed");
                    return;
                }
            };
            let slot = Arc::new(slot);
            let service = hyper::service::service_fn({
                let slot = slot.clone();
                move |req| {
                    let (state, slot, tls_info) = (state.clone(), slot.clone(), tls_info.clone());
                    async move {
                        slot.busy();
                        let limit = state.config.request_timeout;
                        let response =
                            match tokio::time::timeout(limit, route(&state, ip, tls_info, req))
                                .await
                            {
                                Ok(r) => r,
                                Err(_) => error(
                                    StatusCode::REQUEST_TIMEOUT,
                                    &Reply::new(451, "4.4.2", "request not completed in time"),
                                ),
                            };
                        slot.idle();
                        Ok::<_, Infallible>(response)
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "api connection ended with an error");
                    }
                }
                _ = slot.closed().cancelled() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Forgets submissions older than `status_retention`, hourly.
async fn prune_loop(state: Arc<ApiState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = crate::time::now_ms() - state.config.status_retention.as_millis() as i64;
        if let Err(e) = state.store.api_message_prune(before).await {
            tracing::warn!(error = %e, "pruning API submissions failed");
        }
    }
}

type Body = Full<Bytes>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer: the HTTP status and the SMTP reply in the body.
fn error(status: StatusCode, reply: &Reply) -> Response<Body> {
    let mut r = json_response(
        status,
        &json!({
            "error": {
                "status": status.as_u16(),
                "smtp_code": reply.code,
                "enhanced_code": reply.enhanced,
                "message": reply.text,
            }
        }),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"postgate\", Bearer realm=\"postgate\""),
        );
    }
    r
}

/// The answer to a refusal, with `Retry-After` when a limit refused.
fn refused(r: &Refusal) -> Response<Body> {
    let mut resp = error(status::status_of(&r.cause), &r.reply);
    if let Some(after) = r.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    resp
}

fn limited(reply: Reply, r: &LimitRefusal) -> Response<Body> {
    // Counted by the limiter, not as a rejected message.
    refused(&Refusal {
        reason: None,
        ..Refusal::limited(reply, r)
    })
}

fn bad_request(e: &request::BadRequest) -> Response<Body> {
    use request::BadRequest;
    let (status, reply) = match e {
        BadRequest::Syntax(t) => (StatusCode::BAD_REQUEST, Reply::new(501, "5.5.4", t.clone())),
        BadRequest::ContentType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reply::new(501, "5.5.4", e.to_string()),
        ),
        BadRequest::TooLarge(max) => (StatusCode::PAYLOAD_TOO_LARGE, Reply::too_big(*max)),
    };
    error(status, &reply)
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &Reply::new(502, "5.5.1", "method not allowed"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn route(
    state: &ApiState,
    ip: IpAddr,
    tls: TlsInfo,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/v1/messages" if method == Method::POST => submit(state, ip, tls, req).await,
        "/v1/messages" => method_not_allowed("POST"),
        "/v1/openapi.yaml" if matches!(method, Method::GET | Method::HEAD) => {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
            r
        }
        "/v1/openapi.yaml" => method_not_allowed("GET, HEAD"),
        p => match p.strip_prefix("/v1/messages/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                if matches!(method, Method::GET | Method::HEAD) {
                    message_status(state, ip, id, &req).await
                } else {
                    method_not_allowed("GET, HEAD")
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                &Reply::new(550, "5.1.1", "no such resource"),
            ),
        },
    }
}

/// A logged-in request: its identity and the concurrent-session slot it
/// holds while it runs.
struct Authorized {
    identity: Identity,
    mechanism: &'static str,
    _slot: Box<dyn std::any::Any + Send + Sync>,
}

/// Checks the request's credentials like SMTP AUTH checks them.
async fn authorize<B>(
    state: &ApiState,
    ip: IpAddr,
    req: &Request<B>,
) -> Result<Authorized, Response<Body>> {
    let creds = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| request::credentials(h.as_bytes()));
    let Some(creds) = creds else {
        state
            .metrics
            .rejected(crate::metrics::RejectReason::AuthRequired);
        return Err(error(
            status::status_of(&Cause::Credentials),
            &Reply::auth_required(),
        ));
    };
    let limits: &dyn SessionLimits = &*state.ports.limits;
    let delay = state.auth_failure_delay;
    let (login, mechanism) = match &creds {
        request::Credentials::Basic { username, password } => (
            submission::login(
                limits,
                ip,
                username,
                delay,
                state
                    .ports
                    .authenticator
                    .authenticate(username, password, ip),
            )
            .await,
            "BASIC",
        ),
        request::Credentials::Bearer(t) => (
            submission::login(
                limits,
                ip,
                &token::limit_name(t),
                delay,
                token::authenticate(&*state.store, t),
            )
            .await,
            "TOKEN",
        ),
    };
    let identity = match login {
        Login::Ok(identity) => identity,
        Login::Limited(r) => {
            tracing::info!(%ip, reason = %r.reason, "api auth rate-limited");
            return Err(limited(Reply::auth_limited(&r), &r));
        }
        Login::Failed => {
            tracing::info!(%ip, mechanism, "api auth failed");
            return Err(error(
                status::status_of(&Cause::Credentials),
                &Reply::auth_failed(),
            ));
        }
        Login::Unavailable => {
            return Err(error(
                status::status_of(&Cause::CredentialsUnavailable),
                &Reply::auth_unavailable(),
            ))
        }
    };
    match state.ports.limits.session_start(&identity).await {
        Ok(slot) => Ok(Authorized {
            identity,
            mechanism,
            _slot: slot,
        }),
        Err(r) => Err(limited(Reply::session_limited(&r), &r)),
    }
}

/// Why a body was not read.
enum BodyError {
    Bad(request::BadRequest),
    /// The node's memory budget cannot hold it now (`452 4.3.1`).
    Memory,
}

/// Memory leased before the first octet of a body arrives.
const FIRST_LEASE: usize = 64 * 1024;

/// The body, at most `max` octets, read under a lease of the node's memory
/// budget that covers twice what was read (the body and the message taken
/// out of it); the lease is held until the request ends.
async fn read_body(
    req: Request<hyper::body::Incoming>,
    max: usize,
    memory: &Arc<MemoryBudget>,
) -> Result<(String, Bytes, Lease), BodyError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::Bad(request::BadRequest::TooLarge(max)));
    }
    let first = declared
        .map_or(FIRST_LEASE, |n| n.saturating_mul(2))
        .min(max.saturating_mul(2));
    let mut lease = memory.lease(first).ok_or(BodyError::Memory)?;
    let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            BodyError::Bad(request::BadRequest::Syntax(format!(
                "request body not read: {e}"
            )))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + data.len();
        if total > max {
            return Err(BodyError::Bad(request::BadRequest::TooLarge(max)));
        }
        if !lease.grow_to(total.saturating_mul(2)) {
            return Err(BodyError::Memory);
        }
        buf.extend_from_slice(&data);
    }
    Ok((content_type, Bytes::from(buf), lease))
}

/// `POST /v1/messages`.
async fn submit(
    state: &ApiState,
    ip: IpAddr,
    tls: TlsInfo,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let login = match authorize(state, ip, &req).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let identity = &login.identity;
    // `sender`, `rcpts`: what the refusal's `rejected` event names.
    let refuse = |r: Refusal, sender: &str, rcpts: &[String]| {
        if let Some(reason) = r.reason {
            state.metrics.rejected(reason);
        }
        submission::report(&*state.ports.intake, identity, sender, rcpts, &r);
        tracing::info!(%ip, user = %identity.username, reply = %r.reply.text, "api submission refused");
        refused(&r)
    };
    // Room for base64 (4/3) or JSON escapes, and the envelope.
    let max_body = state
        .max_message_size
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    let (mut envelope, _lease) = match read_body(req, max_body, &state.memory).await {
        Ok((content_type, body, lease)) => match request::envelope(&content_type, &body) {
            Ok(e) => (e, lease),
            Err(e) => return bad_request(&e),
        },
        Err(BodyError::Bad(e)) => return bad_request(&e),
        Err(BodyError::Memory) => return refuse(Refusal::data(DataError::MemoryBudget), "", &[]),
    };
    // The order of SMTP: MAIL (size, sender, rates), RCPT each, then the content.
    // Refused at "MAIL": the event names no recipient, as in SMTP.
    if let Err(r) = submission::check_size(envelope.message.len(), state.max_message_size) {
        return refuse(r, &envelope.from, &[]);
    }
    if let Err(r) = submission::check_sender(identity, &envelope.from) {
        return refuse(r, &envelope.from, &[]);
    }
    if let Err(r) = submission::mail_allowed(&*state.ports.limits, identity).await {
        return refuse(r, &envelope.from, &[]);
    }
    for n in 1..=envelope.to.len() {
        if let Err(r) = submission::recipient_allowed(
            &*state.ports.limits,
            Some(identity),
            n,
            state.max_recipients,
        )
        .await
        {
            return refuse(r, &envelope.from, &envelope.to[n - 1..n]);
        }
    }
    let normalize = identity
        .normalize_line_endings
        .unwrap_or(state.config.normalize_line_endings);
    let mut content = Content::new(state.max_message_size, normalize);
    let message = std::mem::take(&mut envelope.message);
    content.push(&message);
    if !message.ends_with(b"\n") && !message.ends_with(b"\r") {
        // Every stored message ends with a line break, as after DATA.
        content.push(b"\r\n");
    }
    drop(message);
    state.metrics.received();
    let body = match content.finish() {
        Ok(b) => b,
        Err(e) => return refuse(Refusal::data(e), &envelope.from, &envelope.to),
    };
    let size = body.len();
    let session_id = format!("api-{}", uuid::Uuid::new_v4().simple());
    let recipients = envelope.to.clone();
    let sub = Submission {
        session_id: session_id.clone(),
        identity: identity.clone(),
        client: ClientInfo {
            ip,
            helo: "http-api".to_string(),
            tls: Some(tls),
            auth_mechanism: login.mechanism.to_string(),
        },
        sender: envelope.from.clone(),
        recipients: envelope
            .to
            .into_iter()
            .map(|address| Recipient {
                address,
                notify: None,
                orcpt: None,
            })
            .collect(),
        body: Bytes::from(body),
        envid: None,
        ret: None,
        smtputf8: envelope.smtputf8,
        body_type: None,
    };
    let queue_id = match submission::commit(&*state.ports.intake, &*state.ports.limits, sub).await {
        Ok(id) => id,
        Err(r) => return refused(&r),
    };
    tracing::info!(
        session = %session_id,
        queue_id = %queue_id,
        user = %identity.username,
        credential = %identity.credential_label,
        sender = %envelope.from,
        rcpts = recipients.len(),
        size,
        "queued"
    );
    let now = crate::time::now_ms();
    if let Err(e) = state
        .store
        .api_message_add(&queue_id, identity.user_id, &recipients, now)
        .await
    {
        // The message is queued (committed above); only its status page is lost.
        tracing::warn!(queue_id = %queue_id, error = %e, "recording the API submission failed");
    }
    let mut r = json_response(
        StatusCode::ACCEPTED,
        &json!({
            "id": queue_id,
            "status": "queued",
            "recipients": recipients,
            "smtp_code": 250,
            "enhanced_code": "2.0.0",
            "message": format!("queued as {queue_id}"),
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/messages/{queue_id}")) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// `GET /v1/messages/{id}`: only for the user who submitted it.
async fn message_status<B>(
    state: &ApiState,
    ip: IpAddr,
    id: &str,
    req: &Request<B>,
) -> Response<Body> {
    let login = match authorize(state, ip, req).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    match state
        .store
        .api_message_status(id, login.identity.user_id)
        .await
    {
        Ok(Some(recipients)) => json_response(
            StatusCode::OK,
            &json!({ "id": id, "recipients": recipients }),
        ),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &Reply::new(550, "5.1.1", "no such message of this user"),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "API message status failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &Reply::new(451, "4.3.0", "store unavailable, try again later"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let c: ApiConfig = toml::from_str("").unwrap();
        assert!(!c.enabled && c.normalize_line_endings);
        assert_eq!(c.address.port(), 8443);
        assert!(c.validate().is_ok());
        let bad: ApiConfig = toml::from_str("max_connections = 0").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "api.max_connections");
        let bad: ApiConfig = toml::from_str("request_timeout = \"0s\"").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "api.request_timeout");
        assert!(toml::from_str::<ApiConfig>("listen = 1").is_err());
    }

    /// Every route served is in the OpenAPI document (the integration test
    /// `api_http::openapi_document_parses_and_names_every_route` parses it).
    #[test]
    fn openapi_mentions_every_route() {
        assert!(OPENAPI.starts_with("openapi: 3."));
        for (method, path) in ROUTES {
            let at = OPENAPI
                .find(&format!("\n  {path}:\n"))
                .unwrap_or_else(|| panic!("{path} not in docs/openapi.yaml"));
            let section = &OPENAPI[at..];
            assert!(
                section.contains(&format!("\n    {method}:\n")),
                "{method} {path}"
            );
        }
    }
}
