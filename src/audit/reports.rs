//! wg-policy `wgpolicyk8s.io/v1alpha2` reports: one `PolicyReport` per namespace and one
//! `ClusterPolicyReport` for cluster-scoped objects, rewritten whole at each scan (so the
//! results of fixed objects disappear), with a cap on results whose overflow is counted.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, ApiResource, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::{json, Value};

use super::{Scan, Scanned};
use crate::engine::offline::ObjectFinding;

pub const GROUP: &str = "wgpolicyk8s.io";
pub const VERSION: &str = "v1alpha2";
/// Every report prodguard writes has this name.
pub const REPORT_NAME: &str = "prodguard";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "prodguard";
/// The annotation that counts results left out of a capped report.
pub const DROPPED_ANNOTATION: &str = "prodguard.io/results-dropped";
/// The default cap on results per report.
pub const DEFAULT_MAX_RESULTS: usize = 1000;

pub fn policy_report_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "PolicyReport"),
        "policyreports",
    )
}

pub fn cluster_policy_report_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "ClusterPolicyReport"),
        "clusterpolicyreports",
    )
}

/// `fail` for what would be denied, `warn` for what would be patched or is audited.
pub fn result_of(action: &str) -> &'static str {
    match action {
        "deny" => "fail",
        _ => "warn",
    }
}

/// Identifies a finding across scans (for "new since the previous scan").
pub fn finding_key(policy: &str, kind: &str, namespace: &str, name: &str, result: &str) -> String {
    format!("{policy}|{kind}|{namespace}|{name}|{result}")
}

fn result_entry(scanned: &Scanned, finding: &ObjectFinding, now_seconds: i64) -> Value {
    let mut resource = json!({
        "apiVersion": scanned.api_version,
        "kind": scanned.kind,
        "name": scanned.name,
    });
    if !scanned.namespace.is_empty() {
        resource["namespace"] = json!(scanned.namespace);
    }
    if let Some(uid) = &scanned.uid {
        resource["uid"] = json!(uid);
    }
    json!({
        "source": "prodguard",
        "policy": finding.policy,
        "result": result_of(finding.action),
        "message": finding.message,
        "category": "OpenG2P production deployment guide",
        "severity": if finding.action == "deny" { "high" } else { "medium" },
        "scored": true,
        "resources": [resource],
        "timestamp": {"seconds": now_seconds, "nanos": 0},
        "properties": {"action": finding.action},
    })
}

/// The reports of a scan: a PolicyReport for every namespace with a scanned object, and the
/// ClusterPolicyReport (always, with its summary, even when nothing cluster-scoped is covered).
pub fn build(scan: &Scan, max_results: usize, now_seconds: i64) -> Vec<Value> {
    let mut by_namespace: BTreeMap<&str, Vec<&(Scanned, ObjectFinding)>> = BTreeMap::new();
    for namespace in scan.scanned.keys() {
        by_namespace.entry(namespace.as_str()).or_default();
    }
    by_namespace.entry("").or_default();
    for item in &scan.findings {
        by_namespace
            .entry(item.0.namespace.as_str())
            .or_default()
            .push(item);
    }
    by_namespace
        .into_iter()
        .map(|(namespace, items)| {
            let scanned = scan.scanned.get(namespace).copied().unwrap_or(0);
            let with_findings: BTreeSet<&Scanned> = items.iter().map(|(s, _)| s).collect();
            let fail = items.iter().filter(|(_, f)| f.action == "deny").count();
            let warn = items.len() - fail;
            let results: Vec<Value> = items
                .iter()
                .take(max_results)
                .map(|(s, f)| result_entry(s, f, now_seconds))
                .collect();
            let dropped = items.len().saturating_sub(max_results);
            let mut metadata = json!({
                "name": REPORT_NAME,
                "labels": {MANAGED_BY_LABEL: MANAGER},
                "annotations": {DROPPED_ANNOTATION: dropped.to_string()},
            });
            let kind = if namespace.is_empty() {
                "ClusterPolicyReport"
            } else {
                metadata["namespace"] = json!(namespace);
                "PolicyReport"
            };
            json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": kind,
                "metadata": metadata,
                "summary": {
                    "pass": scanned.saturating_sub(with_findings.len()),
                    "fail": fail,
                    "warn": warn,
                    "error": 0,
                    "skip": 0,
                },
                "results": results,
            })
        })
        .collect()
}

