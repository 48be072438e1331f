//! The connection table: which connections hold the listener's slots, what each is doing, and
//! which one gives its slot up when they run out.
//!
//! Three bounds, each with its own answer when reached:
//! - all [`Limits::max_connections`] slots taken: the oldest connection that has sent no request
//!   for [`STALLED`] since its handshake is closed to make room, else the one that has idled
//!   longest between requests (gracefully); when none is either, the new connection waits until
//!   one ends (busy ones are bounded by the body, write and first-request timeouts);
//! - a peer address at [`Limits::max_connections_per_peer`]: its own oldest connection without a
//!   request for [`STALLED`], else its longest-idle one, is closed for the new one; when none of
//!   its connections is either, the new one is refused (a node behind SNAT is one address:
//!   connections that never ask anything do not keep its real reviews out);
//! - [`Limits::max_handshakes`] TLS handshakes in progress: the oldest is dropped, so a flood of
//!   unfinished ClientHellos cannot keep a real client's handshake from starting.
//!
//! A connection younger than [`STALLED`] since its handshake, without a request yet, is never
//! closed to make room: it is most likely a real client's, its request on the way (a
//! restarted kube-apiserver opens hundreds at once, each sending its request as soon as its
//! handshake ends), and closing it fails the review it carries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bounds on what a client can hold. docs/operations.md ("Hostile clients") gives each with its default.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client has to send a request's headers, and how long a keep-alive connection
    /// (HTTP/1.1 or HTTP/2) may idle between requests. The default is longer than the 90 s for
    /// which Go's HTTP client (kube-apiserver's) keeps an idle connection: closing one the
    /// client still holds would fail a webhook call that races the close.
    pub header_read_timeout: Duration,
    /// Connections served at once. At the limit, the connection that has idled longest is
    /// closed to make room; when none idles, new ones wait until one ends.
    pub max_connections: usize,
    /// Connections one peer address may hold; at the cap its longest-idle one makes room, and
    /// when none of its connections idles, a new one is refused.
    pub max_connections_per_peer: usize,
    /// TLS handshakes in progress at once; at the limit the oldest is dropped.
    pub max_handshakes: usize,
    /// How long a connection has, from its TLS handshake, to send its first request (HTTP/1.1
    /// headers or an HTTP/2 stream). kube-apiserver sends at once; a connection that sends
    /// nothing (or only the start of the HTTP/2 preface) is closed, so idlers cannot hold the
    /// connection slots for the long keep-alive time that only a connection that has
    /// completed a request gets.
    pub first_request_timeout: Duration,
    /// How long a write to the client may make no progress (a client that does not read its
    /// answers) before the connection is closed.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(100),
            max_connections: 1024,
            max_connections_per_peer: 512,
            max_handshakes: 256,
            first_request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its TLS handshake is in progress.
    Handshake,
    /// Handshake done, no request yet.
    Open,
    /// This many requests are being handled.
    Busy(u32),
    /// Between requests (keep-alive).
    Idle,
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// To make room for a new connection.
    Evicted,
    /// The server is shutting down.
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
pub struct State {
    pub phase: Phase,
    /// When `phase` began.
    pub since: Instant,
    /// Set when the server wants the connection closed.
    pub close: Option<Close>,
}

/// One connection's shared state.
pub struct Conn {
    peer: IpAddr,
    state: watch::Sender<State>,
}

impl Conn {
    /// The connection's state; a request to close it and its first request are notified
    /// (other phase changes are read when a deadline comes).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Changes the phase without waking the connection's task: it re-reads the phase when
    /// its deadline comes (a wake-up per request would cost every review two task polls).
    fn set_phase(&self, phase: Phase) {
        self.state.send_if_modified(|state| {
            state.phase = phase;
            state.since = Instant::now();
            false
        });
    }

    fn close(&self, why: Close) {
        self.state.send_if_modified(|state| {
            if state.close.is_some() {
                return false;
            }
            state.close = Some(why);
            true
        });
    }

