//! The binary as a user runs it: `check`, `certs`, and `serve` over TLS.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Client, Review};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

fn prodguard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prodguard"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // No cluster: tests must not depend on the machine's kubeconfig.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST");
    for (key, _) in std::env::vars() {
        if key.starts_with("PRODGUARD_") {
            command.env_remove(key);
        }
    }
    command
}

fn run(args: &[&str]) -> Output {
    prodguard().args(args).output().expect("run prodguard")
}

/// Runs prodguard with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = prodguard()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prodguard");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("prodguard exits")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_reports_patches_and_denials_of_the_examples() {
    let output = run(&["check", "-f", "examples/openg2p"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(
            "examples/openg2p/social-registry.yaml: Deployment openg2p/social-registry\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  DENY  [min-replicas] Deployment openg2p/social-registry would run 1 replica"
        ),
        "{text}"
    );
    assert!(text.contains("  PATCH [image-pull-policy] set imagePullPolicy: IfNotPresent on containers[0] \"redis\" (was unset)"), "{text}");
    assert!(
        text.ends_with("11 resources: 2 denied, 5 patched, 2 warned\n"),
        "{text}"
    );
    assert!(
        !text.contains("[min-replicas] StatefulSet openg2p/social-registry-postgresql"),
        "the exempt PostgreSQL primary passes min-replicas: {text}"
    );
    // The policies of the rest of the guide, with the namespace the examples define.
    for expected in [
        "  PATCH [ingress-body-size] set nginx.ingress.kubernetes.io/proxy-body-size: 50m on Ingress openg2p/social-registry",
        "  PATCH [node-spread] add a topology spread constraint over kubernetes.io/hostname (ScheduleAnyway) so that the 2 replicas of Deployment openg2p/keycloak land on different nodes",
        "  WARN  [opensearch-cluster] StatefulSet openg2p/opensearch does not run OpenSearch as a cluster (it runs 2 replicas of docker.io/opensearchproject/opensearch:2.11.1, fewer than the 3 nodes of a cluster) in production namespace openg2p",
        "  WARN  [external-databases] StatefulSet openg2p/social-registry-postgresql runs PostgreSQL",
        "  DENY  [rbac-hygiene] RoleBinding openg2p/developers-edit grants ClusterRole edit to Group developers in namespace openg2p, and ClusterRole edit holds permissions on secrets, pods/exec",
    ] {
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("developers-view"),
        "binding view passes: {text}"
    );
}

#[test]
fn check_knows_roles_namespaces_and_production_from_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rbac.yaml");
    std::fs::write(
        &path,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: app-reads-secrets, namespace: staging}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}
subjects: [{kind: ServiceAccount, name: app, namespace: staging}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader, namespace: staging}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ops-custom}
subjects: [{kind: User, name: bob}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: files, namespace: staging}
spec:
  replicas: 2
  selector: {matchLabels: {app: files}}
  template:
    metadata: {labels: {app: files}}
    spec:
      affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: files}}}]}}
      containers: [{name: minio, image: quay.io/minio/minio:RELEASE.2024-01-01T00-00-00Z, imagePullPolicy: IfNotPresent}]
"#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let output = run(&["check", "-f", file]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a role not in the input cannot be judged"
    );
    let text = stdout(&output);
    assert!(text.contains("  DENY  [rbac-hygiene] RoleBinding staging/app-reads-secrets grants Role staging/secret-reader to ServiceAccount staging/app in namespace staging, and Role staging/secret-reader holds permissions on secrets that only admins may hold;"), "{text}");
    assert!(text.contains("rbac.yaml: ERROR object 3: ClusterRoleBinding ops cannot be checked: ClusterRole ops-custom is not among the checked objects; add it to the input"), "{text}");
    assert!(
        !text.contains("external-databases"),
        "staging is not a production namespace: {text}"
    );

    let output = run(&["check", "-f", file, "--production"]);
    let text = stdout(&output);
    assert!(text.contains("  WARN  [external-databases] StatefulSet staging/files runs MinIO (containers[0] \"minio\", image quay.io/minio/minio:RELEASE.2024-01-01T00-00-00Z) inside the cluster in production namespace staging"), "{text}");
}

#[test]
fn check_json_output_has_the_documented_schema() {
    let output = run(&[
        "check",
        "-f",
        "examples/openg2p/social-registry.yaml",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(
        doc["summary"],
        json!({"resources": 2, "denied": 1, "patched": 1, "warned": 0, "excepted": 0})
    );
    assert_eq!(doc["errors"], json!([]));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0],
        json!({
            "file": "examples/openg2p/social-registry.yaml", "kind": "Deployment", "namespace": "openg2p",
            "name": "social-registry", "policy": "image-pull-policy", "action": "patch",
            "message": "set imagePullPolicy: IfNotPresent on initContainers[0] \"wait-for-db\" (was Always), containers[0] \"odoo\" (was Always)",
            "patch": [
                {"op": "replace", "path": "/spec/template/spec/initContainers/0/imagePullPolicy", "value": "IfNotPresent"},
                {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "IfNotPresent"}
            ]
        })
    );
    assert_eq!(results[1]["action"], "deny");
    assert_eq!(results[1]["policy"], "min-replicas");
    assert!(results[1].get("patch").is_none());
}