/// Writes the reports (server-side apply, field manager `prodguard`) and deletes prodguard's
/// PolicyReports in namespaces that no longer hold a scanned object.
pub async fn publish(client: &kube::Client, reports: &[Value]) -> Result<(), String> {
    let params = PatchParams::apply(MANAGER).force();
    let namespaced = policy_report_resource();
    let cluster = cluster_policy_report_resource();
    let mut current = BTreeSet::new();
    for report in reports {
        let namespace = report["metadata"]["namespace"].as_str();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => {
                current.insert(ns.to_owned());
                Api::namespaced_with(client.clone(), ns, &namespaced)
            }
            None => Api::all_with(client.clone(), &cluster),
        };
        api.patch(REPORT_NAME, &params, &Patch::Apply(report))
            .await
            .map_err(|e| {
                format!(
                    "writing the {} of {} failed: {e} (are the wg-policy CRDs of deploy/ installed?)",
                    report["kind"].as_str().unwrap_or("report"),
                    namespace.unwrap_or("the cluster")
                )
            })?;
    }
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &namespaced);
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let existing = all
        .list(&managed)
        .await
        .map_err(|e| format!("listing PolicyReports failed: {e}"))?;
    for stale in existing.items {
        let Some(ns) = stale.metadata.namespace.as_deref() else {
            continue;
        };
        if current.contains(ns) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &namespaced);
        let name = stale.metadata.name.clone().unwrap_or_default();
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            tracing::warn!("cannot delete the stale PolicyReport {ns}/{name}: {e}");
        }
    }
    Ok(())
}

/// The findings recorded in the reports prodguard wrote before (to tell new findings from old
/// ones after a restart or a change of audit leader).
pub async fn previous_findings(client: &kube::Client) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    for resource in [policy_report_resource(), cluster_policy_report_resource()] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let Ok(list) = api.list(&managed).await else {
            continue;
        };
        for report in list.items {
            keys.extend(keys_of(&report.data));
        }
    }
    keys
}

/// The finding keys of a report's results.
pub fn keys_of(report: &Value) -> Vec<String> {
    report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let resource = r["resources"].get(0)?;
            Some(finding_key(
                r["policy"].as_str()?,
                resource["kind"].as_str()?,
                resource["namespace"].as_str().unwrap_or(""),
                resource["name"].as_str()?,
                r["result"].as_str()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(ns: &str, name: &str) -> Scanned {
        Scanned {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: ns.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        }
    }

    fn finding(name: &str, policy: &'static str, action: &'static str) -> ObjectFinding {
        ObjectFinding {
            kind: "Deployment".into(),
            namespace: "openg2p".into(),
            name: name.into(),
            policy,
            action,
            message: format!("{policy} on {name}"),
            patch: None,
            violation: action == "deny",
        }
    }

    fn scan() -> Scan {
        let mut scan = Scan::default();
        scan.scanned.insert("openg2p".into(), 4);
        scan.scanned.insert("quiet".into(), 2);
        scan.findings = vec![
            (
                scanned("openg2p", "a"),
                finding("a", "min-replicas", "deny"),
            ),
            (
                scanned("openg2p", "a"),
                finding("a", "image-pull-policy", "patch"),
            ),
            (
                scanned("openg2p", "b"),
                finding("b", "image-pull-policy", "patch"),
            ),
        ];
        scan
    }

    #[test]
    fn one_report_per_namespace_and_a_cluster_report() {
        let reports = build(&scan(), 100, 1_700_000_000);
        let kinds: Vec<_> = reports
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap(),
                    r["metadata"]["namespace"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ClusterPolicyReport", None),
                ("PolicyReport", Some("openg2p")),
                ("PolicyReport", Some("quiet"))
            ]
        );
        let openg2p = &reports[1];
        assert_eq!(
            openg2p["summary"],
            json!({"pass": 2, "fail": 1, "warn": 2, "error": 0, "skip": 0})
        );
        assert_eq!(openg2p["results"].as_array().unwrap().len(), 3);
        let first = &openg2p["results"][0];
        assert_eq!(first["policy"], "min-replicas");
        assert_eq!(first["result"], "fail");
        assert_eq!(
            first["resources"][0],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "openg2p", "name": "a", "uid": "uid-a"})
        );
        assert_eq!(
            first["timestamp"],
            json!({"seconds": 1_700_000_000, "nanos": 0})
        );
        assert_eq!(openg2p["metadata"]["labels"][MANAGED_BY_LABEL], "prodguard");
        let quiet = &reports[2];
        assert_eq!(quiet["summary"]["pass"], 2);
        assert_eq!(quiet["results"], json!([]));
    }

    #[test]
    fn results_are_capped_and_the_overflow_counted() {
        let reports = build(&scan(), 1, 0);
        let openg2p = &reports[1];
        assert_eq!(openg2p["results"].as_array().unwrap().len(), 1);
        assert_eq!(openg2p["metadata"]["annotations"][DROPPED_ANNOTATION], "2");
        assert_eq!(
            openg2p["summary"]["warn"], 2,
            "the summary counts everything"
        );
    }

    #[test]
    fn keys_read_back_from_a_report() {
        let reports = build(&scan(), 100, 0);
        let keys = keys_of(&reports[1]);
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&finding_key(
            "min-replicas",
            "Deployment",
            "openg2p",
            "a",
            "fail"
        )));
    }
}