    /// Marks a request as started; the returned guard marks it finished when dropped.
    /// Only a connection's first request wakes its task (its deadline was the first-request
    /// one, which may lie beyond the keep-alive time).
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.state.send_if_modified(|state| {
            let first = matches!(state.phase, Phase::Handshake | Phase::Open);
            state.phase = match state.phase {
                Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
                _ => Phase::Busy(1),
            };
            state.since = Instant::now();
            first
        });
        RequestGuard(self.clone())
    }
}

/// A request in progress on a connection.
pub struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.state.send_if_modified(|state| {
            state.phase = match state.phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle,
            };
            state.since = Instant::now();
            false
        });
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
}

pub struct Table {
    inner: Mutex<Inner>,
    slots: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    max_connections: u32,
    max_per_peer: usize,
}

/// The answer to a new connection.
pub enum Admission {
    Admitted(Entry),
    /// Its peer holds its cap of connections and none of them idles.
    PeerFull,
}

impl Table {
    pub fn new(limits: &Limits) -> Arc<Table> {
        let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Table {
            inner: Mutex::new(Inner::default()),
            slots: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(
                limits.max_handshakes.clamp(1, max_connections),
            )),
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            max_per_peer: limits.max_connections_per_peer.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Finds room for a connection from `peer`, closing others as the module documentation
    /// says; waits while every slot is busy.
    pub async fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        {
            let inner = self.lock();
            if inner.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer
                && !evict(&inner, |conn| conn.peer == peer, ROOM_MAKERS)
            {
                return Admission::PeerFull;
            }
        }
        let slot = acquire_evicting(self, &self.slots, ROOM_MAKERS).await;
        let handshake = acquire_evicting(self, &self.handshakes, OLDEST_HANDSHAKE).await;
        let conn = Arc::new(Conn {
            peer,
            state: watch::Sender::new(State {
                phase: Phase::Handshake,
                since: Instant::now(),
                close: None,
            }),
        });
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, conn.clone());
        *inner.per_peer.entry(peer).or_insert(0) += 1;
        Admission::Admitted(Entry {
            table: self.clone(),
            id,
            conn,
            _slot: slot,
            handshake: Some(handshake),
        })
    }

    /// Asks every connection to close (gracefully: requests in flight finish).
    pub fn close_all(&self) {
        for conn in self.lock().conns.values() {
            conn.close(Close::Shutdown);
        }
    }

    /// Waits until every connection has ended.
    pub async fn drained(&self) {
        let _ = self.slots.acquire_many(self.max_connections).await;
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes a permit of `semaphore`; when none is free, closes the connection that has been in
/// one of `phases` longest (as [`evict`] picks it) and waits for a permit (retrying the
/// eviction while waiting, since a busy connection may become idle and a young one stalled).
async fn acquire_evicting(
    table: &Table,
    semaphore: &Arc<Semaphore>,
    phases: &[(Phase, Duration)],
) -> OwnedSemaphorePermit {
    loop {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return permit;
        }
        evict(&table.lock(), |_| true, phases);
        let wait = semaphore.clone().acquire_owned();
        // The semaphore is never closed, so an error cannot happen; retry if it somehow does.
        if let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_millis(100), wait).await {
            return permit;
        }
    }
}

/// How long a connection must have been in its handshake, or without a request since it, before
/// it may be closed to make room.
pub const STALLED: Duration = Duration::from_secs(1);

/// Who makes room for a new connection, first to last, and after how long in that phase: a
/// connection that has sent no request for [`STALLED`] since its handshake, then one idling
/// between requests.
const ROOM_MAKERS: &[(Phase, Duration)] = &[(Phase::Open, STALLED), (Phase::Idle, Duration::ZERO)];
/// Which handshake gives way to a new connection: the oldest, at once (a real client's
/// handshake takes milliseconds; waiting for one to stall would let a flood of unfinished
/// handshakes hold the accept loop).
const OLDEST_HANDSHAKE: &[(Phase, Duration)] = &[(Phase::Handshake, Duration::ZERO)];