#[test]
fn check_in_audit_mode_warns_and_exits_zero() {
    let output = run(&[
        "check",
        "-f",
        "examples/openg2p",
        "--mode",
        "audit",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        doc["summary"],
        json!({"resources": 11, "denied": 0, "patched": 0, "warned": 7, "excepted": 0})
    );
    assert!(doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["action"] == "warn"));
}

#[test]
fn check_reads_stdin_json_and_yaml() {
    for input in [
        r#"{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}, "spec": {"replicas": 1}}"#,
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec: {replicas: 1}\n",
    ] {
        let output = run_with_stdin(&["check", "-f", "-", "-n", "openg2p"], input.as_bytes());
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stdout(&output).contains("-: StatefulSet openg2p/db"),
            "{}",
            stdout(&output)
        );
    }
}

#[test]
fn check_reports_unparsable_files_by_name_and_checks_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-template.yaml"),
        "replicas: {{ .Values.replicaCount }}\nkind: Deployment\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(
        dir.path().join("nested/deploy.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let output = prodguard()
        .args(["check", "-f"])
        .arg(dir.path())
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "bad input wins over denials");
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors = doc["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{doc}");
    assert!(errors[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("a-template.yaml"));
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("Helm template"),
        "{doc}"
    );
    assert_eq!(
        doc["summary"]["resources"], 1,
        "the nested file is still checked"
    );
    assert_eq!(doc["summary"]["denied"], 1);

    let output = run(&["check", "-f", "does/not/exist.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stdout(&output).contains("does/not/exist.yaml: ERROR cannot read"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn a_bad_configuration_names_the_file_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.yaml");
    std::fs::write(&config, "policies:\n  min-replicas:\n    minReplica: 3\n").unwrap();
    let output = prodguard()
        .args(["check", "-f", "examples/openg2p", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "configuration {}: key `policies.min-replicas.minReplica`",
            config.display()
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `minReplicas`?"), "{err}");

    // serve stops at startup too.
    let output = prodguard()
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("did you mean `minReplicas`?"));
}

/// A `prodguard serve` process, killed when dropped (a failed test leaves none behind), and
/// the lines of its log so far.
struct Serve(Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Serve {
    fn log(&self) -> String {
        self.1.lock().unwrap().join("\n")
    }
}

impl std::ops::Deref for Serve {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `prodguard serve` and returns it with its webhook and metrics addresses.
fn serve(args: &[&str]) -> (Serve, SocketAddr, SocketAddr) {
    let mut child = prodguard()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        // Stop at once on SIGTERM unless a test is about the delay.
        .args(
            (!args.iter().any(|a| a.starts_with("--shutdown-delay")))
                .then_some("--shutdown-delay=0s"),
        )
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prodguard serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line.clone());
            for (marker, what) in [
                ("listening on https://", "webhook"),
                ("metrics on http://", "metrics"),
                ("metrics on https://", "metrics"),
            ] {
                if let Some(rest) = line.split(marker).nth(1) {
                    let addr = rest
                        .split(['/', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send((what, addr));
                }
            }
        }
    });
    let (mut webhook, mut metrics) = (None, None);
    while webhook.is_none() || metrics.is_none() {
        let (what, addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve prints its addresses");
        let addr: SocketAddr = addr.parse().expect("an address");
        if what == "webhook" {
            webhook = Some(addr);
        } else {
            metrics = Some(addr);
        }
    }
    (Serve(child, log), webhook.unwrap(), metrics.unwrap())
}

/// `serve` with the self-signed certificate it makes without `--tls-cert`, and a client that
/// trusts its CA (from the bundle it writes to `--ca-out`).
async fn serve_self_signed() -> (Serve, SocketAddr, SocketAddr, Client, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.crt");
    let (child, addr, metrics) = serve(&["--ca-out", ca_out.to_str().unwrap()]);
    let ca = std::fs::read_to_string(&ca_out).expect("the CA bundle is written");
    let client = Client::connect_to(addr, &ca, "localhost").await;
    (child, addr, metrics, client, ca)
}

/// `GET /metrics` over plain HTTP.
fn scrape(addr: SocketAddr) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

fn sigterm(child: &mut Child) -> Option<i32> {
    signal(child, "TERM");
    sigterm_wait(child)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_never_stops_serve_and_sigterm_keeps_accepting_during_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.crt");
    let (mut child, addr, _) = serve(&[
        "--ca-out",
        ca_out.to_str().unwrap(),
        "--shutdown-delay",
        "3s",
    ]);
    let ca = std::fs::read_to_string(&ca_out).unwrap();
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": {"replicas": 1}});
    let review = Review::create(deploy).json();

    // SIGHUP's default action would end the process: prodguard handles it.
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped prodguard"
    );
    let mut client = Client::connect_to(addr, &ca, "localhost").await;
    assert_eq!(client.review("validate", &review).await["allowed"], false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!client.is_closed(), "kept alive while serving");

    // SIGTERM: /readyz fails at once, and new connections are still accepted and answered
    // for the delay (endpoints may still route here), then prodguard stops cleanly.
    let terminated = Instant::now();
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A kept-alive connection gets its answer, which says `Connection: close`: the client
    // closes it, rather than prodguard closing it under a request the client may be sending.
    assert_eq!(client.review("validate", &review).await["allowed"], false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        client.is_closed(),
        "the answer during the delay did not close the kept-alive connection"
    );
    let mut late = Client::connect_to(addr, &ca, "localhost").await;
    let (status, _) = late.send(Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let mut late = Client::connect_to(addr, &ca, "localhost").await;
    assert_eq!(late.review("validate", &review).await["allowed"], false);
    assert!(
        child.try_wait().unwrap().is_none(),
        "stopped before the delay"
    );
    assert_eq!(sigterm_wait(&mut child), Some(0));
    assert!(
        terminated.elapsed() >= Duration::from_millis(2900),
        "stopped after {:?}, before the 3 s delay",
        terminated.elapsed()
    );
}

#[tokio::test]
async fn serve_without_certificates_writes_its_ca_bundle_and_answers_over_tls() {
    let (mut child, addr, metrics, mut client, ca) = serve_self_signed().await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": {"replicas": 1}});
    let response = client
        .review("validate", &Review::create(deploy).json())
        .await;
    assert_eq!(response["allowed"], false);
    let (status, _) = client.send(Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    // 127.0.0.1 is in the certificate too.
    Client::connect_to(addr, &ca, "127.0.0.1").await;
    // The metrics endpoint counted the review, and its latency.
    let text = scrape(metrics);
    assert!(text.contains("prodguard_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",kind=\"Deployment\",verdict=\"denied\"} 1"), "{text}");
    assert!(
        text.contains("prodguard_admission_duration_seconds_count{webhook=\"validate\"} 1"),
        "{text}"
    );
    assert!(text.contains("prodguard_policy_findings_total{policy=\"min-replicas\",action=\"Denied\",source=\"admission\"} 1"), "{text}");
    assert_eq!(sigterm(&mut child), Some(0), "SIGTERM stops it cleanly");
}

#[tokio::test]
async fn certs_are_for_the_service_names_and_serve_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = prodguard()
        .args([
            "certs",
            "--service",
            "prodguard",
            "--namespace",
            "prodguard-system",
            "--out-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let ca = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    let printed = stdout(&output);
    let bundle = printed.lines().last().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
        ca.as_bytes(),
        "the printed bundle is ca.crt"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
    // A second run keeps what is there unless told otherwise.
    let again = prodguard()
        .args(["certs", "--out-dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("pass --force"),
        "{}",
        stderr(&again)
    );

    let cert = out.join("tls.crt");
    let key = out.join("tls.key");
    let (mut child, addr, _) = serve(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    for name in [
        "prodguard",
        "prodguard.prodguard-system",
        "prodguard.prodguard-system.svc",
        "prodguard.prodguard-system.svc.cluster.local",
    ] {
        let mut client = Client::connect_to(addr, &ca, name).await;
        let (status, _) = client.send(Method::GET, "/healthz", vec![]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
    }
    assert_eq!(sigterm(&mut child), Some(0));
}

#[test]
fn serve_refuses_a_certificate_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let output = prodguard()
        .args(["serve", "--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("holds no PEM certificate"),
        "{}",
        stderr(&output)
    );
    let missing = Path::new("/nonexistent/tls.crt");
    let output = prodguard()
        .args(["serve", "--tls-cert"])
        .arg(missing)
        .arg("--tls-key")
        .arg(missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/tls.crt"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_deployed_policy_set_is_the_embedded_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("policies/openg2p-production.yaml")).unwrap();
    let deployed = std::fs::read_to_string(root.join("deploy/base/policies.yaml")).unwrap();
    assert_eq!(
        shipped, deployed,
        "copy policies/openg2p-production.yaml to deploy/base/policies.yaml"
    );
}

#[test]
fn prodguards_own_manifests_pass_its_policies() {
    // Judged, not skipped: the namespace prodguard lives in is excluded at admission, so the
    // manifests are checked with a policy set that excludes only kube-system. What prodguard
    // needs (its webhook configurations, its Secret) passes through an explicit exemption, its
    // service account in rbac-hygiene's exemptUsers; without it the same check denies.
    let dir = tempfile::tempdir().unwrap();
    let default = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/openg2p-production.yaml"),
    )
    .unwrap();
    let judged = default.replace(
        "excludedNamespaces: [kube-system, prodguard]",
        "excludedNamespaces: [kube-system]",
    );
    assert_ne!(
        judged, default,
        "the default set excludes prodguard's namespace"
    );
    let judged_path = dir.path().join("judged.yaml");
    std::fs::write(&judged_path, &judged).unwrap();
    let unexempt = judged.replace("\"system:serviceaccount:prodguard:prodguard\", ", "");
    assert_ne!(
        unexempt, judged,
        "the default set exempts prodguard's service account"
    );
    let unexempt_path = dir.path().join("unexempt.yaml");
    std::fs::write(&unexempt_path, &unexempt).unwrap();
    for dir in [
        "deploy/base",
        "deploy/overlays/audit",
        "deploy/overlays/network-policy",
        "deploy/overlays/cert-manager",
    ] {
        let rendered = Command::new("kubectl")
            .args(["kustomize", dir])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("kubectl (scripts/test-deps.sh installs it)");
        assert!(
            rendered.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let config = judged_path.to_str().unwrap();
        let output = run_with_stdin(
            &["check", "--config", config, "-f", "-", "-o", "json"],
            &rendered.stdout,
        );
        let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(0), "{dir}: {doc}");
        // Without the exemption, prodguard's own grants are denied like anyone's.
        let config = unexempt_path.to_str().unwrap();
        let output = run_with_stdin(
            &["check", "--config", config, "-f", "-", "-o", "json"],
            &rendered.stdout,
        );
        let denied: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(1), "{dir}: {denied}");
        let names: std::collections::BTreeSet<&str> = denied["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "deny")
            .map(|r| r["name"].as_str().unwrap_or_default())
            .collect();
        assert!(
            names.contains("prodguard-audit-lease") && names.contains("prodguard"),
            "{dir}: {denied}"
        );
        assert_eq!(
            doc["results"],
            json!([]),
            "{dir}: no patch and no warning either"
        );
        // The network-policy overlay adds its NetworkPolicy; the cert-manager one two Issuers
        // and two Certificates.
        let expected = if dir.ends_with("network-policy") {
            22
        } else if dir.ends_with("cert-manager") {
            25
        } else {
            21
        };
        assert_eq!(doc["summary"]["resources"], expected, "{dir}");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("sideEffects: NoneOnDryRun"), "{dir}");
        if dir.ends_with("cert-manager") {
            assert_eq!(
                text.matches("cert-manager.io/inject-ca-from: prodguard/prodguard-serving")
                    .count(),
                2,
                "both webhook configurations get their CA from cert-manager"
            );
            assert!(text.contains("secretName: prodguard-tls"), "{text}");
            // cert-manager writes the Secret: prodguard serves the mounted files.
            assert!(text.contains("- --manage-certs=false\n"), "{text}");
            assert!(!text.contains("- --manage-certs\n"), "{text}");
            assert!(
                text.contains("- --tls-cert=/etc/prodguard/tls/tls.crt"),
                "{text}"
            );
        } else {
            // Everywhere else prodguard manages its certificates: nothing to mount or make.
            assert!(text.contains("- --manage-certs\n"), "{dir}");
            assert!(!text.contains("--tls-cert"), "{dir}");
            assert!(!text.contains("secretName: prodguard-tls"), "{dir}");
        }
        // The enforcing webhook ships failing open, for prodguard to arm (the install window).
        assert!(
            text.contains("prodguard.io/fail-closed-when-ready: validate.prodguard.io"),
            "{dir}"
        );
        assert!(!text.contains("failurePolicy: Fail"), "{dir}");
        if dir.ends_with("audit") {
            assert!(
                text.contains("PRODGUARD_MODE"),
                "the audit overlay sets the mode"
            );
        }
    }
}

#[test]
fn audit_without_a_cluster_says_so() {
    let output = run(&["audit"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no in-cluster config or kubeconfig to audit"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_rejects_bad_operational_flags() {
    for (flag, value, expected) in [
        (
            "--audit-interval",
            "soon",
            "--audit-interval \"soon\" is not a duration",
        ),
        (
            "--metrics-addr",
            "nowhere",
            "--metrics-addr \"nowhere\" is not an address",
        ),
        (
            "--lease-duration",
            "0",
            "--lease-duration must be longer than 0",
        ),
        (
            "--max-connections",
            "0",
            "--max-connections must be at least 1",
        ),
        (
            "--header-read-timeout",
            "off",
            "--header-read-timeout must be longer than 0",
        ),
        (
            "--write-timeout",
            "0s",
            "--write-timeout must be longer than 0",
        ),
        (
            "--body-read-timeout",
            "off",
            "--body-read-timeout must be longer than 0",
        ),
        (
            "--max-connections-per-peer",
            "0",
            "--max-connections-per-peer must be at least 1",
        ),
        (
            "--max-handshakes",
            "0",
            "--max-handshakes must be at least 1",
        ),
        (
            "--max-bytes-in-flight",
            "1048576",
            "--max-bytes-in-flight must be at least 35717120 (the largest review body and what its objects may build)",
        ),
        (
            "--audit-events-per-scan",
            "0",
            "--audit-events-per-scan must be at least 1",
        ),
        (
            "--audit-page-size",
            "5",
            "--audit-page-size must be at least 10",
        ),
        (
            "--audit-max-results",
            "0",
            "--audit-max-results must be at least 1",
        ),
        (
            "--shutdown-delay",
            "later",
            "--shutdown-delay \"later\" is not a duration",
        ),
    ] {
        let output = run(&["serve", "--addr", "127.0.0.1:0", flag, value]);
        assert_eq!(output.status.code(), Some(2), "{flag}");
        assert!(
            stderr(&output).contains(expected),
            "{flag}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn serve_rejects_bad_certificate_management_flags() {
    let dir = tempfile::tempdir().unwrap();
    let pki = prodguard::certs::pki::generate("cli CA", &["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let managed = ["serve", "--addr", "127.0.0.1:0", "--manage-certs"];
    let in_ns = [&managed[..], &["--lease-namespace", "prodguard"]].concat();
    for (args, expected) in [
        (
            [&managed[..], &["--tls-cert", cert, "--tls-key", key]].concat(),
            "--manage-certs and --tls-cert exclude each other",
        ),
        (
            managed.to_vec(),
            "--manage-certs needs prodguard's namespace, for its Secret and Lease: set POD_NAMESPACE",
        ),
        (
            [&in_ns[..], &["--cert-ip-addresses", "127.0.0.1,localhost"]].concat(),
            "--cert-ip-addresses \"localhost\" is not an IP address",
        ),
        (
            [&in_ns[..], &["--cert-validity", "90d", "--ca-validity", "30d"]].concat(),
            "--ca-validity (30d) must be at least --cert-validity (90d)",
        ),
        (
            [&in_ns[..], &["--cert-validity", "1h", "--cert-renew-before", "2h"]].concat(),
            "--cert-renew-before (2h) must be shorter than --cert-validity (1h)",
        ),
        (
            [&in_ns[..], &["--ca-overlap", "off"]].concat(),
            "--ca-overlap must be longer than 0",
        ),
        (
            in_ns.clone(),
            "--manage-certs needs the cluster (an in-cluster config or a kubeconfig)",
        ),
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // Files with --manage-certs=false (the cert-manager overlay) start.
    let output = run(&[
        "serve",
        "--manage-certs=false",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--addr",
        "bad address",
    ]);
    assert!(
        stderr(&output).contains("--addr \"bad address\" is not an address"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_reviews_finish_and_refuses_new_connections() {
    // An API server that accepts connections and never answers: the Pod lookup of a CONNECT
    // review hangs until prodguard's lookup timeout (3 s), so the review is in flight.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{silent_addr}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"),
    )
    .unwrap();
    let ca_out = dir.path().join("ca.crt");
    let mut child = prodguard()
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
            "--audit-interval",
            "off",
            // The listener closes at once: the delay has a test of its own.
            "--shutdown-delay=0s",
            "--ca-out",
        ])
        .arg(&ca_out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on https://").nth(1) {
                let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_string());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .parse()
        .unwrap();
    let ca = std::fs::read_to_string(&ca_out).unwrap();
    let mut client = Client::connect_to(addr, &ca, "localhost").await;
    let exec = Review::new("CONNECT", "v1", "PodExecOptions", "pods")
        .set("subResource", json!("exec"))
        .set("name", json!("db-0"))
        .set(
            "object",
            json!({"apiVersion": "v1", "kind": "PodExecOptions"}),
        )
        .user("dev", &[]);
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let response = client.review("validate", &exec.json()).await;
        (response, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminated = Instant::now();
    let pid = child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // No new connections once shutdown has begun.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    // The review in flight still gets its answer: denied, because the lookup timed out.
    let (response, took) = in_flight.await.unwrap();
    assert_eq!(response["allowed"], false);
    assert!(
        common::message(&response).contains("took longer than 3s"),
        "{response}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        sigterm_wait(&mut child),
        Some(0),
        "exits 0 after the in-flight review"
    );
    assert!(
        terminated.elapsed() < Duration::from_secs(25),
        "within the shutdown bound"
    );
}

fn sigterm_wait(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "prodguard did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_changed_configuration_is_reloaded_and_a_broken_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.yaml");
    std::fs::write(&config, "policies:\n  min-replicas:\n    minReplicas: 2\n").unwrap();
    let ca_out = dir.path().join("ca.crt");
    let (mut child, addr, metrics) = serve(&[
        "--config",
        config.to_str().unwrap(),
        "--config-reload-interval",
        "100ms",
        "--ca-out",
        ca_out.to_str().unwrap(),
    ]);
    let ca = std::fs::read_to_string(&ca_out).unwrap();
    let mut client = Client::connect_to(addr, &ca, "localhost").await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": {"replicas": 1}});
    let review = Review::create(deploy).json();
    assert_eq!(client.review("validate", &review).await["allowed"], false);

    // A valid change takes effect...
    std::fs::write(&config, "policies:\n  min-replicas:\n    minReplicas: 1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.review("validate", &review).await["allowed"] != true {
        assert!(
            Instant::now() < deadline,
            "the new configuration never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...a broken one is refused and the previous one stays in force.
    std::fs::write(&config, "policies:\n  min-replicas:\n    minReplica: 5\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !scrape(metrics).contains("prodguard_config_reload_failures_total 1") {
        assert!(
            Instant::now() < deadline,
            "the broken configuration was not refused: {}",
            scrape(metrics)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.review("validate", &review).await["allowed"], true);
    assert!(scrape(metrics).contains("prodguard_config_reloads_total 1"));
    assert_eq!(sigterm(&mut child), Some(0));
}

/// What one huge review may add to the peak RSS (see docs/benchmarks.md's memory per review size).
const PEAK_BOUND_KIB: u64 = 24 * 1024;
/// How far above its baseline RSS may stay once the huge reviews are done: what glibc keeps
/// of the freed small chunks, up to a decode's worth in each worker thread's arena (seen: 4.8
/// MiB when both reviews ran on one worker, 11.2 MiB when they ran on two); before the bound,
/// 27 MiB.
const SETTLED_BOUND_KIB: u64 = 16 * 1024;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(child: &Child, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// A Pod with `n` containers `{"name": "c", "image": "a"}`, none with a pull policy.
fn pod_with_containers(n: usize) -> Value {
    let containers = vec![json!({"name": "c", "image": "a"}); n];
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "many", "namespace": "openg2p"},
           "spec": {"containers": containers}})
}

/// The memory bound of one review, measured through prodguard's own peak RSS: a Pod of
/// 100,000 containers (2.9 MB) is refused with a clear message, a Pod of 5,000 containers
/// (near the largest still judged) is patched under the bound too, and RSS comes back down.
#[tokio::test]
async fn a_huge_review_costs_a_bounded_multiple_of_its_size_and_rss_comes_back() {
    let (mut child, _, _, mut client, _) = serve_self_signed().await;
    let small = Review::create(pod_with_containers(1)).json();
    client.review("mutate", &small).await;
    let baseline = status_kib(&child, "VmRSS");

    let huge = Review::create(pod_with_containers(100_000)).json();
    let size = serde_json::to_vec(&huge).unwrap().len();
    assert!(size > 2_500_000, "{size}");
    let response = client.review("mutate", &huge).await;
    assert_eq!(response["allowed"], false);
    assert!(
        common::message(&response)
            .contains("the object builds more than 4 MiB in the fields prodguard reads"),
        "{response}"
    );
    let largest = Review::create(pod_with_containers(5_000)).json();
    let response = client.review("mutate", &largest).await;
    assert_eq!(response["allowed"], true, "{response}");
    let patch = common::decode_patch(&response).expect("a patch");
    assert_eq!(patch.0.len(), 5_000);

    let peak = status_kib(&child, "VmHWM");
    assert!(
        peak < baseline + PEAK_BOUND_KIB,
        "peak RSS {peak} KiB, baseline {baseline} KiB: more than {PEAK_BOUND_KIB} KiB for a 2.9 MB review"
    );
    // Back down: small reviews after it find the memory free again.
    for _ in 0..3 {
        client.review("mutate", &small).await;
    }
    let after = status_kib(&child, "VmRSS");
    assert!(
        after < baseline + SETTLED_BOUND_KIB,
        "RSS stays at {after} KiB after the large reviews (baseline {baseline} KiB)"
    );
    assert_eq!(sigterm(&mut child), Some(0));
}

/// Every line of an OpenMetrics text: a comment, `# EOF`, or `name{labels} value` whose value
/// is a number and whose label values are closed strings.
fn assert_exposition_parses(text: &str) {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or(text);
    let mut lines = 0;
    for line in body.lines().filter(|l| !l.is_empty()) {
        lines += 1;
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.starts_with("prodguard_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not prodguard's series: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels not closed: {line}");
            // Label values are quoted, with `"` and `\` escaped: the quotes that are not escaped
            // come in pairs.
            let mut quotes = 0;
            let mut escaped = false;
            for c in series[name_end..].chars() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => quotes += 1,
                    _ => {}
                }
            }
            assert_eq!(quotes % 2, 0, "an unclosed label value: {line}");
        }
    }
    assert!(lines > 10, "{text}");
}

#[tokio::test]
async fn request_kinds_forge_no_metric_line_and_add_no_series() {
    let (mut child, _, metrics, mut client, _) = serve_self_signed().await;
    let with_kind = |kind: &str| {
        let object = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "x", "namespace": "openg2p"}});
        let mut review = Review::create(object);
        review.request["kind"]["kind"] = json!(kind);
        review.json()
    };
    client.review("validate", &with_kind("Service")).await;
    let before = scrape(metrics);
    let forged = "Pod\",verdict=\"allowed\"} 1\nprodguard_injected_metric{x=\"1";
    client.review("validate", &with_kind(forged)).await;
    for i in 0..1000 {
        client
            .review("validate", &with_kind(&format!("Kind{i}")))
            .await;
    }
    let after = scrape(metrics);
    assert!(!after.contains("injected"), "{after}");
    assert_exposition_parses(&after);
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("prodguard_admission_requests_total{"))
            .count()
    };
    // A Service is not among the kinds prodguard is registered for either: its series is
    // `other`'s, and the 1,001 kinds after it add none.
    assert_eq!(series(&before), 1, "{before}");
    assert_eq!(series(&after), 1, "{after}");
    assert!(
        after.contains("prodguard_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",kind=\"other\",verdict=\"allowed\"} 1002"),
        "{after}"
    );
    assert_eq!(sigterm(&mut child), Some(0));
}

/// Certificates given as files: their expiry is a metric, and one with less than 30 days left
/// is warned about in the log (prodguard does not renew files).
#[tokio::test]
async fn the_expiry_of_certificate_files_is_a_metric_and_a_warning() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.not_after = now + time::Duration::days(400);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = now + time::Duration::days(20);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let (mut child, addr, metrics) = serve(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ]);
    let mut client = Client::connect_to(addr, &ca.pem(), "localhost").await;
    let (status, _) = client.send(Method::GET, "/healthz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let text = scrape(metrics);
    let gauge = |certificate: &str| -> i64 {
        let prefix = format!(
            "prodguard_certificate_expiry_timestamp_seconds{{certificate=\"{certificate}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {certificate} expiry in {text}"))
            .parse()
            .unwrap()
    };
    let serving_at = (now + time::Duration::days(20)).unix_timestamp();
    let ca_at = (now + time::Duration::days(400)).unix_timestamp();
    assert!((gauge("serving") - serving_at).abs() <= 1, "{text}");
    assert!((gauge("ca") - ca_at).abs() <= 1, "{text}");
    let log = child.log();
    // 20 days from the moment the test made it (19 when a second boundary fell between).
    assert!(
        log.contains("or its CA expires in 20 days;")
            || log.contains("or its CA expires in 19 days;"),
        "{log}"
    );
    assert!(
        log.contains("prodguard does not renew certificates given as files"),
        "{log}"
    );
    assert_eq!(sigterm(&mut child), Some(0));
}

#[test]
fn check_applies_the_policy_exceptions_of_its_input() {
    let in_an_hour = common::rfc3339_from_now(3600);
    let manifests = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: migrate-users, namespace: openg2p}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: migrate}}}}
  template:
    metadata: {{labels: {{app: migrate}}}}
    spec:
      containers: [{{name: m, image: openg2p/migrate:1, imagePullPolicy: IfNotPresent}}]
