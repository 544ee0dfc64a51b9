//! The `/admin` endpoints: bearer-token check, routes, and the [`Admin`]
//! trait the daemon implements over delivery and limits.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{error_json, method_not_allowed, respond_json, Body, HttpError, HttpState};
use crate::metrics::StoreOperation;
use crate::store::StoreError;

/// Minimum admin token length: a short token is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin bearer token. Never printed; compared in constant time.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl AdminToken {
    /// Accepts a token of at least [`MIN_TOKEN_LEN`] characters.
    pub fn new(token: String) -> Result<AdminToken, HttpError> {
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(HttpError::WeakToken);
        }
        Ok(AdminToken(Arc::new(
            Sha256::digest(token.as_bytes()).into(),
        )))
    }

    /// True when `candidate` is the token. Both sides are hashed first, so
    /// neither the content nor the length leaks through timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        bool::from(digest.ct_eq(&self.0[..]))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// What an admin request may fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 404: no such message, user or IP.
    #[error("{0} not found")]
    NotFound(String),
    /// 400: a malformed id or subject.
    #[error("{0}")]
    Invalid(String),
    /// 503: the store cannot be reached; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AdminError::NotFound(what),
            StoreError::Invalid(what) | StoreError::Conflict(what) => AdminError::Invalid(what),
            other => AdminError::Unavailable(other.to_string()),
        }
    }
}

/// Parameters of `GET /admin/queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueQuery {
    /// At most this many messages, oldest first (1..=1000, default 100).
    pub limit: u32,
}

/// The queue and limits operations of the CLI, over HTTP. Implemented by the
/// daemon over delivery and limits; every answer is JSON the operator reads
/// (the same data `postgate queue ...` / `limits ...` print). Each method is
/// one store transaction and is safe to call on any node.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Messages in the queue, oldest first.
    async fn queue_list(&self, query: &QueueQuery) -> Result<Value, AdminError>;
    /// One message: envelope, recipients with status, attempts, last reply.
    async fn queue_show(&self, id: &str) -> Result<Value, AdminError>;
    /// Makes every pending recipient of `id` due now (clears the backoff).
    async fn queue_retry(&self, id: &str) -> Result<Value, AdminError>;
    /// Removes `id` from the queue without a DSN.
    async fn queue_delete(&self, id: &str) -> Result<Value, AdminError>;
    /// Limiter state: all subjects with active counters or lockouts when
    /// `subject` is `None`, else that one. Subjects are what `postgate limits
    /// reset` takes: an IP address, a username, `uid:ID` or `cred:ID`.
    async fn limits_show(&self, subject: Option<&str>) -> Result<Value, AdminError>;
    /// Clears the counters and lockout of `subject`.
    async fn limits_reset(&self, subject: &str) -> Result<Value, AdminError>;
}

/// The admin routes, after the token check.
#[derive(Debug, PartialEq, Eq)]
enum AdminRoute {
    QueueList(QueueQuery),
    QueueShow(String),
    QueueRetry(String),
    QueueDelete(String),
    LimitsShow(Option<String>),
    LimitsReset(String),
}

/// Why a request has no route: status, message, and `Allow` for 405.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    message: &'static str,
    allow: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, message: &'static str) -> Refusal {
        Refusal {
            status,
            message,
            allow: None,
        }
    }

    fn method(allow: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed",
            allow: Some(allow),
        }
    }

    fn response(&self) -> Response<Body> {
        match self.allow {
            Some(allow) => method_not_allowed(allow),
            None => error_json(self.status, self.message),
        }
    }
}

/// Maps method, path and query to a route.
fn admin_route(method: &Method, path: &str, query: Option<&str>) -> Result<AdminRoute, Refusal> {
    let rest = path.trim_start_matches("/admin").trim_matches('/');
    let segments: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/')
            .map(percent_decode)
            .collect::<Option<_>>()
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "bad percent-encoding in path"))?
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    match seg.as_slice() {
        ["queue"] if get => Ok(AdminRoute::QueueList(QueueQuery {
            limit: queue_limit(query)?,
        })),
        ["queue"] => Err(Refusal::method("GET")),
        ["queue", id] if get => Ok(AdminRoute::QueueShow(id.to_string())),
        ["queue", id] if *method == Method::DELETE => Ok(AdminRoute::QueueDelete(id.to_string())),
        ["queue", _] => Err(Refusal::method("GET, DELETE")),
        ["queue", id, "retry"] if post => Ok(AdminRoute::QueueRetry(id.to_string())),
        ["queue", _, "retry"] => Err(Refusal::method("POST")),
        ["limits"] if get => Ok(AdminRoute::LimitsShow(None)),
        ["limits", subject] if get => Ok(AdminRoute::LimitsShow(Some(subject.to_string()))),
        ["limits"] | ["limits", _] => Err(Refusal::method("GET")),
        ["limits", subject, "reset"] if post => Ok(AdminRoute::LimitsReset(subject.to_string())),
        ["limits", _, "reset"] => Err(Refusal::method("POST")),
        _ => Err(Refusal::new(StatusCode::NOT_FOUND, "not found")),
    }
}

