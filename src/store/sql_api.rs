//! [`ApiStore`] (API tokens and API submissions) written once for both
//! backends: every statement is the same text on PostgreSQL and SQLite
//! (`$N` placeholders, `true`/`false`, counts cast to BIGINT), so
//! [`api_store!`] expands this one implementation for each store type
//! (the store needs a `pool` field).

macro_rules! api_store {
    ($store:ty) => {
        // A block of its own, so the imports stay out of the backend module.
        const _: () = {
        use super::api::{merge_states, ApiStore, RecipientState, TokenOwner};
        use super::*;
        use sqlx::Row;

        #[async_trait::async_trait]
        impl ApiStore for $store {
            async fn token_set(&self, username: &str, label: &str, token_hash: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "UPDATE credentials SET token_hash = $1, updated_at = $2
                     WHERE label = $4 AND user_id = (SELECT id FROM users WHERE username = $3)",
                )
                .bind(token_hash)
                .bind(crate::time::now_ms())
                .bind(&name)
                .bind(label)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "API token"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!(
                        "credential {label:?} of user {name:?}"
                    )));
                }
                Ok(())
            }

            async fn token_lookup(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>> {
                let row = sqlx::query(
                    "SELECT u.username, c.id, c.token_hash FROM credentials c JOIN users u ON u.id = c.user_id
                     WHERE c.token_hash = $1 AND c.enabled = true AND u.enabled = true",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "API token"))?;
                Ok(row.map(|r| TokenOwner {
                    username: r.get(0),
                    credential_id: r.get(1),
                    token_hash: r.get(2),
                }))
            }

            async fn api_message_add(
                &self,
                message_id: &str,
                user_id: i64,
                recipients: &[String],
                received_at: i64,
            ) -> StoreResult<()> {
                let rcpts = serde_json::to_string(recipients).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "INSERT INTO api_messages (message_id, user_id, recipients, received_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(message_id)
                .bind(user_id)
                .bind(rcpts)
                .bind(received_at)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "API message"))?;
                Ok(())
            }

            async fn api_message_status(
                &self,
                message_id: &str,
                user_id: i64,
            ) -> StoreResult<Option<Vec<RecipientState>>> {
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| map_sqlx(e, "API message"))?;
                let owned = sqlx::query(
                    "SELECT recipients FROM api_messages WHERE message_id = $1 AND user_id = $2",
                )
                .bind(message_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "API message"))?;
                let Some(owned) = owned else {
                    return Ok(None);
                };
                let recipients: Vec<String> =
                    serde_json::from_str(owned.get::<String, _>(0).as_str()).unwrap_or_default();
                let queue = sqlx::query(
                    "SELECT recipient, status, CAST(attempts AS BIGINT), last_reply FROM queue_recipients
                     WHERE message_id = $1 ORDER BY id",
                )
                .bind(message_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "API message"))?
                .iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<i64, _>(2),
                        r.get::<Option<String>, _>(3),
                    )
                })
                .collect::<Vec<_>>();
                let log = sqlx::query(
                    "SELECT recipient, outcome, CAST(attempt AS BIGINT), reply, at FROM delivery_log
                     WHERE message_id = $1 ORDER BY at, id",
                )
                .bind(message_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "API message"))?
                .iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<i64, _>(2),
                        r.get::<Option<String>, _>(3),
                        r.get::<i64, _>(4),
                    )
                })
                .collect::<Vec<_>>();
                tx.commit().await.map_err(|e| map_sqlx(e, "API message"))?;
                Ok(Some(merge_states(&recipients, &queue, &log)))
            }

            async fn api_message_prune(&self, before: i64) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM api_messages WHERE received_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "API message"))?;
                Ok(done.rows_affected())
            }
        }
        };
    };
}
pub(super) use api_store;
