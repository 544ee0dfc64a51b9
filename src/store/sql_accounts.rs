//! [`AccountStore`] written once for both backends: every statement is the
//! same text on PostgreSQL and SQLite but for the login lookup's sender
//! patterns (an array on PostgreSQL, JSON on SQLite), so [`account_store!`]
//! expands this one implementation for each store type.

/// Implements [`AccountStore`](super::AccountStore) for `$store`: a backend
/// with a `pool` field; `$user_detail_columns` is its
/// [`super::rows::USER_DETAIL_COLUMNS`] (or the PostgreSQL variant);
/// `$senders` is the SQL (a literal) of user `u`'s sender patterns, which
/// its inherent `login_senders` decodes, sorted, from column `senders`.
macro_rules! account_store {
    ($store:ty, $user_detail_columns:expr, $senders:literal) => {
        impl $store {
            /// The id of user `username`; `NotFound` if there is none.
            async fn account_user_id(&self, username: &str) -> StoreResult<i64> {
                let name = normalize_username(username)?;
                sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE username = $1")
                    .bind(&name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "user"))?
                    .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))
            }
        }

        #[async_trait::async_trait]
        impl AccountStore for $store {
            async fn user_add(&self, username: &str, label: &str, password_hash: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                validate_label(label)?;
                let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(e, "user"))?;
                let inserted = async {
                    let id: i64 =
                        sqlx::query_scalar("INSERT INTO users (username) VALUES ($1) RETURNING id")
                            .bind(&name)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(|e| map_sqlx(e, &format!("user {name:?}")))?;
                    sqlx::query(
                        "INSERT INTO credentials (user_id, label, password_hash) VALUES ($1, $2, $3)",
                    )
                    .bind(id)
                    .bind(label)
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, &format!("credential {label:?}")))?;
                    Ok::<(), StoreError>(())
                }
                .await;
                match inserted {
                    Ok(()) => tx.commit().await.map_err(|e| map_sqlx(e, "user")),
                    Err(e) => {
                        // Roll back now rather than on drop, so no lock outlives the call.
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }

            async fn credential_set_hash(
                &self,
                username: &str,
                label: &str,
                password_hash: &str,
            ) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "UPDATE credentials SET password_hash = $1, updated_at = $2
                     WHERE label = $4 AND user_id = (SELECT id FROM users WHERE username = $3)",
                )
                .bind(password_hash)
                .bind($crate::time::now_ms())
                .bind(&name)
                .bind(label)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "credential"))?;
                if done.rows_affected() == 0 {
                    self.account_user_id(&name).await?;
                    return Err(StoreError::NotFound(format!(
                        "credential {label:?} of user {name:?}"
                    )));
                }
                Ok(())
            }

            async fn user_set_enabled(&self, username: &str, enabled: bool) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done =
                    sqlx::query("UPDATE users SET enabled = $1, updated_at = $2 WHERE username = $3")
                        .bind(enabled)
                        .bind($crate::time::now_ms())
                        .bind(&name)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| map_sqlx(e, "user"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {name:?}")));
                }
                Ok(())
            }

            async fn user_delete(&self, username: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query("DELETE FROM users WHERE username = $1")
                    .bind(&name)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "user"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {name:?}")));
                }
                Ok(())
            }

            async fn user_list(&self) -> StoreResult<Vec<UserSummary>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT u.id, u.username, u.enabled, u.created_at,
                            (SELECT count(*) FROM credentials c WHERE c.user_id = u.id) AS creds,
                            (SELECT count(*) FROM sender_permissions s WHERE s.user_id = u.id) AS senders
                     FROM users u ORDER BY u.username",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "users"))?;
                Ok(rows
                    .iter()
                    .map(|r| UserSummary {
                        id: r.get("id"),
                        username: r.get("username"),
                        enabled: r.get("enabled"),
                        credentials: r.get("creds"),
                        senders: r.get("senders"),
                        created_at: r.get("created_at"),
                    })
                    .collect())
            }

            async fn user_set_limits(&self, username: &str, l: &LimitOverrides) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "UPDATE users SET max_messages_per_minute = $1, max_messages_per_hour = $2,
                            max_messages_per_day = $3, max_recipients_per_day = $4,
                            max_concurrent_sessions = $5, updated_at = $6
                     WHERE username = $7",
                )
                .bind(l.messages_per_minute.map(i64::from))
                .bind(l.messages_per_hour.map(i64::from))
                .bind(l.messages_per_day.map(i64::from))
                .bind(l.recipients_per_day.map(i64::from))
                .bind(l.concurrent_sessions.map(i64::from))
                .bind($crate::time::now_ms())
                .bind(&name)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "user limits"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {name:?}")));
                }
                Ok(())
            }

            async fn credential_add(
                &self,
                username: &str,
                label: &str,
                password_hash: &str,
            ) -> StoreResult<()> {
                let name = normalize_username(username)?;
                validate_label(label)?;
                let done = sqlx::query(
                    "INSERT INTO credentials (user_id, label, password_hash)
                     SELECT id, $2, $3 FROM users WHERE username = $1",
                )
                .bind(&name)
                .bind(label)
                .bind(password_hash)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, &format!("credential {label:?} of user {name:?}")))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {name:?}")));
                }
                Ok(())
            }

            async fn credential_list(&self, username: &str) -> StoreResult<Vec<CredentialSummary>> {
                use sqlx::Row;
                let uid = self.account_user_id(username).await?;
                let rows = sqlx::query(
                    "SELECT label, enabled, created_at, last_used_at FROM credentials WHERE user_id = $1 ORDER BY label",
                )
                .bind(uid)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "credentials"))?;
                Ok(rows
                    .iter()
                    .map(|r| CredentialSummary {
                        label: r.get("label"),
                        enabled: r.get("enabled"),
                        created_at: r.get("created_at"),
                        last_used_at: r.get("last_used_at"),
                    })
                    .collect())
            }

            async fn credential_set_enabled(
                &self,
                username: &str,
                label: &str,
                enabled: bool,
            ) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "UPDATE credentials SET enabled = $1, updated_at = $2
                     WHERE label = $3 AND user_id = (SELECT id FROM users WHERE username = $4)",
                )
                .bind(enabled)
                .bind($crate::time::now_ms())
                .bind(label)
                .bind(&name)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "credential"))?;
                if done.rows_affected() == 0 {
                    self.account_user_id(&name).await?;
                    return Err(StoreError::NotFound(format!(
                        "credential {label:?} of user {name:?}"
                    )));
                }
                Ok(())
            }

            async fn user_get(&self, username: &str) -> StoreResult<UserDetail> {
                let name = normalize_username(username)?;
                let row = sqlx::query(&format!(
                    "SELECT {} FROM users WHERE username = $1",
                    $user_detail_columns
                ))
                .bind(&name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "user"))?
                .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))?;
                Ok($crate::store::rows::user_detail(&row))
            }

            async fn credential_revoke(&self, username: &str, label: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "DELETE FROM credentials WHERE label = $2 AND user_id = (SELECT id FROM users WHERE username = $1)",
                )
                .bind(&name)
                .bind(label)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "credential"))?;
                if done.rows_affected() == 0 {
                    self.account_user_id(&name).await?;
                    return Err(StoreError::NotFound(format!(
                        "credential {label:?} of user {name:?}"
                    )));
                }
                Ok(())
            }

            async fn sender_allow(&self, username: &str, pattern: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "INSERT INTO sender_permissions (user_id, pattern) SELECT id, $2 FROM users WHERE username = $1",
                )
                .bind(&name)
                .bind(pattern)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, &format!("sender permission {pattern:?} of user {name:?}")))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {name:?}")));
                }
                Ok(())
            }

            async fn sender_revoke(&self, username: &str, pattern: &str) -> StoreResult<()> {
                let name = normalize_username(username)?;
                let done = sqlx::query(
                    "DELETE FROM sender_permissions WHERE pattern = $2 AND user_id = (SELECT id FROM users WHERE username = $1)",
                )
                .bind(&name)
                .bind(pattern)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "sender permission"))?;
                if done.rows_affected() == 0 {
                    self.account_user_id(&name).await?;
                    return Err(StoreError::NotFound(format!(
                        "sender permission {pattern:?} of user {name:?}"
                    )));
                }
                Ok(())
            }

            async fn sender_list(&self, username: &str) -> StoreResult<Vec<String>> {
                let uid = self.account_user_id(username).await?;
                sqlx::query_scalar(
                    "SELECT pattern FROM sender_permissions WHERE user_id = $1 ORDER BY pattern",
                )
                .bind(uid)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "senders"))
            }

            async fn login_lookup(&self, username: &str) -> StoreResult<Option<LoginRecord>> {
                let Ok(name) = normalize_username(username) else {
                    return Ok(None);
                };
                // One statement (one snapshot): the user, a row per enabled
                // credential (none: one row of NULLs), the sender patterns.
                let found = sqlx::query(concat!(
                    "SELECT u.id, u.username,
                            CAST(u.max_messages_per_minute AS BIGINT) AS max_messages_per_minute,
                            CAST(u.max_messages_per_hour AS BIGINT) AS max_messages_per_hour,
                            CAST(u.max_messages_per_day AS BIGINT) AS max_messages_per_day,
                            CAST(u.max_recipients_per_day AS BIGINT) AS max_recipients_per_day,
                            CAST(u.max_concurrent_sessions AS BIGINT) AS max_concurrent_sessions,
                            u.normalize_line_endings, ",
                    $senders,
                    " AS senders,
                            c.id AS c_id, c.label AS c_label, c.password_hash AS c_password_hash,
                            CAST(c.max_messages_per_minute AS BIGINT) AS c_max_messages_per_minute,
                            CAST(c.max_messages_per_hour AS BIGINT) AS c_max_messages_per_hour,
                            CAST(c.max_messages_per_day AS BIGINT) AS c_max_messages_per_day,
                            CAST(c.max_recipients_per_day AS BIGINT) AS c_max_recipients_per_day
                     FROM users u LEFT JOIN credentials c ON c.user_id = u.id AND c.enabled = true
                     WHERE u.username = $1 AND u.enabled = true
                     ORDER BY c.id"
                ))
                .bind(&name)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "user"))?;
                let Some(u) = found.first() else {
                    return Ok(None);
                };
                Ok(super::rows::login_record(&found, Self::login_senders(u)?))
            }

            async fn credential_used(
                &self,
                credential_id: i64,
                now: i64,
                upgraded_hash: Option<&str>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE credentials SET last_used_at = $1,
                            password_hash = COALESCE($2, password_hash),
                            updated_at = CASE WHEN $2 IS NULL THEN updated_at ELSE $1 END
                     WHERE id = $3",
                )
                .bind(now)
                .bind(upgraded_hash)
                .bind(credential_id)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "credential"))?;
                Ok(())
            }
        }
    };
}
pub(super) use account_store;
