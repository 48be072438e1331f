//! What the certificate writer of `serve --manage-certs` makes of the Secret it finds: keep it,
//! issue a new serving certificate, rotate the CA, or replace everything. Pure decisions over
//! the Secret's bytes and the time, so that each can be tested as a table; the writer (the
//! Lease holder that applies them, `certs::manager`) is built on top.
//!
//! The Secret holds `ca.crt`, `ca.key`, `tls.crt` and `tls.key` (PEM). It is replaced whole
//! when a key is missing or unreadable, when a key does not belong to its certificate, or when
//! the serving certificate was not signed by the CA (a foreign Secret); the serving certificate
//! alone is issued again when it misses a name that serving needs, or when less than its
//! renewal margin is left (a third of its validity unless `--cert-renew-before` says).
//!
//! The CA is rotated when less than a third of its own validity is left, in three steps that
//! each wait `overlap` (long enough for the API server and every replica to see the previous
//! one): **add** a new CA (`ca-next.crt`, `ca-next.key`) so that the webhooks' bundle trusts
//! both; **switch**: the new CA signs a new serving certificate and the old one moves to
//! `ca-previous.crt`, still in the bundle; **drop** the previous CA. When the step started is
//! the Secret's annotation [`STEP_SINCE`], so that a new writer carries on where the last one
//! stopped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::pki;

/// The Secret's keys.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The CA that a rotation adds (step one).
pub const CA_NEXT_CERT: &str = "ca-next.crt";
pub const CA_NEXT_KEY: &str = "ca-next.key";
/// The CA that a rotation (or a replacement) switched away from, still trusted (step two).
pub const CA_PREVIOUS_CERT: &str = "ca-previous.crt";
/// The Secret's annotation: when the current rotation step began (RFC 3339).
pub const STEP_SINCE: &str = "prodguard.io/ca-step-since";

/// What serving needs of the certificate.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// How long before expiry the serving certificate is renewed; a third of its validity
    /// when `None`.
    pub renew_before: Option<Duration>,
    /// How long a new serving certificate is valid.
    pub validity: Duration,
    /// How long a new CA is valid.
    pub ca_validity: Duration,
    /// How long each step of a CA rotation waits before the next.
    pub overlap: Duration,
}

/// The writer's decision, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do until `next_at` (seconds since the Unix epoch): a renewal, a rotation or
    /// its next step.
    Keep { next_at: i64 },
    /// The CA stays; a new serving certificate is signed by it.
    IssueServing(String),
    /// A new CA and serving certificate (the Secret is missing, corrupt or foreign).
    Replace(String),
    /// Rotation step one: a new CA joins the bundle (or a broken one is made again).
    AddCa(String),
    /// Rotation step two: the new CA signs the serving certificate; the old one stays trusted.
    SwitchCa,
    /// Rotation step three: the previous CA leaves the bundle.
    DropPreviousCa,
}

/// A Secret's data, key by key.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// A Secret as the writer reads it.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub data: &'a BTreeMap<String, Vec<u8>>,
    /// [`STEP_SINCE`], in seconds since the Unix epoch.
    pub step_since: Option<i64>,
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

/// A CA certificate and key from `data`, checked: readable, a CA, its key, not expired.
fn checked_ca<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    cert_key: &str,
    key_key: &str,
    now: i64,
) -> Result<(CertificateDer<'a>, i64, i64), String> {
    let der = certificate(data, cert_key)?;
    let (not_before, not_after) = {
        let ca = parsed(&der, cert_key)?;
        key_matches(
            &ca,
            data.get(key_key)
                .ok_or_else(|| format!("it has no {key_key}"))?,
            key_key,
        )?;
        if !ca.is_ca() {
            return Err(format!("its {cert_key} is not a CA certificate"));
        }
        (
            ca.validity().not_before.timestamp(),
            ca.validity().not_after.timestamp(),
        )
    };
    if not_after <= now {
        return Err(format!("its {cert_key} has expired"));
    }
    Ok((der, not_before, not_after))
}

