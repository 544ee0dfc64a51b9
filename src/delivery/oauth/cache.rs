//! Cached tokens per (upstream, mailbox): fetched once however many
//! sessions need one at the same moment (the first caller fetches while
//! the others wait on the same slot), refreshed ahead of expiry, dropped
//! when an upstream refuses them, and a failed fetch is remembered for a
//! moment so a queue of waiting mail does not hammer a failing endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::{info, warn};

use super::endpoint::{AccessToken, TokenError};
use super::source::TokenSource;
use crate::metrics::OAuthMetrics;

/// How long a failed fetch answers for the slot without a new request.
const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// A token handed to one session.
pub struct Lease {
    /// The bearer token: send only in AUTH XOAUTH2, never log.
    pub secret: String,
    /// Fetched by this call (a refusal of it is not worth a refresh).
    pub fresh: bool,
    /// Time left before it expires.
    pub expires_in: Duration,
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    failed: Option<(Instant, TokenError)>,
}

/// The tokens of one upstream.
pub struct TokenCache {
    upstream: String,
    source: TokenSource,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    metrics: OAuthMetrics,
}

/// When a token of `lifetime` is renewed: five minutes before it expires,
/// or at three quarters of a lifetime shorter than twenty minutes.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 4).min(Duration::from_secs(300))
}

impl TokenCache {
    /// An empty cache over `source` for upstream `upstream`.
    pub fn new(upstream: &str, source: TokenSource, metrics: OAuthMetrics) -> Self {
        TokenCache {
            upstream: upstream.to_string(),
            source,
            slots: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The token source (for `upstream test`).
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    fn slot(&self, mailbox: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let key = if self.source.per_mailbox() {
            mailbox.to_ascii_lowercase()
        } else {
            String::new()
        };
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// A token for `mailbox`: the cached one until its refresh time, else a
    /// new one (one request per slot however many callers wait). A failed
    /// refresh falls back to the cached token while it has not expired.
    pub async fn token(&self, mailbox: &str) -> Result<Lease, TokenError> {
        let slot = self.slot(mailbox);
        let mut s = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = s.cached.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(lease(c, false, now));
        }
        if let Some((at, e)) = &s.failed {
            if now < *at + FAILURE_HOLD {
                return match s.cached.as_ref().filter(|c| now < c.expires_at) {
                    Some(c) => Ok(lease(c, false, now)),
                    None => Err(e.clone()),
                };
            }
        }
        let fetched = self.source.fetch(mailbox).await;
        self.metrics.token_request(match &fetched {
            Ok(_) => "ok",
            Err(e) => e.result(),
        });
        let now = Instant::now();
        match fetched {
            Ok(token) => {
                info!(upstream = %self.upstream, mailbox = %mailbox, expires_in = token.lifetime.as_secs(), "OAuth token obtained");
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    + token.lifetime;
                self.metrics.set_token_expiry(unix.as_secs_f64());
                s.failed = None;
                s.cached = Some(Cached {
                    refresh_at: now + refresh_after(token.lifetime),
                    expires_at: now + token.lifetime,
                    token,
                });
                Ok(lease(s.cached.as_ref().expect("just set"), true, now))
            }
            Err(e) => {
                warn!(upstream = %self.upstream, mailbox = %mailbox, error = %e, "OAuth token request failed");
                s.failed = Some((now, e.clone()));
                match s.cached.as_ref().filter(|c| now < c.expires_at) {
                    Some(c) => Ok(lease(c, false, now)),
                    None => Err(e),
                }
            }
        }
    }

    /// Forgets the cached token of `mailbox` if it is still `secret` (an
    /// upstream refused it): the next [`token`](Self::token) fetches anew.
    pub async fn invalidate(&self, mailbox: &str, secret: &str) {
        let slot = self.slot(mailbox);
        let mut s = slot.lock().await;
        if s.cached.as_ref().is_some_and(|c| c.token.secret == secret) {
            warn!(upstream = %self.upstream, mailbox = %mailbox, "upstream refused the cached OAuth token: dropped");
            s.cached = None;
            s.failed = None;
        }
    }
}

fn lease(c: &Cached, fresh: bool, now: Instant) -> Lease {
    Lease {
        secret: c.token.secret.clone(),
        fresh,
        expires_in: c.expires_at.saturating_duration_since(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(4)),
            Duration::from_secs(3)
        );
        assert!(refresh_after(Duration::from_secs(1)) < Duration::from_secs(1));
    }
}
