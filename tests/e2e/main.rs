//! prodguard against a real kube-apiserver (1.20.2, built by scripts/test-deps.sh) and etcd on
//! 127.0.0.1, registered with the webhook configurations of deploy/, driven with kubectl and
//! the kube client. Every scenario asserts on what the API server stored or answered.
//!
//! A custom harness: the cluster starts once, each scenario runs in its own namespace, a
//! failing scenario is reported and the rest still run, and the cluster is stopped by PID at
//! the end whatever happened. Without kube-apiserver or etcd the suite fails; it never skips.
//! `cargo test --test e2e -- NAME` runs the scenarios whose name contains NAME.

mod balancer;
mod certs;
mod chart;
mod cluster;
mod floor;
mod rollout;
mod workload;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{ExitCode, Output};
use std::time::{Duration, Instant};

use cluster::{metric, scrape, TestCluster};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

const DEFAULT_POLICY: &str = include_str!("../../policies/openg2p-production.yaml");

/// The default policy set with one line changed; panics when `from` is not in it.
fn default_with(from: &str, to: &str) -> String {
    assert!(
        DEFAULT_POLICY.contains(from),
        "{from:?} is not in the default policy set"
    );
    DEFAULT_POLICY.replacen(from, to, 1)
}

/// The default policy set where rbac-hygiene lets `user` hold guarded permissions (what an
/// admin does for a user who may exec or delete, so that prodguard's own policies decide).
fn default_exempting(user: &str) -> String {
    default_with(
        "\"system:kube-controller-manager\", \"system:kube-scheduler\"]",
        &format!("\"system:kube-controller-manager\", \"system:kube-scheduler\", \"{user}\"]"),
    )
}

struct Env {
    cluster: TestCluster,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

type Scenario = fn(&mut Env);

fn main() -> ExitCode {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scenarios: &[(&str, Scenario)] = &[
        (
            "webhooks_registered_from_deploy",
            webhooks_registered_from_deploy,
        ),
        ("replicas_scale_and_hpa", replicas_scale_and_hpa),
        (
            "cronjob_batch_v1beta1_is_patched",
            cronjob_batch_v1beta1_is_patched,
        ),
        ("airgap_and_mirror", airgap_and_mirror),
        ("db_access", db_access),
        ("protect_delete", protect_delete),
        (
            "audit_mode_warns_and_stores_unchanged",
            audit_mode_warns_and_stores_unchanged,
        ),
        ("events_and_dry_run", events_and_dry_run),
        (
            "background_audit_reports_and_lease",
            background_audit_reports_and_lease,
        ),
        (
            "audit_judges_what_no_listed_controller_judges",
            audit_judges_what_no_listed_controller_judges,
        ),
        ("client_certificates_required", client_certificates_required),
        (
            "forged_review_flood_keeps_real_denials",
            forged_review_flood_keeps_real_denials,
        ),
        (
            "no_lockout_while_prodguard_is_down",
            no_lockout_while_prodguard_is_down,
        ),
        ("ingress_body_size", ingress_body_size),
        ("ingress_body_size_on_traefik", ingress_body_size_on_traefik),
        ("node_spread", node_spread),
        (
            "production_namespaces_opensearch_and_databases",
            production_namespaces_opensearch_and_databases,
        ),
        ("rbac_hygiene", rbac_hygiene),
        (
            "exceptions_break_glass_and_audit",
            exceptions_break_glass_and_audit,
        ),
        ("openreports_in_both_modes", openreports_in_both_modes),
        ("audit_events_late_not_lost", audit_events_late_not_lost),
        (
            "audit_memory_flat_across_scans",
            audit_memory_flat_across_scans,
        ),
        (
            "helm_chart_render_admitted_and_serves",
            chart::helm_chart_render_admitted_and_serves,
        ),
        (
            "certificates_managed_install_and_restore",
            certs::certificates_managed_install_and_restore,
        ),
        (
            "certificates_renewed_and_rotated_under_traffic",
            certs::certificates_renewed_and_rotated_under_traffic,
        ),
        (
            "certificates_not_renewed_are_named_and_warned",
            certs::certificates_not_renewed_are_named_and_warned,
        ),
        (
            "cel_floor_outlives_prodguard",
            floor::cel_floor_outlives_prodguard,
        ),
        (
            "rollout_kill_and_apiserver_restart_under_load",
            rollout::rollout_kill_and_apiserver_restart_under_load,
        ),
    ];
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        eprintln!("e2e: no scenario matches {filter:?}");
        return ExitCode::FAILURE;
    }

    // A failing assertion prints its message and place, not a backtrace per scenario.
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        eprintln!("assertion failed{place}:\n{message}");
    }));

    let started = Instant::now();
    let cluster = match TestCluster::start() {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("e2e: cannot start the test cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "e2e: cluster ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = match runtime.block_on(cluster.client()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("e2e: no kube client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut env = Env {
        cluster,
        runtime,
        client,
    };
    if let Err(e) = env.cluster.register_webhooks() {
        eprintln!("e2e: {e}");
        return ExitCode::FAILURE;
    }

    let ran = selected.len();
    println!("\nrunning {ran} e2e scenarios");
    let mut failed = Vec::new();
    let mut skips = Vec::new();
    for (name, scenario) in selected {
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| scenario(&mut env)));
        let skip = SKIPPED.lock().unwrap().take();
        match result {
            Ok(()) if skip.is_some() => {
                let reason = skip.unwrap_or_default();
                println!("e2e {name} ... SKIPPED: {reason}");
                skips.push(*name);
            }
            Ok(()) => println!("e2e {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(_) => {
                println!("e2e {name} ... FAILED ({:.1} s)", t.elapsed().as_secs_f64());
                println!("--- prodguard log ---\n{}", env.cluster.prodguard_log());
                failed.push(*name);
            }
        }
    }
    let total = scenarios.len();
    drop(env);
    let skipped = if skips.is_empty() {
        String::new()
    } else {
        format!(", {} skipped: {}", skips.len(), skips.join(", "))
    };
    if failed.is_empty() {
        println!(
            "\ne2e result: ok. {} passed{skipped} ({total} defined)",
            ran - skips.len()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "\ne2e result: FAILED. {} of {ran} failed: {}",
            failed.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}

// ---- helpers ------------------------------------------------------------------------------

/// Why the running scenario cannot run on this API server; printed as `SKIPPED` with it, and
/// counted in the result line (never silent).
static SKIPPED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn skipped(reason: String) {
    *SKIPPED.lock().unwrap() = Some(reason);
}

fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

impl Env {
    fn kubectl(&self, args: &[&str]) -> Output {
        self.cluster.kubectl(args)
    }

    /// kubectl that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            err(&output)
        );
        out(&output)
    }

    /// kubectl that must fail; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed: {}",
            out(&output)
        );
        err(&output)
    }

    fn apply(&self, namespace: &str, manifest: &Value) -> Output {
        self.cluster.kubectl_stdin(
            &["apply", "-n", namespace, "-f", "-"],
            &manifest.to_string(),
        )
    }

    /// Applies deploy/base's CRDs (PolicyExceptions, the wgpolicyk8s reports) and waits until
    /// the API server serves them.
    fn crds_installed(&self) {
        self.ok(&["apply", "-f", "deploy/base/crds.yaml"]);
        self.ok(&[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/policyexceptions.prodguard.io",
            "crd/policyreports.wgpolicyk8s.io",
            "crd/clusterpolicyreports.wgpolicyk8s.io",
        ]);
    }

    fn namespace(&self, name: &str) {
        self.ok(&["create", "namespace", name]);
    }

    fn get_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["get", "-o", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).expect("kubectl JSON")
    }

    fn serve(&mut self, config: &str, args: &[&str]) {
        if let Err(e) = self.cluster.serve(config, args) {
            panic!("{e}");
        }
    }

    fn events(&self, namespace: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        self.runtime
            .block_on(api.list(&ListParams::default()))
            .expect("list events")
            .items
    }

    /// Events of `namespace` once at least `count` exist (they are published asynchronously).
    fn wait_events(&self, namespace: &str, count: usize) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events(namespace);
            if events.len() >= count || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A denial by prodguard's validating webhook, as kubectl prints it.
fn assert_denied(stderr: &str, expected: &str) {
    assert_denied_by("validate.prodguard.io", stderr, expected);
}

/// A denial by prodguard's RBAC webhook.
fn assert_rbac_denied(stderr: &str, expected: &str) {
    assert_denied_by("rbac.validate.prodguard.io", stderr, expected);
}

fn assert_denied_by(webhook: &str, stderr: &str, expected: &str) {
    assert!(
        stderr.contains(&format!(
            "admission webhook \"{webhook}\" denied the request"
        )),
        "not denied by {webhook}: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "initContainers": [{"name": "init", "image": image, "command": ["true"]}],
                    "containers": [{"name": "main", "image": image}]
                }
            }
        }
    })
}

fn pull_policies(object: &Value, spec_pointer: &str) -> Vec<String> {
    let spec = object.pointer(spec_pointer).expect("pod spec");
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().cloned().unwrap_or_default())
        .map(|c| {
            c["imagePullPolicy"]
                .as_str()
                .unwrap_or("<unset>")
                .to_string()
        })
        .collect()
}

// ---- scenarios ----------------------------------------------------------------------------

