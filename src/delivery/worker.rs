//! The worker loop of a node (issue #13: one slow or hung upstream never
//! holds back delivery to another).
//!
//! - **Claim loops** (`[queue] workers` of them) claim due messages while
//!   the node has room for claimed messages that have not started yet
//!   (`workers × batch` of them), and never wait for what they claimed.
//! - **One task per claimed message**: it waits for its upstream's throttle
//!   (at most `max_throttle_wait`) and for a connection (at most
//!   `max_pool_wait`, else the message goes back to the queue), then gives
//!   up its "not started" room and delivers. What runs at once is bounded
//!   per upstream by that upstream's pool, so a hung upstream holds at most
//!   its own `max_connections` tasks, for at most `connect_timeout`.
//! - **One recorder** commits outcomes as soon as there are any (group
//!   commit: what finishes while one commit runs goes in the next, up to
//!   [`OUTCOME_BATCH`]), then finishes (DSN) the messages that bounced.
//! - **Duplicates after a crash are bounded by the connections**: a
//!   message's connection slots ([`Held`]) go to the recorder with its
//!   outcomes and back to their pools only once those are committed, so a
//!   connection never starts a transaction while the message it carried
//!   last is unrecorded. A crash (SIGKILL, power loss) therefore repeats at
//!   most one message per upstream connection: the sum of the upstreams'
//!   `max_connections`. While the store is away, connections wait for their
//!   outcome (and new messages for a connection, at most `max_pool_wait`).
//! - **One heartbeat** renews, every `lease / 3`, the lease of every
//!   recipient claimed and not yet recorded, so a delivery (or an outcome
//!   waiting for the store) may take longer than the lease.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::pool::Held;
use super::{lock, now_ms, Engine};
use crate::metrics::StoreOperation;
use crate::store::{ClaimedMessage, OutcomeKind, RecipientOutcome};

/// Most outcomes one commit carries.
const OUTCOME_BATCH: usize = 1024;

/// Claims of one node start at least this far apart while the queue is
/// drained (a claim came back with less than it asked for): one claim then
/// takes what arrived meanwhile instead of every claim loop polling for a
/// message or two (each claim is a statement and a commit in the store).
/// A full claim means a backlog: the next claim may start at once.
const CLAIM_SPACING: Duration = Duration::from_millis(5);

/// A claimed message's room among those "claimed, not started"; given up
/// with [`started`](Self::started) once it has a connection, or when its
/// task ends.
pub(super) struct Waiting(std::sync::Mutex<Option<OwnedSemaphorePermit>>);

impl Waiting {
    fn new(permit: Option<OwnedSemaphorePermit>) -> Self {
        Waiting(std::sync::Mutex::new(permit))
    }

    /// The message has a connection (for one of its route groups, which go
    /// at the same time): it no longer counts as waiting.
    pub(super) fn started(&self) {
        lock(&self.0).take();
    }
}

/// One message's attempt, for the recorder: the message, its headers (only
/// when it bounced, for the DSN), its recipients' outcomes and the
/// connection slots it used (given back once the outcomes are committed).
pub(super) struct Finished {
    message: ClaimedMessage,
    headers: Bytes,
    outcomes: Vec<RecipientOutcome>,
    held: Vec<Held>,
}

/// The leases of a message task that ended without handing its outcome
/// to the recorder (it panicked): the heartbeat stops renewing them, so
/// they expire and the message is tried again, instead of being held for
/// as long as the process lives.
struct Unrecorded {
    engine: Arc<Engine>,
    ids: Vec<i64>,
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut leased = lock(&self.engine.leased);
            for id in &self.ids {
                leased.remove(id);
            }
        }
    }
}

/// Where message tasks hand their outcomes.
pub(super) type Recorder = mpsc::UnboundedSender<Finished>;

/// Runs the worker loop of `engine` until its shutdown is cancelled: claim
/// loops, message tasks, recorder and heartbeat. Returns once every claimed
/// message was delivered or released and its outcome recorded.
pub(super) async fn run(engine: Arc<Engine>) {
    let (recorder, outcomes) = mpsc::unbounded_channel();
    let recording = tokio::spawn(engine.clone().recorder(outcomes));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(engine.clone().heartbeat(heartbeat_stop.clone()));
    let mut loops = JoinSet::new();
    for _ in 0..engine.queue.workers {
        loops.spawn(engine.clone().claim_loop(recorder.clone()));
    }
    drop(recorder);
    while loops.join_next().await.is_some() {}
    // Every message task has ended and dropped its sender: the recorder
    // drains what is left and stops. Leases stay renewed until then.
    let _ = recording.await;
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
}

