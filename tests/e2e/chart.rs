//! The Helm chart on the API server: one render (with Helm's own code, tests/deploy/chart.py)
//! is applied whole and prodguard runs as its Deployment says, with its policy file, as its
//! service account. What the test server (1.20) cannot hold is changed, and only that: the
//! PodDisruptionBudget (`policy/v1` is 1.21's), the webhooks' `matchConditions` (1.27's) and
//! their client config (a `url:` on 127.0.0.1, never the Service's ClusterIP). No kubelet runs,
//! so the Deployment's own pods never start: prodguard is started here with the pod's arguments.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::{assert_rbac_denied, err, Env};

/// The values of the render: the admins reach prodguard's policy file, the image its registry;
/// only the API server's client certificate gets reviews answered, the suite's Prometheus user
/// reads the metrics, and Rancher Monitoring gets the ServiceMonitor, alerts and dashboard.
fn values() -> Value {
    json!({
        "image": {"registry": "harbor.example.org/openg2p"},
        "admins": {"users": [], "groups": ["system:masters", "e2e-chart-admins"]},
        "clientAuth": {"caConfigMap": "apiserver-client-ca", "subjects": ["kube-apiserver-webhook-client"]},
        "metrics": {"readers": [{"kind": "User", "name": "e2e-prometheus"}]},
        "monitoring": {"enabled": true},
    })
}

/// Stand-ins for prometheus-operator's ServiceMonitor and PrometheusRule CRDs, which Rancher
/// Monitoring installs: their full schemas are not at hand here, so these keep any field (the
/// rules themselves are checked by promtool in tests/deploy/test_monitoring.py).
fn monitoring_crds(env: &mut Env) {
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "listKind": format!("{kind}List"),
                          "singular": kind.to_lowercase()},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
        let applied = env
            .cluster
            .kubectl_stdin(&["apply", "-f", "-"], &crd.to_string());
        assert!(applied.status.success(), "{}", err(&applied));
        env.ok(&[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            &format!("crd/{plural}.monitoring.coreos.com"),
        ]);
    }
    env.namespace("cattle-dashboards");
}

/// The chart rendered with `values`, as objects.
fn render(values: &Value) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = Command::new(format!("{root}/scripts/python-env.sh"))
        .output()
        .expect("run scripts/python-env.sh");
    assert!(
        python.status.success(),
        "scripts/python-env.sh: {}",
        err(&python)
    );
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let rendered = Command::new(&python)
        .arg(format!("{root}/tests/deploy/chart.py"))
        .arg("--values")
        .arg(values.to_string())
        .output()
        .expect("run tests/deploy/chart.py");
    assert!(
        rendered.status.success(),
        "rendering the chart: {}",
        err(&rendered)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&rendered.stdout))
        .expect("the render is YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The render as the test server can hold it (see the module's comment).
fn for_the_test_server(docs: Vec<Value>, port: u16) -> Vec<Value> {
    let mut kept = Vec::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind == "PodDisruptionBudget" {
            assert_eq!(doc["apiVersion"], "policy/v1");
            continue;
        }
        if kind.ends_with("WebhookConfiguration") {
            for webhook in doc["webhooks"].as_array_mut().into_iter().flatten() {
                let path = webhook["clientConfig"]["service"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                webhook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}")});
                if let Some(fields) = webhook.as_object_mut() {
                    fields.remove("matchConditions");
                }
            }
        }
        kept.push(doc);
    }
    kept
}

