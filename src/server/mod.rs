//! The TLS listener: accepts connections, serves the router over HTTP/1.1 or HTTP/2 (by
//! ALPN), and shuts down gracefully.

pub mod pki;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Bounds on what a client can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client has to send a request's headers. In hyper this also bounds the idle
    /// time between requests on a keep-alive connection, so the default is longer than the
    /// 90 s for which Go's HTTP client (kube-apiserver's) keeps an idle connection: closing
    /// one the client still holds would fail a webhook call that races the close.
    pub header_read_timeout: Duration,
    /// Connections served at once; beyond this, new ones wait in the listen backlog until a
    /// connection ends (slow or idle clients are cut off by the timeouts).
    pub max_connections: usize,
    /// How long a connection has, from its TLS handshake, to send its first request (HTTP/1.1
    /// headers or an HTTP/2 stream). kube-apiserver sends at once; a connection that sends
    /// nothing (or only the start of the HTTP/2 preface) is closed, so idlers cannot hold the
    /// connection slots for the long keep-alive time that only a connection that has
    /// completed a request gets.
    pub first_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(100),
            max_connections: 1024,
            first_request_timeout: Duration::from_secs(5),
        }
    }
}

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
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                Err(_) => Err("TLS handshake timed out".to_owned()),
            }
        }
    })
    .await;
}

/// Serves `app` over plain HTTP (the metrics endpoint) until `shutdown` completes.
pub async fn serve_plain(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    accept_loop(
        listener,
        app,
        limits,
        shutdown,
        |tcp| async move { Ok(tcp) },
    )
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
    F: Future<Output = Result<IO, String>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let handshake = Arc::new(handshake);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let handshake = handshake.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Held while the connection lives.
            let _slot = slot;
            let io = match handshake(tcp).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(%peer, "{e}");
                    return;
                }
            };
            // Told when the connection's first request arrives.
            let (first, mut first_seen) = tokio::sync::watch::channel(false);
            let inner = TowerToHyperService::new(app);
            let service = hyper::service::service_fn(move |request| {
                first.send_if_modified(|seen| !std::mem::replace(seen, true));
                hyper::service::Service::call(&inner, request)
            });
            let connection = watcher.watch(
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned(),
            );
            tokio::pin!(connection);
            let first_request = async {
                if tokio::time::timeout(limits.first_request_timeout, first_seen.wait_for(|s| *s))
                    .await
                    .is_err()
                {
                    return;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = first_request => {
                    tracing::debug!(%peer, "no request within {:?}; closing", limits.first_request_timeout);
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them")
        }
    }
}