impl Engine {
    /// Waits for this node's next claim slot ([`CLAIM_SPACING`]) and takes
    /// it; false if shut down meanwhile.
    async fn claim_slot(&self) -> bool {
        loop {
            let wait = {
                let mut next = lock(&self.next_claim);
                let now = Instant::now();
                if *next <= now {
                    *next = now + CLAIM_SPACING;
                    return true;
                }
                *next - now
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Room for up to `batch` more claimed messages: waits for the first,
    /// takes what else is free at once. Empty when shut down meanwhile.
    async fn room(&self) -> Vec<OwnedSemaphorePermit> {
        let first = tokio::select! {
            p = self.waiting.clone().acquire_owned() => p,
            _ = self.shutdown.cancelled() => return Vec::new(),
        };
        let Ok(first) = first else {
            return Vec::new();
        };
        let mut room = vec![first];
        while room.len() < self.queue.batch as usize {
            match self.waiting.clone().try_acquire_owned() {
                Ok(p) => room.push(p),
                Err(_) => break,
            }
        }
        room
    }

    /// Claims while there is room and hands each message to a task of its
    /// own; on shutdown, waits for those tasks.
    async fn claim_loop(self: Arc<Self>, recorder: Recorder) {
        let mut tasks = JoinSet::new();
        while !self.shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let mut room = self.room().await;
            if room.is_empty() || !self.claim_slot().await {
                break;
            }
            let limit = room.len() as u32;
            let started = Instant::now();
            let claimed = self
                .store
                .claim_due(&self.owner, now_ms(), self.lease_ms(), limit)
                .await;
            self.store_timing(StoreOperation::Claim, started, claimed.is_err());
            let claimed = match claimed {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "queue claim failed");
                    Vec::new()
                }
            };
            let recipients: usize = claimed.iter().map(|m| m.recipients.len()).sum();
            if recipients >= limit as usize {
                // A backlog: let the next claim start at once.
                *lock(&self.next_claim) = Instant::now();
            }
            // Recipients this node still delivers or records (their lease
            // lapsed while the store was away) are not taken twice: the
            // claim leased them to this node again, and their outcome, when
            // it lands, is recorded under this node's owner.
            let claimed = self.not_in_hand(claimed);
            if claimed.is_empty() {
                drop(room);
                tokio::select! {
                    _ = tokio::time::sleep(self.queue.poll_interval) => {}
                    _ = self.shutdown.cancelled() => break,
                }
                continue;
            }
            lock(&self.leased).extend(
                claimed
                    .iter()
                    .flat_map(|m| m.recipients.iter().map(|r| r.id)),
            );
            for m in claimed {
                // A claim returns at most `limit` messages (each has at
                // least one of the `limit` recipients it took).
                let waiting = Waiting::new(room.pop());
                let engine = self.clone();
                let recorder = recorder.clone();
                tasks.spawn(async move {
                    let mut unrecorded = Unrecorded {
                        engine: engine.clone(),
                        ids: m.recipients.iter().map(|r| r.id).collect(),
                    };
                    let (message, headers, outcomes, held) =
                        engine.deliver_message(m, waiting).await;
                    // Should the recorder be gone, the slots come back here.
                    let _ = recorder.send(Finished {
                        message,
                        headers,
                        outcomes,
                        held,
                    });
                    // The recorder forgets these leases once recorded.
                    unrecorded.ids.clear();
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Commits finished attempts' outcomes as soon as there are any: all
    /// that arrived meanwhile (up to [`OUTCOME_BATCH`]) in one transaction,
    /// so what finishes during a commit goes in the next (connections wait
    /// for their outcome, so waiting to gather more would slow them down).
    /// Then gives their connection slots back, forgets their leases and
    /// finishes the messages that bounced. Returns when every sender is
    /// gone and everything sent was recorded.
    async fn recorder(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Finished>) {
        while let Some(first) = rx.recv().await {
            let mut size = first.outcomes.len();
            let mut batch = vec![first];
            while size < OUTCOME_BATCH {
                match rx.try_recv() {
                    Ok(f) => {
                        size += f.outcomes.len();
                        batch.push(f);
                    }
                    Err(_) => break,
                }
            }
            let outcomes: Vec<RecipientOutcome> = batch
                .iter()
                .flat_map(|f| f.outcomes.iter().cloned())
                .collect();
            if !outcomes.is_empty() {
                self.record(&self.owner, &outcomes).await;
            }
            // Committed (or given up at shutdown): the connections may
            // carry their next message.
            for f in &mut batch {
                f.held.clear();
            }
            {
                let mut leased = lock(&self.leased);
                for f in &batch {
                    for r in &f.message.recipients {
                        leased.remove(&r.id);
                    }
                }
            }
            for f in &batch {
                // All-delivered messages were finished by `record_outcomes`.
                let bounced = f
                    .outcomes
                    .iter()
                    .any(|o| matches!(o.kind, OutcomeKind::Failed | OutcomeKind::Expired));
                if bounced {
                    self.finish(&f.message, &f.headers).await;
                }
            }
        }
    }

    /// `claimed` without the recipients already in `leased` (claimed by this
    /// node and not recorded yet); messages left without one are dropped.
    fn not_in_hand(&self, claimed: Vec<ClaimedMessage>) -> Vec<ClaimedMessage> {
        let leased = lock(&self.leased);
        claimed
            .into_iter()
            .filter_map(|mut m| {
                m.recipients.retain(|r| !leased.contains(&r.id));
                (!m.recipients.is_empty()).then_some(m)
            })
            .collect()
    }

    /// Renews the leases of every recipient claimed and not yet recorded,
    /// every `lease / 3`, until `stop`.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.queue.lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let ids: Vec<i64> = lock(&self.leased).iter().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let started = Instant::now();
            let renewed = self
                .store
                .renew_leases(&self.owner, &ids, now_ms(), self.lease_ms())
                .await;
            self.store_timing(StoreOperation::RenewLeases, started, renewed.is_err());
            if let Err(e) = renewed {
                warn!(error = %e, recipients = ids.len(), "renewing delivery leases failed");
            }
        }
    }
}
