//! Certificates made with rcgen: a CA and a serving certificate (ECDSA P-256) for the
//! webhook's DNS names. Used by `prodguard certs`, by `serve` when given no certificate, and
//! by the certificate writer of `serve --manage-certs`.

use std::time::Duration as StdDuration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// PEM-encoded CA certificate and key, serving certificate and serving key.
#[derive(Clone)]
pub struct Pki {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A PEM certificate and its PEM key.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

const CA_DAYS: u64 = 5 * 365;
const SERVING_DAYS: u64 = 365;
const DAY: u64 = 86_400;

/// How far back a certificate is dated, for clocks that lag behind this one: an hour, or a
/// tenth of a short validity (so that a three-minute certificate is not mostly in the past).
fn backdating(validity: StdDuration) -> Duration {
    let slack = (validity / 10).min(StdDuration::from_secs(3600));
    Duration::seconds(i64::try_from(slack.as_secs()).unwrap_or(3600))
}

fn until(now: OffsetDateTime, validity: StdDuration) -> OffsetDateTime {
    now.checked_add(Duration::seconds(
        i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2),
    ))
    .unwrap_or(now)
}

/// A new CA valid for `validity` from now.
pub fn issue_ca(name: &str, validity: StdDuration) -> Result<Pair, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert =
        ca_params(name, now - backdating(validity), until(now, validity))?.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = distinguished_name(name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    Ok(ca)
}

/// A serving certificate for `names` (DNS names or IP addresses), valid for `validity` from
/// now but never beyond `not_after` (its CA's end, in seconds since the Unix epoch), signed by
/// the CA in `ca` (PEM certificate and key).
pub fn issue_serving(
    ca: &Pair,
    names: &[String],
    validity: StdDuration,
    not_after: Option<i64>,
) -> Result<Pair, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let mut end = until(now, validity);
    if let Some(cap) = not_after.and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok()) {
        end = end.min(cap);
    }
    serving(&issuer, names, now - backdating(validity), end)
}

fn serving<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    names: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Pair, rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = distinguished_name(names.first().map_or("prodguard", |n| n));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new CA (five years) and a serving certificate (one year) for `names`.
pub fn generate(ca_name: &str, names: &[String]) -> Result<Pki, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - backdating(StdDuration::from_secs(SERVING_DAYS * DAY));
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca = ca_params(
        ca_name,
        not_before,
        until(now, StdDuration::from_secs(CA_DAYS * DAY)),
    )?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let pair = serving(
        &issuer,
        names,
        not_before,
        until(now, StdDuration::from_secs(SERVING_DAYS * DAY)),
    )?;
    Ok(Pki {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem,
        cert_pem: pair.cert_pem,
        key_pem: pair.key_pem,
    })
}

/// The DNS names a webhook Service is reached by.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity_of(pem: &str) -> (i64, i64) {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        )
    }

    #[test]
    fn short_validities_are_backdated_a_tenth_and_capped_at_the_ca() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ca = issue_ca("test CA", StdDuration::from_secs(300)).unwrap();
        let (from, to) = validity_of(&ca.cert_pem);
        assert!((now - 31..=now - 29).contains(&from), "{from} vs {now}");
        assert!((now + 299..=now + 301).contains(&to), "{to} vs {now}");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let leaf = issue_serving(&ca, &names, StdDuration::from_secs(60), None).unwrap();
        let (from, to) = validity_of(&leaf.cert_pem);
        assert!((now - 7..=now - 5).contains(&from), "{from} vs {now}");
        assert!((now + 59..=now + 61).contains(&to), "{to} vs {now}");
        // Longer than its CA: ends with the CA.
        let ca_end = validity_of(&ca.cert_pem).1;
        let leaf = issue_serving(&ca, &names, StdDuration::from_secs(3600), Some(ca_end)).unwrap();
        assert_eq!(validity_of(&leaf.cert_pem).1, ca_end);
        // A year: backdated an hour.
        let leaf = issue_serving(
            &ca,
            &names,
            StdDuration::from_secs(SERVING_DAYS * DAY),
            None,
        )
        .unwrap();
        assert!((now - 3601..=now - 3599).contains(&validity_of(&leaf.cert_pem).0));
        // A key that is not the CA's is refused.
        let wrong = Pair {
            key_pem: leaf.key_pem.clone(),
            ..ca.clone()
        };
        assert!(
            issue_serving(&wrong, &names, StdDuration::from_secs(60), None).is_ok_and(|pair| {
                crate::certs::decisions::signed_by(&pair.cert_pem, &ca.cert_pem) == Some(false)
            })
        );
    }
}
