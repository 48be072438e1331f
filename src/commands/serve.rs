//! `prodguard serve`: the webhook server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{load_config, EXIT_BAD_INPUT};
use crate::cli::ServeArgs;
use crate::cluster::{KubePodLookup, NoPodLookup, PodLookup};
use crate::engine::Engine;
use crate::http::{app, AppState};
use crate::report::events::{self, EventSink};
use crate::report::{LogReporter, Reporter};
use crate::server::{self, pki, tls};

pub fn run(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(args.config.as_deref(), args.mode).map_err(|e| e.to_string())?;
    let addr: SocketAddr = args.addr.parse().map_err(|e| {
        format!(
            "--addr {:?} is not an address ({e}); use host:port such as 0.0.0.0:8443",
            args.addr
        )
    })?;
    let tls_config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls::load(cert, key).map_err(|e| e.to_string())?,
        _ => self_signed(args.ca_out.clone())?,
    };
    let (pods, reporter) = cluster_side().await;
    let engine = Engine::new(&config, pods, reporter);
    for (id, webhook, mode) in engine.active_policies() {
        tracing::info!(
            policy = id,
            webhook = webhook.as_str(),
            mode = mode.as_str(),
            "policy active"
        );
    }
    let state = AppState::new(engine);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "prodguard listening on https://{local} (POST /mutate, POST /validate, GET /healthz, GET /readyz)"
    );
    let shutdown_state = state.clone();
    server::serve(listener, tls_config, app(state), async move {
        shutdown_signal().await;
        shutdown_state.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: /readyz fails, no new connections");
    })
    .await;
    Ok(())
}

/// A certificate for localhost and 127.0.0.1, with its CA bundle written where it says.
fn self_signed(ca_out: Option<PathBuf>) -> Result<Arc<rustls::ServerConfig>, String> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pki = pki::generate("prodguard self-signed CA", &names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    let ca_path = ca_out.unwrap_or_else(|| std::env::temp_dir().join("prodguard-ca.crt"));
    super::certs::write_file(&ca_path, &pki.ca_cert_pem, false)?;
    tracing::info!(
        ca_bundle = %ca_path.display(),
        "no --tls-cert given: serving a self-signed certificate for localhost and 127.0.0.1; \
         its CA bundle is in {} (try: curl --cacert {} https://localhost:PORT/healthz)",
        ca_path.display(),
        ca_path.display()
    );
    tls::from_pem(
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        "generated certificate",
        "generated key",
    )
    .map_err(|e| e.to_string())
}

/// Pod lookups and the Events sink through the kube client. Without a client, db-access
/// fails closed and reports are only logged, and both say why.
async fn cluster_side() -> (Arc<dyn PodLookup>, Arc<dyn Reporter>) {
    match kube::Client::try_default().await {
        Ok(client) => {
            let instance = std::env::var("POD_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("{}-{}", events::CONTROLLER, std::process::id()));
            let sink = EventSink::start(client.clone(), instance);
            (Arc::new(KubePodLookup::new(client)), sink)
        }
        Err(e) => {
            let reason = format!("no in-cluster config or kubeconfig: {e}");
            tracing::warn!(
                "{reason}; db-access will deny exec/attach/port-forward by non-admins because it \
                 cannot read pods, and policy reports are logged instead of published as Events"
            );
            (Arc::new(NoPodLookup { reason }), Arc::new(LogReporter))
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