/// Decides what to do with a Secret (`None` when there is none) at `now`.
pub fn decide(found: Option<Found<'_>>, wanted: &Wanted, now: i64) -> Decision {
    let Some(Found { data, step_since }) = found else {
        return Decision::Replace("there is no Secret yet".to_owned());
    };
    let checked = (|| -> Result<_, String> {
        let (ca_der, ca_from, ca_to) = checked_ca(data, CA_CERT, CA_KEY, now)?;
        let ca = parsed(&ca_der, CA_CERT)?;
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
            (ca_from, ca_to),
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
            names_of(&leaf),
        ))
    })();
    let ((ca_from, ca_to), not_before, not_after, (dns, ips)) = match checked {
        Ok(found) => found,
        Err(why) => return Decision::Replace(format!("the Secret cannot be used: {why}")),
    };
    let step_end = step_since
        .unwrap_or(i64::MIN)
        .saturating_add(seconds(wanted.overlap));
    // A rotation in progress goes on first: its steps keep the bundle right.
    let mut next_at = i64::MAX;
    if data.contains_key(CA_NEXT_CERT) || data.contains_key(CA_NEXT_KEY) {
        if let Err(why) = checked_ca(data, CA_NEXT_CERT, CA_NEXT_KEY, now) {
            return Decision::AddCa(format!("the next CA cannot be used ({why}): made again"));
        }
        if now >= step_end {
            return Decision::SwitchCa;
        }
        next_at = step_end;
    } else if data.contains_key(CA_PREVIOUS_CERT) {
        if now >= step_end {
            return Decision::DropPreviousCa;
        }
        next_at = step_end;
    } else {
        let ca_due = renew_at(ca_from, ca_to, None);
        if now >= ca_due {
            return Decision::AddCa(format!(
                "the CA expires in {}, within a third of its validity",
                humantime::format_duration(Duration::from_secs(
                    u64::try_from(ca_to - now).unwrap_or(0)
                ))
            ));
        }
        next_at = next_at.min(ca_due);
    }
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
            "the serving certificate expires in {}, within its renewal margin",
            humantime::format_duration(Duration::from_secs(
                u64::try_from(not_after - now).unwrap_or(0)
            ))
        ))
    } else {
        Decision::Keep {
            next_at: next_at.min(due),
        }
    }
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// The Secret that a decision makes: its new data and [`STEP_SINCE`]. `trusted` is the bundle
/// the webhooks hold now: when the Secret is replaced, what it held stays trusted for one
/// overlap as the previous CA (replicas still serve certificates it signed).
pub fn apply(
    decision: &Decision,
    current: Option<Found<'_>>,
    wanted: &Wanted,
    trusted: Option<&[u8]>,
    now: i64,
) -> Result<(SecretData, Option<i64>), String> {
    let names: Vec<String> = wanted
        .dns_names
        .iter()
        .cloned()
        .chain(wanted.ip_addresses.iter().map(IpAddr::to_string))
        .collect();
    let failed = |what: &str, e: rcgen::Error| format!("cannot issue {what}: {e}");
    let pair_of = |data: &BTreeMap<String, Vec<u8>>, cert: &str, key: &str| pki::Pair {
        cert_pem: String::from_utf8_lossy(data.get(cert).map_or(&[][..], Vec::as_slice))
            .into_owned(),
        key_pem: String::from_utf8_lossy(data.get(key).map_or(&[][..], Vec::as_slice)).into_owned(),
    };
    let ca_end = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .ok()
            .and_then(|der| crate::server::expiry::not_after(&der).ok())
    };
    let serving = |data: &mut BTreeMap<String, Vec<u8>>, ca: &pki::Pair| -> Result<(), String> {
        let leaf = pki::issue_serving(ca, &names, wanted.validity, ca_end(&ca.cert_pem))
            .map_err(|e| failed("a serving certificate", e))?;
        data.insert(TLS_CERT.to_owned(), leaf.cert_pem.into_bytes());
        data.insert(TLS_KEY.to_owned(), leaf.key_pem.into_bytes());
        Ok(())
    };
    let ca_name = || {
        format!(
            "prodguard CA for {}",
            names.first().map_or("prodguard", String::as_str)
        )
    };
    let mut data = current.map(|f| f.data.clone()).unwrap_or_default();
    let step_since = current.and_then(|f| f.step_since);
    match decision {
        Decision::Keep { .. } => Ok((data, step_since)),
        Decision::Replace(_) => {
            let ca =
                pki::issue_ca(&ca_name(), wanted.ca_validity).map_err(|e| failed("a CA", e))?;
            let mut fresh = BTreeMap::new();
            serving(&mut fresh, &ca)?;
            fresh.insert(CA_CERT.to_owned(), ca.cert_pem.clone().into_bytes());
            fresh.insert(CA_KEY.to_owned(), ca.key_pem.into_bytes());
            let kept = trusted
                .map(|bundle| still_valid(bundle, now))
                .filter(|kept| !kept.is_empty());
            Ok(match kept {
                Some(kept) => {
                    fresh.insert(CA_PREVIOUS_CERT.to_owned(), kept);
                    (fresh, Some(now))
                }
                None => (fresh, None),
            })
        }
        Decision::IssueServing(_) => {
            let ca = pair_of(&data, CA_CERT, CA_KEY);
            serving(&mut data, &ca)?;
            Ok((data, step_since))
        }
        Decision::AddCa(_) => {
            let next =
                pki::issue_ca(&ca_name(), wanted.ca_validity).map_err(|e| failed("a CA", e))?;
            data.insert(CA_NEXT_CERT.to_owned(), next.cert_pem.into_bytes());
            data.insert(CA_NEXT_KEY.to_owned(), next.key_pem.into_bytes());
            data.remove(CA_PREVIOUS_CERT);
            Ok((data, Some(now)))
        }
        Decision::SwitchCa => {
            let next = pair_of(&data, CA_NEXT_CERT, CA_NEXT_KEY);
            serving(&mut data, &next)?;
            let old = data.remove(CA_CERT).unwrap_or_default();
            data.insert(CA_PREVIOUS_CERT.to_owned(), old);
            data.insert(CA_CERT.to_owned(), next.cert_pem.into_bytes());
            data.insert(CA_KEY.to_owned(), next.key_pem.into_bytes());
            data.remove(CA_NEXT_CERT);
            data.remove(CA_NEXT_KEY);
            Ok((data, Some(now)))
        }
        Decision::DropPreviousCa => {
            data.remove(CA_PREVIOUS_CERT);
            Ok((data, None))
        }
    }
}