---
apiVersion: prodguard.io/v1alpha1
kind: PolicyException
metadata: {{name: migration}}
spec:
  policies: [min-replicas]
  match: {{names: ["migrate-*"]}}
  reason: one-off data migration
  expires: "{in_an_hour}"
"#
    );
    let output = run_with_stdin(
        &["check", "-f", "-", "-n", "openg2p", "-o", "json"],
        manifests.as_bytes(),
    );
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{doc}");
    assert_eq!(doc["summary"]["excepted"], 1, "{doc}");
    let excepted = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "excepted")
        .unwrap_or_else(|| panic!("an excepted entry in {doc}"));
    assert_eq!(excepted["policy"], "min-replicas");
    assert_eq!(
        excepted["exception"],
        json!({"namespace": "openg2p", "name": "migration", "reason": "one-off data migration",
               "expires": in_an_hour})
    );
    // Without the exception the same Deployment is denied.
    let alone = manifests.split("---").next().unwrap();
    let output = run_with_stdin(&["check", "-f", "-", "-o", "json"], alone.as_bytes());
    assert_eq!(output.status.code(), Some(1));
}

/// rbac-hygiene's escalation classes in `check` (the webhook's own path), each in a plain and a
/// wildcard form: (class, rule, a part of its risk).
#[test]
fn check_refuses_every_escalation_class_plain_and_wildcard() {
    let classes = [
        (
            "impersonate",
            r#"{apiGroups: [""], resources: [users, groups, serviceaccounts], verbs: [impersonate]}"#,
            r#"{apiGroups: ["*"], resources: [users], verbs: ["*"]}"#,
            "act as any user",
        ),
        (
            "escalate",
            r#"{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [escalate]}"#,
            r#"{apiGroups: [rbac.authorization.k8s.io], resources: ["*"], verbs: ["*"]}"#,
            "permissions they do not hold",
        ),
        (
            "bind",
            r#"{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind]}"#,
            r#"{apiGroups: ["*"], resources: ["*"], verbs: [bind]}"#,
            "cluster-admin included",
        ),
        (
            "delete-namespaces",
            r#"{apiGroups: [""], resources: [namespaces], verbs: [delete]}"#,
            r#"{apiGroups: [""], resources: ["*"], verbs: [delete]}"#,
            "protect-delete exempts",
        ),
        (
            "webhooks",
            r#"{apiGroups: [admissionregistration.k8s.io], resources: [mutatingwebhookconfigurations], verbs: [delete]}"#,
            r#"{apiGroups: ["*"], resources: ["*"], verbs: [patch]}"#,
            "switch off or replace prodguard's webhooks",
        ),
        (
            "node-proxy",
            r#"{apiGroups: [""], resources: [nodes/proxy], verbs: [create]}"#,
            r#"{apiGroups: [""], resources: ["*/proxy"], verbs: [get]}"#,
            "through the kubelet",
        ),
        (
            "approve",
            r#"{apiGroups: [certificates.k8s.io], resources: [signers], verbs: [approve]}"#,
            r#"{apiGroups: [certificates.k8s.io], resources: ["*"], verbs: ["*"]}"#,
            "mint a client certificate",
        ),
        (
            "ephemeral",
            r#"{apiGroups: [""], resources: [pods/ephemeralcontainers], verbs: [patch]}"#,
            r#"{apiGroups: [""], resources: ["pods/*"], verbs: ["*"]}"#,
            "inside any pod",
        ),
        (
            "tokens",
            r#"{apiGroups: [""], resources: [serviceaccounts/token], verbs: [create]}"#,
            r#"{apiGroups: [""], resources: ["*/token"], verbs: [create]}"#,
            "of the service accounts",
        ),
        (
            "volumes",
            r#"{apiGroups: [""], resources: [persistentvolumes], verbs: [create]}"#,
            r#"{apiGroups: ["*"], resources: ["*"], verbs: [create]}"#,
            "hostPath",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    for (name, plain, wildcard, _) in &classes {
        for (form, rule) in [("plain", plain), ("wildcard", wildcard)] {
            input.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {name}-{form}}}\nrules: [{rule}]\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: alice-{name}-{form}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}-{form}}}\nsubjects: [{{kind: User, name: alice}}]\n"
            ));
        }
    }
    let path = dir.path().join("escalations.yaml");
    std::fs::write(&path, &input).unwrap();
    let output = run(&["check", "-f", path.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}{}", stderr(&output));
    for (name, _, _, risk) in &classes {
        for form in ["plain", "wildcard"] {
            let line = text
                .lines()
                .find(|l| {
                    l.contains(&format!(
                        "DENY  [rbac-hygiene] ClusterRoleBinding alice-{name}-{form} grants"
                    ))
                })
                .unwrap_or_else(|| panic!("{name} {form} not denied:\n{text}"));
            assert!(
                line.contains("would let User alice") && line.contains(risk),
                "{name} {form}: {line}"
            );
        }
    }
    // Each binding, and each bound role it names (in the input, so judged as bound).
    assert!(text.contains("40 resources: 40 denied"), "{text}");
}

