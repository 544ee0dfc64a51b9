//! The operations HTTP server, on its own address (default `127.0.0.1:9587`).
//!
//! | path | method | answer |
//! | --- | --- | --- |
//! | `/metrics` | GET | every metric, Prometheus text format 0.0.4 |
//! | `/healthz` | GET | 200 while the process serves requests (liveness) |
//! | `/readyz` | GET | 200 when this node can accept and commit mail (the store commits a write; not draining); 503 otherwise. Upstream health never counts: a provider outage must not stop submission (store and forward) |
//! | `/health/upstreams` | GET | each upstream's circuit breaker and how many are usable (JSON); 503 when none is |
//! | `/admin/queue?limit=N` | GET | queued messages |
//! | `/admin/queue/{id}` | GET, DELETE | one message; delete it |
//! | `/admin/queue/{id}/retry` | POST | make it due now |
//! | `/admin/limits`, `/admin/limits/{subject}` | GET | limiter state |
//! | `/admin/limits/{subject}/reset` | POST | clear a lockout or quota (subject as `postgate limits reset` takes it: an IP address, a username, `uid:ID`, `cred:ID`) |
//!
//! At most `http.max_connections` are open; at the cap the connection
//! waiting longest for a request head is closed to make room (see
//! `conns`), and a request head must arrive within
//! `http.header_read_timeout`, so idle or slow clients cannot delay
//! `/healthz`.
//!
//! Admin endpoints need `Authorization: Bearer TOKEN` (RFC 6750 §2.1),
//! compared in constant time; 401 without it or with a wrong one. With no
//! token or no [`Admin`] implementation configured they do not exist (404).
//! Answers of `/readyz`, `/health/upstreams` and `/admin` are JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{CircuitState, Metrics, MetricsOptions, StoreOperation};
use crate::secret::Secret;
use crate::store::HealthStore;

mod admin;
pub mod api;
mod conns;
pub mod probe;

pub use admin::{Admin, AdminError, AdminToken, QueueQuery, MIN_TOKEN_LEN};

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The `[http]` section of the config. `Debug` and `Serialize` redact the token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the operations HTTP server; default `127.0.0.1:9587`.
    pub address: SocketAddr,
    /// Bearer token of the `/admin` endpoints (at least 16 characters; a
    /// secret: inline, `{ env = "VAR" }` or `{ file = "PATH" }`); none
    /// (default) disables them.
    pub admin_token: Option<Secret>,
    /// Export per-user series (`postgate_user_*`); default false.
    pub per_user_metrics: bool,
    /// Distinct users with their own series; later users count as `_other`.
    /// Default 1000.
    pub per_user_metrics_cap: usize,
    /// How long `/readyz` waits for the store; default 2s.
    #[serde(with = "humantime_serde")]
    pub readiness_timeout: Duration,
    /// Open connections at most (default 256); at the cap the one waiting
    /// longest for a request head is closed to make room.
    pub max_connections: usize,
    /// A request head (first or next on a kept-alive connection) must
    /// arrive within this time, else the connection is closed (default 5s).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9587)),
            admin_token: None,
            per_user_metrics: false,
            per_user_metrics_cap: 1000,
            readiness_timeout: Duration::from_secs(2),
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

impl HttpConfig {
    /// The metric options this section implies.
    pub fn metrics_options(&self) -> MetricsOptions {
        MetricsOptions {
            per_user: self.per_user_metrics,
            per_user_cap: self.per_user_metrics_cap,
        }
    }

