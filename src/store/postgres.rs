//! PostgreSQL backend: the production store, shared by every postgate node.

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::*;

/// Store on a PostgreSQL database, shared by any number of nodes.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The queue's group-commit writer task (see `postgres_writer`).
    pub(crate) writer: super::group_commit::EnqueueSender,
}

impl PgStore {
    /// Connects to `url`; fails with `Unavailable` naming the host (never the password).
    pub async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        Self::connect_as(url, options, "postgate").await
    }

    /// [`connect`](Self::connect), its sessions named `application_name` in
    /// `pg_stat_activity` unless `url` names them.
    pub async fn connect_as(
        url: &str,
        options: &StoreOptions,
        application_name: &str,
    ) -> StoreResult<Self> {
        let mut connect: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::Invalid(format!("bad postgres url {}: {e}", redact_url(url)))
        })?;
        if connect.get_application_name().is_none() {
            connect = connect.application_name(application_name);
        }
        // One direct connection first: the pool retries until its timeout and
        // would hide the real reason (refused, auth failed, no such database).
        use sqlx::Connection;
        let probe = tokio::time::timeout(
            options.connect_timeout,
            sqlx::PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "cannot connect to {}: timed out after {:?}",
                redact_url(url),
                options.connect_timeout
            ))
        })?
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to {}: {}",
                redact_url(url),
                redact_url(&e.to_string())
            ))
        })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        let writer = super::postgres_writer::spawn_writer(&pool);
        Ok(PgStore { pool, writer })
    }

    /// Whether postgate's migration table exists in this database (on the
    /// connection's search path, where migrations create it).
    pub async fn has_schema(&self) -> StoreResult<bool> {
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "schema"))
    }

    /// Applies pending migrations from `migrations/postgres` (embedded at build time).
    /// Safe to run from several nodes at once: sqlx takes an advisory lock.
    pub async fn migrate(&self) -> StoreResult<()> {
        run_migrations(&sqlx::migrate!("migrations/postgres"), &self.pool).await
    }

    /// A write transaction (PostgreSQL's default `BEGIN`).
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

super::sql_accounts::account_store!(
    PgStore,
    super::rows::USER_DETAIL_COLUMNS_PG,
    "ARRAY(SELECT pattern FROM sender_permissions WHERE user_id = u.id ORDER BY pattern)"
);

impl PgStore {
    /// The `senders` column of a login lookup (see `account_store!`).
    fn login_senders(u: &sqlx::postgres::PgRow) -> StoreResult<Vec<String>> {
        Ok(u.get("senders"))
    }
}

#[async_trait]
impl HealthStore for PgStore {
    async fn check_ready(&self) -> StoreResult<()> {
        // The enqueue path itself: the writer task, a transaction, a flushed
        // commit (`postgres_writer::commit_probe`).
        super::group_commit::probe(&self.writer).await
    }
}

super::sql_dkim::dkim_store!(PgStore);
super::sql_api::api_store!(PgStore);

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
}
