//! The connection cap of the operations HTTP server (issue 12 item 9).
//!
//! Idle and slow clients must not keep `/healthz` from answering: at most
//! `http.max_connections` are open; when a new one arrives at the cap, the
//! connection that has waited longest for a request head (idle since
//! accept or since its last answer, or trickling its headers) is closed to
//! make room. Only when every open connection is in the middle of a
//! request does the new one wait. Request heads are also bounded in time
//! (hyper's `header_read_timeout`, see `http::serve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The open connections of one HTTP server.
pub(super) struct Conns {
    max: usize,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// `Some(t)`: waiting for a request head since `t`; `None`: serving one.
    idle_since: Option<Instant>,
    close: CancellationToken,
}

/// One admitted connection: close it when `closed()` fires; its slot is
/// freed on drop.
pub(super) struct Conn {
    conns: Arc<Conns>,
    id: u64,
    close: CancellationToken,
}

impl Conns {
    /// At most `max` (>= 1) connections.
    pub(super) fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection about to be accepted: at once while below
    /// the cap; at the cap, by closing the connection waiting longest for a
    /// request head; when all are busy, once one is freed or goes idle.
    pub(super) async fn admit(self: &Arc<Self>) -> Conn {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state();
                let open = st.open.len();
                if open >= self.max {
                    let victim = st
                        .open
                        .iter()
                        .filter_map(|(id, e)| e.idle_since.map(|t| (t, *id)))
                        .min()
                        .map(|(_, id)| id);
                    if let Some(id) = victim {
                        // Gone from the count now; its task closes it.
                        if let Some(e) = st.open.remove(&id) {
                            e.close.cancel();
                            tracing::debug!("http connection cap reached: closed the longest idle");
                        }
                    }
                }
                if st.open.len() < self.max {
                    let id = st.next_id;
                    st.next_id += 1;
                    let close = CancellationToken::new();
                    st.open.insert(
                        id,
                        Entry {
                            idle_since: Some(Instant::now()),
                            close: close.clone(),
                        },
                    );
                    return Conn {
                        conns: self.clone(),
                        id,
                        close,
                    };
                }
            }
            freed.await;
        }
    }

    /// Open connections (for tests).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.state().open.len()
    }
}

impl Conn {
    /// Cancelled when this connection is evicted.
    pub(super) fn closed(&self) -> &CancellationToken {
        &self.close
    }

    /// A request head arrived: not evictable until [`Conn::idle`].
    pub(super) fn busy(&self) {
        if let Some(e) = self.conns.state().open.get_mut(&self.id) {
            e.idle_since = None;
        }
    }

    /// The answer is out: waiting for the next request head.
    pub(super) fn idle(&self) {
        if let Some(e) = self.conns.state().open.get_mut(&self.id) {
            e.idle_since = Some(Instant::now());
        }
        self.conns.freed.notify_waiters();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.conns.state().open.remove(&self.id);
        self.conns.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_is_closed_and_busy_ones_are_kept() {
        let conns = Conns::new(3);
        let a = conns.admit().await;
        let b = conns.admit().await;
        let c = conns.admit().await;
        a.busy();
        let d = conns.admit().await;
        assert!(b.closed().is_cancelled(), "b waited longest and was idle");
        assert!(!a.closed().is_cancelled() && !c.closed().is_cancelled());
        assert_eq!(conns.open(), 3);
        drop(b);
        assert_eq!(conns.open(), 3, "an evicted connection no longer counts");
        c.busy();
        d.busy();
        // Everyone busy: the next waits until one is idle again.
        let waiting = tokio::spawn({
            let conns = conns.clone();
            async move { conns.admit().await.id }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        c.idle();
        let e = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(c.closed().is_cancelled());
        assert!(e > d.id);
        drop((a, d));
    }
}
