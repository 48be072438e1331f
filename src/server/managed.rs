//! What the certificate writer of `serve --manage-certs` makes of the Secret it finds: keep it,
//! issue a new serving certificate, or replace everything. Pure decisions over the Secret's
//! bytes and the time, so that each can be tested as a table; the writer (the Lease holder that
//! applies them) is built on top.
//!
//! The Secret holds `ca.crt`, `ca.key`, `tls.crt` and `tls.key` (PEM). It is replaced whole
//! when a key is missing or unreadable, when a key does not belong to its certificate, or when
//! the serving certificate was not signed by the CA (a foreign Secret); the serving certificate
//! alone is issued again when it misses a name that serving needs, or when less than its
//! renewal margin is left (a third of its validity unless `--cert-renew-before` says).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The Secret's keys.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// What serving needs of the certificate.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// How long before expiry the serving certificate is renewed; a third of its validity
    /// when `None`.
    pub renew_before: Option<Duration>,
}

/// The writer's decision, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Good until `renew_at` (seconds since the Unix epoch).
    Keep { renew_at: i64 },
    /// The CA stays; a new serving certificate is signed by it.
    IssueServing(String),
    /// A new CA and serving certificate (the Secret is missing, corrupt or foreign).
    Replace(String),
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal.
pub fn renew_at(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    let margin = match renew_before {
        Some(margin) => i64::try_from(margin.as_secs()).unwrap_or(i64::MAX),
        None => (not_after - not_before).max(0) / 3,
    };
    not_after.saturating_sub(margin)
}

fn certificate<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<CertificateDer<'a>, String> {
    let pem = data.get(key).ok_or_else(|| format!("it has no {key}"))?;
    CertificateDer::from_pem_slice(pem)
        .map_err(|e| format!("its {key} is not a PEM certificate ({e})"))
}

fn parsed<'a>(der: &'a CertificateDer<'_>, key: &str) -> Result<X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, certificate)| certificate)
        .map_err(|e| format!("its {key} cannot be read ({e})"))
}

/// Whether the PEM private key `key` (under `name`) is the one `certificate` was issued for.
fn key_matches(certificate: &X509Certificate<'_>, key: &[u8], name: &str) -> Result<(), String> {
    let text = std::str::from_utf8(key).map_err(|_| format!("its {name} is not PEM text"))?;
    let pair = rcgen::KeyPair::from_pem(text)
        .map_err(|e| format!("its {name} is not a PEM private key ({e})"))?;
    if pair.public_key_raw() == &*certificate.public_key().subject_public_key.data {
        Ok(())
    } else {
        Err(format!("its {name} does not belong to its certificate"))
    }
}

/// Decides what to do with a Secret's `data` (`None` when there is no Secret) at `now`.
pub fn decide(data: Option<&BTreeMap<String, Vec<u8>>>, wanted: &Wanted, now: i64) -> Decision {
    let Some(data) = data else {
        return Decision::Replace("there is no Secret yet".to_owned());
    };
    let checked = (|| {
        let ca_der = certificate(data, CA_CERT)?;
        let ca = parsed(&ca_der, CA_CERT)?;
        key_matches(&ca, data.get(CA_KEY).ok_or("it has no ca.key")?, CA_KEY)?;
        if !ca.is_ca() {
            return Err("its ca.crt is not a CA certificate".to_owned());
        }
        if ca.validity().not_after.timestamp() <= now {
            return Err("its CA has expired".to_owned());
        }
        let leaf_der = certificate(data, TLS_CERT)?;
        let leaf = parsed(&leaf_der, TLS_CERT)?;
        key_matches(
            &leaf,
            data.get(TLS_KEY).ok_or("it has no tls.key")?,
            TLS_KEY,
        )?;
        leaf.verify_signature(Some(ca.public_key())).map_err(|_| {
            "its tls.crt was not signed by its ca.crt (a foreign Secret)".to_owned()
        })?;
        Ok((
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
            names_of(&leaf),
        ))
    })();
    let (not_before, not_after, (dns, ips)) = match checked {
        Ok(found) => found,
        Err(why) => return Decision::Replace(format!("the Secret cannot be used: {why}")),
    };
    let missing: Vec<String> = wanted
        .dns_names
        .iter()
        .filter(|name| !dns.iter().any(|d| d.eq_ignore_ascii_case(name)))
        .cloned()
        .chain(
            wanted
                .ip_addresses
                .iter()
                .filter(|ip| !ips.contains(ip))
                .map(IpAddr::to_string),
        )
        .collect();
    if !missing.is_empty() {
        return Decision::IssueServing(format!(
            "the serving certificate does not cover {}",
            missing.join(", ")
        ));
    }
    let due = renew_at(not_before, not_after, wanted.renew_before);
    if now >= not_after {
        Decision::IssueServing("the serving certificate has expired".to_owned())
    } else if now >= due {
        Decision::IssueServing(format!(
            "the serving certificate expires in {} hours, within its renewal margin",
            (not_after - now) / 3600
        ))
    } else {
        Decision::Keep { renew_at: due }
    }
}

