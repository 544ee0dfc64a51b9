//! Queue administration for the CLI (`postgate queue ...`) and the HTTP
//! admin endpoint, working against the live store: safe while delivery
//! runs on any node.

use crate::store::{QueueDetail, QueueEntry, QueueFilter, QueueState, Store, StoreResult};

use super::now_ms;

/// Messages in the queue, oldest first, at most `limit`.
pub async fn list(store: &dyn Store, limit: u32) -> StoreResult<Vec<QueueEntry>> {
    store.queue_list(limit).await
}

/// Every message matching `filter` and, when given, in `state` at `now`,
/// oldest first.
pub async fn select(
    store: &dyn Store,
    filter: &QueueFilter,
    state: Option<QueueState>,
    now: i64,
) -> StoreResult<Vec<QueueEntry>> {
    let mut entries = store.queue_select(filter).await?;
    if let Some(state) = state {
        entries.retain(|e| e.state(now) == state);
    }
    Ok(entries)
}

/// One message: envelope, each recipient's state and the delivery log.
/// `NotFound` when the id is not queued.
pub async fn show(store: &dyn Store, id: &str) -> StoreResult<QueueDetail> {
    store.queue_show(id).await
}

/// Makes every pending recipient of `id` due now; returns how many.
/// `NotFound` when the id is not queued.
pub async fn retry(store: &dyn Store, id: &str) -> StoreResult<u64> {
    store.queue_retry(id, now_ms()).await
}

/// Deletes `id` without a bounce (logged as `deleted`). `NotFound` when the
/// id is not queued.
pub async fn delete(store: &dyn Store, id: &str) -> StoreResult<()> {
    store.queue_delete(id, now_ms()).await
}

/// Holds `id`: its pending recipients are never delivered until
/// [`release`]d. Returns how many recipients changed; `NotFound` when the
/// id is not queued.
pub async fn hold(store: &dyn Store, id: &str) -> StoreResult<u64> {
    store.queue_hold(id, true, now_ms()).await
}

/// Releases a held `id`: delivery resumes at each recipient's next attempt
/// time. Returns how many recipients changed; `NotFound` when not queued.
pub async fn release(store: &dyn Store, id: &str) -> StoreResult<u64> {
    store.queue_hold(id, false, now_ms()).await
}
