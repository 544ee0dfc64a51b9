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