/// The certificates of a PEM bundle that are still valid at `now`, as PEM.
fn still_valid(bundle: &[u8], now: i64) -> Vec<u8> {
    let mut kept = Vec::new();
    for der in CertificateDer::pem_slice_iter(bundle).filter_map(Result::ok) {
        if crate::server::expiry::not_after(&der).is_ok_and(|end| end > now) {
            kept.extend_from_slice(pem_of(&der).as_bytes());
        }
    }
    kept
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The CA bundle the webhooks must hold for a Secret: its CA, and the next or previous one
/// while a rotation is under way.
pub fn bundle(data: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut bundle = Vec::new();
    for key in [CA_CERT, CA_NEXT_CERT, CA_PREVIOUS_CERT] {
        if let Some(pem) = data.get(key) {
            bundle.extend_from_slice(pem);
            if !pem.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
    }
    bundle
}

/// Whether the certificate `leaf` (DER) was signed by one of the certificates of the PEM
/// `bundle`: whether an API server holding that bundle accepts it.
pub fn trusted_by(leaf: &[u8], bundle: &[u8]) -> bool {
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    CertificateDer::pem_slice_iter(bundle)
        .filter_map(Result::ok)
        .any(|ca| {
            x509_parser::parse_x509_certificate(&ca)
                .is_ok_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
        })
}

/// The certificates of the PEM `bundle` that signed `leaf` (DER), as PEM: what a replaced
/// Secret must keep trusted while replicas still serve `leaf`.
pub fn signers(leaf: &[u8], bundle: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    for ca in CertificateDer::pem_slice_iter(bundle).filter_map(Result::ok) {
        let pem = pem_of(&ca);
        if trusted_by(leaf, pem.as_bytes()) {
            found.extend_from_slice(pem.as_bytes());
        }
    }
    found
}

/// Whether the PEM certificate `leaf` was signed by the PEM certificate `ca` (`None` when
/// either cannot be read).
pub fn signed_by(leaf: &str, ca: &str) -> Option<bool> {
    let der = CertificateDer::from_pem_slice(leaf.as_bytes()).ok()?;
    CertificateDer::from_pem_slice(ca.as_bytes()).ok()?;
    Some(trusted_by(&der, ca.as_bytes()))
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
    use crate::certs::pki;

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
            validity: Duration::from_secs(10 * 86_400),
            ca_validity: Duration::from_secs(90 * 86_400),
            overlap: Duration::from_secs(3600),
        }
    }

    fn found(data: &BTreeMap<String, Vec<u8>>) -> Option<Found<'_>> {
        Some(Found {
            data,
            step_since: None,
        })
    }

    fn since(data: &BTreeMap<String, Vec<u8>>, at: i64) -> Option<Found<'_>> {
        Some(Found {
            data,
            step_since: Some(at),
        })
    }

    fn certificates_in(bundle: &[u8]) -> usize {
        CertificateDer::pem_slice_iter(bundle)
            .filter_map(Result::ok)
            .count()
    }

    fn text(data: &BTreeMap<String, Vec<u8>>, key: &str) -> String {
        String::from_utf8(data[key].clone()).unwrap()
    }

    #[test]
    fn a_ca_rotation_step_by_step() {
        let want = wanted(&["prodguard.prodguard.svc"]);
        let t0 = now();
        let hour = 3600;
        // Nothing yet: a CA and a serving certificate, one CA in the bundle.
        let decision = decide(None, &want, t0);
        assert!(matches!(decision, Decision::Replace(_)), "{decision:?}");
        let (data0, step) = apply(&decision, None, &want, None, t0).unwrap();
        assert_eq!(step, None);
        assert_eq!(certificates_in(&bundle(&data0)), 1);
        assert_eq!(
            signed_by(&text(&data0, TLS_CERT), &text(&data0, CA_CERT)),
            Some(true)
        );
        // Kept until the serving certificate's renewal (10 days + 1 h backdating, a third).
        match decide(found(&data0), &want, t0) {
            Decision::Keep { next_at } => {
                let due = t0 + 10 * DAY - (10 * DAY + hour) / 3;
                assert!((due - 2..=due + 2).contains(&next_at), "{next_at} vs {due}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(found(&data0), &want, t0 + 7 * DAY),
            Decision::IssueServing(_)
        ));
        // Two thirds into the CA's 90 days: step one, although the serving certificate has
        // expired too (the rotation goes first; renewal follows).
        let decision = decide(found(&data0), &want, t0 + 61 * DAY);
        assert!(
            matches!(&decision, Decision::AddCa(why) if why.contains("within a third")),
            "{decision:?}"
        );
        let (data1, step) = apply(&decision, found(&data0), &want, None, t0).unwrap();
        assert_eq!(step, Some(t0));
        assert_eq!(certificates_in(&bundle(&data1)), 2, "both CAs are trusted");
        assert_eq!(data1[CA_CERT], data0[CA_CERT], "the old CA still signs");
        assert_eq!(data1[TLS_CERT], data0[TLS_CERT]);
        // Step two waits for the overlap.
        assert_eq!(
            decide(since(&data1, t0), &want, t0 + hour / 2),
            Decision::Keep { next_at: t0 + hour }
        );
        let decision = decide(since(&data1, t0), &want, t0 + hour);
        assert_eq!(decision, Decision::SwitchCa);
        let (data2, step) = apply(&decision, since(&data1, t0), &want, None, t0 + hour).unwrap();
        assert_eq!(step, Some(t0 + hour));
        assert_eq!(data2[CA_CERT], data1[CA_NEXT_CERT]);
        assert_eq!(data2[CA_PREVIOUS_CERT], data0[CA_CERT]);
        assert!(!data2.contains_key(CA_NEXT_CERT) && !data2.contains_key(CA_NEXT_KEY));
        assert_eq!(
            signed_by(&text(&data2, TLS_CERT), &text(&data2, CA_CERT)),
            Some(true),
            "the new CA signs the serving certificate"
        );
        let both = bundle(&data2);
        assert_eq!(certificates_in(&both), 2);
        let leaf = |data: &BTreeMap<String, Vec<u8>>| {
            CertificateDer::from_pem_slice(&data[TLS_CERT]).unwrap()
        };
        assert!(trusted_by(&leaf(&data0), &both) && trusted_by(&leaf(&data2), &both));
        // Of the two, the one that signed each serving certificate.
        assert_eq!(signers(&leaf(&data0), &both), data0[CA_CERT]);
        assert_eq!(signers(&leaf(&data2), &both), data2[CA_CERT]);
        // Step three, after the overlap: the previous CA leaves.
        assert!(matches!(
            decide(since(&data2, t0), &want, t0 + hour / 2),
            Decision::Keep { next_at } if next_at == t0 + hour
        ));
        let decision = decide(since(&data2, t0), &want, t0 + hour);
        assert_eq!(decision, Decision::DropPreviousCa);
        let (data3, step) = apply(&decision, since(&data2, t0), &want, None, t0).unwrap();
        assert_eq!(step, None);
        let one = bundle(&data3);
        assert_eq!(certificates_in(&one), 1);
        assert!(trusted_by(&leaf(&data3), &one) && !trusted_by(&leaf(&data0), &one));
        assert!(matches!(
            decide(found(&data3), &want, t0),
            Decision::Keep { .. }
        ));

        // A next CA that broke mid-rotation is made again.
        let mut broken = data1.clone();
        broken.insert(CA_NEXT_KEY.to_owned(), b"garbage".to_vec());
        assert!(matches!(
            decide(since(&broken, t0), &want, t0),
            Decision::AddCa(why) if why.contains("next CA cannot be used")
        ));
        // A replaced Secret keeps what the webhooks trusted for one overlap.
        let decision = Decision::Replace("test".into());
        let (data4, step) = apply(&decision, None, &want, Some(&both), t0).unwrap();
        assert_eq!(step, Some(t0));
        assert_eq!(certificates_in(&data4[CA_PREVIOUS_CERT]), 2);
        assert_eq!(certificates_in(&bundle(&data4)), 3);
        assert_eq!(
            decide(since(&data4, t0), &want, t0 + hour),
            Decision::DropPreviousCa
        );
        // ... unless it trusted nothing still valid.
        let (data5, step) = apply(&decision, None, &want, Some(b"junk"), t0).unwrap();
        assert_eq!((step, data5.contains_key(CA_PREVIOUS_CERT)), (None, false));
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
            let decision = decide(found(&data), &want, at);
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
            decide(found(&good), &want, now()),
            Decision::Keep { .. }
        ));

        let replaced = |data: &BTreeMap<String, Vec<u8>>, expected: &str| match decide(
            found(data),
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
        replaced(&data, "its ca.crt is not a CA certificate");

        // Good, but not for a name serving needs now: only the serving certificate is issued.
        let more = Wanted {
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([10, 0, 0, 7])],
            ..wanted(&[
                "prodguard.prodguard.svc",
                "prodguard.prodguard.svc.cluster.local",
            ])
        };
        match decide(found(&good), &more, now()) {
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
