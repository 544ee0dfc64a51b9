//! [`DkimStore`] written once for both backends. Every statement is the same
//! text on PostgreSQL and SQLite (`$N` placeholders, `true`/`false`), so
//! [`dkim_store!`] expands this one implementation for each store type
//! (the store needs a `pool` field).

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::*;

pub(super) const COLUMNS: &str =
    "domain, selector, algorithm, public_key, status, inactive, created_at, retired_at, private_key";

/// The [`DkimKeyInfo`] of a row selected with [`COLUMNS`].
pub(super) fn info<'r, R>(row: &'r R) -> StoreResult<DkimKeyInfo>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let algorithm: String = row.get("algorithm");
    let status: String = row.get("status");
    Ok(DkimKeyInfo {
        domain: row.get("domain"),
        selector: row.get("selector"),
        algorithm: DkimAlgorithm::parse(&algorithm)?,
        public_key: row.get("public_key"),
        active: status == "active",
        inactive: row.get("inactive"),
        created_at: row.get("created_at"),
        retired_at: row.get("retired_at"),
    })
}

pub(super) fn names(domain: &str, selector: &str) -> StoreResult<(String, String)> {
    Ok((
        normalize_dkim_domain(domain)?,
        normalize_dkim_selector(selector)?,
    ))
}

pub(super) fn not_found(domain: &str, selector: &str) -> StoreError {
    StoreError::NotFound(format!("DKIM key {selector}._domainkey.{domain}"))
}

/// Implements [`DkimStore`] for `$store` (a backend with a `pool` field).
macro_rules! dkim_store {
    ($store:ty) => {
        impl $store {
            /// The (status, inactive) of a key, `None` when there is no such key.
            async fn dkim_status(
                &self,
                domain: &str,
                selector: &str,
            ) -> StoreResult<Option<(String, bool)>> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT status, inactive FROM dkim_keys WHERE domain = $1 AND selector = $2",
                )
                .bind(domain)
                .bind(selector)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM key"))?;
                Ok(row.map(|r| (r.get("status"), r.get("inactive"))))
            }

            async fn dkim_insert(
                &self,
                key: &NewDkimKey,
                now: i64,
                inactive: bool,
            ) -> StoreResult<()> {
                let (domain, selector) = $crate::store::sql_dkim::names(&key.domain, &key.selector)?;
                sqlx::query(
                    "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, status, inactive, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
                )
                .bind(&domain)
                .bind(&selector)
                .bind(key.algorithm.as_str())
                .bind(&key.private_key_pem)
                .bind(&key.public_key)
                .bind(inactive)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, &format!("DKIM key {selector}._domainkey.{domain}")))?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl DkimStore for $store {
            async fn dkim_add(&self, key: &NewDkimKey, now: i64) -> StoreResult<()> {
                self.dkim_insert(key, now, false).await
            }

            async fn dkim_add_inactive(&self, key: &NewDkimKey, now: i64) -> StoreResult<()> {
                self.dkim_insert(key, now, true).await
            }

            async fn dkim_list(&self) -> StoreResult<Vec<DkimKeyInfo>> {
                use $crate::store::sql_dkim::{info, COLUMNS};
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM dkim_keys ORDER BY domain, selector"
                ))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM keys"))?;
                rows.iter().map(info).collect()
            }

            async fn dkim_retire(&self, domain: &str, selector: &str, now: i64) -> StoreResult<()> {
                use $crate::store::sql_dkim::{names, not_found};
                let (domain, selector) = names(domain, selector)?;
                let done = sqlx::query(
                    "UPDATE dkim_keys SET status = 'retired', retired_at = $3
                     WHERE domain = $1 AND selector = $2 AND status = 'active'",
                )
                .bind(&domain)
                .bind(&selector)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM key"))?;
                if done.rows_affected() == 0 {
                    return Err(match self.dkim_status(&domain, &selector).await? {
                        None => not_found(&domain, &selector),
                        Some(_) => StoreError::Conflict(format!(
                            "DKIM key {selector}._domainkey.{domain} is already retired"
                        )),
                    });
                }
                Ok(())
            }

            async fn dkim_activate(&self, domain: &str, selector: &str) -> StoreResult<()> {
                use $crate::store::sql_dkim::{names, not_found};
                let (domain, selector) = names(domain, selector)?;
                let done = sqlx::query(
                    "UPDATE dkim_keys SET inactive = false
                     WHERE domain = $1 AND selector = $2 AND status = 'active' AND inactive = true",
                )
                .bind(&domain)
                .bind(&selector)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM key"))?;
                if done.rows_affected() == 0 {
                    return Err(match self.dkim_status(&domain, &selector).await? {
                        None => not_found(&domain, &selector),
                        Some((st, _)) if st == "retired" => StoreError::Conflict(format!(
                            "DKIM key {selector}._domainkey.{domain} is retired: a retired key never signs again (generate a new selector)"
                        )),
                        Some(_) => StoreError::Conflict(format!(
                            "DKIM key {selector}._domainkey.{domain} is already active"
                        )),
                    });
                }
                Ok(())
            }

            async fn dkim_delete(&self, domain: &str, selector: &str) -> StoreResult<()> {
                use $crate::store::sql_dkim::{names, not_found};
                let (domain, selector) = names(domain, selector)?;
                let done = sqlx::query(
                    "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2
                       AND (status = 'retired' OR inactive = true)",
                )
                .bind(&domain)
                .bind(&selector)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM key"))?;
                if done.rows_affected() == 0 {
                    return Err(match self.dkim_status(&domain, &selector).await? {
                        None => not_found(&domain, &selector),
                        Some(_) => StoreError::Conflict(format!(
                            "DKIM key {selector}._domainkey.{domain} is active and signing: retire it first (postgate dkim retire)"
                        )),
                    });
                }
                Ok(())
            }

            async fn dkim_active_keys(&self) -> StoreResult<Vec<DkimSigningKey>> {
                use sqlx::Row;
                use $crate::store::sql_dkim::{info, COLUMNS};
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM dkim_keys WHERE status = 'active' AND inactive = false ORDER BY domain, selector"
                ))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "DKIM keys"))?;
                rows.iter()
                    .map(|row| {
                        Ok(DkimSigningKey {
                            info: info(row)?,
                            private_key_pem: row.get("private_key"),
                        })
                    })
                    .collect()
            }
        }
    };
}
pub(super) use dkim_store;