/// The DNS names and IP addresses a certificate is for.
fn names_of(certificate: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    16 => ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::pki;

    const DAY: i64 = 86_400;

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn secret(pki: &pki::Pki) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (CA_CERT.to_owned(), pki.ca_cert_pem.clone().into_bytes()),
            (CA_KEY.to_owned(), pki.ca_key_pem.clone().into_bytes()),
            (TLS_CERT.to_owned(), pki.cert_pem.clone().into_bytes()),
            (TLS_KEY.to_owned(), pki.key_pem.clone().into_bytes()),
        ])
    }

    fn wanted(names: &[&str]) -> Wanted {
        Wanted {
            dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            renew_before: None,
        }
    }

    #[test]
    fn when_to_renew_over_the_times() {
        // A 90-day certificate from day 0: renewed with a third (30 days) left, or as asked.
        let (from, to) = (0, 90 * DAY);
        assert_eq!(renew_at(from, to, None), 60 * DAY);
        assert_eq!(
            renew_at(from, to, Some(Duration::from_secs(7 * 86_400))),
            83 * DAY
        );
        // A 3-minute certificate (the e2e runs): renewed at 2 minutes.
        assert_eq!(renew_at(1000, 1180, None), 1120);
        // A margin longer than the validity: due at once.
        assert_eq!(
            renew_at(from, to, Some(Duration::from_secs(365 * 86_400))),
            -275 * DAY
        );
        // Nonsense validity (ends before it starts): no margin, due at its end.
        assert_eq!(renew_at(to, from, None), from);

        // The same, through a real Secret (valid for 365 days from about now).
        let names = ["prodguard.prodguard.svc", "127.0.0.1"];
        let pki = pki::generate("test CA", &names.map(String::from)).unwrap();
        let data = secret(&pki);
        let want = wanted(&names[..1]);
        let start = now();
        for (at, keep) in [
            (start, true),
            (start + 242 * DAY, true),
            (start + 245 * DAY, false),
            (start + 364 * DAY, false),
            (start + 366 * DAY, false),
        ] {
            let decision = decide(Some(&data), &want, at);
            assert_eq!(
                matches!(decision, Decision::Keep { .. }),
                keep,
                "day {}: {decision:?}",
                (at - start) / DAY
            );
            if !keep {
                assert!(
                    matches!(decision, Decision::IssueServing(_)),
                    "{decision:?}"
                );
            }
        }
    }

    #[test]
    fn secrets_that_are_missing_corrupt_foreign_or_for_other_names() {
        let names = ["prodguard.prodguard.svc".to_owned(), "127.0.0.1".to_owned()];
        let pki = pki::generate("test CA", &names).unwrap();
        let other = pki::generate("another CA", &names).unwrap();
        let want = wanted(&["prodguard.prodguard.svc"]);
        let good = secret(&pki);
        assert!(matches!(
            decide(Some(&good), &want, now()),
            Decision::Keep { .. }
        ));

        let replaced = |data: &BTreeMap<String, Vec<u8>>, expected: &str| match decide(
            Some(data),
            &want,
            now(),
        ) {
            Decision::Replace(why) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: {other:?}"),
        };
        assert!(matches!(decide(None, &want, now()), Decision::Replace(_)));
        replaced(&BTreeMap::new(), "it has no ca.crt");
        let mut data = good.clone();
        data.remove(TLS_KEY);
        replaced(&data, "it has no tls.key");
        let mut data = good.clone();
        data.insert(
            TLS_CERT.to_owned(),
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
        );
        replaced(&data, "its tls.crt");
        let mut data = good.clone();
        data.insert(CA_KEY.to_owned(), b"garbage".to_vec());
        replaced(&data, "its ca.key is not a PEM private key");
        // A key of another pair.
        let mut data = good.clone();
        data.insert(TLS_KEY.to_owned(), other.key_pem.clone().into_bytes());
        replaced(&data, "its tls.key does not belong to its certificate");
        // A serving certificate (and key) of another CA: foreign.
        let mut data = good.clone();
        data.insert(TLS_CERT.to_owned(), other.cert_pem.clone().into_bytes());
        data.insert(TLS_KEY.to_owned(), other.key_pem.clone().into_bytes());
        replaced(&data, "was not signed by its ca.crt");
        // The serving certificate as the CA.
        let mut data = good.clone();
        data.insert(CA_CERT.to_owned(), pki.cert_pem.clone().into_bytes());
        data.insert(CA_KEY.to_owned(), pki.key_pem.clone().into_bytes());
        replaced(&data, "is not a CA certificate");

        // Good, but not for a name serving needs now: only the serving certificate is issued.
        let more = Wanted {
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([10, 0, 0, 7])],
            ..wanted(&[
                "prodguard.prodguard.svc",
                "prodguard.prodguard.svc.cluster.local",
            ])
        };
        match decide(Some(&good), &more, now()) {
            Decision::IssueServing(why) => {
                assert!(
                    why.contains("does not cover prodguard.prodguard.svc.cluster.local, 10.0.0.7"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