/// Closes the connection among those `which` selects that has been longest in the first of
/// `phases` any of them has been in for at least its time (one already closing is not counted);
/// whether there was one.
fn evict(inner: &Inner, which: impl Fn(&Conn) -> bool, phases: &[(Phase, Duration)]) -> bool {
    let now = Instant::now();
    for &(phase, at_least) in phases {
        let oldest = inner
            .conns
            .values()
            .filter(|conn| which(conn))
            .filter_map(|conn| {
                let state = *conn.state.borrow();
                (state.phase == phase
                    && state.close.is_none()
                    && now.saturating_duration_since(state.since) >= at_least)
                    .then_some((state.since, conn))
            })
            .min_by_key(|(since, _)| *since);
        if let Some((_, conn)) = oldest {
            conn.close(Close::Evicted);
            return true;
        }
    }
    false
}

/// A connection's place in the table; dropping it frees the place.
pub struct Entry {
    table: Arc<Table>,
    id: u64,
    conn: Arc<Conn>,
    _slot: OwnedSemaphorePermit,
    handshake: Option<OwnedSemaphorePermit>,
}

impl Entry {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The TLS handshake is over: its handshake place is free, and the first request is due.
    pub fn handshake_done(&mut self) {
        self.handshake = None;
        self.conn.set_phase(Phase::Open);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.conns.remove(&self.id);
        if let Some(count) = inner.per_peer.get_mut(&self.conn.peer) {
            *count -= 1;
            if *count == 0 {
                inner.per_peer.remove(&self.conn.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_peer: usize, handshakes: usize) -> Limits {
        Limits {
            max_connections: max,
            max_connections_per_peer: per_peer,
            max_handshakes: handshakes,
            ..Limits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    async fn admitted(table: &Arc<Table>, peer: IpAddr) -> Entry {
        match table.admit(peer).await {
            Admission::Admitted(entry) => entry,
            Admission::PeerFull => panic!("{peer} refused"),
        }
    }

    /// Admits a connection from `peer` in a task of its own (it may have to wait).
    fn admitted_later(table: &Arc<Table>, peer: IpAddr) -> tokio::task::JoinHandle<Entry> {
        let table = table.clone();
        tokio::spawn(async move { admitted(&table, peer).await })
    }

    fn close_of(entry: &Entry) -> Option<Close> {
        entry.conn.subscribe().borrow().close
    }

    #[tokio::test]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let table = Table::new(&limits(3, 10, 3));
        let mut a = admitted(&table, ip(1)).await;
        let mut b = admitted(&table, ip(2)).await;
        let mut c = admitted(&table, ip(3)).await;
        for entry in [&mut a, &mut b, &mut c] {
            entry.handshake_done();
        }
        // b idles first, then a; c is busy.
        drop(b.conn().begin_request());
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(a.conn().begin_request());
        let _busy = c.conn().begin_request();
        // The table is full: the next connection waits until b, told to close, goes.
        let next = admitted_later(&table, ip(4));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(close_of(&b), Some(Close::Evicted));
        assert_eq!(close_of(&a), None);
        assert_eq!(close_of(&c), None);
        assert!(!next.is_finished(), "admitted past the limit");
        drop(b);
        let d = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("admitted once b was gone")
            .unwrap();
        assert_eq!(table.len(), 3);
        drop(d);
    }

    #[tokio::test]
    async fn only_the_first_request_and_a_close_wake_the_connection() {
        let table = Table::new(&limits(2, 2, 2));
        let mut entry = admitted(&table, ip(1)).await;
        let mut state = entry.conn().subscribe();
        state.borrow_and_update();
        entry.handshake_done();
        assert!(!state.has_changed().unwrap());
        drop(entry.conn().begin_request());
        assert!(state.has_changed().unwrap(), "the first request");
        state.borrow_and_update();
        drop(entry.conn().begin_request());
        assert!(!state.has_changed().unwrap(), "a later request");
        assert_eq!(state.borrow().phase, Phase::Idle);
        table.close_all();
        assert!(state.has_changed().unwrap(), "a close");
    }

    #[tokio::test]
    async fn with_nothing_idle_a_new_connection_waits() {
        let table = Table::new(&limits(1, 10, 1));
        let mut a = admitted(&table, ip(1)).await;
        a.handshake_done();
        let busy = a.conn().begin_request();
        let next = admitted_later(&table, ip(2));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!next.is_finished());
        assert_eq!(close_of(&a), None, "a busy connection was closed");
        // Once the request ends, the idle connection makes room.
        drop(busy);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(close_of(&a), Some(Close::Evicted));
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("admitted")
            .unwrap();
    }

    #[tokio::test]
    async fn a_peer_at_its_cap_gives_up_its_own_idle_connection_or_is_refused() {
        let table = Table::new(&limits(10, 2, 10));
        let other = admitted(&table, ip(9)).await;
        drop(other.conn().begin_request());
        let mut a = admitted(&table, ip(1)).await;
        let mut b = admitted(&table, ip(1)).await;
        a.handshake_done();
        b.handshake_done();
        let _busy_a = a.conn().begin_request();
        let _busy_b = b.conn().begin_request();
        // Both of its connections are busy: refused, and nobody else's connection is touched.
        assert!(matches!(table.admit(ip(1)).await, Admission::PeerFull));
        assert_eq!(close_of(&other), None);
        // Another peer is still admitted.
        let _c = admitted(&table, ip(2)).await;
        drop(_busy_b);
        let _d = admitted(&table, ip(1)).await;
        assert_eq!(close_of(&b), Some(Close::Evicted));
        assert_eq!(close_of(&a), None);
        assert_eq!(close_of(&other), None);
    }

    /// A connection that has sent nothing since its handshake, for [`STALLED`], makes room
    /// before one idling between requests, for another peer and for its own.
    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_makes_room_before_an_idle_one() {
        let table = Table::new(&limits(10, 2, 10));
        let mut idle = admitted(&table, ip(1)).await;
        idle.handshake_done();
        drop(idle.conn().begin_request());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut silent = admitted(&table, ip(1)).await;
        silent.handshake_done();
        tokio::time::sleep(STALLED).await;
        // The idle one is older, yet the silent one goes: for its own peer...
        let _own = admitted_later(&table, ip(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(close_of(&silent), Some(Close::Evicted));
        assert_eq!(close_of(&idle), None);
        // ...and at the table's limit.
        let table = Table::new(&limits(2, 10, 2));
        let mut idle = admitted(&table, ip(1)).await;
        idle.handshake_done();
        drop(idle.conn().begin_request());
        let mut silent = admitted(&table, ip(2)).await;
        silent.handshake_done();
        tokio::time::sleep(STALLED).await;
        let _next = admitted_later(&table, ip(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(close_of(&silent), Some(Close::Evicted));
        assert_eq!(close_of(&idle), None);
    }

    /// A young connection without a request yet is never closed to make room: a real
    /// client's request is on its way. The idle one goes instead, or (with nothing idle)
    /// the peer at its cap is refused.
    #[tokio::test(start_paused = true)]
    async fn a_young_connection_is_not_closed_to_make_room() {
        let table = Table::new(&limits(10, 2, 10));
        let mut idle = admitted(&table, ip(1)).await;
        idle.handshake_done();
        drop(idle.conn().begin_request());
        let mut fresh = admitted(&table, ip(1)).await;
        fresh.handshake_done();
        let _own = admitted_later(&table, ip(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(close_of(&idle), Some(Close::Evicted));
        assert_eq!(close_of(&fresh), None);
        drop(idle);
        let mut busy = admitted(&table, ip(2)).await;
        busy.handshake_done();
        let _busy = busy.conn().begin_request();
        let mut young = admitted(&table, ip(2)).await;
        young.handshake_done();
        assert!(matches!(table.admit(ip(2)).await, Admission::PeerFull));
        assert_eq!(close_of(&young), None);
    }

    #[tokio::test]
    async fn the_oldest_handshake_gives_way() {
        let table = Table::new(&limits(10, 10, 2));
        let first = admitted(&table, ip(1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = admitted(&table, ip(2)).await;
        let next = admitted_later(&table, ip(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(close_of(&first), Some(Close::Evicted));
        assert_eq!(close_of(&second), None);
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("admitted")
            .unwrap();
        assert_eq!(table.len(), 2);
        drop((second, third));
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn shutdown_asks_everyone_and_drained_waits_for_the_last() {
        let table = Table::new(&limits(4, 4, 4));
        let a = admitted(&table, ip(1)).await;
        table.close_all();
        assert_eq!(close_of(&a), Some(Close::Shutdown));
        let drained = tokio::spawn({
            let table = table.clone();
            async move { table.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .expect("drained")
            .unwrap();
    }
}
