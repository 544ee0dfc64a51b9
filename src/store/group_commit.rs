//! Group commit of enqueues, shared by both backends: sessions hand their
//! message to a writer task, which commits every enqueue waiting at that
//! moment in ONE transaction. Each caller's `Ok` is that shared commit, so
//! the 250 still follows a durable commit of its own message (RFC 5321
//! §4.1.1.4; DESIGN rule "250 only after commit"); many sessions share one
//! disk flush and one transaction's fixed cost instead of paying one each.
//!
//! Each backend runs one writer task: SQLite has one writer at a time, and
//! on PostgreSQL one writer's groups (larger: they gather while it commits)
//! beat two writers' in every cell measured (README, Performance).

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{NewMessage, StoreError, StoreResult};

/// Most messages one group commit carries.
const BATCH_MESSAGES: usize = 256;
/// Most body bytes one group commit carries (a batch always takes at least one).
const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// One enqueue waiting for a writer task.
pub(crate) struct EnqueueJob {
    pub(crate) message: NewMessage,
    done: oneshot::Sender<StoreResult<()>>,
}

/// What a writer task is asked to do.
pub(crate) enum WriterJob {
    Enqueue(Box<EnqueueJob>),
    /// Commit the backend's readiness probe after the group ahead of it
    /// (`commit_probe` in `sqlite_writer.rs` and `postgres_writer.rs`).
    Probe(oneshot::Sender<StoreResult<()>>),
}

/// Handle to a writer task; dropping every clone stops it.
pub(crate) type EnqueueSender = mpsc::Sender<WriterJob>;

/// The writer task's side of the channel.
pub(crate) type JobReceiver = mpsc::Receiver<WriterJob>;

/// A new channel between sessions and a writer task.
pub(crate) fn channel() -> (EnqueueSender, JobReceiver) {
    mpsc::channel::<WriterJob>(1024)
}

/// One batch taken from the channel: enqueues and probes (either may be empty).
pub(crate) struct Batch {
    pub(crate) enqueues: Vec<EnqueueJob>,
    pub(crate) probes: Vec<oneshot::Sender<StoreResult<()>>>,
}

/// Waits for the next job, then for `ready` (SQLite: its turn at the write
/// gate; what arrives meanwhile joins this batch), then takes every job
/// already waiting, up to [`BATCH_MESSAGES`] messages and [`BATCH_BYTES`]
/// of bodies. `None` when every sender is gone. A batch may hold only probes.
pub(crate) async fn next_batch<R>(
    rx: &mut JobReceiver,
    ready: impl std::future::Future<Output = R>,
) -> Option<(Batch, R)> {
    let mut job = Some(rx.recv().await?);
    let ready = ready.await;
    let mut batch = Batch {
        enqueues: Vec::new(),
        probes: Vec::new(),
    };
    let mut bytes = 0;
    while let Some(next) = job.take() {
        match next {
            WriterJob::Enqueue(e) => {
                bytes += e.message.body.len();
                batch.enqueues.push(*e);
            }
            WriterJob::Probe(done) => batch.probes.push(done),
        }
        if batch.enqueues.len() >= BATCH_MESSAGES || bytes >= BATCH_BYTES {
            break;
        }
        job = rx.try_recv().ok();
    }
    Some((batch, ready))
}

/// Answers every enqueue of `batch` after its group commit ended with
/// `all`. When that failed for a batch of several, one bad message (a
/// duplicate id, a value the database refuses) must not fail the others:
/// each is committed again on its own by `one` and gets its own answer.
/// Unless `store_failed` (the database could not be reached or broke the
/// connection: nothing a message holds): then every message gets that
/// error at once, instead of one connect timeout after another.
pub(crate) async fn answer(
    batch: Vec<EnqueueJob>,
    all: StoreResult<()>,
    store_failed: bool,
    one: impl for<'a> Fn(&'a NewMessage) -> BoxFuture<'a, StoreResult<()>>,
) {
    match all {
        Ok(()) => {
            for job in batch {
                let _ = job.done.send(Ok(()));
            }
        }
        Err(e) if store_failed => {
            let reason = e.to_string();
            for job in batch {
                let _ = job.done.send(Err(StoreError::Unavailable(reason.clone())));
            }
        }
        Err(_) if batch.len() > 1 => {
            for job in batch {
                let result = one(&job.message).await;
                let _ = job.done.send(result);
            }
        }
        Err(e) => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
        }
    }
}

/// Hands `message` to the writer; returns once its group commit is done
/// (or failed). `Unavailable` when the writer has stopped.
pub(crate) async fn enqueue(writer: &EnqueueSender, message: NewMessage) -> StoreResult<()> {
    ask(writer, |done| {
        WriterJob::Enqueue(Box::new(EnqueueJob { message, done }))
    })
    .await
}

/// Sends a probe job through the writer and waits for its answer.
pub(crate) async fn probe(writer: &EnqueueSender) -> StoreResult<()> {
    ask(writer, WriterJob::Probe).await
}

/// Sends the job `job` builds around its answer channel, and waits for the answer.
async fn ask(
    writer: &EnqueueSender,
    job: impl FnOnce(oneshot::Sender<StoreResult<()>>) -> WriterJob,
) -> StoreResult<()> {
    let stopped = || StoreError::Unavailable("queue writer stopped".into());
    let (done, wait) = oneshot::channel();
    writer.send(job(done)).await.map_err(|_| stopped())?;
    wait.await.map_err(|_| stopped())?
}
