"""The Helm chart, tested with Helm's own code (helm-python-sdk bundles Helm 4.2 as a library).

- It is deploy/base: rendered at default values it holds the same objects as `kubectl kustomize
  deploy/base`, object by object, and each overlay's render equals the chart with the matching
  values. So the two cannot drift.
- It lints clean, its schema refuses bad values naming the key, and Rancher finds what it reads.
- Every render passes `prodguard check`, and the policy file it renders loads in prodguard.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart  # noqa: E402

ROOT = chart.ROOT
CHART = chart.CHART

# Labels and annotations only Helm adds; everything else must be equal.
HELM_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
}
HELM_ANNOTATIONS = {"helm.sh/resource-policy"}
# kustomize's configMapGenerator names the ConfigMap with a hash of its content.
GENERATED = re.compile(r"^(prodguard-policies)-[a-z0-9]{10}$")


def kustomize(path: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def normalise(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    meta = doc.setdefault("metadata", {})
    for key, drop in (("labels", HELM_LABELS), ("annotations", HELM_ANNOTATIONS)):
        kept = {k: v for k, v in (meta.get(key) or {}).items() if k not in drop}
        if kept:
            meta[key] = kept
        else:
            meta.pop(key, None)
    match = GENERATED.match(meta.get("name", ""))
    if doc.get("kind") == "ConfigMap" and match:
        meta["name"] = match.group(1)
    if doc.get("kind") == "ConfigMap" and "policies.yaml" in doc.get("data", {}):
        # The chart writes the global keys from values: compare the file as YAML.
        doc["data"]["policies.yaml"] = yaml.safe_load(doc["data"]["policies.yaml"])
    if doc.get("kind", "").endswith("WebhookConfiguration"):
        # A folded CEL expression: kustomize's YAML round trip keeps one more line break where a
        # line is more indented. Whitespace means nothing to CEL here (no string holds any).
        for webhook in doc.get("webhooks", []):
            for condition in webhook.get("matchConditions", []):
                condition["expression"] = " ".join(condition["expression"].split())
    if doc.get("kind") == "Deployment":
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            config_map = volume.get("configMap")
            if config_map and GENERATED.match(config_map["name"]):
                config_map["name"] = GENERATED.match(config_map["name"]).group(1)
    return doc


def by_key(docs: list[dict]) -> dict[tuple, dict]:
    out = {}
    for doc in map(normalise, docs):
        key = (
            doc["apiVersion"],
            doc["kind"],
            doc["metadata"].get("namespace", ""),
            doc["metadata"]["name"],
        )
        assert key not in out, f"{key} twice"
        out[key] = doc
    return out


def assert_same(kustomized: list[dict], rendered: list[dict]) -> int:
    """The two renders hold the same objects; the chart leaves out only the Namespace (Helm's
    --create-namespace, or Rancher, creates the release's namespace)."""
    base = by_key(kustomized)
    ours = by_key(rendered)
    only_base = sorted(set(base) - set(ours))
    only_chart = sorted(set(ours) - set(base))
    assert only_base == [("v1", "Namespace", "", "prodguard")], only_base
    assert only_chart == [], only_chart
    for key in sorted(ours):
        if ours[key] != base[key]:
            diff = difflib.unified_diff(
                json.dumps(base[key], indent=1, sort_keys=True).splitlines(),
                json.dumps(ours[key], indent=1, sort_keys=True).splitlines(),
                "kustomize", "chart", lineterm="",
            )
            raise AssertionError(f"{key} differs:\n" + "\n".join(diff))
    return len(ours)


def test_the_default_render_is_deploy_base_object_by_object():
    count = assert_same(kustomize("deploy/base"), chart.render())
    assert count == 20, count


def test_audit_mode_is_the_audit_overlay():
    assert_same(kustomize("deploy/overlays/audit"), chart.render({"mode": "audit"}))


def test_cert_manager_is_the_cert_manager_overlay():
    assert_same(
        kustomize("deploy/overlays/cert-manager"),
        chart.render({"certificates": {"mode": "cert-manager"}}),
    )


def test_the_network_policy_is_the_overlay_with_the_addresses_given():
    overlay = kustomize("deploy/overlays/network-policy")
    policy = next(doc for doc in overlay if doc["kind"] == "NetworkPolicy")
    cidrs = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["ingress"][0]["from"]]
    assert cidrs == ["192.0.2.10/32", "192.0.2.11/32", "192.0.2.12/32"]
    assert_same(overlay, chart.render({"networkPolicy": {"apiServerCIDRs": cidrs}}))
    # Without addresses there is none, and the notes say so plainly.
    assert not [d for d in chart.render() if d["kind"] == "NetworkPolicy"]
    assert "NetworkPolicy OFF" in chart.notes()
    assert "NetworkPolicy OFF" not in chart.notes({"networkPolicy": {"apiServerCIDRs": cidrs}})


