//! The background audit's reports, in the wg-policy API (`wgpolicyk8s.io/v1alpha2`
//! `PolicyReport` and `ClusterPolicyReport`), in OpenReports' (`openreports.io/v1alpha1`
//! `Report` and `ClusterReport`, the same schema under a new group), or both
//! (`--report-api`): one report per namespace and one for cluster-scoped objects, rewritten
//! whole at each scan (so the results of fixed objects disappear), with a cap on results whose
//! overflow is counted. Each report is built from its namespace's tally and written before the
//! next is built; in both APIs, from the same tally.

use std::collections::{BTreeMap, HashSet};

use kube::api::{Api, ApiResource, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::{json, Value};

use super::tally::{finding_key, result_of, KeptResult, NamespaceTally};
use crate::engine::Action;

/// Every report prodguard writes has this name.
pub const REPORT_NAME: &str = "prodguard";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "prodguard";
/// The annotation that counts results left out of a capped report.
pub const DROPPED_ANNOTATION: &str = "prodguard.io/results-dropped";
/// The default cap on results per report.
pub const DEFAULT_MAX_RESULTS: usize = 1000;

/// One reports API: its group and version, and its namespaced and cluster-scoped kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportKinds {
    pub group: &'static str,
    pub version: &'static str,
    /// Kind and plural of a namespace's report.
    pub namespaced: (&'static str, &'static str),
    /// Kind and plural of the cluster-scoped report.
    pub cluster: (&'static str, &'static str),
    /// The name of the CRDs in messages.
    pub crds: &'static str,
}

pub const WGPOLICY: ReportKinds = ReportKinds {
    group: "wgpolicyk8s.io",
    version: "v1alpha2",
    namespaced: ("PolicyReport", "policyreports"),
    cluster: ("ClusterPolicyReport", "clusterpolicyreports"),
    crds: "the wg-policy CRDs",
};

pub const OPENREPORTS: ReportKinds = ReportKinds {
    group: "openreports.io",
    version: "v1alpha1",
    namespaced: ("Report", "reports"),
    cluster: ("ClusterReport", "clusterreports"),
    crds: "the OpenReports CRDs",
};

/// Which API the audit writes its reports in (`--report-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportApi {
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport and ClusterPolicyReport.
    #[default]
    Wgpolicyk8s,
    /// `openreports.io/v1alpha1` Report and ClusterReport.
    Openreports,
    /// Both, from the same scan.
    Both,
}

impl ReportApi {
    pub fn kinds(self) -> &'static [ReportKinds] {
        match self {
            ReportApi::Wgpolicyk8s => &[WGPOLICY],
            ReportApi::Openreports => &[OPENREPORTS],
            ReportApi::Both => &[WGPOLICY, OPENREPORTS],
        }
    }
}

impl ReportKinds {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The resource of the report of `namespace` ("" for the cluster-scoped one).
    pub fn resource(&self, namespace: &str) -> ApiResource {
        if namespace.is_empty() {
            self.cluster_resource()
        } else {
            self.namespaced_resource()
        }
    }

    pub fn namespaced_resource(&self) -> ApiResource {
        self.api_resource(self.namespaced)
    }

    pub fn cluster_resource(&self) -> ApiResource {
        self.api_resource(self.cluster)
    }

    fn api_resource(&self, (kind, plural): (&str, &str)) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, kind),
            plural,
        )
    }
}

fn result_entry(result: &KeptResult, namespace: &str, now_seconds: i64) -> Value {
    let mut resource = json!({
        "apiVersion": result.api_version,
        "kind": result.kind,
        "name": result.name,
    });
    if !namespace.is_empty() {
        resource["namespace"] = json!(namespace);
    }
    if let Some(uid) = &result.uid {
        resource["uid"] = json!(uid);
    }
    json!({
        "source": "prodguard",
        "policy": result.policy,
        "result": result_of(result.action),
        "message": result.message,
        "category": "OpenG2P production deployment guide",
        "severity": if result.action == Action::Denied { "high" } else { "medium" },
        "scored": true,
        "resources": [resource],
        "timestamp": {"seconds": now_seconds, "nanos": 0},
        "properties": {"action": result.action},
    })
}

/// The report of one namespace ("" for the cluster-scoped one) in the API `kinds`.
pub fn build(
    kinds: &ReportKinds,
    namespace: &str,
    tally: &NamespaceTally,
    now_seconds: i64,
) -> Value {
    let results: Vec<Value> = tally
        .results
        .iter()
        .map(|r| result_entry(r, namespace, now_seconds))
        .collect();
    let mut metadata = json!({
        "name": REPORT_NAME,
        "labels": {MANAGED_BY_LABEL: MANAGER},
        "annotations": {DROPPED_ANNOTATION: tally.dropped.to_string()},
    });
    let kind = if namespace.is_empty() {
        kinds.cluster.0
    } else {
        metadata["namespace"] = json!(namespace);
        kinds.namespaced.0
    };
    json!({
        "apiVersion": kinds.api_version(),
        "kind": kind,
        "metadata": metadata,
        "summary": {
            "pass": tally.objects.saturating_sub(tally.objects_with_findings),
            "fail": tally.fail,
            "warn": tally.warn,
            "error": 0,
            "skip": tally.skip,
        },
        "results": results,
    })
}