fn webhooks_registered_from_deploy(env: &mut Env) {
    use base64::Engine as _;
    let ca = std::fs::read_to_string(env.cluster.certs_dir.join("ca.crt")).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    for (kind, webhooks, path) in [
        (
            "mutatingwebhookconfiguration",
            &["mutate.prodguard.io"][..],
            "/mutate",
        ),
        (
            "validatingwebhookconfiguration",
            &["validate.prodguard.io", "rbac.validate.prodguard.io"][..],
            "/validate",
        ),
    ] {
        let config = env.get_json(&[kind, "prodguard"]);
        let hooks = config["webhooks"].as_array().unwrap();
        let names: Vec<_> = hooks.iter().map(|h| h["name"].as_str().unwrap()).collect();
        assert_eq!(names, webhooks);
        for hook in hooks {
            assert_eq!(hook["sideEffects"], "NoneOnDryRun");
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
            assert_eq!(
                hook["clientConfig"]["caBundle"],
                bundle.as_str(),
                "injected by prodguard certs --inject"
            );
            assert_eq!(
                hook["clientConfig"]["url"],
                format!("https://127.0.0.1:{}{path}", env.cluster.prodguard_port)
            );
        }
        // Until prodguard answers, everything fails open (the install window).
        let policies: Vec<_> = hooks
            .iter()
            .map(|h| h["failurePolicy"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if webhooks.len() == 2 {
            &["Ignore", "Ignore"]
        } else {
            &["Ignore"]
        };
        assert_eq!(policies, expected);
    }
    // Once prodguard serves a certificate the bundle trusts (here from files), it arms the
    // enforcing webhook; patching, and RBAC checks (see deploy/), stay failing open.
    env.cluster.stop_prodguard();
    env.ok(&[
        "patch",
        "validatingwebhookconfiguration",
        "prodguard",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]"#,
    ]);
    env.serve(DEFAULT_POLICY, &[]);
    assert_eq!(
        env.cluster.validating_failure_policies(),
        ["Fail", "Ignore"]
    );
    assert!(
        env.cluster.prodguard_log().contains(
            "validate.prodguard.io of validatingwebhookconfigurations/prodguard now fail closed"
        ),
        "{}",
        env.cluster.prodguard_log()
    );
    // Injecting into configurations that do not exist says what to do.
    let output = env
        .cluster
        .prodguard()
        .args([
            "certs",
            "--inject",
            "--webhook-name",
            "missing",
            "--out-dir",
        ])
        .arg(&env.cluster.certs_dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(err(&output).contains("MutatingWebhookConfiguration missing was not found; apply the webhook configurations first"), "{}", err(&output));
}

fn replicas_scale_and_hpa(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-replicas";
    env.namespace(ns);

    let stderr = env.fails(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    assert_denied(
        &stderr,
        &format!("[min-replicas] Deployment {ns}/web would run 1 replica"),
    );

    env.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        ns,
    ]);
    let stored = env.get_json(&["deployment", "web", "-n", ns]);
    assert_eq!(
        pull_policies(&stored, "/spec/template/spec"),
        vec!["IfNotPresent"],
        "stored: {stored}"
    );

    // Through the kube client too: init and main containers, both patched.
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
    let created = env
        .runtime
        .block_on(api.create(
            &Default::default(),
            &serde_json::from_value(deployment("api", 3, "busybox:1.36")).unwrap(),
        ))
        .expect("create through the kube client");
    let created = serde_json::to_value(created).unwrap();
    assert_eq!(
        pull_policies(&created, "/spec/template/spec"),
        vec!["IfNotPresent", "IfNotPresent"]
    );

    let stderr = env.fails(&["scale", "deployment", "web", "--replicas=1", "-n", ns]);
    assert_denied(&stderr, &format!("Deployment {ns}/web would run 1 replica"));
    env.ok(&["scale", "deployment", "web", "--replicas=0", "-n", ns]);
    assert_eq!(
        env.get_json(&["deployment", "web", "-n", ns])["spec"]["replicas"],
        0
    );
    env.ok(&["scale", "deployment", "web", "--replicas=3", "-n", ns]);

    let stderr = env.fails(&[
        "autoscale",
        "deployment",
        "web",
        "--min=1",
        "--max=4",
        "-n",
        ns,
    ]);
    assert_denied(
        &stderr,
        &format!("HorizontalPodAutoscaler {ns}/web would run 1 replica"),
    );
    env.ok(&[
        "autoscale",
        "deployment",
        "web",
        "--min=2",
        "--max=4",
        "-n",
        ns,
    ]);

    // The exemption of the default policy set: *-postgresql StatefulSets in openg2p.
    env.namespace("openg2p");
    let statefulset = |name: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "pg", "image": "bitnami/postgresql:16"}]}}}
        })
    };
    let output = env.apply("openg2p", &statefulset("registry-postgresql"));
    assert!(
        output.status.success(),
        "the exempt singleton is stored: {}",
        err(&output)
    );
    let output = env.apply("openg2p", &statefulset("registry-redis"));
    assert!(!output.status.success());
    assert_denied(
        &err(&output),
        "StatefulSet openg2p/registry-redis would run 1 replica",
    );

    // The metrics endpoint counted what the API server sent.
    let text = scrape(env.cluster.metrics_port);
    let count = |series: &str| metric(&text, series);
    assert_eq!(
        count(
            r#"prodguard_admission_requests_total{webhook="validate",operation="CREATE",kind="Deployment",verdict="denied"}"#
        ),
        1.0,
        "{text}"
    );
    // kubectl scale may retry; each attempt is a request of its own.
    let scale_denied = count(
        r#"prodguard_admission_requests_total{webhook="validate",operation="UPDATE",kind="Scale",verdict="denied"}"#,
    );
    assert!(scale_denied >= 1.0, "{text}");
    assert_eq!(
        count(
            r#"prodguard_admission_requests_total{webhook="validate",operation="CREATE",kind="HorizontalPodAutoscaler",verdict="denied"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(
            r#"prodguard_admission_requests_total{webhook="mutate",operation="CREATE",kind="Deployment",verdict="patched"}"#
        ),
        // Both kubectl creates (image-pull-policy), the kube client's 3 replicas (node-spread).
        3.0,
        "{text}"
    );
    let statefulset_denied = count(
        r#"prodguard_admission_requests_total{webhook="validate",operation="CREATE",kind="StatefulSet",verdict="denied"}"#,
    );
    assert_eq!(statefulset_denied, 1.0, "{text}");
    // Every denial was min-replicas': one finding each.
    assert_eq!(
        count(
            r#"prodguard_policy_findings_total{policy="min-replicas",action="Denied",source="admission"}"#
        ),
        3.0 + scale_denied,
        "{text}"
    );
    assert!(
        count(r#"prodguard_admission_duration_seconds_count{webhook="validate"}"#) >= 8.0,
        "{text}"
    );
}

fn cronjob_batch_v1beta1_is_patched(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-cronjob";
    env.namespace(ns);
    // Kubernetes 1.20 serves CronJob as batch/v1beta1 only.
    let cronjob = json!({
        "apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "backup"},
        "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "dump", "image": "bitnami/postgresql:latest"}]}}}}}
    });
    let output = env.apply(ns, &cronjob);
    assert!(output.status.success(), "{}", err(&output));
    let stored = env.get_json(&["cronjobs.v1beta1.batch", "backup", "-n", ns]);
    assert_eq!(
        pull_policies(&stored, "/spec/jobTemplate/spec/template/spec"),
        vec!["IfNotPresent"]
    );
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
    });
    assert!(env.apply(ns, &job).status.success());
    let stored = env.get_json(&["job", "once", "-n", ns]);
    assert_eq!(
        pull_policies(&stored, "/spec/template/spec"),
        vec!["IfNotPresent"]
    );
}

fn airgap_and_mirror(env: &mut Env) {
    let ns = "e2e-airgap";
    env.namespace(ns);
    let airgapped = "policies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"registry.local:5000\"]\n";
    env.serve(airgapped, &[]);
    let stderr = env.fails(&["run", "nginx", "--image=nginx", "-n", ns]);
    assert_denied(
        &stderr,
        "[airgap-registry] the cluster is air-gapped and images must come from an allowed registry (registry.local:5000): containers[0] \"nginx\": image \"nginx\" resolves to registry docker.io",
    );
    env.ok(&[
        "run",
        "app",
        "--image=registry.local:5000/openg2p/app:1.0",
        "-n",
        ns,
    ]);
    assert_eq!(
        env.get_json(&["pod", "app", "-n", ns])["spec"]["containers"][0]["image"],
        "registry.local:5000/openg2p/app:1.0"
    );

    let mirrored = format!(
        "{airgapped}  registry-mirror:\n    mode: enforce\n    mirrors: {{\"docker.io\": \"registry.local:5000/dockerhub\"}}\n"
    );
    env.serve(&mirrored, &[]);
    env.ok(&["run", "redis", "--image=redis:7.2", "-n", ns]);
    let stored = env.get_json(&["pod", "redis", "-n", ns]);
    assert_eq!(
        stored["spec"]["containers"][0]["image"],
        "registry.local:5000/dockerhub/library/redis:7.2"
    );
    assert_eq!(
        stored["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    // Registries that are not mirrored are still denied.
    let stderr = env.fails(&[
        "run",
        "kc",
        "--image=quay.io/keycloak/keycloak:24",
        "-n",
        ns,
    ]);
    assert_denied(&stderr, "resolves to registry quay.io");
}

/// Creates a Pod and sets its phase to Running (no kubelet runs here).
fn running_pod(env: &Env, ns: &str, name: &str, labels: Value, image: &str) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": image}]}
    });
    let output = env.apply(ns, &pod);
    assert!(output.status.success(), "{}", err(&output));
    env.ok(&[
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
}

fn db_access(env: &mut Env) {
    // rbac-hygiene would refuse the grants below; the admin exempts dev.
    env.serve(&default_exempting("dev"), &[]);
    let ns = "e2e-db";
    env.namespace(ns);
    running_pod(
        env,
        ns,
        "postgres-0",
        json!({"app.kubernetes.io/name": "postgresql"}),
        "bitnami/postgresql:16",
    );
    running_pod(env, ns, "redis", json!({}), "redis:7.2");
    running_pod(env, ns, "web", json!({"app": "web"}), "nginx:1.25");
    // RBAC lets "dev" exec, attach and port-forward; prodguard is what stops it.
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "debugger"},
         "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward", "pods/proxy"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["update", "patch"]},
            {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get", "create"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "dev-debugger"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debugger"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}
    ]});
    let output = env.apply(ns, &rbac);
    assert!(output.status.success(), "{}", err(&output));

    for (pod, why) in [
        ("postgres-0", "label app.kubernetes.io/name=postgresql"),
        ("redis", "containers[0] \"main\" runs image redis:7.2"),
    ] {
        let stderr = env.fails(&["exec", pod, "-n", ns, "--as=dev", "--", "true"]);
        assert_denied(
            &stderr,
            &format!("[db-access] user \"dev\" may not exec into database pod {ns}/{pod}: "),
        );
        // Why it is a database pod is logged, not told to a user who may not read the pod.
        assert!(!stderr.contains(why), "{stderr}");
        let stderr = env.fails(&[
            "attach",
            pod,
            "-n",
            ns,
            "--as=dev",
            "--pod-running-timeout=5s",
        ]);
        assert_denied(
            &stderr,
            &format!("may not attach to database pod {ns}/{pod}"),
        );
        let stderr = env.fails(&[
            "port-forward",
            &format!("pod/{pod}"),
            ":5432",
            "-n",
            ns,
            "--as=dev",
            "--address=127.0.0.1",
            "--pod-running-timeout=5s",
        ]);
        assert_denied(
            &stderr,
            &format!("may not port-forward to database pod {ns}/{pod}"),
        );

        // An admin passes admission; what fails next (no kubelet) is not prodguard's.
        let stderr = env.fails(&["exec", pod, "-n", ns, "--request-timeout=10s", "--", "true"]);
        assert!(
            !stderr.contains("prodguard"),
            "admin exec stopped by prodguard: {stderr}"
        );
    }
    let stderr = env.fails(&[
        "exec",
        "web",
        "-n",
        ns,
        "--as=dev",
        "--request-timeout=10s",
        "--",
        "true",
    ]);
    assert!(
        !stderr.contains("prodguard"),
        "a non-database pod is not prodguard's business: {stderr}"
    );

    // A pod that does not exist: the CONNECT reaches the webhook, which cannot read it.
    let stderr = env.fails(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/ghost/exec?command=true&stdout=true"),
        "-f",
        "/dev/null",
        "--as=dev",
    ]);
    assert_denied(&stderr, &format!("cannot tell whether pod {ns}/ghost is a database pod because the pod lookup failed (pod {ns}/ghost was not found)"));

    // The side doors. The API server's proxy to the pod:
    let stderr = env.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/postgres-0/proxy/"),
        "--as=dev",
    ]);
    assert_denied(
        &stderr,
        &format!("[db-access] user \"dev\" may not proxy through the API server to database pod {ns}/postgres-0"),
    );
    // An ephemeral container (kubectl debug): Kubernetes 1.20 takes an `EphemeralContainers`
    // object (the suite's API server turns its alpha feature gate on); later versions a Pod.
    let ephemeral = |name: &str| {
        json!({"apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "postgres-0", "namespace": ns},
            "ephemeralContainers": [{"name": name, "image": "busybox:1.36", "command": ["sh"],
                "imagePullPolicy": "IfNotPresent", "terminationMessagePolicy": "File"}]})
        .to_string()
    };
    let path = format!("/api/v1/namespaces/{ns}/pods/postgres-0/ephemeralcontainers");
    let denied = env.cluster.kubectl_stdin(
        &["replace", "--raw", &path, "-f", "-", "--as=dev"],
        &ephemeral("debugger"),
    );
    assert!(!denied.status.success(), "dev added an ephemeral container");
    assert_denied(
        &err(&denied),
        &format!("[db-access] user \"dev\" may not add ephemeral containers to database pod {ns}/postgres-0 (ephemeral container \"debugger\"): "),
    );
    let pod = env.get_json(&["pod", "postgres-0", "-n", ns]);
    assert!(
        pod["spec"]["ephemeralContainers"].is_null(),
        "stored: {pod}"
    );
    // A pod of dev's beside the database's storage (what `kubectl debug --copy-to` makes, here
    // with another image): refused; one mounting another claim, and the admin's, are not.
    let with_claim = |name: &str, labels: Value, image: &str, claim: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": image}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
    };
    let output = env.apply(
        ns,
        &with_claim(
            "pg-0",
            json!({"app": "postgresql"}),
            "postgres:16",
            "data-pg-0",
        ),
    );
    assert!(output.status.success(), "{}", err(&output));
    let copy = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "-f", "-", "--as=dev"],
        &with_claim("pg-0-copy", json!({}), "busybox:1.36", "data-pg-0").to_string(),
    );
    assert!(!copy.status.success(), "dev's copy was created");
    assert_denied(
        &err(&copy),
        &format!("[db-access] user \"dev\" may not create pod {ns}/pg-0-copy mounting PersistentVolumeClaim data-pg-0, which a database's pods mount:"),
    );
    let scratch = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "-f", "-", "--as=dev"],
        &with_claim("scratch", json!({}), "busybox:1.36", "scratch").to_string(),
    );
    assert!(scratch.status.success(), "{}", err(&scratch));
    // The same through a workload: its pods would come from a controller, so it is judged at
    // the workload.
    let reader = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reader"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "reader"}},
                 "template": {"metadata": {"labels": {"app": "reader"}},
                              "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}}]}}}});
    let workload = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "-f", "-", "--as=dev"],
        &reader.to_string(),
    );
    assert!(!workload.status.success(), "dev's Deployment was created");
    assert_denied(
        &err(&workload),
        &format!("[db-access] user \"dev\" may not write Deployment {ns}/reader whose pods mount PersistentVolumeClaim data-pg-0, which a database's pods mount:"),
    );
    // A claim of a database StatefulSet that runs no pod (no controller runs here anyway).
    let archive = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "archive"},
        "spec": {"replicas": 0, "serviceName": "archive", "selector": {"matchLabels": {"app": "archive"}},
                 "template": {"metadata": {"labels": {"app": "archive"}},
                              "spec": {"containers": [{"name": "pg", "image": "postgres:16", "imagePullPolicy": "IfNotPresent"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    // (min-replicas asks for 2 or 0: 0 it is.)
    let output = env.apply(ns, &archive);
    assert!(output.status.success(), "{}", err(&output));
    let peek = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "-f", "-", "--as=dev"],
        &with_claim("peek", json!({}), "busybox:1.36", "data-archive-0").to_string(),
    );
    assert!(
        !peek.status.success(),
        "dev's pod on the archive's claim was created"
    );
    assert_denied(
        &err(&peek),
        &format!("[db-access] user \"dev\" may not create pod {ns}/peek mounting PersistentVolumeClaim data-archive-0, which a database's pods mount:"),
    );
    // The API server's proxy to a Service of the database.
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg"},
        "spec": {"selector": {"app": "postgresql"}, "ports": [{"port": 5432}]}});
    let output = env.apply(ns, &service);
    assert!(output.status.success(), "{}", err(&output));
    let stderr = env.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/services/pg:5432/proxy/"),
        "--as=dev",
    ]);
    assert_denied(
        &stderr,
        &format!("[db-access] user \"dev\" may not proxy through the API server to Service {ns}/pg, which leads to database pods:"),
    );
    let admin_copy = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "-f", "-"],
        &with_claim("pg-0-restore", json!({}), "busybox:1.36", "data-pg-0").to_string(),
    );
    assert!(admin_copy.status.success(), "{}", err(&admin_copy));

    // The audit reports the running pods beside a database's storage (the admin's too: it is
    // there), and not the one on another claim.
    serve_auditing(env, &default_exempting("dev"), &[]);
    let report = wait_report(env, ns, "pg-0-restore reported", |r| {
        !results_for(r, "pg-0-restore").is_empty()
    });
    let found = results_for(&report, "pg-0-restore");
    assert_eq!(found[0]["policy"], "db-access", "{report}");
    assert_eq!(found[0]["result"], "fail", "{report}");
    assert!(
        found[0]["message"].as_str().is_some_and(|m| m
            .contains("mounting PersistentVolumeClaim data-pg-0, which a database's pods mount")),
        "{report}"
    );
    assert!(
        results_for(&report, "scratch")
            .iter()
            .all(|r| r["policy"] != "db-access"),
        "{report}"
    );
    env.serve(&default_exempting("dev"), &[]);

    // An admin may (and the container is stored).
    let added = env.cluster.kubectl_stdin(
        &["replace", "--raw", &path, "-f", "-"],
        &ephemeral("admin-debugger"),
    );
    assert!(added.status.success(), "{}", err(&added));
    let pod = env.get_json(&["pod", "postgres-0", "-n", ns]);
    assert_eq!(
        pod["spec"]["ephemeralContainers"][0]["name"], "admin-debugger",
        "{pod}"
    );
}

