//! The periodic queue sampler: queue depth and oldest message age are
//! properties of the shared store, not events, so they are read on a timer.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Metrics, StoreOperation};

/// One reading of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages with at least one recipient still `queued`.
    pub depth: u64,
    /// Age of the oldest such message; zero when the queue is empty.
    pub oldest_age: Duration,
}

/// Calls `sample` now and then every `interval` until `shutdown`, setting
/// `postgate_queue_depth` and `postgate_queue_oldest_message_age_seconds`.
/// Each call is timed as store operation `queue_stats`; a failed call counts
/// as a store error and leaves the gauges at their last value. Returns when
/// `shutdown` is cancelled.
pub async fn run_queue_sampler<F, Fut, E>(
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
    mut sample: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<QueueStats, E>>,
    E: std::fmt::Display,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sample() => r,
        };
        metrics.store_operation(
            StoreOperation::QueueStats,
            started.elapsed(),
            result.is_err(),
        );
        match result {
            Ok(stats) => metrics.set_queue_stats(stats.depth, stats.oldest_age),
            Err(e) => tracing::warn!(error = %e, "cannot sample the queue"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::metrics::MetricsOptions;

    fn gauge(m: &Metrics, name: &str) -> String {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn samples_on_the_interval_and_survives_errors() {
        let m = Arc::new(Metrics::new(&MetricsOptions::default()));
        let calls = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let c = calls.clone();
        let task = tokio::spawn(run_queue_sampler(
            m.clone(),
            Duration::from_secs(10),
            shutdown.clone(),
            move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 1 {
                        Err("store down")
                    } else {
                        Ok(QueueStats {
                            depth: 5 + n,
                            oldest_age: Duration::from_secs(60 * n),
                        })
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "samples at once");
        assert_eq!(gauge(&m, "postgate_queue_depth"), "5");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(gauge(&m, "postgate_queue_depth"), "5", "kept on error");
        assert_eq!(
            gauge(&m, "postgate_store_errors_total{operation=\"queue_stats\"}"),
            "1"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(gauge(&m, "postgate_queue_depth"), "7");
        assert_eq!(
            gauge(&m, "postgate_queue_oldest_message_age_seconds"),
            "120"
        );
        shutdown.cancel();
        task.await.unwrap();
    }
}
