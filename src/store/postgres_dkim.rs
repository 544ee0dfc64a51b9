//! DKIM keys on PostgreSQL: the [`DkimStore`] contract.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::postgres::PgStore;
use super::*;

const COLUMNS: &str =
    "domain, selector, algorithm, public_key, status, created_at, retired_at, private_key";

fn info(row: &PgRow) -> StoreResult<DkimKeyInfo> {
    let algorithm: String = row.get("algorithm");
    let status: String = row.get("status");
    Ok(DkimKeyInfo {
        domain: row.get("domain"),
        selector: row.get("selector"),
        algorithm: DkimAlgorithm::parse(&algorithm)?,
        public_key: row.get("public_key"),
        active: status == "active",
        created_at: row.get("created_at"),
        retired_at: row.get("retired_at"),
    })
}

#[async_trait]
impl DkimStore for PgStore {
    async fn dkim_add(&self, key: &NewDkimKey, now: i64) -> StoreResult<()> {
        let domain = normalize_dkim_domain(&key.domain)?;
        let selector = normalize_dkim_selector(&key.selector)?;
        sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, status, created_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(&domain)
        .bind(&selector)
        .bind(key.algorithm.as_str())
        .bind(&key.private_key_pem)
        .bind(&key.public_key)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, &format!("DKIM key {selector}._domainkey.{domain}")))?;
        Ok(())
    }

    async fn dkim_list(&self) -> StoreResult<Vec<DkimKeyInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dkim_keys ORDER BY domain, selector"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "DKIM keys"))?;
        rows.iter().map(info).collect()
    }

    async fn dkim_retire(&self, domain: &str, selector: &str, now: i64) -> StoreResult<()> {
        let domain = normalize_dkim_domain(domain)?;
        let selector = normalize_dkim_selector(selector)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| map_sqlx(e, "DKIM key"))?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT status FROM dkim_keys WHERE domain = $1 AND selector = $2 FOR UPDATE",
        )
        .bind(&domain)
        .bind(&selector)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "DKIM key"))?;
        match found.as_deref() {
            None => {
                return Err(StoreError::NotFound(format!(
                    "DKIM key {selector}._domainkey.{domain}"
                )))
            }
            Some("active") => {
                sqlx::query(
                    "UPDATE dkim_keys SET status = 'retired', retired_at = $3
                     WHERE domain = $1 AND selector = $2",
                )
                .bind(&domain)
                .bind(&selector)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "DKIM key"))?;
            }
            Some(_) => {}
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "DKIM key"))
    }

    async fn dkim_active_keys(&self) -> StoreResult<Vec<DkimSigningKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dkim_keys WHERE status = 'active' ORDER BY domain, selector"
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