/// An RFC 3339 time `seconds` from now.
fn rfc3339_from_now(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    k8s_openapi::jiff::Timestamp::from_second(now + seconds)
        .unwrap()
        .to_string()
}

/// kubectl until `done` holds for its output (stdout and stderr), within `seconds`.
fn wait_kubectl(
    env: &Env,
    args: &[&str],
    seconds: u64,
    what: &str,
    done: impl Fn(&Output) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let output = env.kubectl(args);
        if done(&output) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: kubectl {args:?}: {}{}",
            out(&output),
            err(&output)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The break-glass of the issue, end to end: an admin lets dba1 into one database pod for a
/// short while; dba1 gets in (and the pod gets an Event), nobody else and no other pod does,
/// and after the end dba1 is refused again. A migration's single-replica Deployment is
/// excepted the same way; the background audit shows it as `skip`, then as `fail` with the
/// expired exception reported. A non-admin whom RBAC lets write exceptions is refused.
fn exceptions_break_glass_and_audit(env: &mut Env) {
    env.crds_installed();
    // rbac-hygiene would refuse the grants below (exec; writing exceptions); the admin exempts
    // the users.
    serve_auditing(env, &default_exempting("dba1\", \"dev\", \"bob"), &[]);
    let ns = "e2e-exceptions";
    env.namespace(ns);
    for pod in ["social-registry-postgresql-0", "registry-postgresql-0"] {
        running_pod(
            env,
            ns,
            pod,
            json!({"app.kubernetes.io/name": "postgresql"}),
            "bitnami/postgresql:16",
        );
    }
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "debugger"},
         "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "debuggers"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debugger"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dba1"},
                      {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "bob-writes-exceptions"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "prodguard-exception-writer"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]}
    ]});
    // deploy/'s role for writing exceptions, as shipped.
    let rbac_yaml = std::fs::read_to_string("deploy/base/rbac.yaml").unwrap();
    let writer_role = rbac_yaml
        .split("---")
        .find(|d| d.contains("name: prodguard-exception-writer"))
        .unwrap();
    let writer = env
        .cluster
        .kubectl_stdin(&["apply", "-f", "-"], writer_role);
    assert!(writer.status.success(), "{}", err(&writer));
    let output = env.apply(ns, &rbac);
    assert!(output.status.success(), "{}", err(&output));
    let exec = |user: &str, pod: &str| {
        env.kubectl(&[
            "exec",
            pod,
            "-n",
            ns,
            &format!("--as={user}"),
            "--request-timeout=10s",
            "--",
            "true",
        ])
    };
    let stderr = err(&exec("dba1", "social-registry-postgresql-0"));
    assert_denied(
        &stderr,
        "[db-access] user \"dba1\" may not exec into database pod",
    );

    let seconds = 25;
    let expires = rfc3339_from_now(seconds);
    let started = Instant::now();
    let exception = |name: &str, spec: Value| {
        json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
               "metadata": {"name": name}, "spec": spec})
    };
    let break_glass = exception(
        "dba-break-glass",
        json!({
        "policies": ["db-access"],
        "match": {"kinds": ["Pod"], "names": ["social-registry-postgresql-0"]},
        "subjects": {"users": ["dba1"]},
        "reason": "incident 42: vacuum the registry database",
        "expires": expires}),
    );
    let migration = exception(
        "migration",
        json!({
        "policies": ["min-replicas"],
        "match": {"kinds": ["Deployment"], "names": ["migrate-*"]},
        "reason": "one-off data migration",
        "expires": expires}),
    );

    // A non-admin whom RBAC lets write exceptions is refused by prodguard.
    let stderr = err(&env.cluster.kubectl_stdin(
        &["create", "-n", ns, "--as=bob", "-f", "-"],
        &break_glass.to_string(),
    ));
    assert_denied(&stderr, &format!("[policy-exception] PolicyException {ns}/dba-break-glass: user \"bob\" may not create PolicyExceptions"));
    // An unbounded one never reaches prodguard: the CRD's schema requires an end (prodguard's
    // own refusal of it is tested over TLS, in tests/exceptions.rs).
    let mut unbounded = migration.clone();
    unbounded["spec"].as_object_mut().unwrap().remove("expires");
    let output = env.cluster.kubectl_stdin(
        &["create", "-n", ns, "--validate=false", "-f", "-"],
        &unbounded.to_string(),
    );
    assert!(!output.status.success());
    assert!(
        err(&output).contains("spec.expires: Required value"),
        "{}",
        err(&output)
    );

    for e in [&break_glass, &migration] {
        let output = env.apply(ns, e);
        assert!(output.status.success(), "{}", err(&output));
    }
    let listed = env.ok(&["get", "policyexceptions", "-n", ns]);
    assert!(
        listed.contains("POLICIES") && listed.contains("incident 42"),
        "{listed}"
    );

    // prodguard sees the exception within moments (a watch, not a lookup per request).
    wait_kubectl(
        env,
        &[
            "exec",
            "social-registry-postgresql-0",
            "-n",
            ns,
            "--as=dba1",
            "--request-timeout=10s",
            "--",
            "true",
        ],
        15,
        "dba1's exec should pass prodguard",
        |o| !err(o).contains("prodguard"),
    );
    let stderr = err(&exec("dev", "social-registry-postgresql-0"));
    assert_denied(
        &stderr,
        "[db-access] user \"dev\" may not exec into database pod",
    );
    let stderr = err(&exec("dba1", "registry-postgresql-0"));
    assert_denied(
        &stderr,
        "[db-access] user \"dba1\" may not exec into database pod",
    );
    let event = env
        .wait_events(ns, 1)
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("PolicyException"))
        .expect("a PolicyException Event");
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("social-registry-postgresql-0")
    );
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Pod")
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(note.starts_with("CONNECT by \"dba1\": [db-access] Excepted by PolicyException e2e-exceptions/dba-break-glass (until "), "{note}");

    // The migration runs one replica while excepted; the audit shows it skipped.
    let output = env.apply(ns, &deployment("migrate-users", 1, "nginx:1.25"));
    assert!(output.status.success(), "{}", err(&output));
    let output = env.apply(ns, &deployment("web", 1, "nginx:1.25"));
    assert_denied(
        &err(&output),
        "[min-replicas] Deployment e2e-exceptions/web would run 1 replica",
    );
    let report = wait_report(env, ns, "the migration skipped", |r| {
        results_for(r, "migrate-users")
            .iter()
            .any(|x| x["result"] == "skip")
    });
    let skip = results_for(&report, "migrate-users")
        .into_iter()
        .find(|x| x["result"] == "skip")
        .unwrap()
        .clone();
    assert_eq!(skip["policy"], "min-replicas");
    assert!(
        skip["message"]
            .as_str()
            .unwrap()
            .contains("excepted by PolicyException e2e-exceptions/migration"),
        "{skip}"
    );
    assert_eq!(report["summary"]["skip"], 1, "{report}");
    let metrics = scrape(env.cluster.metrics_port);
    assert_eq!(
        metric(&metrics, "prodguard_exceptions_in_force"),
        2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "prodguard_exceptions_applied_total{policy=\"db-access\"}"
        ) >= 1.0,
        "{metrics}"
    );

    // After the end: dba1 is refused again, the migration is reported as failing, and the
    // expired exception is reported.
    let left = Duration::from_secs(seconds as u64).saturating_sub(started.elapsed());
    std::thread::sleep(left);
    let stderr = err(&exec("dba1", "social-registry-postgresql-0"));
    assert_denied(
        &stderr,
        "[db-access] user \"dba1\" may not exec into database pod",
    );
    let report = wait_report(env, ns, "the migration failing after the end", |r| {
        results_for(r, "migrate-users")
            .iter()
            .any(|x| x["result"] == "fail")
    });
    assert_eq!(report["summary"]["skip"], 0, "{report}");
    let expired = results_for(&report, "migration");
    assert_eq!(expired.len(), 1, "{report}");
    assert_eq!(expired[0]["policy"], "policy-exception");
    assert_eq!(expired[0]["resources"][0]["kind"], "PolicyException");
    assert!(
        expired[0]["message"]
            .as_str()
            .unwrap()
            .contains("expired at"),
        "{report}"
    );
}

