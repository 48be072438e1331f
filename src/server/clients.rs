//! Who may call the admission endpoints: the API server's client certificate, checked against
//! `--client-ca` (re-read like the serving certificate) and its name against
//! `--client-subjects`.
//!
//! The TLS layer asks every client for a certificate and verifies one that is presented (a
//! certificate the CA did not sign ends the handshake with an alert), but lets a client
//! without one finish the handshake: the kubelet's HTTPS probes send none, and `/healthz` and
//! `/readyz` must answer them. The HTTP layer then refuses `/mutate` and `/validate` with 403
//! unless the connection presented a verified certificate whose name is allowed
//! ([`ClientPolicy::check`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::tls::TlsError;
use crate::report::metrics::RefusalLabels;

/// The names of a verified client certificate: its subject's common names and its DNS and
/// URI subject alternative names. Put in each request's extensions by the listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIdentity {
    pub names: Vec<String>,
}

impl ClientIdentity {
    /// The names of a DER certificate; `None` when it does not parse (rustls verified it, so
    /// this does not happen for a presented certificate).
    pub fn of(der: &[u8]) -> Option<ClientIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(n)
                    | x509_parser::extensions::GeneralName::URI(n) => names.push((*n).to_owned()),
                    _ => {}
                }
            }
        }
        Some(ClientIdentity { names })
    }
}

/// Why a caller was refused; the `reason` label of `prodguard_client_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No client certificate was presented.
    NoCertificate,
    /// A verified certificate whose names are not in `--client-subjects`.
    Subject,
    /// A certificate the client CA did not sign (refused in the handshake).
    Untrusted,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::Subject => "subject",
            Refusal::Untrusted => "untrusted",
        }
    }
}

/// The names allowed to call `/mutate` and `/validate`; present only with `--client-ca`.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub subjects: Vec<String>,
    pub refusals: Family<RefusalLabels, Counter>,
}

impl ClientPolicy {
    /// Whether a connection's identity may have a review answered; a refusal is counted.
    pub fn check(&self, identity: Option<&ClientIdentity>) -> Result<(), Refusal> {
        let refusal = match identity {
            None => Refusal::NoCertificate,
            Some(identity)
                if identity
                    .names
                    .iter()
                    .any(|name| self.subjects.iter().any(|s| s == name)) =>
            {
                return Ok(())
            }
            Some(_) => Refusal::Subject,
        };
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: "admission",
                reason: refusal.as_str(),
            })
            .inc();
        Err(refusal)
    }
}

fn verifier_from(pem: &[u8], name: &str) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::ClientCa {
            what: name.to_owned(),
            detail: format!("a PEM block is not a certificate ({e})"),
        })?;
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            what: name.to_owned(),
            detail: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::ClientCa {
            what: name.to_owned(),
            detail: "it holds no PEM certificate".to_owned(),
        });
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::ClientCa {
        what: name.to_owned(),
        detail: e.to_string(),
    })
}

/// The client CA, re-read from its file every interval and on SIGHUP (a mounted Secret or
/// ConfigMap changes by a symlink swap). A change that parses is used for new handshakes; a
/// broken one keeps the CA in use, and is logged and counted once.
#[derive(Debug)]
pub struct ReloadingClientCa {
    path: PathBuf,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    seen: Mutex<Vec<u8>>,
    reloads: Counter,
    failures: Counter,
    refusals: Family<RefusalLabels, Counter>,
}

impl ReloadingClientCa {
    /// Reads and checks the file (a failure here stops startup).
    pub fn load(
        path: &Path,
        reloads: Counter,
        failures: Counter,
        refusals: Family<RefusalLabels, Counter>,
    ) -> Result<Arc<ReloadingClientCa>, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let verifier = verifier_from(&pem, &path.display().to_string())?;
        Ok(Arc::new(ReloadingClientCa {
            path: path.to_owned(),
            current: RwLock::new(verifier),
            seen: Mutex::new(pem),
            reloads,
            failures,
            refusals,
        }))
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file; `Ok(true)` when a new CA is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pem = std::fs::read(&self.path).map_err(|source| TlsError::Read {
            path: self.path.display().to_string(),
            source,
        })?;
        {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(false);
            };
            if *seen == pem {
                return Ok(false);
            }
            seen.clone_from(&pem);
        }
        let verifier = verifier_from(&pem, &self.path.display().to_string()).inspect_err(|_| {
            self.failures.inc();
        })?;
        match self.current.write() {
            Ok(mut current) => *current = verifier,
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
        self.reloads.inc();
        Ok(true)
    }

    /// Re-reads the file every `interval` (never, when `None`) and whenever `wake` is
    /// notified (SIGHUP), for ever.
    pub async fn watch(
        self: Arc<Self>,
        interval: Option<Duration>,
        wake: Arc<tokio::sync::Notify>,
    ) {
        loop {
            tokio::select! {
                _ = super::tls::sleep_or_never(interval) => {}
                _ = wake.notified() => {}
            }
            match self.reload() {
                Ok(true) => {
                    tracing::info!(client_ca = %self.path.display(), "verifying client certificates with the new CA")
                }
                Ok(false) => {}
                Err(TlsError::Read { path, source }) => {
                    tracing::debug!("cannot read {path} to check for a new client CA: {source}")
                }
                Err(e) => tracing::error!(
                    client_ca = %self.path.display(),
                    "the new client CA cannot be used, the previous one stays in use: {e}"
                ),
            }
        }
    }
}

