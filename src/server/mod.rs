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

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers. In hyper this also bounds the idle time
/// between requests on a keep-alive connection, so it is longer than the 90 s for which Go's
/// HTTP client (kube-apiserver's) keeps an idle connection: closing one the client still
/// holds would fail a webhook call that races the close.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(100);
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
    let acceptor = TlsAcceptor::from(tls);
    accept_loop(listener, app, shutdown, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    accept_loop(listener, app, shutdown, |tcp| async move { Ok(tcp) }).await;
}

async fn accept_loop<H, F, IO>(
    listener: TcpListener,
    app: Router,
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
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let handshake = Arc::new(handshake);
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let handshake = handshake.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = match handshake(tcp).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(%peer, "{e}");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
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
