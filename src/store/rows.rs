//! Row mapping shared by both backends (same column names and types).

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::LimitOverrides;

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