def test_the_default_policy_settings_are_the_default_set():
    default_set = (ROOT / "policies" / "openg2p-production.yaml").read_text()
    section = default_set[default_set.index("\npolicies:\n") + 1 :]
    ours = (CHART / "files" / "policies.yaml").read_text()
    assert ours.endswith(section), "deploy/helm/prodguard/files/policies.yaml is not the default set's policies: section"


def test_the_chart_follows_prodguard_s_version():
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'(?m)^version = "([^"]+)"', cargo).group(1)
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (meta["version"], meta["appVersion"]) == (version, version)


def test_lint_is_clean_for_current_clusters():
    for values in ({}, {"certificates": {"mode": "cert-manager"}}, {"mode": "audit"}, SECURED):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


AIRGAPPED = {
    "image": {
        "registry": "harbor.example.org/openg2p",
        "digest": "sha256:" + "ab" * 32,
    },
    "imagePullSecrets": [{"name": "harbor"}],
    "admins": {"users": [], "groups": ["system:masters", "openg2p-admins"]},
    "policySettings": "policies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"harbor.example.org/openg2p/\"]\n",
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"node-role.kubernetes.io/worker": "true"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
    "replicas": 3,
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    "reports": {"api": "both"},
    "audit": {"interval": "30m"},
}

SECURED = {
    "clientAuth": {"caConfigMap": "apiserver-client-ca", "subjects": ["kube-apiserver", "apiserver-webhooks"]},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "networkPolicy": {"apiServerCIDRs": ["10.0.0.0/24"]},
}

VALUE_SETS = {
    "default": {},
    "secured": SECURED,
    "metrics-open": {"metrics": {"auth": "none", "serviceMonitor": {"enabled": True}}},
    "airgapped": AIRGAPPED,
    "audit": {"mode": "audit"},
    "cert-manager": {"certificates": {"mode": "cert-manager"}},
    "files": {"certificates": {"mode": "files", "secretName": "my-tls", "caBundle": "TFMwdExTMUNSVWRKVGc9PQ=="}},
    "elsewhere": {},  # installed into another namespace
    "monitoring": {"monitoring": {"enabled": True}},
    "patch-events": {"reports": {"patchEvents": True}},
}


