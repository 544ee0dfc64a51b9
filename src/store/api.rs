//! What the HTTP submission API keeps in the store: API tokens (bound to
//! credentials, only their SHA-256 kept) and who submitted which message
//! (migration 0014). Implemented in `postgres_api.rs` and `sqlite_api.rs`.

use async_trait::async_trait;

use super::StoreResult;

/// The `password_hash` of a credential made for an API token: no password
/// verifies against it (see `password::verify`), so the token is the only
/// way to use the credential.
pub const TOKEN_ONLY_HASH: &str = "!api-token";

/// The credential an API token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub username: String,
    pub credential_id: i64,
    /// The stored SHA-256 (hex), compared again in constant time by the caller.
    pub token_hash: String,
}

/// One recipient of an API-submitted message and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientState {
    pub address: String,
    /// `queued`, `deferred` (queued after a failed attempt), `delivered`,
    /// `failed`, `expired`, `bounced` or `deleted`.
    pub state: String,
    pub attempts: u32,
    /// The last upstream reply, when there was one.
    pub reply: Option<String>,
    /// Milliseconds since the epoch of the last change known, if any.
    pub updated_at: Option<i64>,
}

/// API tokens and submitted-message ownership.
///
/// Contract: every method is one or two short statements.
#[async_trait]
pub trait ApiStore: Send + Sync {
    /// Sets the token hash (hex SHA-256) of credential `label` of
    /// `username`. `NotFound` if either is missing, `Conflict` if another
    /// credential holds the same hash.
    async fn token_set(&self, username: &str, label: &str, token_hash: &str) -> StoreResult<()>;
    /// The enabled credential of an enabled user whose token hash is
    /// `token_hash`, or `None`.
    async fn token_lookup(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>>;
    /// Records that `user_id` submitted message `message_id` to `recipients`.
    async fn api_message_add(
        &self,
        message_id: &str,
        user_id: i64,
        recipients: &[String],
        received_at: i64,
    ) -> StoreResult<()>;
    /// The recipients of message `message_id` and their states, if
    /// `user_id` submitted it through the API; `None` otherwise (unknown
    /// message, another user's, or pruned). A recipient still in the queue
    /// reads its queue row; one no longer there reads its last log entry.
    async fn api_message_status(
        &self,
        message_id: &str,
        user_id: i64,
    ) -> StoreResult<Option<Vec<RecipientState>>>;
    /// Forgets submissions received before `before`; returns how many.
    async fn api_message_prune(&self, before: i64) -> StoreResult<u64>;
}

/// Merges queue rows (address, status, attempts, last reply, next
/// attempt) and log rows (address, outcome, attempt, reply, at; oldest
/// first) into one state per envelope recipient, in envelope order.
pub(super) fn merge_states(
    recipients: &[String],
    queue: &[(String, String, i64, Option<String>)],
    log: &[(String, String, i64, Option<String>, i64)],
) -> Vec<RecipientState> {
    recipients
        .iter()
        .map(|address| {
            let last_log = log.iter().rev().find(|l| &l.0 == address);
            if let Some(q) = queue.iter().find(|q| &q.0 == address) {
                let state = if q.1 == "queued" && q.2 > 0 {
                    "deferred".to_string()
                } else {
                    q.1.clone()
                };
                return RecipientState {
                    address: address.clone(),
                    state,
                    attempts: q.2.max(0) as u32,
                    reply: q.3.clone().or_else(|| last_log.and_then(|l| l.3.clone())),
                    updated_at: last_log.map(|l| l.4),
                };
            }
            match last_log {
                Some(l) => RecipientState {
                    address: address.clone(),
                    state: l.1.clone(),
                    attempts: l.2.max(0) as u32,
                    reply: l.3.clone(),
                    updated_at: Some(l.4),
                },
                // Never queued under this id (cannot happen) or log pruned.
                None => RecipientState {
                    address: address.clone(),
                    state: "unknown".to_string(),
                    attempts: 0,
                    reply: None,
                    updated_at: None,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_rows_win_and_log_fills_in_the_rest() {
        let rcpts = vec!["a@x".to_string(), "b@x".to_string(), "c@x".to_string()];
        let queue = vec![
            ("a@x".to_string(), "queued".to_string(), 0, None),
            (
                "b@x".to_string(),
                "queued".to_string(),
                2,
                Some("451 later".to_string()),
            ),
        ];
        let log = vec![
            (
                "b@x".to_string(),
                "deferred".to_string(),
                2,
                Some("451 later".to_string()),
                5,
            ),
            (
                "c@x".to_string(),
                "deferred".to_string(),
                1,
                Some("451 x".to_string()),
                6,
            ),
            (
                "c@x".to_string(),
                "delivered".to_string(),
                2,
                Some("250 ok".to_string()),
                7,
            ),
        ];
        let s = merge_states(&rcpts, &queue, &log);
        assert_eq!(s[0].state, "queued");
        assert_eq!(s[1].state, "deferred");
        assert_eq!(s[1].updated_at, Some(5));
        assert_eq!(s[2].state, "delivered");
        assert_eq!(s[2].attempts, 2);
        assert_eq!(s[2].reply.as_deref(), Some("250 ok"));
    }
}