/// `--report-api openreports` writes OpenReports' Report (and ClusterReport) instead of the
/// wg-policy PolicyReport; `both` writes both, with the same results.
fn openreports_in_both_modes(env: &mut Env) {
    env.ok(&[
        "apply",
        "-f",
        "deploy/base/crds.yaml",
        "-f",
        "deploy/base/openreports-crds.yaml",
    ]);
    env.ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/reports.openreports.io",
        "crd/clusterreports.openreports.io",
        "crd/policyreports.wgpolicyk8s.io",
    ]);
    let ns = "e2e-openreports";
    env.namespace(ns);
    // The dry-run rollout lets the single replica in; the reports say what enforcement would do.
    serve_auditing(
        env,
        DEFAULT_POLICY,
        &["--mode", "audit", "--report-api", "openreports"],
    );
    let output = env.apply(ns, &deployment("web", 1, "nginx:1.25"));
    assert!(output.status.success(), "{}", err(&output));
    let min_replicas_fails = |r: &Value| {
        results_for(r, "web")
            .iter()
            .any(|x| x["policy"] == "min-replicas" && x["result"] == "fail")
    };
    let report = wait_report_of(
        env,
        "reports.openreports.io",
        ns,
        "web failing",
        min_replicas_fails,
    );
    assert_eq!(report["apiVersion"], "openreports.io/v1alpha1");
    assert_eq!(report["kind"], "Report");
    assert_eq!(report["summary"]["fail"], 1, "{report}");
    let cluster = env.get_json(&["clusterreports.openreports.io", "prodguard"]);
    assert_eq!(cluster["kind"], "ClusterReport");
    let wg = env.kubectl(&["get", "policyreport", "prodguard", "-n", ns]);
    assert!(
        !wg.status.success(),
        "openreports only: no PolicyReport: {}",
        out(&wg)
    );

    serve_auditing(
        env,
        DEFAULT_POLICY,
        &["--mode", "audit", "--report-api", "both"],
    );
    let wg = wait_report(env, ns, "web failing", min_replicas_fails);
    let open = wait_report_of(
        env,
        "reports.openreports.io",
        ns,
        "web failing",
        min_replicas_fails,
    );
    // The two reports may be written by consecutive scans (one a second here): the same
    // results, each stamped with the time of the scan that wrote it.
    let unstamped = |report: &Value| -> Vec<Value> {
        let mut results = report["results"].as_array().cloned().unwrap_or_default();
        for result in &mut results {
            if let Some(fields) = result.as_object_mut() {
                fields.remove("timestamp");
            }
        }
        results
    };
    assert_eq!(
        unstamped(&wg),
        unstamped(&open),
        "the same results in both APIs"
    );
    assert_eq!(wg["summary"], open["summary"]);
}

fn protect_delete(env: &mut Env) {
    // rbac-hygiene would refuse the grants below; the admin exempts dev.
    env.serve(&default_exempting("dev"), &[]);
    let ns = "e2e-delete";
    env.namespace(ns);
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "deleter"},
         "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "delete"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["get", "list", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "dev-deleter"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deleter"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}
    ]});
    let output = env.apply(ns, &rbac);
    assert!(output.status.success(), "{}", err(&output));
    let create_all = |env: &Env| {
        env.ok(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
            "-n",
            ns,
        ]);
        env.ok(&[
            "create",
            "secret",
            "generic",
            "db-creds",
            "--from-literal=password=x",
            "-n",
            ns,
        ]);
        env.ok(&[
            "create",
            "deployment",
            "app",
            "--image=nginx",
            "--replicas=2",
            "-n",
            ns,
        ]);
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}});
        assert!(env.apply(ns, &sts).status.success());
    };
    create_all(env);
    let objects = [
        ("configmap", "settings", "ConfigMap"),
        ("secret", "db-creds", "Secret"),
        ("deployment", "app", "Deployment"),
        ("statefulset", "db", "StatefulSet"),
    ];
    for (resource, name, kind) in objects {
        let stderr = env.fails(&["delete", resource, name, "-n", ns, "--as=dev"]);
        assert_denied(
            &stderr,
            &format!("[protect-delete] user \"dev\" may not delete {kind} {ns}/{name}"),
        );
        assert!(
            env.kubectl(&["get", resource, name, "-n", ns])
                .status
                .success(),
            "{kind} still there"
        );
    }
    for (resource, name, _) in objects {
        env.ok(&["delete", resource, name, "-n", ns]);
    }
    create_all(env);
    for (resource, name, _) in objects {
        env.ok(&[
            "delete",
            resource,
            name,
            "-n",
            ns,
            "--as=system:serviceaccount:kube-system:generic-garbage-collector",
        ]);
    }
}

fn audit_mode_warns_and_stores_unchanged(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &["--mode", "audit"]);
    let ns = "e2e-audit";
    env.namespace(ns);
    let output = env.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    assert!(output.status.success(), "audit allows: {}", err(&output));
    let stderr = err(&output);
    assert!(
        stderr.contains(&format!(
            "Warning: min-replicas: Deployment {ns}/web would run 1 replica"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Warning: image-pull-policy: would patch: set imagePullPolicy: IfNotPresent on containers[0] \"nginx\" (was Always)"), "{stderr}");
    let stored = env.get_json(&["deployment", "web", "-n", ns]);
    assert_eq!(stored["spec"]["replicas"], 1);
    assert_eq!(
        pull_policies(&stored, "/spec/template/spec"),
        vec!["Always"],
        "unchanged in audit mode"
    );
    let events = env.wait_events(ns, 2);
    let actions: Vec<_> = events
        .iter()
        .map(|e| e.action.clone().unwrap_or_default())
        .collect();
    assert!(actions.iter().all(|a| a == "Audited"), "{actions:?}");
    assert_eq!(actions.len(), 2, "one audit event per webhook: {actions:?}");
}