pub fn helm_chart_render_admitted_and_serves(env: &mut Env) {
    env.uninstalled();
    let docs = render(&values());
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")
        .clone();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"], "harbor.example.org/openg2p/prodguard:0.1.0",
        "the registry value names the image"
    );
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["policies.yaml"].is_string())
        .and_then(|d| d["data"]["policies.yaml"].as_str())
        .expect("the policy file")
        .to_string();

    // The CA of the API server's client certificate, where clientAuth.caConfigMap names it.
    let ca = std::fs::read_to_string(&env.cluster.ca_file).expect("the cluster's CA");
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "apiserver-client-ca", "namespace": "prodguard"}, "data": {"ca.crt": ca}});
    let applied = env
        .cluster
        .kubectl_stdin(&["apply", "-f", "-"], &config_map.to_string());
    assert!(applied.status.success(), "{}", err(&applied));

    // Admitted: every object of the render is accepted by the API server.
    monitoring_crds(env);
    let port = env.cluster.prodguard_port;
    let list =
        json!({"apiVersion": "v1", "kind": "List", "items": for_the_test_server(docs, port)});
    let applied = env
        .cluster
        .kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
    assert!(
        applied.status.success(),
        "applying the render: {}",
        err(&applied)
    );
    // Rancher Monitoring's three objects, where it looks for them.
    let rule = env.get_json(&["prometheusrule", "prodguard", "-n", "prodguard"]);
    let alerts = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(alerts, 12, "{rule}");
    let monitor = env.get_json(&["servicemonitor", "prodguard", "-n", "prodguard"]);
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"], "metrics",
        "{monitor}"
    );
    let board = env.get_json(&[
        "configmap",
        "prodguard-dashboard",
        "-n",
        "cattle-dashboards",
    ]);
    assert_eq!(board["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(
        board["data"]["prodguard.json"]
            .as_str()
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "prodguard");

    // prodguard as the pod runs it: the container's arguments (the listeners and the policy
    // file's path are this machine's), the namespace the pod would learn from its fieldRef, the
    // certificate's address the webhooks call, and the render's service account.
    let mut args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .skip(1) // serve
        .filter(|a| {
            ![
                "--addr=",
                "--metrics-addr=",
                "--config=",
                "--shutdown-delay=",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    assert!(args.contains(&"--manage-certs".to_string()), "{args:?}");
    assert!(
        args.contains(&"--metrics-auth=kubernetes".to_string()),
        "{args:?}"
    );
    // The mounted ConfigMap's file is this machine's copy of it.
    for arg in args.iter_mut() {
        if arg == "--client-ca=/etc/prodguard/client-ca/ca.crt" {
            *arg = format!("--client-ca={}", env.cluster.ca_file.display());
        }
    }
    assert!(
        args.contains(&"--client-subjects=kube-apiserver-webhook-client".to_string()),
        "{args:?}"
    );
    args.push("--lease-namespace=prodguard".into());
    args.push("--cert-ip-addresses=127.0.0.1".into());
    let kubeconfig = std::fs::read_to_string(&env.cluster.kubeconfig).expect("kubeconfig");
    let as_service_account = env.cluster.dir.path().join("kubeconfig-chart");
    std::fs::write(
        &as_service_account,
        kubeconfig.replace(
            "  user:\n",
            "  user:\n    as: system:serviceaccount:prodguard:prodguard\n",
        ),
    )
    .expect("write kubeconfig");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = env
        .cluster
        .start_prodguard_as(
            "prodguard-chart",
            port,
            env.cluster.metrics_port,
            &config,
            &args,
            &as_service_account,
        )
        .expect("prodguard with the render's arguments");
    let child = super::certs::Killed(Some(child));

    // It issues its certificates with the render's RBAC, injects the bundle and arms the
    // validating webhook.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.cluster.validating_failure_policies() != ["Fail", "Ignore"] {
        assert!(
            std::time::Instant::now() < deadline,
            "not armed within 30 s:\n{}",
            env.cluster.log_of("prodguard-chart")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // It serves: a one-replica Deployment is denied; the chart's admins are prodguard's.
    let ns = "e2e-chart";
    env.namespace(ns);
    super::certs::one_replica_denied(env, ns, "single");
    // (No controller-manager aggregates the built-in roles here: a Role of its own.)
    env.ok(&[
        "create",
        "role",
        "secret-reader",
        "--verb=get,list",
        "--resource=secrets",
        "-n",
        ns,
    ]);
    env.ok(&[
        "create",
        "rolebinding",
        "chart-admins-secrets",
        "--role=secret-reader",
        "--group=e2e-chart-admins",
        "-n",
        ns,
    ]);
    let stderr = env.fails(&[
        "create",
        "rolebinding",
        "developers-secrets",
        "--role=secret-reader",
        "--group=developers",
        "-n",
        ns,
    ]);
    assert_rbac_denied(&stderr, "[rbac-hygiene]");

    // Only the API server gets a review answered; the probes need no certificate. (The
    // certificate served is the one prodguard issued into its Secret.)
    let secret = env.get_json(&["secret", "prodguard-tls", "-n", "prodguard"]);
    let ca = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        secret["data"]["ca.crt"].as_str().expect("ca.crt"),
    )
    .expect("base64");
    let ca = String::from_utf8(ca).expect("PEM");
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "forged", "operation": "DELETE",
            "kind": {"group": "", "version": "v1", "kind": "Secret"},
            "resource": {"group": "", "version": "v1", "resource": "secrets"},
            "namespace": ns, "name": "x", "userInfo": {"username": "forger"}}})
    .to_string();
    let (status, body) =
        super::https_trusting(&ca, env, port, ("POST", "/validate", &review), None, None)
            .expect("an answer");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        super::https_trusting(&ca, env, port, ("GET", "/readyz", ""), None, None),
        Ok((200, "ok".to_owned()))
    );
    // The metrics: the reader the values name, with the render's RBAC for the reviews.
    let metrics = env.cluster.metrics_port;
    let get = ("GET", "/metrics", "");
    let (status, text) = super::https_trusting(
        &ca,
        env,
        metrics,
        get,
        None,
        Some(super::cluster::PROMETHEUS_TOKEN),
    )
    .expect("an answer");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(
            "prodguard_client_refusals_total{listener=\"admission\",reason=\"no_certificate\"} 1"
        ),
        "{text}"
    );
    assert!(matches!(
        super::https_trusting(
            &ca,
            env,
            metrics,
            get,
            None,
            Some(super::cluster::DEV_TOKEN)
        ),
        Ok((403, _))
    ));
    assert!(
        !env.cluster.log_of("prodguard-chart").contains("forbidden"),
        "the render's RBAC lacks a permission:\n{}",
        env.cluster.log_of("prodguard-chart")
    );
    drop(child);
    // The suite's own setup again: deploy/base's webhooks, certificates from files.
    env.cluster.register_webhooks().expect("webhooks");
}
