//! The TLS listener: accepts connections, serves the router over HTTP/1.1 or HTTP/2 (by
//! ALPN), and shuts down gracefully.

pub mod clients;
mod conns;
pub mod expiry;
mod timed_io;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use conns::{Admission, Entry, Phase, Table};
pub use conns::{Limits, STALLED};
use timed_io::WriteTimeout;

/// Concurrent HTTP/2 streams per connection (hyper's default is 200; kube-apiserver opens as
/// many as it has webhook calls in flight, and more wait client-side).
pub const HTTP2_MAX_STREAMS: u32 = 100;
/// The largest header block of an HTTP/2 request (hyper's default is 16 MiB).
pub const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// How long in-flight requests have to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets open
/// connections finish their requests for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, tls, app, Limits::default(), shutdown).await;
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshake_timeout = limits.handshake_timeout;
    accept_loop(listener, app, limits, shutdown, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // A presented certificate was verified in the handshake (with --client-ca).
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| clients::ClientIdentity::of(leaf))
                        .map(Arc::new);
                    Ok((tls, identity))
                }
                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                Err(_) => Err("TLS handshake timed out".to_owned()),
            }
        }
    })
    .await;
}

/// Serves `app` over plain HTTP (the metrics endpoint) until `shutdown` completes.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    accept_loop(listener, app, limits, shutdown, |tcp| async move {
        Ok((tcp, None))
    })
    .await;
}

async fn accept_loop<H, F, IO>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    handshake: H,
) where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(IO, Option<Arc<clients::ClientIdentity>>), String>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST);
    let builder = Arc::new(builder);
    let handshake = Arc::new(handshake);
    let table = Table::new(&limits);
    let refused = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let entry = tokio::select! {
            admission = table.admit(peer.ip()) => match admission {
                Admission::Admitted(entry) => entry,
                Admission::PeerFull => {
                    refused.note(peer, limits.max_connections_per_peer);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            entry,
            tcp,
            peer,
            handshake.clone(),
            builder.clone(),
            app.clone(),
            limits,
        ));
    }
    drop(listener);
    table.close_all();
    tokio::select! {
        () = table.drained() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them")
        }
    }
}

/// Serves one connection: its handshake, then its requests, until it ends or the server
/// closes it (first-request timeout, idle timeout, eviction, shutdown).
async fn connection<H, F, IO>(
    mut entry: Entry,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: Limits,
) where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(IO, Option<Arc<clients::ClientIdentity>>), String>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = entry.conn().clone();
    let mut state = conn.subscribe();
    let (io, identity) = tokio::select! {
        io = handshake(tcp) => match io {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(%peer, "{e}");
                return;
            }
        },
        _ = state.wait_for(|s| s.close.is_some()) => {
            tracing::debug!(%peer, "handshake dropped to make room for a newer one");
            return;
        }
    };
    entry.handshake_done();
    let inner = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        let request_guard = conn.begin_request();
        let response = hyper::service::Service::call(&inner, request);
        async move {
            let response = response.await;
            drop(request_guard);
            response
        }
    });
    let connection = builder.serve_connection(
        TokioIo::new(WriteTimeout::new(io, limits.write_timeout)),
        service,
    );
    tokio::pin!(connection);
    // When the server asked the connection to close; it then has SHUTDOWN_GRACE to finish.
    let mut closing_since: Option<tokio::time::Instant> = None;
    loop {
        // Only a request to close and the first request wake this task; other phase changes
        // are read at the deadline, which is then moved to the phase's own.
        let current = *state.borrow_and_update();
        if let (Some(why), None) = (current.close, closing_since) {
            tracing::debug!(%peer, "closing: {why:?}");
            connection.as_mut().graceful_shutdown();
            closing_since = Some(tokio::time::Instant::now());
        }
        let deadline = match (closing_since, current.phase) {
            (Some(since), _) => since + SHUTDOWN_GRACE,
            (None, Phase::Handshake | Phase::Open) => current.since + limits.first_request_timeout,
            (None, Phase::Idle) => current.since + limits.header_read_timeout,
            (None, Phase::Busy(_)) => tokio::time::Instant::now() + limits.header_read_timeout,
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing_since.is_some() {
                    tracing::debug!(%peer, "did not finish closing within {SHUTDOWN_GRACE:?}");
                    return;
                }
                let current = *state.borrow();
                let now = tokio::time::Instant::now();
                match current.phase {
                    Phase::Handshake | Phase::Open
                        if current.since + limits.first_request_timeout <= now =>
                    {
                        tracing::debug!(%peer, "no request within {:?}; closing", limits.first_request_timeout);
                        return;
                    }
                    // An idle connection closes gracefully (an HTTP/2 client gets a GOAWAY).
                    Phase::Idle if current.since + limits.header_read_timeout <= now => {
                        tracing::debug!(%peer, "idle for {:?}; closing", limits.header_read_timeout);
                        connection.as_mut().graceful_shutdown();
                        closing_since = Some(now);
                    }
                    // It has moved on since: the next round arms its phase's deadline.
                    _ => {}
                }
            }
        }
    }
}

/// Logs refused connections at most once a second, with how many there were.
#[derive(Default)]
struct RefusalLog {
    since_last: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RefusalLog {
    fn note(&self, peer: SocketAddr, cap: usize) {
        use std::sync::atomic::Ordering;
        let count = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = match self.last.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        self.since_last.store(0, Ordering::Relaxed);
        tracing::warn!(
            peer = %peer.ip(),
            refused = count,
            "refused connections: the peer holds --max-connections-per-peer ({cap}) connections, none of them idle"
        );
    }
}