    /// Checks what serde cannot: a usable token, at least one connection,
    /// a non-zero header timeout.
    pub fn validate(&self) -> Result<(), HttpError> {
        self.admin_token()?;
        if self.max_connections == 0 {
            return Err(HttpError::TooSmall("max_connections", "1"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(HttpError::TooSmall("header_read_timeout", "1ms"));
        }
        Ok(())
    }

    /// The admin token, checked; `Ok(None)` when none is configured.
    pub fn admin_token(&self) -> Result<Option<AdminToken>, HttpError> {
        self.admin_token
            .as_ref()
            .map(|t| AdminToken::new(t.expose().to_string()))
            .transpose()
    }
}

/// Errors of this module (configuration only: serving never fails as a whole).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.admin_token must be at least {MIN_TOKEN_LEN} characters")]
    WeakToken,
    /// A key below its minimum: `(key, minimum)`.
    #[error("http.{0} must be at least {1}")]
    TooSmall(&'static str, &'static str),
}

impl HttpError {
    /// The configuration key at fault, e.g. `http.max_connections`.
    pub fn key(&self) -> String {
        match self {
            HttpError::WeakToken => "http.admin_token".into(),
            HttpError::TooSmall(key, _) => format!("http.{key}"),
        }
    }
}

/// How many upstreams delivery may use now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// Upstreams whose circuit is closed or half-open.
    pub usable: usize,
    /// Upstreams in the config.
    pub configured: usize,
}

/// Health of the upstreams, supplied by delivery, for `/health/upstreams`
/// (never for readiness). Must be cheap (no I/O): it reads circuit-breaker
/// state. Any `Fn() -> UpstreamStatus` works (without per-upstream detail).
pub trait UpstreamHealth: Send + Sync {
    /// The current status.
    fn upstream_status(&self) -> UpstreamStatus;

    /// Each configured upstream's name and breaker state, in config order;
    /// empty when the implementation has no detail.
    fn upstream_states(&self) -> Vec<(String, CircuitState)> {
        Vec::new()
    }
}

impl<F> UpstreamHealth for F
where
    F: Fn() -> UpstreamStatus + Send + Sync,
{
    fn upstream_status(&self) -> UpstreamStatus {
        self()
    }
}

/// Everything the HTTP server reads. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    /// What `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The store's readiness (`Arc<dyn Store>` coerces to this).
    pub health: Arc<dyn HealthStore>,
    /// Upstream health for `/health/upstreams`; `None`: no upstream configured.
    pub upstreams: Option<Arc<dyn UpstreamHealth>>,
    /// Admin operations; `None` (or no token) disables `/admin`.
    pub admin: Option<Arc<dyn Admin>>,
    /// The bearer token of `/admin`; `None` disables `/admin`.
    pub admin_token: Option<AdminToken>,
    /// Once cancelled, `/readyz` answers 503 `draining` (load balancers
    /// stop sending new sessions) while `/metrics` keeps working.
    pub draining: CancellationToken,
    /// How long `/readyz` waits for the store.
    pub readiness_timeout: Duration,
    /// Open connections at most (`http.max_connections`).
    pub max_connections: usize,
    /// Time allowed for each request head (`http.header_read_timeout`).
    pub header_read_timeout: Duration,
}

impl HttpState {
    /// State with metrics and store health only: no upstream check, no admin.
    pub fn new(metrics: Arc<Metrics>, health: Arc<dyn HealthStore>) -> HttpState {
        HttpState {
            metrics,
            health,
            upstreams: None,
            admin: None,
            admin_token: None,
            draining: CancellationToken::new(),
            readiness_timeout: HttpConfig::default().readiness_timeout,
            max_connections: HttpConfig::default().max_connections,
            header_read_timeout: HttpConfig::default().header_read_timeout,
        }
    }

