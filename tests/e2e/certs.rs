//! `serve --manage-certs` against the real API server: the install window, the Secret and the
//! bundles it writes, their restoration, renewal and CA rotation under continuous kubectl
//! traffic, one writer among two processes, and a writer without permission.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::{assert_denied, err, metric, scrape, Env, DEFAULT_POLICY};

const SECRET: &str = "prodguard-tls";
const MANAGED: [&str; 3] = [
    "--manage-certs",
    "--lease-namespace=prodguard",
    "--cert-ip-addresses=127.0.0.1",
];

impl Env {
    /// The Secret's data, decoded (empty when there is no Secret).
    fn secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        use base64::Engine as _;
        let output = self.kubectl(&["get", "secret", SECRET, "-n", "prodguard", "-o", "json"]);
        if !output.status.success() {
            return BTreeMap::new();
        }
        let secret: Value = serde_json::from_slice(&output.stdout).expect("secret JSON");
        secret["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .expect("base64");
                (k.clone(), bytes)
            })
            .collect()
    }

    fn secret_annotation(&self, key: &str) -> String {
        let path = format!(
            "jsonpath={{.metadata.annotations.{}}}",
            key.replace('.', "\\.")
        );
        let output = self.kubectl(&["get", "secret", SECRET, "-n", "prodguard", "-o", &path]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every webhook's CA bundle, decoded, in both configurations.
    fn bundles(&self) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let mut bundles = Vec::new();
        for kind in [
            "mutatingwebhookconfiguration",
            "validatingwebhookconfiguration",
        ] {
            let output = self.kubectl(&["get", kind, "prodguard", "-o", "json"]);
            if !output.status.success() {
                continue;
            }
            let config: Value = serde_json::from_slice(&output.stdout).expect("JSON");
            for hook in config["webhooks"].as_array().into_iter().flatten() {
                let text = hook["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or_default();
                bundles.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap_or_default(),
                );
            }
        }
        bundles
    }

    /// A fresh start: no Secret, no Lease, deploy/'s webhook configurations as shipped.
    pub(super) fn uninstalled(&mut self) {
        self.cluster.stop_prodguard();
        if !self
            .kubectl(&["get", "namespace", "prodguard"])
            .status
            .success()
        {
            self.namespace("prodguard");
        }
        self.kubectl(&[
            "delete",
            "secret",
            SECRET,
            "-n",
            "prodguard",
            "--ignore-not-found",
        ]);
        self.kubectl(&[
            "delete",
            "lease",
            "prodguard-certs",
            "-n",
            "prodguard",
            "--ignore-not-found",
        ]);
        self.cluster.reapply_webhooks().expect("webhooks");
    }

    /// Puts back what the other scenarios expect: files, and a bundle injected by hand.
    pub(super) fn reinstalled_with_files(&mut self) {
        self.cluster.stop_prodguard();
        self.cluster.register_webhooks().expect("webhooks");
    }

    /// Waits until `check` holds, polling; panics with `what` after `within`.
    pub(super) fn wait_for(
        &self,
        within: Duration,
        what: &str,
        mut check: impl FnMut(&Env) -> bool,
    ) -> f64 {
        let started = Instant::now();
        while !check(self) {
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}\n{}\n{}",
                self.cluster.prodguard_log(),
                self.cluster.log_of("prodguard-limited")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed().as_secs_f64()
    }
}

