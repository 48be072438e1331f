"""prodguard where operators look: the ServiceMonitor, the alerts and the Grafana dashboard.

- The monitoring overlay and the chart with `monitoring.enabled` hold the same objects, from the same
  files.
- promtool checks the rules and runs their unit tests (tests/deploy/monitoring/alerts-test.yaml), one or
  more per alert; every alert has a runbook section in docs/operations.md.
- The dashboard is valid JSON and every query parses (promtool parses them as recording rules).
- A running prodguard is scraped after a few reviews: every prodguard series an alert or a dashboard
  query names, and every label it filters or groups by, is one prodguard exports. What the scrape of a
  prodguard without a cluster cannot show is taken from docs/metrics.md, whose table must then agree
  with the scrape on everything the scrape does show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart  # noqa: E402
from test_chart import assert_same, kustomize, prodguard, target_dir  # noqa: E402

ROOT = chart.ROOT
OVERLAY = ROOT / "deploy" / "overlays" / "monitoring"
FILES = chart.CHART / "files"
ALERT_TESTS = Path(__file__).resolve().parent / "monitoring" / "alerts-test.yaml"
# Labels Prometheus adds from the target (the ServiceMonitor's Service and Pod), and kube-state-metrics'.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "endpoint", "container", "deployment"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/deploy-tests.sh installs Debian's prometheus package"
    return path


def rules() -> dict:
    return yaml.safe_load((OVERLAY / "prometheusrule.yaml").read_text())


def alerts() -> list[dict]:
    return [rule for group in rules()["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict:
    return json.loads((OVERLAY / "dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_overlay_is_the_chart_with_monitoring_enabled():
    assert (FILES / "prometheusrule.yaml").read_text() == (OVERLAY / "prometheusrule.yaml").read_text()
    assert (FILES / "dashboard.json").read_text() == (OVERLAY / "dashboard.json").read_text()
    overlay = kustomize("deploy/overlays/monitoring")
    rendered = chart.render({"monitoring": {"enabled": True}})
    for doc in overlay + rendered:
        # The chart writes the dashboard as a block without the file's last line break.
        if doc["kind"] == "ConfigMap" and "prodguard.json" in doc.get("data", {}):
            doc["data"]["prodguard.json"] = doc["data"]["prodguard.json"].rstrip("\n")
    assert assert_same(overlay, rendered) == 23
    kinds = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in rendered}
    assert ("PrometheusRule", "prodguard", "prodguard") in kinds
    assert ("ServiceMonitor", "prodguard", "prodguard") in kinds
    assert ("ConfigMap", "prodguard-dashboard", "cattle-dashboards") in kinds
    board = next(d for d in rendered if d["metadata"]["name"] == "prodguard-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["prodguard.json"]) == dashboard()
    # Off by default; the dashboard's namespace is a value.
    assert not any(d["kind"] == "PrometheusRule" for d in chart.render())
    elsewhere = chart.render({"monitoring": {"enabled": True, "dashboardNamespace": "grafana"}})
    assert any(d["metadata"]["name"] == "prodguard-dashboard" and d["metadata"]["namespace"] == "grafana" for d in elsewhere)


def test_promtool_checks_the_rules_and_every_alert_is_tested_and_has_a_runbook(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules()["spec"], sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    checked = subprocess.run([promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", str(tmp_path / "alerts-test.yaml")], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {rule["alert"] for rule in alerts()}
    assert len(names) == 12, names
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        test["alertname"] for case in cases for test in case["alert_rule_test"] if test["exp_alerts"]
    }
    assert fired == names, f"alerts no test makes fire: {names - fired}"
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts():
        assert f"#### {rule['alert']}" in runbook, f"docs/operations.md has no runbook for {rule['alert']}"
        assert rule["annotations"]["runbook"] == f"docs/operations.md, Runbook, {rule['alert']}"
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_a_broken_alert_fails_its_unit_test(tmp_path):
    """The unit tests can fail: an alert whose threshold moved no longer fires where they expect it."""
    spec = rules()["spec"]
    for rule in spec["groups"][0]["rules"]:
        if rule.get("alert") == "ProdguardCertificateExpiresIn7Days":
            rule["expr"] = rule["expr"].replace("7 * 86400", "4 * 86400")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    tested = subprocess.run([promtool(), "test", "rules", str(tmp_path / "alerts-test.yaml")], capture_output=True, text=True)
    assert tested.returncode != 0
    assert "ProdguardCertificateExpiresIn7Days" in tested.stdout + tested.stderr


def test_the_dashboard_is_valid_and_its_queries_parse(tmp_path):
    board = dashboard()
    assert board["uid"] == "prodguard" and board["panels"]
    queries = dashboard_queries()
    assert len(queries) >= 14
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"prodguard:dashboard:{i}", "expr": q.replace("$__rate_interval", "5m")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(recording))
    checked = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "dashboard-rules.yaml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in ("Latency by webhook (p50, p99)", "Findings at admission by policy and action", "Audit findings by policy"):
        assert wanted in titles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def review(uid: str, kind: str, group: str, resource: str, obj: dict) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "operation": "CREATE",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": "openg2p", "name": obj["metadata"]["name"],
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
        },
    }).encode()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> str:
    """The metrics of a prodguard (no cluster) that answered an allowed, a patched, a denied and an
    invalid review."""
    work = tmp_path_factory.mktemp("serve")
    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PRODGUARD_"))}
    env["KUBECONFIG"] = str(work / "no-kubeconfig")
    server = subprocess.Popen(
        prodguard() + ["serve", f"--addr=127.0.0.1:{port}", f"--metrics-addr=127.0.0.1:{metrics}",
                       "--metrics-auth=none", "--audit-interval=off", f"--ca-out={work / 'ca.crt'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        context = None
        for _ in range(100):
            if (work / "ca.crt").exists():
                try:
                    context = ssl.create_default_context(cafile=str(work / "ca.crt"))
                    urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2)
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        assert context, "prodguard did not start"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "openg2p"},
               "spec": {"containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Always"}]}}
        single = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                           "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod["spec"]}}}
        answers = {}
        for path, body in (
            ("mutate", review("patched", "Pod", "", "pods", pod)),
            ("validate", review("denied", "Deployment", "apps", "deployments", single)),
            ("validate", review("allowed", "Pod", "", "pods", pod)),
            ("validate", b"{not a review"),
        ):
            request = urllib.request.Request(
                f"https://127.0.0.1:{port}/{path}", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    answer = json.loads(response.read())["response"]
                    answers[answer["uid"]] = answer
            except urllib.error.HTTPError as refused:
                answers["invalid"] = refused.code
        assert answers["patched"].get("patchType") == "JSONPatch", answers
        assert answers["denied"]["allowed"] is False, answers
        assert answers["invalid"] == 400, answers
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            return response.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=10)


def exported(text: str) -> dict[str, set[str]]:
    """Metric name (as queries name it: counters with `_total`, histograms by their base) -> labels."""
    families: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.startswith("prodguard_"):
            continue
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? ", line)
        assert match, line
        name = re.sub(r"_(bucket|sum|count|created)$", "", match.group(1))
        labels = set(re.findall(r'([a-z_]+)="', match.group(2) or "")) - {"le"}
        families.setdefault(name, set()).update(labels)
    return families


def documented() -> dict[str, set[str]]:
    """docs/metrics.md's table: every `prodguard_name{labels}` of its first column."""
    table = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        if not line.startswith("| `prodguard_"):
            continue
        first = line.split("|")[1]
        for name, labels in re.findall(r"`(prodguard_[a-z_]+)(?:\{([a-z_,]+)\})?`", first):
            table[name] = set(labels.split(",")) if labels else set()
    return table