fn events_and_dry_run(env: &mut Env) {
    // Patched writes reported too (--patch-events); the default is checked at the end.
    env.serve(DEFAULT_POLICY, &["--patch-events"]);
    let ns = "e2e-events";
    env.namespace(ns);
    let single = deployment("single", 1, "nginx");

    // Server-side dry run: the same verdict, and no Event.
    let output = env.cluster.kubectl_stdin(
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        &single.to_string(),
    );
    assert!(!output.status.success());
    assert_denied(
        &err(&output),
        &format!("Deployment {ns}/single would run 1 replica"),
    );
    let output = env.cluster.kubectl_stdin(
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        &deployment("pair", 2, "nginx").to_string(),
    );
    assert!(output.status.success(), "{}", err(&output));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        env.events(ns).is_empty(),
        "dry-run requests create no Event: {:?}",
        env.events(ns)
    );

    // The real thing: a denial and a mutation, each an Event regarding the object.
    assert!(!env.apply(ns, &single).status.success());
    assert!(env
        .apply(ns, &deployment("pair", 2, "nginx"))
        .status
        .success());
    let events = env.wait_events(ns, 2);
    let find = |reason: &str| {
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} event in {events:?}"))
            .clone()
    };
    let violation = find("PolicyViolation");
    assert_eq!(violation.action.as_deref(), Some("Denied"));
    assert_eq!(violation.type_.as_deref(), Some("Warning"));
    assert_eq!(violation.reporting_controller.as_deref(), Some("prodguard"));
    let regarding = violation.regarding.clone().expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Deployment"), Some("single"))
    );
    let note = violation.note.clone().unwrap_or_default();
    assert!(note.starts_with("CREATE by \"e2e-admin\": [min-replicas] Denied: Deployment e2e-events/single would run 1 replica"), "{note}");

    let mutation = find("PolicyMutation");
    assert_eq!(
        (mutation.action.as_deref(), mutation.type_.as_deref()),
        (Some("Mutated"), Some("Normal"))
    );
    assert_eq!(
        mutation.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("pair")
    );
    assert!(mutation
        .note
        .clone()
        .unwrap_or_default()
        .contains("[image-pull-policy] Mutated: set imagePullPolicy: IfNotPresent"));

    // A repeat is folded into the first Event's series.
    assert!(!env.apply(ns, &single).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = env.events(ns);
        let violations: Vec<_> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("PolicyViolation"))
            .collect();
        assert_eq!(
            violations.len(),
            1,
            "one Event, with a series: {violations:?}"
        );
        if let Some(series) = &violations[0].series {
            assert_eq!(series.count, 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the repeat was not folded into a series: {violations:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // By default a patched write gets no Event; a denial still does.
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-events-default";
    env.namespace(ns);
    assert!(env
        .apply(ns, &deployment("patched", 2, "nginx"))
        .status
        .success());
    let patched = env.get_json(&["deployment", "patched", "-n", ns]);
    assert_eq!(
        patched["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert!(!env
        .apply(ns, &deployment("single", 1, "nginx"))
        .status
        .success());
    let events = env.wait_events(ns, 1);
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("PolicyViolation")),
        "{events:?}"
    );
    // The denial's Event was written after the patch was made: had the patch one, it would be there.
    std::thread::sleep(Duration::from_secs(1));
    let events = env.events(ns);
    assert!(
        !events
            .iter()
            .any(|e| e.reason.as_deref() == Some("PolicyMutation")),
        "{events:?}"
    );
}

/// Waits until `check` holds for the PolicyReport of `namespace`.
/// Serves `policies` with the background audit every second, the report CRDs applied first.
fn serve_auditing(env: &mut Env, policies: &str, extra: &[&str]) {
    env.crds_installed();
    let mut args = vec![
        "--audit-interval=1s",
        "--lease-namespace=default",
        "--lease-duration=3s",
    ];
    args.extend_from_slice(extra);
    env.serve(policies, &args);
}

fn wait_report(env: &Env, namespace: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_report_of(env, "policyreport", namespace, what, check)
}

/// Waits until `check` holds for prodguard's report of resource `resource` in `namespace`.
fn wait_report_of(
    env: &Env,
    resource: &str,
    namespace: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let output = env.kubectl(&["get", resource, "prodguard", "-n", namespace, "-o", "json"]);
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if output.status.success() && check(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the PolicyReport of {namespace} never showed {what}: {report}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn results_for<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["resources"][0]["name"] == name)
        .collect()
}

/// The audit leaves an object to its controller only when that controller is of a kind that
/// judges it and was listed: an operator's StatefulSet and a Pod whose owner reference names a
/// ReplicaSet that does not exist are judged themselves. (Before, any `controller: true` owner
/// reference hid the object.)
fn audit_judges_what_no_listed_controller_judges(env: &mut Env) {
    let policies = default_with(
        "  node-spread:\n    mode: enforce",
        "  node-spread:\n    mode: \"off\"",
    );
    serve_auditing(env, &policies, &["--mode", "audit"]);
    let ns = "e2e-owners";
    env.namespace(ns);
    let template = json!({"metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent"}]}});
    let owner = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "owner"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}, "template": template}});
    assert!(env.apply(ns, &owner).status.success());
    let uid = env.ok(&[
        "get",
        "deployment",
        "owner",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let owned_by = |kind: &str, name: &str, uid: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let replica_set = |name: &str, owners: Value| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "ownerReferences": owners},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}}, "template": template}})
    };
    // The Deployment's own ReplicaSet, judged at the Deployment.
    let applied = env.apply(
        ns,
        &replica_set("owner-1", owned_by("Deployment", "owner", uid.trim())),
    );
    assert!(applied.status.success(), "{}", err(&applied));
    let rs_uid = env.ok(&[
        "get",
        "replicaset",
        "owner-1",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    // Pods of an untagged image, which the API server defaults to `Always`: image-pull-policy
    // has a finding on each.
    let pod = |name: &str, owner_uid: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "y"}, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner-1", "uid": owner_uid, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    };
    let items = json!({"apiVersion": "v1", "kind": "List", "items": [
        // The ReplicaSet's pod: judged through it.
        pod("owner-1-abcde", rs_uid.trim()),
        // An owner that does not exist.
        pod("forged", "00000000-0000-0000-0000-000000000000"),
        // An operator's custom resource.
        {"apiVersion": "apps/v1", "kind": "StatefulSet",
         "metadata": {"name": "pg", "ownerReferences": [{"apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster", "name": "pg", "uid": "11111111-1111-1111-1111-111111111111", "controller": true}]},
         "spec": {"replicas": 1, "serviceName": "pg", "selector": {"matchLabels": {"app": "x"}}, "template": template}}
    ]});
    let applied = env.apply(ns, &items);
    assert!(applied.status.success(), "{}", err(&applied));
    let report = wait_report(env, ns, "the forged and the operator's objects", |r| {
        !results_for(r, "forged").is_empty() && !results_for(r, "pg").is_empty()
    });
    assert!(
        results_for(&report, "forged")
            .iter()
            .any(|r| r["policy"] == "image-pull-policy"),
        "{report}"
    );
    assert!(
        results_for(&report, "pg")
            .iter()
            .any(|r| r["policy"] == "min-replicas" && r["result"] == "fail"),
        "{report}"
    );
    for name in ["owner-1", "owner-1-abcde"] {
        assert!(
            results_for(&report, name).is_empty(),
            "{name} is judged at the Deployment: {report}"
        );
    }
    assert!(results_for(&report, "owner").is_empty(), "{report}");
}

fn background_audit_reports_and_lease(env: &mut Env) {
    env.crds_installed();
    let audit_args = [
        "--audit-interval=1s",
        "--lease-namespace=default",
        "--lease-duration=3s",
    ];
    // The dry-run rollout: admission only warns, the reports say what enforcement would do.
    let mut args = vec!["--mode", "audit"];
    args.extend(audit_args);
    // node-spread is checked on its own (node_spread); here it would add a finding per
    // replicated Deployment.
    let policies = default_with(
        "  node-spread:\n    mode: enforce",
        "  node-spread:\n    mode: \"off\"",
    );
    env.serve(&policies, &args);
    let ns = "e2e-reports";
    env.namespace(ns);
    env.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    let good = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "good"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "good"}},
                 "template": {"metadata": {"labels": {"app": "good"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent"}]}}}
    });
    assert!(env.apply(ns, &good).status.success());

    let report = wait_report(env, ns, "web's findings and good passing", |r| {
        results_for(r, "web").len() == 2 && r["summary"]["pass"] == 1
    });
    let web = results_for(&report, "web");
    let by_policy = |policy: &str| {
        web.iter()
            .find(|r| r["policy"] == policy)
            .copied()
            .unwrap_or(&Value::Null)
    };
    assert_eq!(by_policy("min-replicas")["result"], "fail", "{report}");
    assert!(by_policy("min-replicas")["message"]
        .as_str()
        .unwrap()
        .contains(&format!("Deployment {ns}/web would run 1 replica")));
    assert_eq!(by_policy("image-pull-policy")["result"], "warn", "{report}");
    assert_eq!(
        by_policy("min-replicas")["resources"][0]["kind"],
        "Deployment"
    );
    assert_eq!(
        report["summary"],
        json!({"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0})
    );
    assert!(results_for(&report, "good").is_empty());
    let listed = env.ok(&["get", "policyreports", "-A"]);
    assert!(listed.contains(ns), "{listed}");
    let cluster_report = env.get_json(&["clusterpolicyreport", "prodguard"]);
    assert_eq!(cluster_report["summary"]["fail"], 0);

    // The same scan once from the command line, in the schema of check.
    let output = env
        .cluster
        .prodguard()
        .args(["audit", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", err(&output));
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    let deny = results
        .iter()
        .find(|r| r["namespace"] == ns && r["name"] == "web" && r["policy"] == "min-replicas")
        .unwrap_or_else(|| panic!("no min-replicas result for web: {doc}"));
    assert_eq!(deny["action"], "deny");
    assert_eq!(deny["kind"], "Deployment");
    assert_eq!(deny["file"], Value::Null);
    assert!(doc["summary"]["resources"].as_u64().unwrap() >= 2);
    let text = out(&env.cluster.prodguard().arg("audit").output().unwrap());
    assert!(
        text.contains(&format!("cluster: Deployment {ns}/web\n")),
        "{text}"
    );

    // One audit Event per new finding, from the audit's own controller.
    let audit_events = |env: &Env| -> Vec<Event> {
        env.events(ns)
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("prodguard-audit"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while audit_events(env).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no audit Events: {:?}",
            env.events(ns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = audit_events(env);
    assert!(
        first.iter().all(|e| e
            .note
            .as_deref()
            .unwrap_or_default()
            .starts_with("AUDIT by \"prodguard-audit\": ")),
        "{first:?}"
    );
    assert!(
        first.iter().any(|e| e
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("[min-replicas] Audited: would deny: Deployment")),
        "{first:?}"
    );

    // Fixing the object removes its results at the next scan, and nothing is reported again.
    env.ok(&["scale", "deployment", "web", "--replicas=2", "-n", ns]);
    env.ok(&["patch", "deployment", "web", "-n", ns, "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"IfNotPresent"}]"#]);
    let report = wait_report(env, ns, "web fixed", |r| results_for(r, "web").is_empty());
    assert_eq!(
        report["summary"],
        json!({"pass": 2, "fail": 0, "warn": 0, "error": 0, "skip": 0})
    );
    std::thread::sleep(Duration::from_secs(2));
    let again = audit_events(env);
    assert_eq!(again.len(), first.len(), "only new findings make Events");
    assert!(again.iter().all(|e| e.series.is_none()), "{again:?}");

    let text = scrape(env.cluster.metrics_port);
    assert_eq!(metric(&text, "prodguard_audit_leader"), 1.0, "{text}");
    assert!(metric(&text, "prodguard_audit_runs_total") >= 2.0, "{text}");
    assert!(
        metric(&text, "prodguard_audit_objects_scanned") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "prodguard_audit_last_success_timestamp_seconds") > 1.0e9,
        "{text}"
    );
    assert!(
        metric(&text, "prodguard_audit_duration_seconds") > 0.0,
        "{text}"
    );

    // A second replica does not audit while the first holds the Lease...
    let (port, metrics_port) = (cluster::free("second"), cluster::free("second metrics"));
    let second = env
        .cluster
        .start_prodguard("second", port, metrics_port, &policies, &audit_args)
        .expect("second prodguard");
    std::thread::sleep(Duration::from_secs(5));
    let text = scrape(metrics_port);
    assert_eq!(metric(&text, "prodguard_audit_leader"), 0.0, "{text}");
    assert_eq!(metric(&text, "prodguard_audit_runs_total"), 0.0, "{text}");
    let lease = env.get_json(&["lease", "prodguard-audit", "-n", "default"]);
    assert_eq!(lease["spec"]["holderIdentity"], "prodguard");
    // ...and takes over once the first stops.
    env.cluster.stop_prodguard();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&scrape(metrics_port), "prodguard_audit_runs_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the second replica never audited: {}",
            scrape(metrics_port)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        env.get_json(&["lease", "prodguard-audit", "-n", "default"])["spec"]["holderIdentity"],
        "second"
    );
    cluster::stop("second", second);
}

fn no_lockout_while_prodguard_is_down(env: &mut Env) {
    // Kubernetes 1.21 and later label every namespace with its name; this 1.20 cluster gets the
    // label the webhook configurations select on by hand.
    for ns in ["kube-system", "prodguard"] {
        if !env.kubectl(&["get", "namespace", ns]).status.success() {
            env.namespace(ns);
        }
        env.ok(&[
            "label",
            "namespace",
            ns,
            &format!("kubernetes.io/metadata.name={ns}"),
            "--overwrite",
        ]);
    }
    env.cluster.stop_prodguard();
    // The cluster's own namespaces still take objects...
    for ns in ["kube-system", "prodguard"] {
        env.ok(&[
            "create",
            "deployment",
            "recovery",
            "--image=registry.k8s.io/pause:3.9",
            "--replicas=1",
            "-n",
            ns,
        ]);
        env.ok(&[
            "create",
            "configmap",
            "recovery",
            "--from-literal=a=b",
            "-n",
            ns,
        ]);
        env.ok(&["delete", "configmap", "recovery", "-n", ns]);
    }
    // ...while elsewhere the validating webhook fails closed and the mutating one fails open.
    let ns = "e2e-lockout";
    env.namespace(ns);
    let stderr = env.fails(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        ns,
    ]);
    assert!(
        stderr.contains("failed calling webhook \"validate.prodguard.io\""),
        "{stderr}"
    );
    env.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=a=b",
        "-n",
        ns,
    ]);
    let stored = env.get_json(&["configmap", "settings", "-n", ns]);
    assert_eq!(stored["data"]["a"], "b");
    env.serve(DEFAULT_POLICY, &[]);
    env.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        ns,
    ]);
}

/// One HTTP/1.1 request over TLS to a port of this machine, trusting `ca`, presenting
/// `client` (`(cert PEM, key PEM)`) and `token` when given: `Ok((status, body))`, or `Err`
/// when the connection is refused (in the handshake or, in TLS 1.3, at the first read).
fn https(
    env: &Env,
    port: u16,
    request: (&str, &str, &str),
    client: Option<(&str, &str)>,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let ca = std::fs::read_to_string(env.cluster.certs_dir.join("ca.crt")).unwrap();
    https_trusting(&ca, env, port, request, client, token)
}

/// [`https`] trusting the CA `ca` (PEM) for the server's certificate.
fn https_trusting(
    ca: &str,
    env: &Env,
    port: u16,
    request: (&str, &str, &str),
    client: Option<(&str, &str)>,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let (method, path, body) = request;
    let ca = ca.to_owned();
    let client = client.map(|(c, k)| (c.to_owned(), k.to_owned()));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default()
    );
    let message = format!("{head}{body}");
    env.runtime.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            None => config.with_no_client_auth(),
            Some((cert, key)) => config
                .with_client_auth_cert(
                    rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(|c| c.unwrap())
                        .collect(),
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let name = rustls::pki_types::ServerName::try_from("prodguard.prodguard.svc").unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(message.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
}

fn client_certificates_required(env: &mut Env) {
    // The API server presents webhook-client.crt (CN kube-apiserver-webhook-client), from its
    // AdmissionConfiguration's kubeconfig; admin.crt is another certificate of the same CA.
    let client_ca = format!("--client-ca={}", env.cluster.ca_file.display());
    env.serve(
        DEFAULT_POLICY,
        &[
            &client_ca,
            "--client-subjects=kube-apiserver-webhook-client",
            "--metrics-auth=kubernetes",
        ],
    );
    let ns = "e2e-mtls";
    env.namespace(ns);
    // The API server's reviews work as before.
    let stderr = env.fails(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=1",
        "-n",
        ns,
    ]);
    assert_denied(&stderr, &format!("Deployment {ns}/web would run 1 replica"));
    env.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        ns,
    ]);
    let port = env.cluster.prodguard_port;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "forged", "operation": "CREATE",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "namespace": ns, "name": "forged",
            "userInfo": {"username": "forger"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "forged", "namespace": ns}, "spec": {"replicas": 1}}}
    })
    .to_string();
    // A caller without a certificate: the probes answer, a review is refused.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            https(env, port, ("GET", path, ""), None, None),
            Ok((200, "ok".to_owned())),
            "{path}"
        );
    }
    let (status, body) = https(env, port, ("POST", "/validate", &review), None, None).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("a client certificate is required"), "{body}");
    // Another certificate of the same CA: refused by name.
    let admin = (
        std::fs::read_to_string(env.cluster.dir.path().join("admin.crt")).unwrap(),
        std::fs::read_to_string(env.cluster.dir.path().join("admin.key")).unwrap(),
    );
    let (status, body) = https(
        env,
        port,
        ("POST", "/mutate", &review),
        Some((&admin.0, &admin.1)),
        None,
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not in --client-subjects"), "{body}");
    // The API server's own certificate, used by another caller, is what passes.
    let apiserver = (
        std::fs::read_to_string(env.cluster.dir.path().join("webhook-client.crt")).unwrap(),
        std::fs::read_to_string(env.cluster.dir.path().join("webhook-client.key")).unwrap(),
    );
    let (status, body) = https(
        env,
        port,
        ("POST", "/validate", &review),
        Some((&apiserver.0, &apiserver.1)),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"allowed\":false"), "{body}");

    // The metrics: TLS, and a token the API server allows to get /metrics.
    let metrics = env.cluster.metrics_port;
    let get = ("GET", "/metrics", "");
    assert!(
        matches!(https(env, metrics, get, None, None), Ok((401, _))),
        "no token"
    );
    assert!(matches!(
        https(env, metrics, get, None, Some("not-a-token")),
        Ok((401, _))
    ));
    assert!(
        matches!(
            https(env, metrics, get, None, Some(cluster::PROMETHEUS_TOKEN)),
            Ok((403, _))
        ),
        "not yet allowed"
    );
    let applied = env.apply(ns, &json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "e2e-metrics-reader"},
             "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "e2e-metrics-reader"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-metrics-reader"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "e2e-prometheus"}]}
        ]
    }));
    assert!(applied.status.success(), "{}", err(&applied));
    // The refusal above is kept for a minute: a new prodguard asks the API server again.
    env.serve(
        DEFAULT_POLICY,
        &[
            &client_ca,
            "--client-subjects=kube-apiserver-webhook-client",
            "--metrics-auth=kubernetes",
        ],
    );
    let (status, text) = https(env, metrics, get, None, Some(cluster::PROMETHEUS_TOKEN)).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("prodguard_exceptions_in_force") && text.contains("# EOF"),
        "{text}"
    );
    assert!(
        matches!(
            https(env, metrics, get, None, Some(cluster::DEV_TOKEN)),
            Ok((403, _))
        ),
        "e2e-dev may not read the metrics"
    );
    let (_, text) = https(env, metrics, get, None, Some(cluster::PROMETHEUS_TOKEN)).unwrap();
    assert_eq!(
        metric(
            &text,
            "prodguard_client_refusals_total{listener=\"metrics\",reason=\"forbidden\"}"
        ),
        1.0,
        "{text}"
    );
}

