//! Row mapping shared by both backends (same column names and types).

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{LimitOverrides, LoginCredential, LoginRecord, UserDetail};

/// The `max_*` override columns of a `users` row (`with_sessions`: it has
/// `max_concurrent_sessions`) or a `credentials` row, named `{prefix}max_*`
/// (a prefix tells a joined row's credential columns from its user's).
/// NULL, or a value that does not fit a `u32`, is "no override".
pub(super) fn limit_overrides<'r, R>(
    row: &'r R,
    prefix: &str,
    with_sessions: bool,
) -> LimitOverrides
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let get = |column: &str| {
        row.get::<Option<i64>, _>(format!("{prefix}{column}").as_str())
            .and_then(|n| u32::try_from(n).ok())
    };
    LimitOverrides {
        messages_per_minute: get("max_messages_per_minute"),
        messages_per_hour: get("max_messages_per_hour"),
        messages_per_day: get("max_messages_per_day"),
        recipients_per_day: get("max_recipients_per_day"),
        concurrent_sessions: with_sessions
            .then(|| get("max_concurrent_sessions"))
            .flatten(),
    }
}

/// The columns [`user_detail`] reads from `users`.
pub(super) const USER_DETAIL_COLUMNS: &str = "id, username, enabled, created_at, updated_at,
    max_messages_per_minute, max_messages_per_hour, max_messages_per_day,
    max_recipients_per_day, max_concurrent_sessions";

/// [`USER_DETAIL_COLUMNS`] for PostgreSQL, whose `max_*` columns are
/// `integer`: read as `bigint` like the SQLite ones.
pub(super) const USER_DETAIL_COLUMNS_PG: &str = "id, username, enabled, created_at, updated_at,
    max_messages_per_minute::bigint AS max_messages_per_minute,
    max_messages_per_hour::bigint AS max_messages_per_hour,
    max_messages_per_day::bigint AS max_messages_per_day,
    max_recipients_per_day::bigint AS max_recipients_per_day,
    max_concurrent_sessions::bigint AS max_concurrent_sessions";

/// The [`UserDetail`] of a `users` row selected with [`USER_DETAIL_COLUMNS`].
pub(super) fn user_detail<'r, R>(row: &'r R) -> UserDetail
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    UserDetail {
        id: row.get("id"),
        username: row.get("username"),
        enabled: row.get("enabled"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        limits: limit_overrides(row, "", true),
    }
}

/// The [`LoginRecord`] of a `login_lookup` result: one row per enabled
/// credential (user columns repeated, credential columns prefixed `c_`; a
/// user without one gives a single row whose `c_id` is NULL), with the
/// user's sender patterns already decoded. `None` when there is no row.
pub(super) fn login_record<'r, R>(found: &'r [R], senders: Vec<String>) -> Option<LoginRecord>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<bool>: Decode<'r, R::Database> + Type<R::Database>,
{
    let u = found.first()?;
    Some(LoginRecord {
        user_id: u.get("id"),
        username: u.get("username"),
        limits: limit_overrides(u, "", true),
        normalize_line_endings: u.get("normalize_line_endings"),
        credentials: found
            .iter()
            .filter_map(|c| {
                Some(LoginCredential {
                    id: c.get::<Option<i64>, _>("c_id")?,
                    label: c.get("c_label"),
                    password_hash: c.get("c_password_hash"),
                    limits: limit_overrides(c, "c_", false),
                })
            })
            .collect(),
        senders,
    })
}
