//! Certificate rotation as Kubernetes does it: a mounted Secret's files change when the
//! `..data` symlink is swapped. Reviews keep flowing, on a keep-alive connection and on new
//! connections, with no failure; new connections see the new certificate; a broken one is
//! refused and the previous one stays.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connector, pod_bearing_objects, Client, Review};
use hyper::Method;
use prodguard::report::metrics::Metrics;
use prodguard::server::{tls, Limits};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;

struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn leaf(issuer: &Issuer<'_, KeyPair>) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Writes a new `..<name>` directory and points `..data` at it, atomically.
fn swap(dir: &Path, name: &str, cert: &str, key: &str) {
    let target = dir.join(format!("..{name}"));
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("tls.crt"), cert).unwrap();
    std::fs::write(target.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_failed_request() {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let (first, second) = (leaf(&issuer), leaf(&issuer));

    // The layout of a mounted Secret.
    let dir = tempfile::tempdir().unwrap();
    swap(dir.path(), "2026_11_25_first", &first.cert, &first.key);
    std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();

    let metrics = Metrics::new();
    let reloading = tls::ReloadingCert::load(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        metrics.tls_reloads.clone(),
        metrics.tls_reload_failures.clone(),
        prodguard::server::expiry::ExpiryWatch::new(
            metrics.certificate_expiry.clone(),
            "test".to_owned(),
        ),
    )
    .unwrap();
    tokio::spawn(
        reloading
            .clone()
            .watch(Some(Duration::from_millis(50)), Default::default()),
    );
    let config = tls::server_config(reloading.slot.clone(), None).unwrap();
    let addr = common::serve_default(config, Limits::default()).await;

    let review = Review::create(pod_bearing_objects("nginx", 1).remove(1).0).json();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept_alive = Arc::new(AtomicU64::new(0));
    let last_seen = Arc::new(Mutex::new(Vec::<u8>::new()));

    // A keep-alive connection, as kube-apiserver holds one.
    let mut client = Client::connect_to(addr, &ca_pem, "localhost").await;
    let keep_alive = {
        let (stop, review, kept_alive) = (stop.clone(), review.clone(), kept_alive.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.review("validate", &review).await;
                assert_eq!(response["allowed"], false);
                kept_alive.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // New connections, one request each.
    let fresh = {
        let (stop, failures, last_seen, ca) = (
            stop.clone(),
            failures.clone(),
            last_seen.clone(),
            ca_pem.clone(),
        );
        let body = serde_json::to_vec(&review).unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                match connector(&ca, &[b"http/1.1"]).connect(name, tcp).await {
                    Ok(tls) => {
                        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                        *last_seen.lock().unwrap() = peer;
                        let (mut sender, conn) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(tls),
                        )
                        .await
                        .unwrap();
                        tokio::spawn(conn);
                        let request = hyper::Request::builder()
                            .method(Method::POST)
                            .uri("/validate")
                            .header("host", "localhost")
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                                body.clone(),
                            )))
                            .unwrap();
                        match sender.send_request(request).await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                    Err(e) => failures.lock().unwrap().push(format!("handshake: {e}")),
                }
            }
        })
    };

    let wait_for = |der: Vec<u8>, what: &'static str| {
        let last_seen = last_seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while *last_seen.lock().unwrap() != der {
                assert!(
                    Instant::now() < deadline,
                    "new connections never saw the {what} certificate"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(first.der.clone(), "first").await;
    let before = kept_alive.load(Ordering::Relaxed);

    swap(dir.path(), "2026_11_25_second", &second.cert, &second.key);
    wait_for(second.der.clone(), "rotated").await;
    assert_eq!(metrics.tls_reloads.get(), 1);

    // A broken certificate is refused once; the rotated one stays in use.
    swap(
        dir.path(),
        "2026_11_25_broken",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        &second.key,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metrics.tls_reload_failures.get(),
        1,
        "logged and counted once"
    );
    assert_eq!(metrics.tls_reloads.get(), 1);
    *last_seen.lock().unwrap() = Vec::new();
    wait_for(second.der.clone(), "rotated (after a broken update)").await;

    stop.store(true, Ordering::Relaxed);
    keep_alive
        .await
        .expect("the keep-alive connection never failed");
    fresh.await.unwrap();
    assert!(
        kept_alive.load(Ordering::Relaxed) > before,
        "the keep-alive connection kept working across the rotation"
    );
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
}