/// Without --client-ca anyone who reaches the port can post reviews: a flood of forged
/// denials under one user and namespace is limited, and a real denial's Event is published.
fn forged_review_flood_keeps_real_denials(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let (forged_ns, real_ns) = ("e2e-flood", "e2e-flood-real");
    env.namespace(forged_ns);
    env.namespace(real_ns);
    const FORGED: usize = 2000;
    let port = env.cluster.prodguard_port;
    let ca = std::fs::read_to_string(env.cluster.certs_dir.join("ca.crt")).unwrap();
    let answered = env.runtime.block_on(async move {
        use http_body_util::{BodyExt, Full};
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let mut tasks = Vec::new();
        for connection in 0..4 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let name = rustls::pki_types::ServerName::try_from("prodguard.prodguard.svc")
                    .unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                let (mut sender, conn) = hyper::client::conn::http1::handshake(
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                let mut denied = 0;
                for i in 0..FORGED / 4 {
                    let review = json!({
                        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "request": {"uid": format!("forged-{connection}-{i}"), "operation": "CREATE",
                            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                            "namespace": "e2e-flood", "name": format!("forged-{i}"),
                            "userInfo": {"username": "forger"},
                            "object": {"apiVersion": "apps/v1", "kind": "Deployment",
                                "metadata": {"name": format!("forged-{i}"), "namespace": "e2e-flood"},
                                "spec": {"replicas": 1}}}
                    });
                    let request = hyper::Request::post("/validate")
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .body(Full::new(hyper::body::Bytes::from(review.to_string())))
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    let answer: Value = serde_json::from_slice(&body).unwrap();
                    if answer["response"]["allowed"] == false {
                        denied += 1;
                    }
                }
                denied
            }));
        }
        let mut denied = 0;
        for task in tasks {
            denied += task.await.unwrap();
        }
        denied
    });
    // Every forged review was judged (a forged review still gets its answer)...
    assert_eq!(answered, FORGED);
    // ...and the real denial, right after, gets its Event.
    let stderr = env.fails(&[
        "create",
        "deployment",
        "real",
        "--image=nginx",
        "--replicas=1",
        "-n",
        real_ns,
    ]);
    assert_denied(
        &stderr,
        &format!("Deployment {real_ns}/real would run 1 replica"),
    );
    let events = env.wait_events(real_ns, 1);
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("PolicyViolation")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("real")),
        "no Event for the real denial: {events:?}"
    );
    // The forged ones beyond the user's and namespace's burst were not queued.
    let text = scrape(env.cluster.metrics_port);
    let limited = metric(&text, "prodguard_events_rate_limited_total");
    assert!(
        limited >= (FORGED - 100) as f64,
        "only {limited} of {FORGED} forged reports were limited"
    );
    assert_eq!(
        metric(&text, "prodguard_reports_dropped_total"),
        0.0,
        "{text}"
    );
}

// ---- the rest of the guide ------------------------------------------------------------------

const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

fn ingress(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"rules": [{"host": format!("{name}.example.org"), "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}
    })
}

/// The body limit where Traefik serves the route: its CRDs registered from a fixture (no
/// Traefik runs), the Middlewares judged, and Ingresses of a Traefik class and IngressRoutes
/// made to name one within the maximum.
fn ingress_body_size_on_traefik(env: &mut Env) {
    env.ok(&["apply", "-f", "tests/fixtures/traefik/crds.yaml"]);
    env.ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/ingressroutes.traefik.io",
        "crd/middlewares.traefik.io",
    ]);
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-traefik";
    env.namespace(ns);
    let middleware = |name: &str, bytes: i64| {
        json!({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "metadata": {"name": name},
               "spec": {"buffering": {"maxRequestBodyBytes": bytes}}})
    };
    let output = env.apply(ns, &middleware("no-limit", 0));
    assert_denied(&err(&output), &format!("[ingress-body-size] Middleware {ns}/no-limit: buffering.maxRequestBodyBytes is 0, which means no limit"));
    let output = env.apply(ns, &middleware("huge", 1 << 30));
    assert_denied(
        &err(&output),
        "buffering.maxRequestBodyBytes is 1073741824, above the most allowed, 52428800 bytes (50m)",
    );
    let output = env.apply(ns, &middleware("body-limit", 50 << 20));
    assert!(output.status.success(), "{}", err(&output));

    let traefik = |name: &str, annotations: Value| {
        let mut ingress = ingress(name, annotations);
        ingress["spec"]["ingressClassName"] = json!("traefik");
        ingress
    };
    let output = env.apply(ns, &traefik("portal", json!({BODY_SIZE: "10m"})));
    assert_denied(&err(&output), &format!("[ingress-body-size] Ingress {ns}/portal (IngressClass \"traefik\") is served by Traefik, which reads no nginx annotation: it names none; name a Middleware whose buffering.maxRequestBodyBytes is above 0 and at most 52428800 (50m) in traefik.ingress.kubernetes.io/router.middlewares as <namespace>-<name>@kubernetescrd"));
    let output = env.apply(ns, &traefik("portal", json!({"traefik.ingress.kubernetes.io/router.middlewares": format!("{ns}-gone@kubernetescrd")})));
    assert_denied(
        &err(&output),
        &format!("Middleware {ns}/gone was not found"),
    );
    let output = env.apply(ns, &traefik("portal", json!({"traefik.ingress.kubernetes.io/router.middlewares": format!("{ns}-body-limit@kubernetescrd")})));
    assert!(output.status.success(), "{}", err(&output));
    let stored = env.get_json(&["ingress", "portal", "-n", ns]);
    assert!(
        stored["metadata"]["annotations"].get(BODY_SIZE).is_none(),
        "no nginx annotation is added to a Traefik Ingress: {stored}"
    );

    let route = |name: &str, middlewares: Value| {
        json!({"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute", "metadata": {"name": name},
               "spec": {"entryPoints": ["websecure"], "routes": [{"match": "Host(`registry.example.org`)",
                        "kind": "Rule", "middlewares": middlewares,
                        "services": [{"name": "registry", "port": 80}]}]}})
    };
    let output = env.apply(ns, &route("registry", json!([])));
    assert_denied(&err(&output), &format!("IngressRoute {ns}/registry has routes without a request-body limit (Traefik's default is none): routes[0] (Host(`registry.example.org`)) names no middleware"));
    let output = env.apply(ns, &route("registry", json!([{"name": "body-limit"}])));
    assert!(output.status.success(), "{}", err(&output));

    // A class prodguard does not know is let through with a warning, never silently.
    let mut other = ingress("legacy", json!({}));
    other["spec"]["ingressClassName"] = json!("haproxy");
    let output = env.apply(ns, &other);
    assert!(output.status.success(), "{}", err(&output));
    assert!(
        err(&output).contains(&format!("Warning: ingress-body-size: Ingress {ns}/legacy has IngressClass \"haproxy\", which prodguard does not know")),
        "{}",
        err(&output)
    );

    // The background audit lists the Traefik kinds and reads the Middlewares: during a dry-run
    // rollout a Middleware without a limit and a route naming it are let in, and reported.
    serve_auditing(env, DEFAULT_POLICY, &["--mode", "audit"]);
    let output = env.apply(ns, &middleware("no-limit", 0));
    assert!(output.status.success(), "{}", err(&output));
    let output = env.apply(ns, &route("open", json!([{"name": "no-limit"}])));
    assert!(output.status.success(), "{}", err(&output));
    let report = wait_report(env, ns, "the Traefik kinds judged", |r| {
        let result = |name: &str| results_for(r, name).first().map(|x| x["result"].clone());
        result("no-limit") == Some(json!("fail"))
            && result("open") == Some(json!("fail"))
            && result("legacy") == Some(json!("warn"))
    });
    for name in ["body-limit", "registry", "portal"] {
        assert!(results_for(&report, name).is_empty(), "{name}: {report}");
    }
}