def deployment(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")


def test_the_air_gapped_values_reach_the_pod_and_the_policy_file():
    docs = chart.render(AIRGAPPED)
    pod = deployment(docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "harbor.example.org/openg2p/prodguard:0.1.0@sha256:" + "ab" * 32
    assert pod["imagePullSecrets"] == [{"name": "harbor"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/worker": "true"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert deployment(docs)["spec"]["replicas"] == 3
    assert container["resources"]["limits"] == {"memory": "256Mi"}
    assert "--report-api=both" in container["args"] and "--audit-interval=30m" in container["args"]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["policies.yaml"])
    assert config["admins"]["groups"] == ["system:masters", "openg2p-admins"]
    assert config["policies"] == {
        "airgap-registry": {"airgapped": True, "allowedRegistries": ["harbor.example.org/openg2p/"]}
    }


def test_another_namespace_is_excluded_and_named_everywhere():
    docs = chart.render({}, namespace="policy-system")
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["policies.yaml"])
    assert config["excludedNamespaces"] == ["kube-system", "policy-system"]
    for doc in docs:
        if doc["kind"].endswith("WebhookConfiguration"):
            for webhook in doc["webhooks"]:
                assert webhook["clientConfig"]["service"]["namespace"] == "policy-system"
                values = webhook["namespaceSelector"]["matchExpressions"][0]["values"]
                assert values == ["kube-system", "policy-system"]
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding") and doc["metadata"]["name"] != "prodguard-metrics-reader":
            assert doc["subjects"][0]["namespace"] == "policy-system"
        if doc["kind"] in ("Deployment", "Service", "ConfigMap", "Role", "RoleBinding", "ServiceAccount"):
            assert doc["metadata"]["namespace"] == "policy-system", doc["kind"]


def test_files_mode_mounts_the_secret_and_writes_the_ca_bundle():
    docs = chart.render(VALUE_SETS["files"])
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "my-tls"}} in pod["volumes"]
    args = pod["containers"][0]["args"]
    assert "--manage-certs=false" in args and "--tls-cert=/etc/prodguard/tls/tls.crt" in args
    for doc in docs:
        if doc["kind"].endswith("WebhookConfiguration"):
            assert all(w["clientConfig"]["caBundle"] == "TFMwdExTMUNSVWRKVGc9PQ==" for w in doc["webhooks"])
    assert "inject the CA" in chart.notes({"certificates": {"mode": "files"}})


def test_client_auth_mounts_the_ca_and_names_the_subjects():
    docs = chart.render(SECURED)
    pod = deployment(docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--client-ca=/etc/prodguard/client-ca/ca.crt" in container["args"]
    assert "--client-subjects=kube-apiserver,apiserver-webhooks" in container["args"]
    assert {"name": "client-ca", "configMap": {"name": "apiserver-client-ca"}} in pod["volumes"]
    assert {"name": "client-ca", "mountPath": "/etc/prodguard/client-ca", "readOnly": True} in container["volumeMounts"]
    # The probes still use the webhook port: they need no client certificate.
    assert container["readinessProbe"]["httpGet"]["port"] == "https"
    notes = chart.notes(SECURED)
    assert "apiserver-client-ca" in notes and "client certificates OFF" not in notes
    # Off by default, and NOTES say what that means.
    default = deployment(chart.render({}))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--client-ca") for a in default)
    assert "WARNING: client certificates OFF" in chart.notes({})


def test_metrics_need_a_token_by_default_and_the_service_monitor_sends_one():
    docs = chart.render(SECURED)
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metrics-auth=kubernetes" in args
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "prodguard")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in role["rules"]
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]} in role["rules"]
    reader = next(d for d in docs if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "prodguard-metrics-reader")
    assert reader["subjects"] == [
        {"kind": "ServiceAccount", "name": "rancher-monitoring-prometheus", "namespace": "cattle-monitoring-system"}
    ]
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "metrics"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "prodguard-tls", "key": "ca.crt"}},
        "serverName": "prodguard.prodguard.svc",
    }
    service = next(d for d in docs if d["kind"] == "Service")
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics"} in service["spec"]["ports"]
    # Only the monitoring namespace reaches the metrics port.
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 9090}]
    # metrics.auth none: plain HTTP, no review rights, no reader binding; no ServiceMonitor unless asked.
    docs = chart.render(VALUE_SETS["metrics-open"])
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--metrics-auth") for a in args)
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "prodguard")
    assert not any("tokenreviews" in r.get("resources", []) for r in role["rules"])
    assert not any(d["metadata"]["name"] == "prodguard-metrics-reader" for d in docs)
    assert next(d for d in docs if d["kind"] == "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "http"
    assert not any(d["kind"] == "ServiceMonitor" for d in chart.render({}))


@pytest.mark.parametrize(
    "values, key",
    [
        ({"mode": "off"}, "/mode"),
        ({"mode": False}, "/mode"),
        ({"image": {"registry": "https://harbor.example.org"}}, "/image/registry"),
        ({"image": {"digest": "sha256:1234"}}, "/image/digest"),
        ({"image": {"tag": "0.1.0 beta"}}, "/image/tag"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"replicas": 0}, "/replicas"),
        ({"admins": {"groups": "system:masters"}}, "/admins/groups"),
        ({"certificates": {"mode": "vault"}}, "/certificates/mode"),
        ({"reports": {"api": "kyverno"}}, "/reports/api"),
        ({"audit": {"interval": "often"}}, "/audit/interval"),
        ({"networkPolicy": {"apiServerCIDRs": ["10.0.0.1"]}}, "/networkPolicy/apiServerCIDRs/0"),
        ({"excludedNamespaces": ["Kube_System"]}, "/excludedNamespaces/0"),
        ({"imagePulSecrets": []}, "imagePulSecrets"),
        ({"clientAuth": {"subjects": []}}, "/clientAuth/subjects"),
        ({"clientAuth": {"subjects": ["a,b"]}}, "/clientAuth/subjects/0"),
        ({"metrics": {"auth": "basic"}}, "/metrics/auth"),
        ({"metrics": {"readers": [{"kind": "ServiceAccount", "name": "prometheus"}]}}, "/metrics/readers/0"),
    ],
)
def test_the_schema_refuses_a_bad_value_naming_its_key(values, key):
    loaded = chart.load()
    try:
        with pytest.raises(helm.HelmError) as refused:
            loaded.validate_schema(values)
    finally:
        loaded.close()
    assert key in str(refused.value), str(refused.value)