/// A one-replica Deployment is denied by prodguard (not failed by a webhook error).
pub(super) fn one_replica_denied(env: &Env, ns: &str, name: &str) {
    let stderr = env.fails(&[
        "create",
        "deployment",
        name,
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    assert_denied(
        &stderr,
        &format!("[min-replicas] Deployment {ns}/{name} would run 1 replica"),
    );
}

/// Waits for the Warning Event that the certificate served by `pod` expires, its note holding
/// `says`.
fn expiry_event(env: &Env, pod: &str, says: &str, within: Duration) {
    env.wait_for(
        within,
        &format!("a CertificateExpiresSoon Event for {pod}"),
        |env| {
            env.events("prodguard").iter().any(|e| {
                e.reason.as_deref() == Some("CertificateExpiresSoon")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                    && e.note.as_deref().is_some_and(|n| n.contains(says))
            })
        },
    );
}

fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The certificate served on `port` and the answer to `GET path`, for a client that trusts
/// `bundle` (PEM) and calls 127.0.0.1, as the API server does; an error when the handshake
/// fails.
fn https_get(env: &Env, port: u16, bundle: &[u8], path: &str) -> Result<(Vec<u8>, String), String> {
    let roots = pem_certificates(bundle);
    let path = path.to_owned();
    env.runtime.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut store = rustls::RootCertStore::empty();
        for cert in roots {
            store.add(cert).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        Ok((leaf, String::from_utf8_lossy(&answer).into_owned()))
    })
}

fn leaf_of(data: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    pem_certificates(data.get("tls.crt").map_or(&[][..], Vec::as_slice))
        .first()
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// Whether every webhook's bundle holds exactly the certificates of the Secret's CAs.
fn bundles_match(env: &Env, data: &BTreeMap<String, Vec<u8>>) -> bool {
    let wanted = pem_certificates(&prodguard::certs::decisions::bundle(data));
    let bundles = env.bundles();
    !wanted.is_empty()
        && bundles.len() == 3
        && bundles.iter().all(|b| pem_certificates(b) == wanted)
}

pub fn certificates_managed_install_and_restore(env: &mut Env) {
    env.uninstalled();
    let ns = "e2e-install";
    env.namespace(ns);
    // The install window: the configurations exist, nothing answers yet, no bundle. Writes
    // still succeed (a 1-replica Deployment, which prodguard denies once it runs).
    assert_eq!(
        env.cluster.validating_failure_policies(),
        ["Ignore", "Ignore"],
        "deploy/ ships the validating webhooks failing open"
    );
    env.ok(&[
        "create",
        "deployment",
        "early",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);

    // prodguard starts with no certificate made by hand.
    let started = Instant::now();
    env.serve(DEFAULT_POLICY, &MANAGED);
    let armed = env.wait_for(Duration::from_secs(30), "armed", |env| {
        env.cluster.validating_failure_policies() == ["Fail", "Ignore"]
    });
    println!(
        "  install: Secret, bundles and arming {:.1} s after prodguard started",
        started.elapsed().as_secs_f64().max(armed)
    );
    let data = env.secret_data();
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(data.contains_key(key), "the Secret lacks {key}: {data:?}");
    }
    assert_eq!(
        env.secret_annotation("prodguard.io/written-by"),
        "prodguard"
    );
    assert!(
        bundles_match(env, &data),
        "every webhook trusts the Secret's CA"
    );
    // It serves the Secret's certificate, and is ready.
    let (served, readyz) =
        https_get(env, env.cluster.prodguard_port, &data["ca.crt"], "/readyz").unwrap();
    assert_eq!(served, leaf_of(&data));
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    // A replica whose certificate no webhook's bundle trusts (here: it looks for configurations
    // that do not exist) serves the Secret's certificate but is not ready.
    let (port, metrics) = (
        super::cluster::free("unready"),
        super::cluster::free("unready metrics"),
    );
    let unready = env
        .cluster
        .start_prodguard(
            "prodguard-unready",
            port,
            metrics,
            DEFAULT_POLICY,
            &[&MANAGED[..], &["--webhook-configuration=absent"]].concat(),
        )
        .expect("a second replica");
    let unready = Killed(Some(unready));
    env.wait_for(
        Duration::from_secs(10),
        "the Secret's certificate served",
        |env| {
            https_get(env, port, &data["ca.crt"], "/healthz")
                .is_ok_and(|(s, _)| s == leaf_of(&data))
        },
    );
    let (_, readyz) = https_get(env, port, &data["ca.crt"], "/readyz").unwrap();
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(
        readyz.contains("the certificate served is not yet in the webhooks' CA bundle"),
        "{readyz}"
    );
    drop(unready);
    // Enforced now.
    one_replica_denied(env, ns, "late");

    // A GitOps tool re-applies deploy/ whole: empty bundles, failing open. Restored.
    let emptied = Instant::now();
    // (Deleted and created again: the new ones hold no bundle and fail open.)
    env.cluster.reapply_webhooks().expect("re-applied");
    env.wait_for(
        Duration::from_secs(15),
        "bundle restored and armed",
        |env| {
            bundles_match(env, &data)
                && env.cluster.validating_failure_policies() == ["Fail", "Ignore"]
        },
    );
    println!(
        "  restore: bundles and arming back {:.1} s after they were emptied",
        emptied.elapsed().as_secs_f64()
    );
    one_replica_denied(env, ns, "again");
    // The same Secret throughout: restoring the bundle issued nothing.
    assert_eq!(env.secret_data(), data);

    // A corrupted Secret is replaced (and said so); the CA that signed what is served stays
    // trusted meanwhile, so admission goes on.
    env.ok(&[
        "patch",
        "secret",
        SECRET,
        "-n",
        "prodguard",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/data/tls.key", "value": "Z2FyYmFnZQ=="}]"#,
    ]);
    let replaced = env.wait_for(Duration::from_secs(15), "a replaced Secret", |env| {
        let now = env.secret_data();
        now.get("ca.crt").is_some_and(|ca| *ca != data["ca.crt"])
            && now.get("ca-previous.crt") == data.get("ca.crt")
    });
    println!("  corrupt Secret replaced in {replaced:.1} s");
    assert!(
        env.cluster
            .prodguard_log()
            .contains("the Secret cannot be used: its tls.key is not a PEM private key"),
        "{}",
        env.cluster.prodguard_log()
    );
    let fresh = env.secret_data();
    env.wait_for(Duration::from_secs(10), "both CAs in every bundle", |env| {
        bundles_match(env, &fresh)
    });
    one_replica_denied(env, ns, "after-repair");

    // Uninstalling: prodguard never recreates a configuration.
    env.ok(&[
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "prodguard",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let left = env.kubectl(&[
        "get",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "-o",
        "name",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "no webhook is left"
    );
    env.ok(&[
        "create",
        "deployment",
        "after",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    env.reinstalled_with_files();
}

pub fn certificates_renewed_and_rotated_under_traffic(env: &mut Env) {
    env.uninstalled();
    let ns = "e2e-rotation";
    env.namespace(ns);
    // A serving certificate of 40 s (renewed with a third left) and a CA of 80 s (rotated with
    // a third left, 5 s per step): a renewal at about 25 s, a rotation from about 50 s.
    let mut args = MANAGED.to_vec();
    args.extend([
        "--cert-validity=40s",
        "--ca-validity=80s",
        "--ca-overlap=5s",
        "--lease-duration=15s",
    ]);
    env.serve(DEFAULT_POLICY, &args);
    let (other_port, other_metrics) = (
        super::cluster::free("second"),
        super::cluster::free("second metrics"),
    );
    let second = env
        .cluster
        .start_prodguard(
            "prodguard-b",
            other_port,
            other_metrics,
            DEFAULT_POLICY,
            &args,
        )
        .expect("second process");
    let second = Killed(Some(second));
    env.wait_for(Duration::from_secs(30), "armed", |env| {
        env.cluster.validating_failure_policies() == ["Fail", "Ignore"]
    });

    let started = Instant::now();
    let first_ca = env.secret_data()["ca.crt"].clone();
    let (mut sent, mut failures) = (0u32, Vec::<String>::new());
    let (mut serving_seen, mut cas_seen) = (vec![leaf_of(&env.secret_data())], vec![first_ca]);
    let mut rotated = false;
    while started.elapsed() < Duration::from_secs(180) {
        // One that passes (two replicas, patched) and one that is denied, each through both
        // webhooks: any TLS failure shows as an error other than prodguard's denial.
        sent += 1;
        let name = format!("ok-{sent}");
        let output = env.kubectl(&[
            "create",
            "deployment",
            &name,
            "--image=nginx",
            "--replicas=2",
            "-n",
            ns,
        ]);
        if !output.status.success() {
            failures.push(format!("{name}: {}", err(&output)));
        }
        sent += 1;
        let name = format!("denied-{sent}");
        let output = env.kubectl(&[
            "create",
            "deployment",
            &name,
            "--image=nginx",
            "--replicas=1",
            "-n",
            ns,
        ]);
        let stderr = err(&output);
        if output.status.success() || !stderr.contains("[min-replicas]") {
            failures.push(format!("{name}: {stderr}"));
        }
        let data = env.secret_data();
        let leaf = leaf_of(&data);
        if !leaf.is_empty() && !serving_seen.contains(&leaf) {
            serving_seen.push(leaf);
        }
        if let Some(ca) = data.get("ca.crt") {
            if !cas_seen.contains(ca) {
                cas_seen.push(ca.clone());
            }
        }
        // Done once a new CA signs and the previous one has been dropped.
        if cas_seen.len() >= 2 && !data.contains_key("ca-previous.crt") && serving_seen.len() >= 3 {
            rotated = true;
            break;
        }
    }
    let log = env.cluster.prodguard_log();
    let second_log = env.cluster.log_of("prodguard-b");
    println!(
        "  rotation: {sent} kubectl requests in {:.0} s, {} failed; serving certificates seen {}, CAs {}",
        started.elapsed().as_secs_f64(),
        failures.len(),
        serving_seen.len(),
        cas_seen.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        rotated,
        "no renewal and CA rotation within 180 s:\n{log}\n{second_log}"
    );
    for step in ["step 1 of 3", "step 2 of 3", "step 3 of 3"] {
        assert!(
            log.contains(step) || second_log.contains(step),
            "the rotation's {step} is logged"
        );
    }

    // Exactly one process wrote: its renewals count, the other's do not; the Secret says who.
    let renewals = |port| {
        metric(
            &scrape(port),
            "prodguard_certificate_renewals_total{certificate=\"serving\"}",
        )
    };
    let (first, other) = (renewals(env.cluster.metrics_port), renewals(other_metrics));
    let writer = env.secret_annotation("prodguard.io/written-by");
    match writer.as_str() {
        "prodguard" => assert!(first >= 3.0 && other == 0.0, "{first} / {other}"),
        "prodguard-b" => assert!(other >= 3.0 && first == 0.0, "{first} / {other}"),
        who => panic!("written by {who:?}"),
    }
    let ca_renewals = |port| {
        metric(
            &scrape(port),
            "prodguard_certificate_renewals_total{certificate=\"ca\"}",
        )
    };
    assert!(ca_renewals(env.cluster.metrics_port) + ca_renewals(other_metrics) >= 2.0);
    // Both serve the Secret's current certificate (within a moment of its last change).
    let data = env.secret_data();
    for port in [env.cluster.prodguard_port, other_port] {
        env.wait_for(
            Duration::from_secs(5),
            "serving the Secret's certificate",
            |env| {
                https_get(
                    env,
                    port,
                    &prodguard::certs::decisions::bundle(&data),
                    "/readyz",
                )
                .is_ok_and(|(served, ready)| {
                    served == leaf_of(&data) && ready.starts_with("HTTP/1.1 200")
                })
            },
        );
    }
    // For docs/benchmarks.md: what the watches and the writer cost (debug build).
    let rss = |pid: Option<u32>| pid.and_then(|pid| super::workload::status_kib(pid, "VmRSS:"));
    println!(
        "  rotation: RSS after it {:?} KiB (registered process), {:?} KiB (second)",
        rss(env.cluster.prodguard_pid()),
        rss(second.0.as_ref().map(std::process::Child::id))
    );
    drop(second);
    env.reinstalled_with_files();
}

/// A writer without permission names it and keeps serving; a certificate nobody renews (managed
/// or from files) becomes a Warning Event.
pub fn certificates_not_renewed_are_named_and_warned(env: &mut Env) {
    env.uninstalled();
    // A Secret made by a writer that may write it (then stopped).
    env.serve(
        DEFAULT_POLICY,
        &[&MANAGED[..], &["--cert-validity=45s"]].concat(),
    );
    env.wait_for(Duration::from_secs(30), "armed", |env| {
        env.cluster.validating_failure_policies() == ["Fail", "Ignore"]
    });
    env.cluster.stop_prodguard();
    // A writer that stops hands its Lease back: the next one writes at once, not after
    // --lease-duration.
    let holder = env.kubectl(&[
        "get",
        "lease",
        "prodguard-certs",
        "-n",
        "prodguard",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(holder.status.success(), "{}", err(&holder));
    assert_eq!(
        String::from_utf8_lossy(&holder.stdout).trim(),
        "",
        "the Lease is handed back on SIGTERM\n{}",
        env.cluster.prodguard_log()
    );
    assert!(env
        .cluster
        .prodguard_log()
        .contains("the certificate writer's Lease is handed back"));
    let data = env.secret_data();

    // A user that may read the Secret but not update it.
    let rbac = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: certs-read-only, namespace: prodguard}
rules:
  - {apiGroups: [""], resources: [secrets], verbs: [get, list, watch]}
  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}
  - {apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: certs-read-only, namespace: prodguard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: certs-read-only}
subjects: [{kind: User, name: certs-reader, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: certs-read-only}
rules:
  - {apiGroups: [admissionregistration.k8s.io], resources: [mutatingwebhookconfigurations, validatingwebhookconfigurations], verbs: [get, list, watch, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: certs-read-only}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: certs-read-only}
subjects: [{kind: User, name: certs-reader, apiGroup: rbac.authorization.k8s.io}]
"#;
    let applied = env.cluster.kubectl_stdin(&["apply", "-f", "-"], rbac);
    assert!(applied.status.success(), "{}", err(&applied));
    let kubeconfig = std::fs::read_to_string(&env.cluster.kubeconfig).unwrap();
    let limited: PathBuf = env.cluster.dir.path().join("kubeconfig-certs-reader");
    std::fs::write(
        &limited,
        kubeconfig.replace("  user:\n", "  user:\n    as: certs-reader\n"),
    )
    .unwrap();

    // It must issue (a name the Secret's certificate lacks) and may not.
    let mut args = MANAGED.to_vec();
    args.push("--cert-dns-names=prodguard.prodguard.svc,extra.prodguard.svc");
    let port = env.cluster.prodguard_port;
    let child = env
        .cluster
        .start_prodguard_as(
            "prodguard-limited",
            port,
            env.cluster.metrics_port,
            DEFAULT_POLICY,
            &args,
            &limited,
        )
        .expect("limited process");
    let child = Killed(Some(child));
    env.wait_for(Duration::from_secs(20), "the missing permission named", |env| {
        env.cluster.log_of("prodguard-limited").contains(
            "forbidden: prodguard's service account needs the permission to update secrets/prodguard-tls in namespace prodguard",
        )
    });
    // It keeps serving what the Secret has, and the Secret is unchanged.
    let (served, _) = https_get(env, port, &data["ca.crt"], "/healthz").unwrap();
    assert_eq!(served, leaf_of(&data));
    assert_eq!(env.secret_data(), data);
    assert!(
        metric(
            &scrape(env.cluster.metrics_port),
            "prodguard_certificate_failures_total"
        ) >= 1.0
    );
    // Its certificate is not renewed: a Warning Event once renewal is overdue.
    expiry_event(
        env,
        "prodguard-limited",
        "has not been renewed",
        Duration::from_secs(60),
    );
    drop(child);

    // Files given by hand are not renewed: the warning is an Event too (issued at start, before
    // the cluster client existed, and sent once it does).
    let ca =
        prodguard::certs::pki::issue_ca("files CA", Duration::from_secs(400 * 86_400)).unwrap();
    let names = ["127.0.0.1".to_owned()];
    let leaf =
        prodguard::certs::pki::issue_serving(&ca, &names, Duration::from_secs(20 * 86_400), None)
            .unwrap();
    let (cert, key) = (
        env.cluster.dir.path().join("files.crt"),
        env.cluster.dir.path().join("files.key"),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let (cert_arg, key_arg) = (
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
    );
    let child = env
        .cluster
        .start_prodguard(
            "prodguard-files",
            super::cluster::free("files"),
            super::cluster::free("files metrics"),
            DEFAULT_POLICY,
            &[&cert_arg, &key_arg, "--lease-namespace=prodguard"],
        )
        .expect("files process");
    let child = Killed(Some(child));
    expiry_event(
        env,
        "prodguard-files",
        "does not renew certificates given as files",
        Duration::from_secs(20),
    );
    drop(child);
    env.reinstalled_with_files();
}

/// A child process killed when dropped (a failing assertion included).
pub(super) struct Killed(pub(super) Option<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            super::cluster::stop("prodguard (certificates)", child);
        }
    }
}
