//! A Service on 127.0.0.1, for the scenario of rolling updates, a killed replica and an API
//! server restart: a TCP load balancer in the harness that stands in for a Service's endpoints
//! and kube-proxy. It passes TLS through untouched (the API server's client certificate
//! reaches prodguard) and:
//! - probes each replica's `/readyz` over HTTPS without verifying its certificate, as the
//!   kubelet does, at the readiness probe's period of deploy/base; a replica is ready after one
//!   success and unready after three failures in a row (the kubelet's defaults);
//! - sends each new connection to the next ready replica still in the endpoints, round robin;
//!   a connection with no endpoint to go to is closed at once, as kube-proxy rejects it;
//! - takes a replica out of the endpoints when the harness says its pod is deleted (the
//!   endpoints controller does so at once on deletion) or that its container exited (the
//!   kubelet notices within about a second; here at once);
//! - counts, per replica, the connections that replica cut while a request on them was
//!   unanswered: bytes had gone from the client since the replica last sent any, the TLS
//!   handshake of a new connection's first request included. With HTTP/1.1, which
//!   kube-apiserver speaks to webhooks, that is one request per connection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One replica behind the balancer.
pub struct Backend {
    pub port: u16,
    /// What the last probes said.
    ready: AtomicBool,
    /// Still in the endpoints (false once its pod is deleted or its container exited).
    listed: AtomicBool,
    failures: AtomicUsize,
    /// Connections sent to it.
    pub connections: AtomicUsize,
    /// Connections open to it now, and the most at once.
    open: AtomicUsize,
    pub peak: AtomicUsize,
    /// Connections it ended with a request unanswered (or the TLS handshake before one).
    pub cut: AtomicUsize,
    /// Connections it ended before sending anything (not even its TLS handshake's answer).
    pub silent: AtomicUsize,
}

impl Backend {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.listed.load(Ordering::SeqCst)
    }
}

