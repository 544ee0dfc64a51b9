//! The SQLite WAL under sustained enqueues (issue 16 item 4). Commits no
//! longer run checkpoints (`wal_autocheckpoint = 0`: a checkpoint inside
//! the enqueue writer's commit was the latency tail); the store's own
//! checkpoint task must still keep the WAL bounded. SQLite only: the WAL
//! is SQLite's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::sqlite_store;
use crate::delivery_queue::message;

const BODY: usize = 256 * 1024;
const MESSAGES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_sustained_enqueues() {
    let t = sqlite_store().await;
    let path = postgate::store::sqlite_path(&t.url).unwrap().to_string();
    let wal = format!("{path}-wal");
    let max_wal = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_wal, stop, wal) = (max_wal.clone(), stop.clone(), wal.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(&wal) {
                    max_wal.fetch_max(m.len(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let body = vec![b'x'; BODY];
    let started = Instant::now();
    let now = postgate::time::now_ms();
    for _ in 0..MESSAGES {
        let m = message("a@example.com", &["r@example.org"], &body, now);
        t.store.enqueue(&m).await.unwrap();
    }
    let took = started.elapsed();
    // Let the checkpoint task catch up, then everything is in the database file.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let written = (MESSAGES * BODY) as u64;
    let max_wal = max_wal.load(Ordering::Relaxed);
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(
        db >= written,
        "the checkpoints copied the WAL into the database file: {db} bytes for {written} enqueued (took {took:?})"
    );
    assert!(
        max_wal > 0 && max_wal < written / 2,
        "the WAL grew to {max_wal} bytes while {written} bytes were enqueued in {took:?}: it is not checkpointed"
    );
}
