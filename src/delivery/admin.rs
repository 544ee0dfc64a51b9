//! Queue administration for the CLI (`postgate queue list|show|retry|delete`),
//! working against the live store: safe while delivery runs on any node.

use crate::store::{QueueDetail, QueueEntry, Store, StoreResult};

use super::now_ms;

/// Messages in the queue, oldest first, at most `limit`.
pub async fn list(store: &dyn Store, limit: u32) -> StoreResult<Vec<QueueEntry>> {
    store.queue_list(limit).await
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