/// db-access in `check`: the pods of its input that mount the claim of a database pod or
/// StatefulSet of its input are denied (the differential test holds the webhook to the same).
#[test]
fn check_denies_pods_beside_a_database_s_storage() {
    let file = "tests/fixtures/differential/prodguard/db-access-claims.yaml";
    let output = run(&["check", "-f", file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}{}", stderr(&output));
    let denials: Vec<&str> = text.lines().filter(|l| l.contains("DENY")).collect();
    assert_eq!(denials.len(), 2, "{text}");
    assert!(denials[0].contains("may not create pod openg2p/ledger-copy mounting PersistentVolumeClaim data-ledger-postgresql-0, which a database's pods mount:"), "{text}");
    assert!(denials[1].contains("may not create pod openg2p/cache-copy mounting PersistentVolumeClaim cache-data, which a database's pods mount:"), "{text}");
}

/// A client certificate named `cn`, signed by the CA of `pki`: `(cert PEM, key PEM)`.
fn client_cert(pki: &prodguard::certs::pki::Pki, cn: &str) -> (String, String) {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pki.ca_cert_pem,
        rcgen::KeyPair::from_pem(&pki.ca_key_pem).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The value of one sample line of the metrics text, or 0 when it is absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn with_a_client_ca_only_the_named_certificate_gets_a_review_and_probes_need_none() {
    let dir = tempfile::tempdir().unwrap();
    let serving = prodguard::certs::pki::generate("serving CA", &["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &serving.cert_pem).unwrap();
    std::fs::write(&key, &serving.key_pem).unwrap();
    let clients = prodguard::certs::pki::generate("client CA", &["x".to_owned()]).unwrap();
    let other_ca = prodguard::certs::pki::generate("other CA", &["x".to_owned()]).unwrap();
    let client_ca = dir.path().join("client-ca.crt");
    std::fs::write(&client_ca, &clients.ca_cert_pem).unwrap();
    let (mut child, addr, metrics) = serve(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        client_ca.to_str().unwrap(),
        "--client-subjects",
        "kube-apiserver,apiserver-webhook-client",
        "--tls-reload-interval",
        "off",
    ]);
    let ca = serving.ca_cert_pem.clone();
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": {"replicas": 1}});
    let body = serde_json::to_vec(&Review::create(deploy).json()).unwrap();
    let apiserver = client_cert(&clients, "kube-apiserver");
    let stranger = client_cert(&clients, "dev");
    let outsider = client_cert(&other_ca, "kube-apiserver");

    // The API server's certificate: the review is answered (and denied by min-replicas).
    let mut api = Client::connect_as(addr, &ca, "localhost", Some((&apiserver.0, &apiserver.1)))
        .await
        .unwrap();
    let (status, answer) = api.send(Method::POST, "/validate", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], false);

    // No certificate: the probes answer, the reviews are refused before any body is read.
    let mut probe = Client::connect_as(addr, &ca, "localhost", None)
        .await
        .unwrap();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            probe.send(Method::GET, path, vec![]).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in ["/validate", "/mutate"] {
        let (status, text) = probe.send(Method::POST, path, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            String::from_utf8_lossy(&text).contains("a client certificate is required"),
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
    // A certificate of the same CA with another name: refused, and the message names no CA.
    let mut other = Client::connect_as(addr, &ca, "localhost", Some((&stranger.0, &stranger.1)))
        .await
        .unwrap();
    let (status, text) = other.send(Method::POST, "/validate", body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&text).contains("not in --client-subjects"));
    // Another CA's certificate: the handshake (or the first answer, in TLS 1.3) fails.
    let refused =
        match Client::connect_as(addr, &ca, "localhost", Some((&outsider.0, &outsider.1))).await {
            Err(_) => true,
            Ok(mut client) => client
                .try_send(Method::GET, "/healthz", vec![])
                .await
                .is_err(),
        };
    assert!(refused, "a certificate of another CA was accepted");

    let text = scrape(metrics);
    let refusals = |reason: &str| {
        sample(
            &text,
            &format!(
                "prodguard_client_refusals_total{{listener=\"admission\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(
        (
            refusals("no_certificate"),
            refusals("subject"),
            refusals("untrusted")
        ),
        (2, 1, 1),
        "{text}"
    );

    // The client CA is re-read on SIGHUP: the other CA's certificate is now the accepted one.
    std::fs::write(&client_ca, &other_ca.ca_cert_pem).unwrap();
    signal(&child, "HUP");
    let mut accepted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(mut client) =
            Client::connect_as(addr, &ca, "localhost", Some((&outsider.0, &outsider.1))).await
        {
            if let Ok((StatusCode::OK, _)) = client
                .try_send(Method::POST, "/validate", body.clone())
                .await
            {
                accepted = true;
                break;
            }
        }
    }
    assert!(accepted, "the new client CA was not used");
    let refused = match Client::connect_as(
        addr,
        &ca,
        "localhost",
        Some((&apiserver.0, &apiserver.1)),
    )
    .await
    {
        Err(_) => true,
        Ok(mut client) => client
            .try_send(Method::GET, "/healthz", vec![])
            .await
            .is_err(),
    };
    assert!(refused, "the replaced CA's certificate is still accepted");
    assert_eq!(sample(&scrape(metrics), "prodguard_tls_reloads_total"), 1);
    assert_eq!(sigterm(&mut child), Some(0));
}

#[test]
fn serve_refuses_an_unusable_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let output = prodguard()
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off"])
        .args(["--client-ca", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--client-ca") && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
    let output = prodguard()
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off"])
        .args([
            "--client-ca",
            empty.to_str().unwrap(),
            "--client-subjects",
            " ",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--client-subjects is empty"));
}

#[test]
fn metrics_auth_kubernetes_needs_the_cluster() {
    let output = prodguard()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--metrics-auth", "kubernetes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--metrics-auth=kubernetes needs the cluster"),
        "{stderr}"
    );
    let output = prodguard()
        .args(["serve", "--metrics-auth", "basic"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[possible values: none, kubernetes]"));
}
