//! Account management used by the CLI: each function is one store
//! transaction, validating its input first so nothing is half-written.

use crate::password::{self, HashParams};
use crate::policy::SenderPattern;
use crate::store::{AccountStore, CredentialSummary, StoreError, UserSummary};

/// Why an account command failed; the message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error(transparent)]
    Pattern(#[from] crate::policy::PatternError),
}

/// The label of the credential `user add` creates.
pub const DEFAULT_LABEL: &str = "default";

async fn hash_off_thread(password: &str, params: &HashParams) -> Result<String, AccountError> {
    let (pw, params) = (password.to_string(), *params);
    tokio::task::spawn_blocking(move || password::hash(&pw, &params))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))?
        .map_err(AccountError::from)
}

/// Creates `username` with credential `label` for `password`.
pub async fn user_add(
    store: &dyn AccountStore,
    username: &str,
    label: &str,
    password: &str,
    params: &HashParams,
) -> Result<(), AccountError> {
    let hash = hash_off_thread(password, params).await?;
    Ok(store.user_add(username, label, &hash).await?)
}

/// Sets a new password on credential `label` of `username`.
pub async fn user_passwd(
    store: &dyn AccountStore,
    username: &str,
    label: &str,
    password: &str,
    params: &HashParams,
) -> Result<(), AccountError> {
    let hash = hash_off_thread(password, params).await?;
    match store.credential_set_hash(username, label, &hash).await {
        Err(StoreError::NotFound(what)) if what.starts_with("credential ") => {
            // Say which credentials exist: `user add` names its credential
            // "default", but a user made with SQL or another label has none.
            let labels: Vec<String> = store
                .credential_list(username)
                .await?
                .into_iter()
                .map(|c| c.label)
                .collect();
            let name = crate::store::normalize_username(username)?;
            Err(StoreError::Invalid(if labels.is_empty() {
                format!("user {name:?} has no credential {label:?} and no other: add one with `postgate user credential add`")
            } else {
                format!(
                    "user {name:?} has no credential {label:?}; its credentials: {} (choose one with --label)",
                    labels.join(", ")
                )
            })
            .into())
        }
        other => Ok(other?),
    }
}

/// Adds another named credential to `username`.
pub async fn credential_add(
    store: &dyn AccountStore,
    username: &str,
    label: &str,
    password: &str,
    params: &HashParams,
) -> Result<(), AccountError> {
    let hash = hash_off_thread(password, params).await?;
    Ok(store.credential_add(username, label, &hash).await?)
}

/// Adds credential `label` to `username` holding a new API token instead
/// of a password (see `http/api/token.rs`); returns the token, which is
/// stored only as its hash. Nothing is left behind if it fails.
pub async fn api_token_add(
    store: &dyn crate::store::Store,
    username: &str,
    label: &str,
) -> Result<String, AccountError> {
    let token = crate::http::api::token::generate();
    store
        .credential_add(username, label, crate::store::api::TOKEN_ONLY_HASH)
        .await?;
    if let Err(e) = store
        .token_set(username, label, &crate::http::api::token::hash(&token))
        .await
    {
        let _ = store.credential_revoke(username, label).await;
        return Err(e.into());
    }
    Ok(token)
}

/// Lists the credentials of `username`.
pub async fn credential_list(
    store: &dyn AccountStore,
    username: &str,
) -> Result<Vec<CredentialSummary>, AccountError> {
    Ok(store.credential_list(username).await?)
}

/// Lists all users.
pub async fn user_list(store: &dyn AccountStore) -> Result<Vec<UserSummary>, AccountError> {
    Ok(store.user_list().await?)
}

/// Allows `username` to send as `pattern` (`user@domain` or `@domain`).
pub async fn sender_allow(
    store: &dyn AccountStore,
    username: &str,
    pattern: &str,
) -> Result<String, AccountError> {
    let p = SenderPattern::parse(pattern)?;
    store.sender_allow(username, p.as_str()).await?;
    Ok(p.as_str().to_string())
}

/// Removes a sender permission.
pub async fn sender_revoke(
    store: &dyn AccountStore,
    username: &str,
    pattern: &str,
) -> Result<(), AccountError> {
    let p = SenderPattern::parse(pattern)?;
    Ok(store.sender_revoke(username, p.as_str()).await?)
}

/// Formats a Unix-millisecond timestamp as RFC 3339 UTC, for listings.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
