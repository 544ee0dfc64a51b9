//! What `postgate limits show|reset` and the admin endpoint do.

use super::{Limiter, LimitsError, LimitsSnapshot};
use crate::store::Store;

/// The current counters and lockouts.
pub async fn show(limiter: &Limiter) -> Result<LimitsSnapshot, LimitsError> {
    limiter.snapshot().await
}

/// Clears every counter and lockout of `target` (an IP address, a
/// username, `uid:ID` or `cred:ID`). For a username this includes the
/// user's message quotas (keyed by user id) as well as its failed logins.
/// Returns how many counters were removed.
pub async fn reset(limiter: &Limiter, store: &dyn Store, target: &str) -> Result<u64, LimitsError> {
    if target.trim().is_empty() {
        return Err(LimitsError::Invalid(
            "reset needs an IP address, a username, uid:ID or cred:ID".into(),
        ));
    }
    let mut removed = limiter.reset(target).await?;
    if target.parse::<std::net::IpAddr>().is_err() && !target.contains(':') {
        if let Ok(Some(record)) = store.login_lookup(target).await {
            removed += limiter.reset(&format!("uid:{}", record.user_id)).await?;
            for c in &record.credentials {
                removed += limiter.reset(&format!("cred:{}", c.id)).await?;
            }
        }
    }
    Ok(removed)
}