fn ingress_body_size(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-ingress";
    env.namespace(ns);
    let output = env.apply(ns, &ingress("portal", json!({"team": "registry"})));
    assert!(output.status.success(), "{}", err(&output));
    let stored = env.get_json(&["ingress", "portal", "-n", ns]);
    assert_eq!(
        stored["metadata"]["annotations"][BODY_SIZE], "50m",
        "{stored}"
    );
    assert_eq!(stored["metadata"]["annotations"]["team"], "registry");

    let output = env.apply(ns, &ingress("uploads", json!({ BODY_SIZE: "500m" })));
    assert!(!output.status.success());
    assert_denied(
        &err(&output),
        &format!("[ingress-body-size] Ingress {ns}/uploads sets {BODY_SIZE}: \"500m\": 500m is above the most allowed, 50m"),
    );
    // Lowering the limit of a stored Ingress is fine; turning it off is not.
    env.ok(&[
        "annotate",
        "ingress",
        "portal",
        "-n",
        ns,
        &format!("{BODY_SIZE}=10m"),
        "--overwrite",
    ]);
    let stderr = env.fails(&[
        "annotate",
        "ingress",
        "portal",
        "-n",
        ns,
        &format!("{BODY_SIZE}=0"),
        "--overwrite",
    ]);
    assert_denied(&stderr, "0 turns nginx's request-body limit off");
    let stored = env.get_json(&["ingress", "portal", "-n", ns]);
    assert_eq!(stored["metadata"]["annotations"][BODY_SIZE], "10m");

    // During a dry-run rollout the oversized Ingress is stored with a warning, and the background
    // audit reports what enforcement would deny.
    serve_auditing(env, DEFAULT_POLICY, &["--mode", "audit"]);
    let output = env.apply(ns, &ingress("uploads", json!({ BODY_SIZE: "500m" })));
    assert!(output.status.success(), "{}", err(&output));
    assert!(
        err(&output).contains(&format!(
            "Warning: ingress-body-size: Ingress {ns}/uploads sets {BODY_SIZE}: \"500m\""
        )),
        "{}",
        err(&output)
    );
    let report = wait_report(env, ns, "uploads reported", |r| {
        !results_for(r, "uploads").is_empty()
    });
    let found = results_for(&report, "uploads");
    assert_eq!(found[0]["policy"], "ingress-body-size", "{report}");
    assert_eq!(found[0]["result"], "fail", "{report}");
    assert_eq!(found[0]["resources"][0]["kind"], "Ingress", "{report}");
    assert!(results_for(&report, "portal").is_empty(), "{report}");
}

fn node_spread(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-spread";
    env.namespace(ns);
    env.ok(&[
        "create",
        "deployment",
        "portal",
        "--image=nginx:1.25",
        "--replicas=3",
        "-n",
        ns,
    ]);
    let stored = env.get_json(&["deployment", "portal", "-n", ns]);
    assert_eq!(
        stored.pointer("/spec/template/spec/topologySpreadConstraints"),
        Some(
            &json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "portal"}}}])
        ),
        "{stored}"
    );
    // Scaling up through an update of the workload spreads it; existing rules are kept as given.
    env.ok(&[
        "create",
        "deployment",
        "single",
        "--image=nginx:1.25",
        "--replicas=0",
        "-n",
        ns,
    ]);
    let stored = env.get_json(&["deployment", "single", "-n", ns]);
    assert!(stored
        .pointer("/spec/template/spec/topologySpreadConstraints")
        .is_none());
    env.ok(&[
        "patch",
        "deployment",
        "single",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ]);
    let stored = env.get_json(&["deployment", "single", "-n", ns]);
    assert_eq!(
        stored.pointer("/spec/template/spec/topologySpreadConstraints/0/whenUnsatisfiable"),
        Some(&json!("ScheduleAnyway")),
        "{stored}"
    );
    let mut zoned = deployment("zoned", 2, "nginx:1.25");
    zoned["spec"]["template"]["spec"]["affinity"] = json!({"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "zoned"}}}}]}});
    let output = env.apply(ns, &zoned);
    assert!(output.status.success(), "{}", err(&output));
    let stored = env.get_json(&["deployment", "zoned", "-n", ns]);
    assert!(
        stored
            .pointer("/spec/template/spec/topologySpreadConstraints")
            .is_none(),
        "anti-affinity by host already spreads: {stored}"
    );
}

fn statefulset(name: &str, replicas: i64, image: &str, env_vars: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "env": env_vars}]}}}
    })
}