/// Writes the reports of a scan one at a time (server-side apply, field manager
/// `prodguard`), in each API of `api`: a report for every namespace with a scanned object, and
/// the cluster-scoped one (always, with its summary, even when nothing cluster-scoped is
/// covered). Then deletes prodguard's reports in namespaces that no longer hold a scanned
/// object.
pub async fn publish(
    client: &kube::Client,
    api: ReportApi,
    namespaces: &BTreeMap<String, NamespaceTally>,
    now_seconds: i64,
) -> Result<(), String> {
    for kinds in api.kinds() {
        publish_in(client, kinds, namespaces, now_seconds).await?;
    }
    Ok(())
}

async fn publish_in(
    client: &kube::Client,
    kinds: &ReportKinds,
    namespaces: &BTreeMap<String, NamespaceTally>,
    now_seconds: i64,
) -> Result<(), String> {
    let params = PatchParams::apply(MANAGER).force();
    let empty = NamespaceTally::default();
    let cluster_scoped = std::iter::once(("", namespaces.get("").unwrap_or(&empty)));
    let named = namespaces
        .iter()
        .filter(|(ns, _)| !ns.is_empty())
        .map(|(ns, tally)| (ns.as_str(), tally));
    for (namespace, tally) in cluster_scoped.chain(named) {
        let report = build(kinds, namespace, tally, now_seconds);
        let resource = kinds.resource(namespace);
        let api: Api<DynamicObject> = if namespace.is_empty() {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), namespace, &resource)
        };
        api.patch(REPORT_NAME, &params, &Patch::Apply(&report))
            .await
            .map_err(|e| {
                format!(
                    "writing the {} of {} failed: {e} (are {} of deploy/ installed?)",
                    report["kind"].as_str().unwrap_or("report"),
                    if namespace.is_empty() {
                        "the cluster"
                    } else {
                        namespace
                    },
                    kinds.crds
                )
            })?;
    }
    // Only the names: the reports themselves can be large.
    let namespaced = kinds.namespaced_resource();
    let kind = kinds.namespaced.0;
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &namespaced);
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let existing = all
        .list_metadata(&managed)
        .await
        .map_err(|e| format!("listing {kind}s failed: {e}"))?;
    for stale in existing.items {
        let Some(ns) = stale.metadata.namespace.as_deref() else {
            continue;
        };
        if namespaces.contains_key(ns) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &namespaced);
        let name = stale.metadata.name.clone().unwrap_or_default();
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            tracing::warn!("cannot delete the stale {kind} {ns}/{name}: {e}");
        }
    }
    Ok(())
}

/// Reports read per list call when reading the previous findings.
const PREVIOUS_PAGE: u32 = 20;

/// The findings recorded in the reports prodguard wrote before in the API `api` writes first
/// (to tell new findings from old ones after a restart or a change of audit leader), read a
/// few reports at a time.
pub async fn previous_findings(client: &kube::Client, api: ReportApi) -> HashSet<u64> {
    let mut previous = HashSet::new();
    let managed = ListParams::default()
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"))
        .limit(PREVIOUS_PAGE);
    let kinds = api.kinds()[0];
    for resource in [kinds.namespaced_resource(), kinds.cluster_resource()] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = managed.clone();
        loop {
            let Ok(list) = api.list(&params).await else {
                break;
            };
            for report in &list.items {
                previous.extend(keys_of(&report.data));
            }
            match list.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
    }
    previous
}

