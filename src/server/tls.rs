//! rustls server configuration: PEM loading, ALPN, and certificates that follow their files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} holds no PEM certificate; give the PEM file of the serving certificate (and its chain)")]
    NoCertificate { what: String },
    #[error("{what} holds no PEM private key ({detail}); give the PEM file of the serving key")]
    NoKey { what: String, detail: String },
    #[error("the certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{what} cannot verify client certificates: {detail}")]
    ClientCa { what: String, detail: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: cert_name.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
        what: key_name.to_owned(),
        detail: e.to_string(),
    })?;
    let key = provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(certs, key);
    certified.keys_match()?;
    Ok(certified)
}

/// The server configuration around a certificate resolver, with ALPN. With `clients` (the
/// `--client-ca` verifier), a client certificate is asked for and verified when presented
/// (see [`super::clients`]); without, none is asked for.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // kube-apiserver speaks HTTP/1.1 with keep-alive to webhooks; other clients may use h2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration from PEM files, read once. Checked before binding.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    from_pem(
        &read(cert_path)?,
        &read(key_path)?,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )
}

/// A server configuration from PEM text; `cert_name` and `key_name` name them in errors.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certified = certified_key(cert_pem, key_pem, cert_name, key_name)?;
    server_config(
        Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
        None,
    )
}

/// The certificate new handshakes get, swapped whole while serving (open connections keep
/// theirs). `changed` wakes whoever judges what is served (readiness, arming).
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
    pub changed: tokio::sync::Notify,
}

impl CertSlot {
    pub fn new(certified: CertifiedKey) -> Arc<CertSlot> {
        Arc::new(CertSlot {
            current: RwLock::new(Arc::new(certified)),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, certified: CertifiedKey) {
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(certified),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(certified),
        }
        self.changed.notify_waiters();
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A certificate that follows its files. Kubernetes updates a mounted Secret by swapping a
/// `..data` symlink, so the files are re-read through their paths every interval (which sees
/// the new target) rather than watched with inotify on paths (which would not). A change that
/// parses and whose key matches is used for new handshakes; open connections keep theirs. A
/// broken change keeps the certificate in use, and is logged and counted once.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    pub slot: Arc<CertSlot>,
    /// The bytes last read, loaded or not: a change is handled once.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
    pub reloads: Counter,
    pub failures: Counter,
    /// When what is served expires.
    pub expiry: super::expiry::ExpiryWatch,
}

impl ReloadingCert {
    /// Reads and checks the files (a failure here stops startup); `reloads` and `failures`
    /// count what later changes do.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        reloads: Counter,
        failures: Counter,
        expiry: super::expiry::ExpiryWatch,
    ) -> Result<Arc<ReloadingCert>, TlsError> {
        let (cert, key) = (read(cert_path)?, read(key_path)?);
        let certified = certified_key(
            &cert,
            &key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        expiry.serving(&certified.cert);
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            slot: CertSlot::new(certified),
            seen: Mutex::new((cert, key)),
            reloads,
            failures,
            expiry,
        }))
    }

    /// Re-reads the files; `Ok(true)` when a new certificate is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(false);
            };
            if seen.0 == cert && seen.1 == key {
                return Ok(false);
            }
            *seen = (cert.clone(), key.clone());
        }
        let certified = certified_key(
            &cert,
            &key,
            &self.cert_path.display().to_string(),
            &self.key_path.display().to_string(),
        )
        .inspect_err(|_| {
            self.failures.inc();
        })?;
        self.expiry.serving(&certified.cert);
        self.slot.set(certified);
        self.reloads.inc();
        Ok(true)
    }

    /// Re-reads the files every `interval` (never, when `None`) and whenever `wake` is
    /// notified (SIGHUP), for ever.
    pub async fn watch(
        self: Arc<Self>,
        interval: Option<Duration>,
        wake: Arc<tokio::sync::Notify>,
    ) {
        loop {
            tokio::select! {
                _ = sleep_or_never(interval) => {}
                _ = wake.notified() => {}
            }
            self.expiry.check();
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving the new certificate")
                }
                Ok(false) => {}
                // Mid-swap a file can be missing for a moment: not a change yet.
                Err(TlsError::Read { path, source }) => {
                    tracing::debug!("cannot read {path} to check for a new certificate: {source}")
                }
                Err(e) => tracing::error!(
                    cert = %self.cert_path.display(),
                    "the new certificate cannot be used, the previous one stays in use: {e}"
                ),
            }
        }
    }
}

/// Sleeps for `interval`, or for ever when it is `None`.
pub async fn sleep_or_never(interval: Option<Duration>) {
    match interval {
        Some(interval) => tokio::time::sleep(interval).await,
        None => std::future::pending().await,
    }
}
