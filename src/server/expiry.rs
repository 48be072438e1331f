//! When the certificates in use expire: the metric
//! `prodguard_certificate_expiry_timestamp_seconds{certificate="serving"|"ca"}`, and a warning
//! in the log once a served certificate has less than [`WARN_BEFORE`] left (at most once a day
//! while it stays so). prodguard renews nothing that it was given as files: it says so.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::CertificateDer;

use crate::report::metrics::CertificateLabels;

/// How long before expiry a served certificate is warned about.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the warning is repeated while it holds.
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// When one certificate stops being valid, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(certificate.validity().not_after.timestamp())
}

/// The expiry of a served chain: its first certificate (the serving one) and, when the chain
/// holds more, its last (the CA that signed it, or the intermediate closest to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainExpiry {
    pub serving: i64,
    pub ca: Option<i64>,
}

impl ChainExpiry {
    pub fn of(chain: &[CertificateDer<'_>]) -> Result<ChainExpiry, String> {
        let serving = chain
            .first()
            .ok_or("the chain holds no certificate")
            .and_then(|leaf| {
                not_after(leaf).map_err(|_| "the serving certificate cannot be read")
            })?;
        let ca = match chain.len() {
            0 | 1 => None,
            n => Some(not_after(&chain[n - 1])?),
        };
        Ok(ChainExpiry { serving, ca })
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a certificate with `left` seconds of validity calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Fine,
    /// Less than [`WARN_BEFORE`] left.
    ExpiresSoon {
        days: i64,
    },
    Expired,
}

pub fn standing(not_after: i64, now: i64) -> Standing {
    let left = not_after - now;
    if left <= 0 {
        Standing::Expired
    } else if left < WARN_BEFORE.as_secs() as i64 {
        Standing::ExpiresSoon {
            days: left / 86_400,
        }
    } else {
        Standing::Fine
    }
}

/// Records the expiry of what is served and warns as the module says.
#[derive(Debug)]
pub struct ExpiryWatch {
    gauges: Family<CertificateLabels, Gauge>,
    /// Where the certificate comes from, for the warning ("--tls-cert FILE").
    source: String,
    /// What is served now, and when it was last warned about.
    state: Mutex<(Option<ChainExpiry>, Option<std::time::Instant>)>,
}

impl ExpiryWatch {
    pub fn new(gauges: Family<CertificateLabels, Gauge>, source: String) -> ExpiryWatch {
        ExpiryWatch {
            gauges,
            source,
            state: Mutex::new((None, None)),
        }
    }

    /// A new chain is served (at start or after a reload).
    pub fn serving(&self, chain: &[CertificateDer<'_>]) {
        match ChainExpiry::of(chain) {
            Ok(expiry) => {
                self.set("serving", Some(expiry.serving));
                self.set("ca", expiry.ca);
                if let Ok(mut state) = self.state.lock() {
                    *state = (Some(expiry), None);
                }
            }
            Err(e) => {
                tracing::warn!(source = %self.source, "cannot tell when the served certificate expires: {e}")
            }
        }
        self.check();
    }

    fn set(&self, certificate: &'static str, at: Option<i64>) {
        let labels = CertificateLabels { certificate };
        match at {
            Some(at) => {
                self.gauges.get_or_create(&labels).set(at);
            }
            None => {
                self.gauges.remove(&labels);
            }
        }
    }

    /// Warns when the served certificate expires soon, at most once a day; call it often.
    pub fn check(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (Some(expiry), last) = *state else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        let now = now_seconds();
        let earliest = expiry
            .ca
            .map_or(expiry.serving, |ca| ca.min(expiry.serving));
        match standing(earliest, now) {
            Standing::Fine => return,
            Standing::ExpiresSoon { days } => tracing::warn!(
                source = %self.source,
                "the served certificate (or its CA) expires in {days} days; prodguard does not renew certificates given as files: replace them (prodguard certs), and they are reloaded without a restart"
            ),
            Standing::Expired => tracing::error!(
                source = %self.source,
                "the served certificate (or its CA) has expired: the API server cannot call prodguard; replace the files (prodguard certs)"
            ),
        }
        state.1 = Some(std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn the_expiry_of_a_generated_chain() {
        let names = vec!["localhost".to_owned()];
        let pki = super::super::pki::generate("expiry CA", &names).unwrap();
        let leaf = CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap();
        let ca = CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap();
        let now = now_seconds();
        let expiry = ChainExpiry::of(&[leaf.clone(), ca.clone()]).unwrap();
        // pki::generate makes certificates valid for a year from now.
        assert!(expiry.serving > now + 364 * 86_400, "{expiry:?}");
        assert!(expiry.serving <= now + 366 * 86_400, "{expiry:?}");
        assert!(
            expiry.ca.is_some_and(|ca| ca >= expiry.serving),
            "{expiry:?}"
        );
        assert_eq!(ChainExpiry::of(&[leaf]).unwrap().ca, None);
        assert!(ChainExpiry::of(&[]).is_err());
        assert!(ChainExpiry::of(&[CertificateDer::from(vec![1u8, 2, 3])]).is_err());
    }

    #[test]
    fn standing_over_the_times() {
        let day = 86_400;
        let now = 1_800_000_000;
        for (left, expected) in [
            (365 * day, Standing::Fine),
            (31 * day, Standing::Fine),
            (30 * day, Standing::Fine),
            (30 * day - 1, Standing::ExpiresSoon { days: 29 }),
            (2 * day, Standing::ExpiresSoon { days: 2 }),
            (1, Standing::ExpiresSoon { days: 0 }),
            (0, Standing::Expired),
            (-day, Standing::Expired),
        ] {
            assert_eq!(standing(now + left, now), expected, "{left} s left");
        }
    }
}