# What a prodguard without a cluster, PolicyExceptions, client certificates or a background audit
# never exports: these are checked against docs/metrics.md only.
ONLY_WITH_A_CLUSTER = {
    "prodguard_audit_findings",
    "prodguard_exceptions_applied_total",
    "prodguard_client_refusals_total",
    "prodguard_certificate_renewals_total",
}


def test_every_series_and_label_queried_is_exported(scraped):
    seen = exported(scraped)
    docs = documented()
    # The documentation and the scrape agree on what the scrape shows, and name the same metrics.
    for name, labels in seen.items():
        assert name in docs, f"{name} is exported but not in docs/metrics.md"
        assert labels == docs[name], f"{name}: exported with {labels}, documented with {docs[name]}"
    assert set(docs) - set(seen) == ONLY_WITH_A_CLUSTER, set(docs) - set(seen)
    known = {**docs, **seen}
    expressions = [rule["expr"] for rule in alerts()] + dashboard_queries()
    problems = []
    for expr in expressions:
        used = set(re.findall(r"\b(prodguard_[a-z_]+)", expr))
        for name in used:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in known:
                problems.append(f"{name} is not exported: {expr}")
        allowed = set().union(*(known.get(re.sub(r"_(bucket|sum|count)$", "", n), set()) for n in used)) | TARGET_LABELS
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)", matcher):
                if label not in allowed:
                    problems.append(f"label {label} is not exported: {expr}")
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                if label and label not in allowed | {"le"}:
                    problems.append(f"label {label} is not exported: {expr}")
    assert not problems, "\n".join(problems)
    # The check can fail: a misspelt series is caught.
    assert "prodguard_admision_requests_total" not in known