pub struct Balancer {
    backends: Mutex<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    probe_period: Duration,
    /// Connections closed for want of a ready endpoint.
    pub no_endpoint: AtomicUsize,
    /// Connections whose replica refused them (it had stopped listening).
    pub refused: AtomicUsize,
    listening: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The readiness probe's `periodSeconds` in deploy/base's Deployment.
pub fn probe_period() -> Duration {
    let text = std::fs::read_to_string("deploy/base/deployment.yaml").expect("deploy/base");
    let deployment: serde_json::Value = serde_saphyr::from_str(&text).expect("a Deployment");
    let seconds = deployment
        .pointer("/spec/template/spec/containers/0/readinessProbe/periodSeconds")
        .and_then(serde_json::Value::as_u64)
        .expect("deploy/base's readiness probe has a period");
    Duration::from_secs(seconds)
}

/// How many failed probes in a row make a replica unready (the kubelet's default).
const FAILURE_THRESHOLD: usize = 3;
/// The kubelet's default probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Balancer {
    /// Listens on 127.0.0.1:`port` (the webhooks' URL) from within the current runtime.
    pub async fn start(port: u16, probe_period: Duration) -> Result<Arc<Balancer>, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("the balancer cannot listen on {port}: {e}"))?;
        let balancer = Arc::new(Balancer {
            backends: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            probe_period,
            no_endpoint: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            listening: Mutex::new(None),
        });
        let serving = balancer.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(serving.clone().forward(client));
            }
        });
        *balancer.listening.lock().expect("listening") = Some(task);
        Ok(balancer)
    }

    /// Stops listening (the listener closes as its task ends).
    pub fn close(&self) {
        if let Some(task) = self.listening.lock().expect("listening").take() {
            task.abort();
        }
    }

    /// Adds a replica (its pod created) and probes it from now on, until it leaves.
    pub fn add(self: &Arc<Self>, port: u16) -> Arc<Backend> {
        let backend = Arc::new(Backend {
            port,
            ready: AtomicBool::new(false),
            listed: AtomicBool::new(true),
            failures: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            cut: AtomicUsize::new(0),
            silent: AtomicUsize::new(0),
        });
        self.backends
            .lock()
            .expect("backends")
            .push(backend.clone());
        let probed = backend.clone();
        let period = self.probe_period;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            while probed.listed.load(Ordering::SeqCst) {
                tick.tick().await;
                let ok = probe(probed.port).await;
                if ok {
                    probed.failures.store(0, Ordering::SeqCst);
                    probed.ready.store(true, Ordering::SeqCst);
                } else if probed.failures.fetch_add(1, Ordering::SeqCst) + 1 >= FAILURE_THRESHOLD {
                    probed.ready.store(false, Ordering::SeqCst);
                }
            }
        });
        backend
    }

    /// Takes a replica out of the endpoints: its pod was deleted, or its container exited.
    pub fn remove(&self, backend: &Backend) {
        backend.listed.store(false, Ordering::SeqCst);
    }

    /// Per replica, in order of addition: connections sent to it, the most open at once, cut
    /// mid-request, ended silent.
    pub fn stats(&self) -> Vec<(usize, usize, usize, usize)> {
        self.backends
            .lock()
            .expect("backends")
            .iter()
            .map(|b| {
                (
                    b.connections.load(Ordering::SeqCst),
                    b.peak.load(Ordering::SeqCst),
                    b.cut.load(Ordering::SeqCst),
                    b.silent.load(Ordering::SeqCst),
                )
            })
            .collect()
    }

    fn pick(&self) -> Option<Arc<Backend>> {
        let backends = self.backends.lock().expect("backends");
        let ready: Vec<&Arc<Backend>> = backends.iter().filter(|b| b.ready()).collect();
        if ready.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst) % ready.len();
        Some(ready[i].clone())
    }

    async fn forward(self: Arc<Self>, client: TcpStream) {
        let Some(backend) = self.pick() else {
            self.no_endpoint.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", backend.port)).await else {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let _ = server.set_nodelay(true);
        backend.connections.fetch_add(1, Ordering::SeqCst);
        let open = backend.open.fetch_add(1, Ordering::SeqCst) + 1;
        backend.peak.fetch_max(open, Ordering::SeqCst);
        // True from the client's bytes until the replica's next ones; the client's end (its
        // close_notify and FIN) is not a request.
        let pending = Arc::new(AtomicBool::new(false));
        let client_done = Arc::new(AtomicBool::new(false));
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = {
            let (pending, client_done) = (pending.clone(), client_done.clone());
            async move {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    match client_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            pending.store(true, Ordering::SeqCst);
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                client_done.store(true, Ordering::SeqCst);
                let _ = server_write.shutdown().await;
            }
        };
        let backend_done = backend.clone();
        let downstream = {
            let pending = pending.clone();
            async move {
                let mut buffer = vec![0u8; 16 * 1024];
                let mut answered = false;
                loop {
                    match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            answered = true;
                            pending.store(false, Ordering::SeqCst);
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                if !client_done.load(Ordering::SeqCst) {
                    // The client's bytes unanswered: a request, or the TLS handshake that was
                    // to carry one, was in flight.
                    if pending.load(Ordering::SeqCst) {
                        backend.cut.fetch_add(1, Ordering::SeqCst);
                    }
                    if !answered {
                        backend.silent.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _ = client_write.shutdown().await;
            }
        };
        tokio::join!(upstream, downstream);
        backend_done.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /readyz` over HTTPS, the certificate unverified (as the kubelet's HTTPS probes): true
/// for a 2xx answer within the probe timeout.
async fn probe(port: u16) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("probe").ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()?;
        tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        Some(answer.starts_with(b"HTTP/1.1 2"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// Accepts any server certificate (the kubelet does not verify its probes').
#[derive(Debug)]
struct Unverified;

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