    /// State for the daemon: token and readiness timeout from `config`,
    /// the admin operations, the upstream check, and the token that marks
    /// the node as draining. Fails only on a weak admin token.
    pub fn from_config(
        config: &HttpConfig,
        metrics: Arc<Metrics>,
        health: Arc<dyn HealthStore>,
        admin: Option<Arc<dyn Admin>>,
        upstreams: Option<Arc<dyn UpstreamHealth>>,
        draining: CancellationToken,
    ) -> Result<HttpState, HttpError> {
        Ok(HttpState {
            metrics,
            health,
            upstreams,
            admin,
            admin_token: config.admin_token()?,
            draining,
            readiness_timeout: config.readiness_timeout,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        })
    }
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets in-flight requests finish (up to a few seconds) and
/// returns. Never fails: accept errors are logged and retried.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let state = Arc::new(state);
    let tracker = TaskTracker::new();
    let conns = conns::Conns::new(state.max_connections);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "http listening");
    }
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = conns.admit() => c,
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let slot = Arc::new(slot);
            let header_timeout = state.header_read_timeout;
            let service = hyper::service::service_fn({
                let slot = slot.clone();
                move |req| {
                    let (state, slot) = (state.clone(), slot.clone());
                    async move {
                        slot.busy();
                        let response = route(&state, req).await;
                        slot.idle();
                        Ok::<_, Infallible>(response)
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                }
                // Evicted at the cap while waiting for a request head.
                _ = slot.closed().cancelled() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn respond_json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn error_json(status: StatusCode, message: &str) -> Response<Body> {
    respond_json(status, &json!({ "error": message }))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error_json(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Answers one request. The request body is never read (no endpoint takes one).
async fn route<B>(state: &HttpState, req: Request<B>) -> Response<Body> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" if read_only => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/healthz" if read_only => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" if read_only => readiness(state).await,
        "/health/upstreams" if read_only => upstream_health(state),
        "/metrics" | "/healthz" | "/readyz" | "/health/upstreams" => {
            method_not_allowed("GET, HEAD")
        }
        p if p == "/admin" || p.starts_with("/admin/") => admin::admin(state, &req).await,
        _ => error_json(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn readiness(state: &HttpState) -> Response<Body> {
    if state.draining.is_cancelled() {
        return respond_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "draining" }),
        );
    }
    let started = Instant::now();
    let store =
        match tokio::time::timeout(state.readiness_timeout, state.health.check_ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "store did not answer within {}",
                humantime::format_duration(state.readiness_timeout)
            )),
        };
    state
        .metrics
        .store_operation(StoreOperation::Health, started.elapsed(), store.is_err());
    // Only what accepting needs: with every upstream down the node still
    // takes mail and queues it (issue 13); that is /health/upstreams' job.
    let ready = store.is_ok();
    let checks =
        json!({ "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.clone() } });
    if !ready {
        tracing::warn!(checks = %checks, "not ready");
    }
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    respond_json(status, &json!({ "status": word, "checks": checks }))
}

/// `/health/upstreams`: 200 while some upstream is usable (or none is
/// configured: an intake-only node), 503 when every breaker is open.
fn upstream_health(state: &HttpState) -> Response<Body> {
    let Some(u) = &state.upstreams else {
        return respond_json(
            StatusCode::OK,
            &json!({ "status": "none configured", "usable": 0, "configured": 0, "upstreams": [] }),
        );
    };
    let status = u.upstream_status();
    let upstreams: Vec<Value> = u
        .upstream_states()
        .into_iter()
        .map(|(name, s)| {
            let circuit = match s {
                CircuitState::Closed => "closed",
                CircuitState::HalfOpen => "half_open",
                CircuitState::Open => "open",
            };
            json!({ "name": name, "circuit": circuit })
        })
        .collect();
    let (code, word) = if status.usable > 0 {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no usable upstream")
    };
    respond_json(
        code,
        &json!({
            "status": word,
            "usable": status.usable,
            "configured": status.configured,
            "upstreams": upstreams,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_redaction() {
        let c: HttpConfig = toml::from_str("").unwrap();
        assert_eq!(c.address.to_string(), "127.0.0.1:9587");
        assert!(c.admin_token.is_none() && !c.per_user_metrics);
        assert_eq!(c.per_user_metrics_cap, 1000);
        assert_eq!(c.readiness_timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        assert!(c.validate().is_ok());
        let bad: HttpConfig = toml::from_str("max_connections = 0").unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "http.max_connections must be at least 1"
        );
        let bad: HttpConfig = toml::from_str("header_read_timeout = \"0s\"").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.header_read_timeout"));
        let c: HttpConfig = toml::from_str(
            "address = \"0.0.0.0:9000\"\nadmin_token = \"0123456789abcdef-secret\"\nper_user_metrics = true\nper_user_metrics_cap = 5\nreadiness_timeout = \"500ms\"",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!toml::to_string(&c).unwrap().contains("secret"));
        assert!(c.admin_token().unwrap().is_some());
        assert_eq!(c.metrics_options().per_user_cap, 5);
        assert!(toml::from_str::<HttpConfig>("listen = \"x\"").is_err());
    }
}
