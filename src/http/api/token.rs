//! API tokens: made by `postgate user credential add NAME LABEL --token`,
//! shown once, kept only as their SHA-256. A token is 32 random bytes, so
//! a fast hash is the right one (no dictionary to slow down); the lookup
//! goes by the hash and the stored hash is compared in constant time.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{credential_tag, identity_of};
use crate::smtp::ports::AuthOutcome;
use crate::store::Store;

/// Every token starts with this (so secret scanners and people can tell
/// what it is).
pub const PREFIX: &str = "pgt_";

/// A new random token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of `token`: lower-case hex SHA-256.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name the brute-force limits count a bearer attempt under: not one
/// shared name (a stranger's bad guesses would lock every token out), but
/// one per token guessed; the per-IP limit still counts them all.
pub fn limit_name(token: &str) -> String {
    format!("token:{}", &hash(token)[..16])
}

/// The identity of the enabled credential that holds `token`, of an
/// enabled user: `Failed` for any other token (malformed, unknown,
/// disabled, deleted), `Unavailable` when the store cannot say.
pub async fn authenticate(store: &dyn Store, token: &str) -> AuthOutcome {
    if !token.starts_with(PREFIX) || token.len() > 128 {
        return AuthOutcome::Failed;
    }
    let wanted = hash(token);
    let owner = match store.token_lookup(&wanted).await {
        Ok(Some(o)) => o,
        Ok(None) => return AuthOutcome::Failed,
        Err(e) => {
            tracing::warn!(error = %e, "API token lookup failed");
            return AuthOutcome::Unavailable;
        }
    };
    if !bool::from(owner.token_hash.as_bytes().ct_eq(wanted.as_bytes())) {
        return AuthOutcome::Failed;
    }
    let record = match store.login_lookup(&owner.username).await {
        Ok(Some(r)) => r,
        Ok(None) => return AuthOutcome::Failed,
        Err(e) => {
            tracing::warn!(error = %e, "login lookup failed");
            return AuthOutcome::Unavailable;
        }
    };
    match record
        .credentials
        .iter()
        .find(|c| c.id == owner.credential_id)
    {
        Some(c) => AuthOutcome::Ok(identity_of(&record, c, credential_tag(&c.password_hash))),
        None => AuthOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(limit_name(&a), limit_name(&b));
    }
}