impl ClientCertVerifier for ReloadingClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // The probes present none; the HTTP layer refuses reviews without one.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hint: Go's client (the API server's) then sends the certificate it has, and a
        // caller learns nothing of the CA's name.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                tracing::debug!("refused a client certificate: {e}");
                self.refusals
                    .get_or_create(&RefusalLabels {
                        listener: "admission",
                        reason: Refusal::Untrusted.as_str(),
                    })
                    .inc();
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(cn: &str, san: &[&str]) -> (String, String) {
        let ca = crate::certs::pki::generate("test CA", &["localhost".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &ca.ca_cert_pem,
            rcgen::KeyPair::from_pem(&ca.ca_key_pem).unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca.ca_cert_pem, cert.pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn policy(subjects: &[&str]) -> ClientPolicy {
        ClientPolicy {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            refusals: Family::default(),
        }
    }

    fn refused(policy: &ClientPolicy, reason: &'static str) -> u64 {
        policy
            .refusals
            .get_or_create(&RefusalLabels {
                listener: "admission",
                reason,
            })
            .get()
    }

    #[test]
    fn names_are_the_common_name_and_the_alternative_names() {
        let (_, cert) = pki("kube-apiserver", &["apiserver.example", "10.0.0.1"]);
        let identity = ClientIdentity::of(&der(&cert)).unwrap();
        assert_eq!(identity.names, ["kube-apiserver", "apiserver.example"]);
        assert_eq!(ClientIdentity::of(b"not a certificate"), None);
    }

    #[test]
    fn only_an_allowed_name_passes_and_each_refusal_is_counted() {
        let policy = policy(&["kube-apiserver", "apiserver.example"]);
        let by_cn = ClientIdentity {
            names: vec!["kube-apiserver".into()],
        };
        let by_san = ClientIdentity {
            names: vec!["other".into(), "apiserver.example".into()],
        };
        let other = ClientIdentity {
            names: vec!["kube-apiserver-2".into(), "Kube-apiserver".into()],
        };
        assert_eq!(policy.check(Some(&by_cn)), Ok(()));
        assert_eq!(policy.check(Some(&by_san)), Ok(()));
        assert_eq!(policy.check(Some(&other)), Err(Refusal::Subject));
        assert_eq!(policy.check(None), Err(Refusal::NoCertificate));
        assert_eq!(policy.check(None), Err(Refusal::NoCertificate));
        assert_eq!(refused(&policy, "subject"), 1);
        assert_eq!(refused(&policy, "no_certificate"), 2);
    }

    #[test]
    fn the_ca_is_reloaded_and_a_broken_change_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-ca.crt");
        let (ca1, cert1) = pki("kube-apiserver", &[]);
        let (ca2, cert2) = pki("kube-apiserver", &[]);
        std::fs::write(&path, &ca1).unwrap();
        let ca = ReloadingClientCa::load(
            &path,
            Counter::default(),
            Counter::default(),
            Family::default(),
        )
        .unwrap();
        let now = UnixTime::now();
        let verify = |pem: &str| {
            ca.verify_client_cert(&CertificateDer::from(der(pem)), &[], now)
                .is_ok()
        };
        assert!(verify(&cert1));
        assert!(!verify(&cert2));
        assert_eq!(
            ca.refusals
                .get_or_create(&RefusalLabels {
                    listener: "admission",
                    reason: "untrusted"
                })
                .get(),
            1
        );
        std::fs::write(&path, &ca2).unwrap();
        assert!(ca.reload().unwrap());
        assert!(!ca.reload().unwrap(), "an unchanged file is no change");
        assert!(verify(&cert2));
        assert!(!verify(&cert1));
        assert_eq!(ca.reloads.get(), 1);
        std::fs::write(&path, "no certificate here").unwrap();
        assert!(ca.reload().is_err());
        assert_eq!(ca.failures.get(), 1);
        assert!(verify(&cert2), "the previous CA stays in use");
        assert!(!ca.client_auth_mandatory() && ca.offer_client_auth());
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.crt");
        std::fs::write(&path, "").unwrap();
        let e = ReloadingClientCa::load(
            &path,
            Counter::default(),
            Counter::default(),
            Family::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }
}