/// The finding keys of a report's results.
pub fn keys_of(report: &Value) -> Vec<u64> {
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
    use crate::audit::tally::{Tally, TallyLimits};
    use crate::audit::{ScanSink, Scanned};
    use crate::engine::offline::ObjectFinding;

    fn scanned(ns: &str, name: &str) -> Scanned {
        Scanned {
            api_version: "apps/v1".into(),
            kind: "Deployment",
            namespace: ns.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        }
    }

    fn finding(name: &str, policy: &'static str, action: Action) -> ObjectFinding {
        ObjectFinding {
            kind: "Deployment".into(),
            namespace: "openg2p".into(),
            name: name.into(),
            finding: crate::engine::Reported {
                policy,
                action,
                violation: action == Action::Denied,
                message: format!("{policy} on {name}"),
                patch: Vec::new(),
                exception: None,
            },
        }
    }

    fn tally(max_results: usize) -> Tally {
        let mut tally = Tally::new(
            TallyLimits {
                max_results,
                max_results_total: 100,
                events: 10,
            },
            HashSet::new(),
        );
        tally.object(
            &scanned("openg2p", "a"),
            vec![
                finding("a", "min-replicas", Action::Denied),
                finding("a", "image-pull-policy", Action::Mutated),
            ],
        );
        tally.object(
            &scanned("openg2p", "b"),
            vec![finding("b", "image-pull-policy", Action::Mutated)],
        );
        tally.object(&scanned("openg2p", "c"), vec![]);
        tally.object(&scanned("openg2p", "d"), vec![]);
        tally.object(&scanned("quiet", "e"), vec![]);
        tally.object(&scanned("quiet", "f"), vec![]);
        tally
    }

    #[test]
    fn a_report_per_namespace_from_its_tally() {
        let tally = tally(100);
        let openg2p = build(
            &WGPOLICY,
            "openg2p",
            &tally.namespaces["openg2p"],
            1_700_000_000,
        );
        assert_eq!(openg2p["kind"], "PolicyReport");
        assert_eq!(openg2p["metadata"]["namespace"], "openg2p");
        assert_eq!(
            openg2p["summary"],
            json!({"pass": 2, "fail": 1, "warn": 2, "error": 0, "skip": 0})
        );
        assert_eq!(openg2p["results"].as_array().unwrap().len(), 3);
        let first = &openg2p["results"][0];
        assert_eq!(first["policy"], "min-replicas");
        assert_eq!(first["result"], "fail");
        assert_eq!(first["message"], "min-replicas on a");
        assert_eq!(
            first["resources"][0],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "openg2p", "name": "a", "uid": "uid-a"})
        );
        assert_eq!(
            first["timestamp"],
            json!({"seconds": 1_700_000_000, "nanos": 0})
        );
        assert_eq!(openg2p["metadata"]["labels"][MANAGED_BY_LABEL], "prodguard");
        assert_eq!(openg2p["metadata"]["annotations"][DROPPED_ANNOTATION], "0");
        let quiet = build(&WGPOLICY, "quiet", &tally.namespaces["quiet"], 0);
        assert_eq!(quiet["summary"]["pass"], 2);
        assert_eq!(quiet["results"], json!([]));
        let cluster = build(&WGPOLICY, "", &NamespaceTally::default(), 0);
        assert_eq!(cluster["kind"], "ClusterPolicyReport");
        assert_eq!(cluster["metadata"].get("namespace"), None);
        assert_eq!(
            cluster["summary"],
            json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0})
        );
    }

    #[test]
    fn openreports_holds_the_same_report_under_its_own_kinds() {
        let tally = tally(100);
        for namespace in ["openg2p", ""] {
            let counts = tally.namespaces.get(namespace).cloned().unwrap_or_default();
            let wg = build(&WGPOLICY, namespace, &counts, 7);
            let open = build(&OPENREPORTS, namespace, &counts, 7);
            assert_eq!(open["apiVersion"], "openreports.io/v1alpha1");
            assert_eq!(
                open["kind"],
                if namespace.is_empty() {
                    "ClusterReport"
                } else {
                    "Report"
                }
            );
            for field in ["metadata", "summary", "results"] {
                assert_eq!(open[field], wg[field], "{field}");
            }
        }
        assert_eq!(ReportApi::Both.kinds(), &[WGPOLICY, OPENREPORTS]);
        assert_eq!(ReportApi::default(), ReportApi::Wgpolicyk8s);
        assert_eq!(OPENREPORTS.cluster_resource().plural, "clusterreports");
        assert_eq!(OPENREPORTS.namespaced_resource().plural, "reports");
    }

    #[test]
    fn results_are_capped_and_the_overflow_counted() {
        let tally = tally(1);
        let openg2p = build(&WGPOLICY, "openg2p", &tally.namespaces["openg2p"], 0);
        assert_eq!(openg2p["results"].as_array().unwrap().len(), 1);
        assert_eq!(openg2p["metadata"]["annotations"][DROPPED_ANNOTATION], "2");
        assert_eq!(
            openg2p["summary"]["warn"], 2,
            "the summary counts everything"
        );
    }

    #[test]
    fn keys_read_back_from_a_report() {
        let tally = tally(100);
        let report = build(&WGPOLICY, "openg2p", &tally.namespaces["openg2p"], 0);
        let keys = keys_of(&report);
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&finding_key(
            "min-replicas",
            "Deployment",
            "openg2p",
            "a",
            "fail"
        )));
        let all: HashSet<u64> = keys.into_iter().collect();
        assert_eq!(all, tally.current, "the keys of the report are the scan's");
    }
}