def test_policy_settings_must_be_the_policies_section():
    with pytest.raises(helm.HelmError) as refused:
        chart.render({"policySettings": "mode: audit\npolicies: {}\n"})
    assert "policySettings: must hold the policies: section alone" in str(refused.value)
    with pytest.raises(helm.HelmError) as refused:
        chart.render({"policySettings": "policies: [unclosed\n"})
    assert "policySettings: not YAML" in str(refused.value)


def target_dir() -> Path:
    """cargo's target directory for this checkout (CARGO_TARGET_DIR included)."""
    target = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )
    return Path(json.loads(target.stdout)["target_directory"])


def prodguard() -> list[str]:
    binary = target_dir() / "debug" / "prodguard"
    assert binary.exists(), f"{binary}: build prodguard first (cargo build)"
    return [str(binary)]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_render_passes_check_and_its_policy_file_loads(name, tmp_path):
    namespace = "policy-system" if name == "elsewhere" else "prodguard"
    docs = chart.render(VALUE_SETS[name], namespace=namespace)
    render = tmp_path / "render.yaml"
    render.write_text(yaml.safe_dump_all(docs))
    # Judged with the policy file the render gives prodguard, which excludes its namespace.
    config = tmp_path / "policies.yaml"
    config.write_text(next(d for d in docs if d["kind"] == "ConfigMap" and "policies.yaml" in d["data"])["data"]["policies.yaml"])
    checked = subprocess.run(
        prodguard() + ["check", "--config", str(config), "-f", str(render)], capture_output=True, text=True
    )
    assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
    # That policy file is one prodguard loads (exit 2 is a configuration error): with it, the
    # shipped examples are judged as with the default set (1: something denied).
    judged = subprocess.run(
        prodguard() + ["check", "--config", str(config), "-f", str(ROOT / "examples" / "openg2p")],
        capture_output=True, text=True,
    )
    assert judged.returncode == 1, f"{name}: {judged.returncode} {judged.stderr}"