fn production_namespaces_opensearch_and_databases(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let (prod, dev) = ("e2e-production", "e2e-development");
    env.namespace(prod);
    env.ok(&[
        "label",
        "namespace",
        prod,
        "prodguard.io/environment=production",
    ]);
    env.namespace(dev);
    let search = statefulset(
        "opensearch",
        3,
        "opensearchproject/opensearch:2.11.1",
        json!([{"name": "discovery.type", "value": "single-node"}]),
    );
    let postgres = statefulset(
        "registry-postgresql",
        2,
        "docker.io/bitnami/postgresql:16.2.0",
        json!([]),
    );
    // Audit by default: stored, with a warning kubectl prints, in production only.
    for (object, warning) in [
        (&search, format!("Warning: opensearch-cluster: StatefulSet {prod}/opensearch does not run OpenSearch as a cluster (containers[0] \"main\" runs opensearchproject/opensearch:2.11.1 with discovery.type=single-node) in production namespace {prod}")),
        (&postgres, format!("Warning: external-databases: StatefulSet {prod}/registry-postgresql runs PostgreSQL (containers[0] \"main\", image docker.io/bitnami/postgresql:16.2.0) inside the cluster in production namespace {prod}")),
    ] {
        let output = env.apply(prod, object);
        assert!(output.status.success(), "{}", err(&output));
        assert!(err(&output).contains(&warning), "{}", err(&output));
        let output = env.apply(dev, object);
        assert!(output.status.success(), "{}", err(&output));
        assert!(!err(&output).contains("Warning"), "{}", err(&output));
    }
    // Enforced, the same OpenSearch is refused in production.
    let enforced = DEFAULT_POLICY.replace(
        "  opensearch-cluster:\n    mode: audit",
        "  opensearch-cluster:\n    mode: enforce",
    );
    assert_ne!(enforced, DEFAULT_POLICY);
    env.serve(&enforced, &[]);
    let mut renamed = search.clone();
    renamed["metadata"]["name"] = json!("search");
    let output = env.apply(prod, &renamed);
    assert!(!output.status.success());
    assert_denied(
        &err(&output),
        &format!(
            "[opensearch-cluster] StatefulSet {prod}/search does not run OpenSearch as a cluster"
        ),
    );
    let output = env.apply(dev, &renamed);
    assert!(output.status.success(), "{}", err(&output));

    // The background audit reads the namespaces' labels: what runs in production is reported.
    serve_auditing(env, DEFAULT_POLICY, &[]);
    let report = wait_report(env, prod, "the in-cluster stores reported", |r| {
        !results_for(r, "registry-postgresql").is_empty()
            && !results_for(r, "opensearch").is_empty()
    });
    assert_eq!(
        results_for(&report, "registry-postgresql")[0]["policy"],
        "external-databases",
        "{report}"
    );
    assert_eq!(
        results_for(&report, "registry-postgresql")[0]["result"],
        "warn",
        "{report}"
    );
    assert_eq!(
        results_for(&report, "opensearch")[0]["policy"],
        "opensearch-cluster",
        "{report}"
    );
    let report = wait_report(env, dev, "the development namespace scanned", |r| {
        r["summary"]["pass"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        results_for(&report, "registry-postgresql").is_empty()
            && results_for(&report, "opensearch").is_empty(),
        "not production: {report}"
    );
}

fn rbac_hygiene(env: &mut Env) {
    env.serve(DEFAULT_POLICY, &[]);
    let ns = "e2e-rbac";
    env.namespace(ns);
    // A harmless role, bound to a developer.
    env.ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
        "-n",
        ns,
    ]);
    env.ok(&[
        "create",
        "rolebinding",
        "bob-pods",
        "--role=pod-reader",
        "--user=bob",
        "-n",
        ns,
    ]);
    // The bound role may not start granting exec.
    let stderr = env.fails(&["patch", "role", "pod-reader", "-n", ns, "--type=json", "-p",
        r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["pods/exec"],"verbs":["create"]}}]"#]);
    assert_rbac_denied(&stderr, &format!("[rbac-hygiene] Role {ns}/pod-reader would allow create on pods/exec to 1 subject bound to it that is neither an admin nor exempt"));
    // Reading Secrets: not for bob, fine for the admins.
    env.ok(&[
        "create",
        "role",
        "secret-reader",
        "--verb=get,list,watch",
        "--resource=secrets",
        "-n",
        ns,
    ]);
    let stderr = env.fails(&[
        "create",
        "rolebinding",
        "bob-secrets",
        "--role=secret-reader",
        "--user=bob",
        "-n",
        ns,
    ]);
    assert_rbac_denied(&stderr, &format!("[rbac-hygiene] RoleBinding {ns}/bob-secrets grants Role {ns}/secret-reader to User bob in namespace {ns}, and Role {ns}/secret-reader holds permissions on secrets that only admins may hold"));
    env.ok(&[
        "create",
        "rolebinding",
        "admins-secrets",
        "--role=secret-reader",
        "--group=system:masters",
        "-n",
        ns,
    ]);
    // Cluster-wide, through wildcards.
    env.ok(&[
        "create",
        "clusterrole",
        "e2e-deleter",
        "--verb=*",
        "--resource=deployments.apps,statefulsets.apps",
    ]);
    let stderr = env.fails(&[
        "create",
        "clusterrolebinding",
        "e2e-ops-delete",
        "--clusterrole=e2e-deleter",
        "--group=ops",
    ]);
    assert_rbac_denied(&stderr, "[rbac-hygiene] ClusterRoleBinding e2e-ops-delete grants ClusterRole e2e-deleter to Group ops cluster-wide, and ClusterRole e2e-deleter holds permissions on deployments.apps, statefulsets.apps that only admins may hold");
    // Impersonation walks around every guard: refused at the binding, and once refused, alice
    // cannot act as an admin (kubectl --as through her own credentials is what she would do).
    env.ok(&[
        "create",
        "clusterrole",
        "e2e-impersonator",
        "--verb=impersonate",
        "--resource=users,groups",
    ]);
    let stderr = env.fails(&[
        "create",
        "clusterrolebinding",
        "e2e-alice-impersonates",
        "--clusterrole=e2e-impersonator",
        "--user=alice",
    ]);
    assert_rbac_denied(&stderr, "[rbac-hygiene] ClusterRoleBinding e2e-alice-impersonates grants ClusterRole e2e-impersonator to User alice cluster-wide, and ClusterRole e2e-impersonator holds permissions on users, groups that only admins may hold, which would let User alice act as any user, group or service account, admins included;");
    let stored = env.kubectl(&["get", "clusterrolebinding", "e2e-alice-impersonates"]);
    assert!(!stored.status.success(), "the binding was stored");
    let denied = env.kubectl(&["auth", "can-i", "impersonate", "users", "--as=alice"]);
    assert_eq!(
        out(&denied).trim(),
        "no",
        "alice may impersonate: {}",
        err(&denied)
    );

    // With prodguard down the RBAC webhook fails open (a lockout guard); the background audit
    // then reports the grant.
    env.cluster.stop_prodguard();
    env.ok(&[
        "create",
        "clusterrolebinding",
        "e2e-ops-delete",
        "--clusterrole=e2e-deleter",
        "--group=ops",
    ]);
    env.ok(&[
        "create",
        "clusterrolebinding",
        "e2e-alice-impersonates",
        "--clusterrole=e2e-impersonator",
        "--user=alice",
    ]);
    env.ok(&[
        "create",
        "rolebinding",
        "bob-secrets",
        "--role=secret-reader",
        "--user=bob",
        "-n",
        ns,
    ]);
    serve_auditing(env, DEFAULT_POLICY, &[]);
    let report = wait_report(env, ns, "bob-secrets reported", |r| {
        !results_for(r, "bob-secrets").is_empty()
    });
    let found = results_for(&report, "bob-secrets");
    assert_eq!(found[0]["policy"], "rbac-hygiene", "{report}");
    assert_eq!(found[0]["result"], "fail", "{report}");
    assert_eq!(found[0]["resources"][0]["kind"], "RoleBinding", "{report}");
    assert!(
        results_for(&report, "bob-pods").is_empty()
            && results_for(&report, "admins-secrets").is_empty(),
        "{report}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cluster_report = env.get_json(&["clusterpolicyreport", "prodguard"]);
        let found = results_for(&cluster_report, "e2e-ops-delete");
        if !found.is_empty() {
            assert_eq!(found[0]["policy"], "rbac-hygiene", "{cluster_report}");
            assert_eq!(found[0]["resources"][0]["kind"], "ClusterRoleBinding");
            let impersonation = results_for(&cluster_report, "e2e-alice-impersonates");
            assert_eq!(impersonation[0]["result"], "fail", "{cluster_report}");
            assert!(
                impersonation[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("would let User alice act as any user")),
                "{cluster_report}"
            );
            // Kubernetes' own bootstrap bindings (system:masters, kube-system service accounts,
            // control-plane users) pass, the escalation classes included.
            assert_eq!(cluster_report["summary"]["fail"], 2, "{cluster_report}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ClusterPolicyReport result: {cluster_report}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    env.ok(&["delete", "clusterrolebinding", "e2e-ops-delete"]);
    env.ok(&["delete", "clusterrolebinding", "e2e-alice-impersonates"]);
}

/// The background audit's Events in `namespace`.
fn audit_events(env: &Env, namespace: &str) -> Vec<Event> {
    env.events(namespace)
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("prodguard-audit"))
        .collect()
}

/// The audit's scans so far.
fn audit_runs(env: &Env) -> f64 {
    metric(
        &scrape(env.cluster.metrics_port),
        "prodguard_audit_runs_total",
    )
}

fn wait_audit_runs(env: &Env, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_runs(env) < at_least {
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} audit scans: {}",
            env.cluster.prodguard_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Five single-replica `nginx` Deployments in one apply: ten findings (min-replicas would
/// deny, image-pull-policy would patch).
fn five_findings_pairs(env: &Env, ns: &str) {
    env.namespace(ns);
    let items: Vec<Value> = (0..5)
        .map(|i| deployment(&format!("single-{i}"), 1, "nginx"))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let output = env.apply(ns, &list);
    assert!(output.status.success(), "{}", err(&output));
}

fn audit_events_late_not_lost(env: &mut Env) {
    let policies = default_with(
        "  node-spread:\n    mode: enforce",
        "  node-spread:\n    mode: \"off\"",
    );
    // Admission only warns, so that the violating objects are stored.
    env.serve(&policies, &["--mode", "audit"]);
    let first_ns = "e2e-late-first";
    five_findings_pairs(env, first_ns);

    // A leader's first scan with more new findings than one scan publishes: one summary
    // Event per namespace, with the counts per policy, and no Event per object.
    serve_auditing(
        env,
        &policies,
        &["--mode", "audit", "--audit-events-per-scan=4"],
    );
    wait_audit_runs(env, 1.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let events = audit_events(env, first_ns);
        if let Some(summary) = events
            .iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("PolicyReport"))
        {
            break summary.clone();
        }
        assert!(Instant::now() < deadline, "no summary Event: {events:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let note = summary.note.clone().unwrap_or_default();
    assert!(
        note.contains(&format!(
            "[min-replicas] Audited: 5 findings would deny in namespace {first_ns}"
        )),
        "{note}"
    );
    assert!(
        note.contains(&format!(
            "[image-pull-policy] Audited: 5 findings would patch in namespace {first_ns}"
        )),
        "{note}"
    );
    assert_eq!(
        summary.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("prodguard")
    );
    let text = scrape(env.cluster.metrics_port);
    assert!(
        metric(&text, "prodguard_audit_summary_events_total") >= 1.0,
        "{text}"
    );

    // Later findings get one Event each: four per scan, the rest pending (counted as such),
    // all of them within three scans, none twice.
    let ns = "e2e-late-next";
    five_findings_pairs(env, ns);
    let runs_before = audit_runs(env);
    let mut pending_seen = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(env.cluster.metrics_port);
        pending_seen = pending_seen.max(metric(&text, "prodguard_audit_events_pending"));
        if audit_events(env, ns).len() >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every finding got its Event: {:?}",
            audit_events(env, ns)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let scans = audit_runs(env) - runs_before;
    assert!(
        pending_seen >= 1.0,
        "ten new findings and four Events a scan leave some pending"
    );
    // Three scans publish them, plus the scan that may have been under way.
    assert!(scans <= 4.0, "{scans} scans to publish ten Events");
    // Two more scans: nothing is published again.
    wait_audit_runs(env, audit_runs(env) + 2.0);
    let events = audit_events(env, ns);
    let mut seen = std::collections::BTreeSet::new();
    for event in &events {
        let name = event
            .regarding
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_default();
        let note = event.note.clone().unwrap_or_default();
        let policy = if note.contains("[min-replicas]") {
            "min-replicas"
        } else if note.contains("[image-pull-policy]") {
            "image-pull-policy"
        } else {
            panic!("an unexpected audit Event: {event:?}")
        };
        assert!(
            seen.insert((name.clone(), policy)),
            "{name} {policy} published twice: {events:?}"
        );
        assert!(event.series.is_none(), "{event:?}");
    }
    assert_eq!(seen.len(), 10, "{events:?}");
    assert_eq!(
        metric(
            &scrape(env.cluster.metrics_port),
            "prodguard_audit_events_pending"
        ),
        0.0
    );
    // The summarised namespace never gets Events per object.
    let first = audit_events(env, first_ns);
    assert_eq!(first.len(), 1, "{first:?}");
}

/// Workloads for the memory test: enough that a scan's pages and results dominate what the
/// process holds, few enough to create in a few seconds.
const MEMORY_TEST_OBJECTS: usize = 3000;
/// RSS after scan 5 may exceed RSS after scan 2 by this fraction, plus 4 MiB. Generous: the
/// allocator keeps some of what a scan freed (more in a debug build, whose objects are
/// larger), and kube's Event recorder caches its Events for six minutes; growth that scales
/// with the cluster (a leak of a page or of results per scan) is several times this.
const MEMORY_GROWTH_MARGIN: f64 = 0.20;
/// The peak RSS of the whole process over the five scans, in KiB. The debug build measures
/// about 25 MiB at 3,000 workloads; keeping every finding with its patch, as the audit did
/// before it streamed, took several times that.
const MEMORY_PEAK_BOUND_KIB: u64 = 48 * 1024;

fn audit_memory_flat_across_scans(env: &mut Env) {
    // Admission in audit mode so that every shape of workload is stored.
    env.serve(DEFAULT_POLICY, &["--mode", "audit"]);
    let started = Instant::now();
    env.runtime
        .block_on(workload::fill(&env.client, 0, MEMORY_TEST_OBJECTS, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "e2e: {MEMORY_TEST_OBJECTS} workloads in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    serve_auditing(env, DEFAULT_POLICY, &["--mode", "audit"]);
    let pid = env.cluster.prodguard_pid().expect("prodguard runs");
    let mut after = Vec::new();
    for scan in 1..=5 {
        wait_audit_runs(env, scan as f64);
        after.push(workload::status_kib(pid, "VmRSS:").expect("prodguard's RSS"));
    }
    let text = scrape(env.cluster.metrics_port);
    assert!(
        metric(&text, "prodguard_audit_objects_scanned") >= MEMORY_TEST_OBJECTS as f64,
        "{text}"
    );
    let (second, fifth) = (after[1] as f64, after[4] as f64);
    let bound = second * (1.0 + MEMORY_GROWTH_MARGIN) + 4096.0;
    eprintln!(
        "e2e: RSS after scans 1-5: {:?} KiB (bound for scan 5: {bound:.0} KiB)",
        after
    );
    assert!(
        fifth <= bound,
        "RSS grew from {second} KiB after scan 2 to {fifth} KiB after scan 5"
    );
    let peak = workload::status_kib(pid, "VmHWM:").expect("prodguard's peak RSS");
    assert!(
        peak <= MEMORY_PEAK_BOUND_KIB,
        "peak RSS {peak} KiB over five scans of {MEMORY_TEST_OBJECTS} workloads"
    );
}
