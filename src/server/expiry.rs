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

pub fn standing(not_after: i64, now: i64, warn_before: Duration) -> Standing {
    let left = not_after - now;
    if left <= 0 {
        Standing::Expired
    } else if left < i64::try_from(warn_before.as_secs()).unwrap_or(i64::MAX) {
        Standing::ExpiresSoon {
            days: left / 86_400,
        }
    } else {
        Standing::Fine
    }
}

/// `seconds` as a warning says it: whole days from a day on, else hours, minutes and seconds.
fn time_left(seconds: i64) -> String {
    if seconds >= 86_400 {
        format!("{} days", seconds / 86_400)
    } else {
        humantime::format_duration(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
            .to_string()
    }
}

/// Where a warning goes besides the log: a Warning Event (set once a cluster client exists).
pub type WarningHook = Box<dyn Fn(String) + Send + Sync>;

/// Records the expiry of what is served and warns as the module says.
pub struct ExpiryWatch {
    gauges: Family<CertificateLabels, Gauge>,
    /// Where the certificate comes from, for the warning ("--tls-cert FILE").
    source: String,
    /// How long before expiry it is warned about.
    warn_before: Duration,
    /// Whether prodguard renews it itself (`--manage-certs`): the advice differs.
    managed: bool,
    /// What is served now, and when it was last warned about.
    state: Mutex<(Option<ChainExpiry>, Option<std::time::Instant>)>,
    hook: std::sync::OnceLock<WarningHook>,
    /// A warning given before the hook was set (at start, before the cluster client exists).
    unsent: Mutex<Option<String>>,
}

impl std::fmt::Debug for ExpiryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryWatch")
            .field("source", &self.source)
            .field("warn_before", &self.warn_before)
            .finish_non_exhaustive()
    }
}

impl ExpiryWatch {
    pub fn new(gauges: Family<CertificateLabels, Gauge>, source: String) -> ExpiryWatch {
        ExpiryWatch {
            gauges,
            source,
            warn_before: WARN_BEFORE,
            managed: false,
            state: Mutex::new((None, None)),
            hook: std::sync::OnceLock::new(),
            unsent: Mutex::new(None),
        }
    }

    /// For certificates that prodguard renews itself: warned about only once renewal is
    /// overdue, `warn_before` ahead (half the renewal margin; at most [`WARN_BEFORE`]).
    pub fn managed(mut self, warn_before: Duration) -> ExpiryWatch {
        self.warn_before = warn_before.min(WARN_BEFORE);
        self.managed = true;
        self
    }

    /// Sends each warning to `hook` too (a Warning Event), the last one given before now
    /// included; the first hook set stays.
    pub fn on_warning(&self, hook: WarningHook) {
        let _ = self.hook.set(hook);
        let unsent = self.unsent.lock().ok().and_then(|mut unsent| unsent.take());
        if let (Some(message), Some(hook)) = (unsent, self.hook.get()) {
            hook(message);
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
        let left = time_left(earliest - now);
        let message = match (standing(earliest, now, self.warn_before), self.managed) {
            (Standing::Fine, _) => return,
            (Standing::ExpiresSoon { .. }, false) => format!(
                "the served certificate ({}) or its CA expires in {left}; prodguard does not renew certificates given as files: replace them (prodguard certs), and they are reloaded without a restart",
                self.source
            ),
            (Standing::ExpiresSoon { .. }, true) => format!(
                "the served certificate ({}) or its CA expires in {left} and has not been renewed: see the certificate writer's errors in the log of the replica holding the prodguard-certs Lease (a missing RBAC permission is named there)",
                self.source
            ),
            (Standing::Expired, _) => format!(
                "the served certificate ({}) or its CA has expired: the API server cannot call prodguard; {}",
                self.source,
                if self.managed {
                    "see the certificate writer's errors, or delete the Secret to have a new CA issued"
                } else {
                    "replace the files (prodguard certs)"
                }
            ),
        };
        tracing::warn!("{message}");
        match self.hook.get() {
            Some(hook) => hook(message),
            None => {
                if let Ok(mut unsent) = self.unsent.lock() {
                    *unsent = Some(message);
                }
            }
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
        let pki = crate::certs::pki::generate("expiry CA", &names).unwrap();
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
    fn a_managed_certificate_is_warned_about_when_its_renewal_is_overdue() {
        use std::sync::Arc;
        let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
        let gauges = Family::<CertificateLabels, Gauge>::default();
        let watch = ExpiryWatch::new(gauges.clone(), "the Secret prodguard/prodguard-tls".into())
            .managed(Duration::from_secs(3 * 3600));
        let seen = warnings.clone();
        watch.on_warning(Box::new(move |m| seen.lock().unwrap().push(m)));
        // A year's certificate: fine although less than 30 days would have warned a file's.
        let names = vec!["localhost".to_owned()];
        let ca = crate::certs::pki::issue_ca("CA", Duration::from_secs(86_400)).unwrap();
        let leaf = |validity| {
            let pair =
                crate::certs::pki::issue_serving(&ca, &names, Duration::from_secs(validity), None)
                    .unwrap();
            CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap()
        };
        watch.serving(&[leaf(10 * 86_400)]);
        assert!(warnings.lock().unwrap().is_empty());
        // Two hours left of a three-hour margin: renewal is overdue.
        watch.serving(&[leaf(2 * 3600)]);
        let got = warnings.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("has not been renewed"), "{got:?}");
        assert!(
            got[0].contains("the Secret prodguard/prodguard-tls"),
            "{got:?}"
        );
        // Once a day at most.
        watch.check();
        assert_eq!(warnings.lock().unwrap().len(), 1);

        // A warning given before the hook exists (at start) is sent when it is set.
        let files = ExpiryWatch::new(gauges, "--tls-cert tls.crt".into());
        files.serving(&[leaf(20 * 86_400)]);
        let late = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = late.clone();
        files.on_warning(Box::new(move |m| seen.lock().unwrap().push(m)));
        let got = late.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("expires in 19 days") || got[0].contains("expires in 20 days"),
            "{got:?}"
        );
        assert!(
            got[0].contains("does not renew certificates given as files"),
            "{got:?}"
        );
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
            assert_eq!(
                standing(now + left, now, WARN_BEFORE),
                expected,
                "{left} s left"
            );
        }
    }
}