def test_rancher_finds_the_app_and_its_questions():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = meta["annotations"]
    assert annotations["catalog.cattle.io/display-name"] == "prodguard"
    assert annotations["catalog.cattle.io/namespace"] == "prodguard"
    assert annotations["catalog.cattle.io/kube-version"] == meta["kubeVersion"]
    questions = yaml.safe_load((CHART / "questions.yaml").read_text())["questions"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def lookup(tree, path):
        for part in path.split("."):
            tree = tree[part]
        return tree

    for question in questions:
        variable = question["variable"]
        default = lookup(values, variable)
        if question["type"] == "enum":
            enum = lookup(schema["properties"], variable.replace(".", ".properties."))["enum"]
            assert question["options"] == enum, variable
            assert default in enum
        if "default" in question:
            assert question["default"] == default, variable
    asked = {q["variable"] for q in questions}
    for needed in ("image.registry", "image.tag", "image.digest", "mode", "certificates.mode", "policySettings"):
        assert needed in asked or any(a.startswith(needed) for a in asked), needed


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_an_upgrade_keeps_the_certificates_and_the_exceptions(name):
    """What an upgrade (or an uninstall) must not take: the Secret prodguard writes its
    certificates into is in no render, so Helm never owns it; the PolicyException CRD, whose
    deletion would delete every exception, is kept by Helm's resource policy; the report CRDs are
    in crds/, which Helm never changes or deletes."""
    docs = chart.render(VALUE_SETS[name])
    assert not [d for d in docs if d["kind"] == "Secret"]
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    keep = crds["policyexceptions.prodguard.io"]["metadata"]["annotations"]["helm.sh/resource-policy"]
    assert keep == "keep"
    loaded = chart.load()
    try:
        in_crds_dir = sorted(c["name"] for c in loaded.crds)
    finally:
        loaded.close()
    assert in_crds_dir == ["crds/openreports.yaml", "crds/wgpolicyk8s-reports.yaml"]
    assert "policyexceptions" not in "".join(in_crds_dir)


def test_patch_events_are_off_unless_asked_for():
    args = lambda values: deployment(chart.render(values))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--patch-events" not in args({})
    assert "--patch-events" in args({"reports": {"patchEvents": True}})


def test_fail_open_with_floor_is_its_overlay_and_leaves_validate_unarmed():
    overlay = kustomize("deploy/overlays/fail-open-with-floor")
    assert_same(overlay, chart.render({"failOpenWithFloor": True}))
    config = next(d for d in overlay if d["kind"] == "ValidatingWebhookConfiguration")
    assert "prodguard.io/fail-closed-when-ready" not in (config["metadata"].get("annotations") or {})
    validate = next(w for w in config["webhooks"] if w["name"] == "validate.prodguard.io")
    assert validate["failurePolicy"] == "Ignore"
    # Without it, prodguard arms validate.prodguard.io once its certificate is trusted.
    default = next(d for d in chart.render() if d["kind"] == "ValidatingWebhookConfiguration")
    assert default["metadata"]["annotations"]["prodguard.io/fail-closed-when-ready"] == "validate.prodguard.io"


def test_cel_floor_off_reaches_the_container_and_its_rbac_is_the_four_kinds():
    def env(docs):
        return deployment(docs)["spec"]["template"]["spec"]["containers"][0].get("env", [])

    assert {"name": "PRODGUARD_CEL_FLOOR", "value": "off"} in env(chart.render({"celFloor": "off"}))
    assert not any(e["name"] == "PRODGUARD_CEL_FLOOR" for e in env(chart.render()))
    role = next(d for d in chart.render() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "prodguard")
    floor = [r for r in role["rules"] if "validatingadmissionpolicies" in r.get("resources", [])]
    assert floor == [{
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings",
                      "mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
        "verbs": ["list", "create", "patch", "delete"],
    }], floor
