//! The audit: what the objects a cluster holds today would get from the policies if they were
//! created now (denied, patched, warned). `prodguard audit` scans once; `serve` scans in the
//! background on the replica that holds the audit Lease and keeps PolicyReports in step.

pub mod background;
pub mod lease;
pub mod reports;

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, ListParams};
use kube::core::{DynamicObject, GroupVersionKind, TypeMeta};

use crate::cluster::Snapshot;
use crate::engine::offline::{evaluate_object, ObjectFinding};
use crate::engine::Engine;

/// A kind the policies cover, and the versions to list it by, newest first.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
}

/// Every kind a policy looks at when it is created. CronJob is `batch/v1` on current clusters
/// and `batch/v1beta1` before 1.21.
pub const TARGETS: &[Target] = &[
    Target {
        group: "",
        versions: &["v1"],
        kind: "Pod",
        plural: "pods",
    },
    Target {
        group: "",
        versions: &["v1"],
        kind: "PodTemplate",
        plural: "podtemplates",
    },
    Target {
        group: "",
        versions: &["v1"],
        kind: "ReplicationController",
        plural: "replicationcontrollers",
    },
    Target {
        group: "apps",
        versions: &["v1"],
        kind: "Deployment",
        plural: "deployments",
    },
    Target {
        group: "apps",
        versions: &["v1"],
        kind: "StatefulSet",
        plural: "statefulsets",
    },
    Target {
        group: "apps",
        versions: &["v1"],
        kind: "DaemonSet",
        plural: "daemonsets",
    },
    Target {
        group: "apps",
        versions: &["v1"],
        kind: "ReplicaSet",
        plural: "replicasets",
    },
    Target {
        group: "batch",
        versions: &["v1"],
        kind: "Job",
        plural: "jobs",
    },
    Target {
        group: "batch",
        versions: &["v1", "v1beta1"],
        kind: "CronJob",
        plural: "cronjobs",
    },
    Target {
        group: "autoscaling",
        versions: &["v1"],
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
    },
    Target {
        group: "networking.k8s.io",
        versions: &["v1"],
        kind: "Ingress",
        plural: "ingresses",
    },
    Target {
        group: "rbac.authorization.k8s.io",
        versions: &["v1"],
        kind: "RoleBinding",
        plural: "rolebindings",
    },
    Target {
        group: "rbac.authorization.k8s.io",
        versions: &["v1"],
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
    },
];

/// Objects per list call.
pub const PAGE_SIZE: u32 = 500;

/// One scanned object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scanned {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Each finding with the object it is about.
    pub findings: Vec<(Scanned, ObjectFinding)>,
    /// Objects evaluated, by namespace ("" for cluster-scoped ones).
    pub scanned: BTreeMap<String, usize>,
    /// Kinds that could not be listed: the scan is incomplete.
    pub errors: Vec<String>,
    /// Objects that could not be evaluated (malformed): reported, the rest still counts.
    pub object_errors: Vec<String>,
}

impl Scan {
    pub fn objects(&self) -> usize {
        self.scanned.values().sum()
    }
}

/// Whether the object is run by a controller that is audited itself (a ReplicaSet's Pods, a
/// Deployment's ReplicaSets, a CronJob's Jobs): its findings would repeat the controller's.
fn has_controller(object: &DynamicObject) -> bool {
    object
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.controller == Some(true)))
}

/// Lists every covered kind cluster-wide, in pages, and evaluates each object. Objects in
/// excluded namespaces and objects run by a controller are skipped.
pub async fn scan(client: &kube::Client, engine: &Engine) -> Scan {
    let mut scan = Scan::default();
    // What bindings grant and which namespaces are production ones.
    let snapshot = match Snapshot::list(client).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            scan.errors.push(e.to_string());
            Snapshot::default()
        }
    };
    for target in TARGETS {
        let mut listed = false;
        let mut last_error = None;
        for version in target.versions {
            let gvk = GroupVersionKind::gvk(target.group, version, target.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, target.plural);
            match scan_kind(client, engine, &snapshot, &resource, &mut scan).await {
                Ok(()) => {
                    listed = true;
                    break;
                }
                // The version is not served here (batch/v1 CronJob before 1.21): try the next.
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    last_error = Some(format!("{}/{version} is not served", target.plural));
                }
                Err(e) => {
                    last_error = Some(format!("listing {} failed: {e}", target.plural));
                    break;
                }
            }
        }
        if !listed {
            scan.errors.push(
                last_error.unwrap_or_else(|| format!("{} could not be listed", target.plural)),
            );
        }
    }
    scan
}

async fn scan_kind(
    client: &kube::Client,
    engine: &Engine,
    snapshot: &Snapshot,
    resource: &ApiResource,
    scan: &mut Scan,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for mut object in page.items {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            if engine.is_excluded(&namespace) || has_controller(&object) {
                continue;
            }
            // List items carry no apiVersion and kind.
            object.types = Some(TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            let scanned = Scanned {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
                namespace: namespace.clone(),
                name: object.metadata.name.clone().unwrap_or_default(),
                uid: object.metadata.uid.clone(),
            };
            let value = match serde_json::to_value(&object) {
                Ok(value) => value,
                Err(e) => {
                    scan.object_errors.push(format!(
                        "{} {namespace}/{}: {e}",
                        scanned.kind, scanned.name
                    ));
                    continue;
                }
            };
            match evaluate_object(engine, snapshot, value, &namespace) {
                Ok(findings) => {
                    *scan.scanned.entry(namespace).or_default() += 1;
                    scan.findings
                        .extend(findings.into_iter().map(|f| (scanned.clone(), f)));
                }
                Err(e) => scan.object_errors.push(format!(
                    "{} {namespace}/{}: {e}",
                    scanned.kind, scanned.name
                )),
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(()),
        }
    }
}
