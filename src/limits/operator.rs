//! What `postgate limits show|reset` and the admin endpoint do.

use std::net::IpAddr;

use super::{keys, Limiter, LimitsError, LimitsSnapshot};
use crate::store::{AccountStore, StoreError};

/// The current counters and lockouts.
pub async fn show(limiter: &Limiter) -> Result<LimitsSnapshot, LimitsError> {
    limiter.snapshot().await
}

/// The IP address (or, for an IPv6 prefix subject, its network address)
/// of an `ip:` subject.
fn subject_ip(subject: &str) -> Option<IpAddr> {
    let addr = keys::unescape(subject.strip_prefix("ip:")?);
    addr.split('/').next()?.parse().ok()
}

/// Clears every counter and lockout of `target`: an IP address, a CIDR
/// network (every IP counter inside it), a username (its failed logins
/// and lockout, and its message quotas and those of its credentials,
/// keyed by id), `uid:ID` or `cred:ID`. Anything else is
/// [`LimitsError::Invalid`]: an unknown name is refused rather than
/// reported as "removed 0". Returns how many counters were removed.
pub async fn reset(
    limiter: &Limiter,
    store: &dyn AccountStore,
    target: &str,
) -> Result<u64, LimitsError> {
    let target = target.trim();
    if target.is_empty() {
        return Err(LimitsError::Invalid(
            "reset needs an IP address, a username, a CIDR network, uid:ID or cred:ID".into(),
        ));
    }
    if target.parse::<IpAddr>().is_ok() {
        return limiter.reset(target).await;
    }
    if let Ok(net) = target.parse::<ipnet::IpNet>() {
        let snapshot = limiter.snapshot().await?;
        let mut subjects: Vec<&str> = snapshot
            .counters
            .iter()
            .filter(|c| subject_ip(&c.subject).is_some_and(|ip| net.contains(&ip)))
            .map(|c| c.subject.as_str())
            .collect();
        subjects.dedup();
        let mut removed = 0;
        for s in subjects {
            if let Some(ip) = subject_ip(s) {
                removed += limiter.reset(&ip.to_string()).await?;
            }
        }
        return Ok(removed);
    }
    if let Some(id) = target
        .strip_prefix("uid:")
        .or_else(|| target.strip_prefix("cred:"))
    {
        if id.parse::<i64>().is_err() {
            return Err(LimitsError::Invalid(format!(
                "{target:?}: uid: and cred: take a number (see `postgate limits show`)"
            )));
        }
        return limiter.reset(target).await;
    }
    let known = match store.user_get(target).await {
        Ok(_) => true,
        Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => {
            // A name that is no user may still be locked out (someone
            // guessing at it): its counters are there to clear.
            let subject = keys::unescape(&keys::user_subject(target));
            limiter
                .snapshot()
                .await?
                .counters
                .iter()
                .any(|c| c.subject == subject)
        }
        Err(e) => return Err(e.into()),
    };
    if !known {
        return Err(LimitsError::Invalid(format!(
            "{target:?} is neither an IP address, a CIDR network, a user (nor a name with counters), uid:ID nor cred:ID"
        )));
    }
    let mut removed = limiter.reset(target).await?;
    if let Ok(Some(record)) = store.login_lookup(target).await {
        removed += limiter.reset(&format!("uid:{}", record.user_id)).await?;
        for c in &record.credentials {
            removed += limiter.reset(&format!("cred:{}", c.id)).await?;
        }
    } else if let Ok(user) = store.user_get(target).await {
        removed += limiter.reset(&format!("uid:{}", user.id)).await?;
    }
    Ok(removed)
}