def test_the_dashboard_is_drawn_from_the_scrape(scraped):
    """docs/images/dashboard.png is this picture: each panel where the dashboard puts it, with the
    scraped samples of the series its queries name (copy it from the target directory to update it)."""
    from PIL import Image, ImageDraw

    samples: dict[str, list[str]] = {}
    for line in scraped.splitlines():
        match = re.match(r"^(prodguard_[a-z_]+?)(?:_bucket|_sum|_count|_created)?(\{.*\})? (\S+)$", line)
        if match and "_bucket" not in line and "_created" not in line:
            samples.setdefault(match.group(1), []).append(f"{match.group(2) or ''} {match.group(3)}".strip())
    board = dashboard()
    cell_w, cell_h = 60, 28
    width = 24 * cell_w
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"]) * cell_h + 40
    image = Image.new("RGB", (width, height), (17, 18, 23))
    draw = ImageDraw.Draw(image)
    draw.text((8, 10), f"prodguard (dashboard {board['uid']}): a prodguard without a cluster after four reviews", fill=(220, 220, 220))
    drawn = 0
    for panel in board["panels"]:
        g = panel["gridPos"]
        x0, y0 = g["x"] * cell_w + 4, g["y"] * cell_h + 36
        x1, y1 = (g["x"] + g["w"]) * cell_w - 4, (g["y"] + g["h"]) * cell_h + 32
        draw.rectangle([x0, y0, x1, y1], outline=(70, 75, 90), fill=(24, 27, 31))
        draw.text((x0 + 8, y0 + 6), panel["title"], fill=(255, 255, 255))
        lines = []
        for target in panel["targets"]:
            for name in dict.fromkeys(re.findall(r"\b(prodguard_[a-z_]+?)(?:_bucket)?\b", target["expr"])):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                values = samples.get(base) or samples.get(base.removesuffix("_total")) or []
                lines += [f"{base.removeprefix('prodguard_')} {v}" for v in values] or [f"{base.removeprefix('prodguard_')}: no sample yet"]
        rows = max(1, (y1 - y0 - 28) // 12)
        for i, text in enumerate(dict.fromkeys(lines)):
            if i >= rows:
                break
            draw.text((x0 + 8, y0 + 24 + 12 * i), text[: (x1 - x0) // 6], fill=(115, 191, 105))
        drawn += 1
    path = target_dir() / "dashboard.png"
    image.save(path)
    assert drawn == len(board["panels"]) and path.stat().st_size > 10_000