fn queue_limit(query: Option<&str>) -> Result<u32, Refusal> {
    let bad = || Refusal::new(StatusCode::BAD_REQUEST, "limit must be 1 to 1000");
    let mut limit = 100;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => limit = v.parse().map_err(|_| bad())?,
            _ => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "unknown query parameter",
                ))
            }
        }
    }
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(bad())
    }
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); `None` on a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) async fn admin<B>(state: &HttpState, req: &Request<B>) -> Response<Body> {
    let (Some(admin), Some(token)) = (&state.admin, &state.admin_token) else {
        return error_json(StatusCode::NOT_FOUND, "not found");
    };
    // RFC 6750 §2.1: "Bearer" is case-insensitive, then one space, then the token.
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    if !presented.is_some_and(|t| token.matches(t)) {
        tracing::warn!(
            path = req.uri().path(),
            "admin request with a missing or wrong token"
        );
        let mut r = error_json(StatusCode::UNAUTHORIZED, "bearer token required");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"postgate-admin\""),
        );
        return r;
    }
    let route = match admin_route(req.method(), req.uri().path(), req.uri().query()) {
        Ok(route) => route,
        Err(refusal) => return refusal.response(),
    };
    tracing::info!(route = ?route, "admin request");
    let started = Instant::now();
    let result = match &route {
        AdminRoute::QueueList(q) => admin.queue_list(q).await,
        AdminRoute::QueueShow(id) => admin.queue_show(id).await,
        AdminRoute::QueueRetry(id) => admin.queue_retry(id).await,
        AdminRoute::QueueDelete(id) => admin.queue_delete(id).await,
        AdminRoute::LimitsShow(s) => admin.limits_show(s.as_deref()).await,
        AdminRoute::LimitsReset(s) => admin.limits_reset(s).await,
    };
    state.metrics.store_operation(
        StoreOperation::Admin,
        started.elapsed(),
        matches!(result, Err(AdminError::Unavailable(_))),
    );
    match result {
        Ok(value) => respond_json(StatusCode::OK, &value),
        Err(e @ AdminError::NotFound(_)) => error_json(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ AdminError::Invalid(_)) => error_json(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ AdminError::Unavailable(_)) => {
            error_json(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let t = AdminToken::new("correct horse battery".into()).unwrap();
        assert!(t.matches(b"correct horse battery"));
        assert!(!t.matches(b"correct horse batterY"));
        assert!(!t.matches(b"correct horse battery "));
        assert!(!t.matches(b""));
        assert!(AdminToken::new("short".into()).is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn admin_paths_route_by_method() {
        let r = |m: Method, p: &str, q: Option<&str>| admin_route(&m, p, q).map_err(|e| e.status);
        assert_eq!(
            r(Method::GET, "/admin/queue", None),
            Ok(AdminRoute::QueueList(QueueQuery { limit: 100 }))
        );
        assert_eq!(
            r(Method::GET, "/admin/queue", Some("limit=5")),
            Ok(AdminRoute::QueueList(QueueQuery { limit: 5 }))
        );
        assert_eq!(
            r(Method::GET, "/admin/queue", Some("limit=0")),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            r(Method::GET, "/admin/queue/abc", None),
            Ok(AdminRoute::QueueShow("abc".into()))
        );
        assert_eq!(
            r(Method::DELETE, "/admin/queue/abc", None),
            Ok(AdminRoute::QueueDelete("abc".into()))
        );
        assert_eq!(
            r(Method::POST, "/admin/queue/abc/retry", None),
            Ok(AdminRoute::QueueRetry("abc".into()))
        );
        assert_eq!(
            r(Method::GET, "/admin/queue/abc/retry", None),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            r(Method::GET, "/admin/limits", None),
            Ok(AdminRoute::LimitsShow(None))
        );
        assert_eq!(
            r(
                Method::POST,
                "/admin/limits/user:alice%40example.com/reset",
                None
            ),
            Ok(AdminRoute::LimitsReset("user:alice@example.com".into()))
        );
        assert_eq!(
            r(Method::GET, "/admin/limits/ip:%2", None),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            r(Method::GET, "/admin/nothing", None),
            Err(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("ip:2001%3Adb8%3A%3A1").as_deref(),
            Some("ip:2001:db8::1")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    }
}
