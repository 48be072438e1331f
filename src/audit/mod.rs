//! The audit: what the objects a cluster holds today would get from the policies if they were
//! created now (denied, patched, warned). `prodguard audit` scans once; `serve` scans in the
//! background on the replica that holds the audit Lease and keeps PolicyReports in step.
//!
//! A scan streams: it lists one page, evaluates its objects one at a time, hands each
//! object's findings to a [`ScanSink`] and lets the page go before it lists the next. What
//! survives a page is what the sink keeps: everything for `prodguard audit`, which prints
//! it all; counts, a bounded set of results and finding hashes for the background audit
//! ([`tally`]).

pub mod background;
pub mod budget;
pub mod lease;
pub mod reports;
pub mod tally;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{Api, ApiResource, ListParams};
use kube::core::{DynamicObject, GroupVersionKind, Status};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::cluster::Snapshot;
use crate::engine::offline::{evaluate_listed, view_text, ObjectFinding};
use crate::engine::Engine;

/// How large a page may be: at most `objects` objects, and fewer when the objects listed so
/// far say that `objects` of them would come to more than `bytes` of JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    pub objects: u32,
    pub bytes: usize,
}

/// The fewest objects a page asks for, however large the objects are.
pub const MIN_PAGE_OBJECTS: u32 = 10;

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget {
            objects: 500,
            bytes: 4 * 1024 * 1024,
        }
    }
}

impl PageBudget {
    /// The `limit` of the next list call, from the mean size of the objects listed so far.
    pub fn next_limit(&self, listed_objects: usize, listed_bytes: usize) -> u32 {
        if listed_objects == 0 {
            return self.objects.clamp(MIN_PAGE_OBJECTS, 100);
        }
        let mean = (listed_bytes / listed_objects).max(1);
        let fits = (self.bytes / mean).min(u32::MAX as usize) as u32;
        fits.clamp(MIN_PAGE_OBJECTS, self.objects.max(MIN_PAGE_OBJECTS))
    }
}

/// One scanned object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scanned {
    pub api_version: String,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// Receives what a scan finds, object by object. A scan keeps nothing itself.
pub trait ScanSink {
    /// An object was evaluated; `findings` is empty when it passes.
    fn object(&mut self, object: &Scanned, findings: Vec<ObjectFinding>);
    /// An object could not be evaluated (malformed): reported, the rest still counts.
    fn object_error(&mut self, message: String);
}

/// What a scan says of itself.
#[derive(Debug, Default)]
pub struct ScanStats {
    /// Kinds that could not be listed: the scan is incomplete.
    pub errors: Vec<String>,
    /// List calls made, and the JSON bytes and objects they returned.
    pub pages: usize,
    pub listed_bytes: usize,
    pub listed_objects: usize,
    /// The largest page, in bytes.
    pub largest_page_bytes: usize,
}

/// Everything a scan found, kept whole (for `prodguard audit`, which prints it all).
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

impl ScanSink for Scan {
    fn object(&mut self, object: &Scanned, findings: Vec<ObjectFinding>) {
        *self.scanned.entry(object.namespace.clone()).or_default() += 1;
        self.findings
            .extend(findings.into_iter().map(|f| (object.clone(), f)));
    }

    fn object_error(&mut self, message: String) {
        self.object_errors.push(message);
    }
}

/// Scans the cluster once and keeps everything it finds.
pub async fn scan(client: &kube::Client, engine: &Engine) -> Scan {
    let mut scan = Scan::default();
    let stats = scan_into(client, engine, PageBudget::default(), &mut scan).await;
    scan.errors = stats.errors;
    scan
}

/// Lists every covered kind cluster-wide, page by page, and hands each object's findings to
/// `sink`. Objects in excluded namespaces, and objects judged through their controller
/// ([`JUDGED_THROUGH`]), are skipped.
pub async fn scan_into(
    client: &kube::Client,
    engine: &Engine,
    budget: PageBudget,
    sink: &mut dyn ScanSink,
) -> ScanStats {
    let mut stats = ScanStats::default();
    // What bindings grant and which namespaces are production ones.
    let snapshot = match Snapshot::list(client).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            stats.errors.push(e.to_string());
            Snapshot::default()
        }
    };
    // Every kind a policy judges when it is created, each by the versions it may be served
    // at, newest first (CronJob is `batch/v1beta1` before 1.21); controllers first.
    let mut targets = engine.audited_resources().to_vec();
    targets.sort_by_key(|t| listing_rank(t.kind()));
    let mut owners = Owners::default();
    for target in &targets {
        let mut listed = false;
        let mut last_error = None;
        let mut served = false;
        for version in target.versions {
            let gvk = GroupVersionKind::gvk(target.group, version, target.kind());
            let resource = ApiResource::from_gvk_with_plural(&gvk, target.plural);
            let kind = Kind {
                api_version: &resource.api_version,
                kind: target.kind(),
            };
            match scan_kind(
                client,
                engine,
                &snapshot,
                &resource,
                kind,
                budget,
                &mut owners,
                sink,
                &mut stats,
            )
            .await
            {
                Ok(()) => {
                    listed = true;
                    break;
                }
                // The version is not served here (batch/v1 CronJob before 1.21): try the next.
                Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 404 => {
                    last_error = Some(format!("{}/{version} is not served", target.plural));
                }
                Err(e) => {
                    served = true;
                    last_error = Some(format!("listing {} failed: {e}", target.plural));
                    break;
                }
            }
        }
        // A custom resource whose CRD is not installed: none exist.
        let not_installed = !served && crate::policies::resources::OPTIONAL.contains(target);
        if !listed && !not_installed {
            stats.errors.push(
                last_error.unwrap_or_else(|| format!("{} could not be listed", target.plural)),
            );
        }
    }
    stats
}

#[derive(Clone, Copy)]
struct Kind<'a> {
    api_version: &'a str,
    kind: &'static str,
}

/// A list page with its items left as JSON text, borrowed from the response body: an item
/// is decoded only when its turn comes, and dropped before the next one is.
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
    #[serde(default)]
    metadata: ListMeta,
}

/// One list call; the body as bytes (an API error as [`kube::Error::Api`], as kube's own
/// `list` gives it).
async fn list_page(
    client: &kube::Client,
    url: &str,
    params: &ListParams,
) -> Result<axum::body::Bytes, kube::Error> {
    let request = kube::core::Request::new(url)
        .list(params)
        .map_err(kube::Error::BuildRequest)?;
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    let body = crate::body::collect(response.into_body()).await?;
    if status.is_client_error() || status.is_server_error() {
        let parsed = serde_json::from_slice::<Status>(&body).unwrap_or_else(|_| {
            Status::failure(
                String::from_utf8_lossy(&body).trim(),
                "the API server's answer is not a Status",
            )
            .with_code(status.as_u16())
        });
        return Err(kube::Error::Api(parsed.boxed()));
    }
    Ok(body)
}

#[allow(clippy::too_many_arguments)]
async fn scan_kind(
    client: &kube::Client,
    engine: &Engine,
    snapshot: &Snapshot,
    resource: &ApiResource,
    kind: Kind<'_>,
    budget: PageBudget,
    owners: &mut Owners,
    sink: &mut dyn ScanSink,
    stats: &mut ScanStats,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let url = api.resource_url().to_owned();
    let (mut objects, mut bytes) = (0usize, 0usize);
    let mut params = ListParams::default().limit(budget.next_limit(0, 0));
    loop {
        let body = list_page(client, &url, &params).await?;
        stats.pages += 1;
        stats.listed_bytes += body.len();
        stats.largest_page_bytes = stats.largest_page_bytes.max(body.len());
        let page: RawPage = serde_json::from_slice(&body).map_err(kube::Error::SerdeError)?;
        objects += page.items.len();
        bytes += body.len();
        stats.listed_objects += page.items.len();
        for item in page.items {
            scan_object(engine, snapshot, kind, item, owners, sink);
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => {
                params = params
                    .continue_token(&token)
                    .limit(budget.next_limit(objects, bytes));
            }
            _ => return Ok(()),
        }
    }
}

/// The kinds the audit judges through their controller, and the controllers' kinds: a
/// Deployment's ReplicaSets, a CronJob's Jobs, and the Pods of those and of StatefulSets,
/// DaemonSets and ReplicationControllers. Their templates are judged at the controller, so
/// their findings would repeat it. Anything else (a StatefulSet an operator's custom resource
/// runs, a Pod a CloudNativePG Cluster makes) is judged itself.
const JUDGED_THROUGH: &[(&str, &[&str])] = &[
    ("ReplicaSet", &["Deployment"]),
    ("Job", &["CronJob"]),
    (
        "Pod",
        &[
            "ReplicaSet",
            "Job",
            "StatefulSet",
            "DaemonSet",
            "ReplicationController",
        ],
    ),
];

/// The order kinds are listed in: the controllers of [`JUDGED_THROUGH`] before what they run,
/// so that an owner is known before its objects come.
fn listing_rank(kind: &str) -> u8 {
    match kind {
        "Deployment" | "CronJob" => 0,
        "Pod" => 2,
        _ => 1,
    }
}

/// The UIDs of the controllers of [`JUDGED_THROUGH`] listed so far in a scan, hashed (8 bytes
/// each, with a key of this process: a UID cannot be chosen to collide).
#[derive(Default)]
pub struct Owners {
    seen: std::collections::HashSet<u64>,
    hasher: std::hash::RandomState,
}

impl Owners {
    fn hash(&self, uid: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, uid)
    }

    /// Notes a listed object that may control others.
    fn note(&mut self, object: &crate::view::Object<'_>) {
        let controls = JUDGED_THROUGH
            .iter()
            .any(|(_, owners)| owners.contains(&object.kind.as_ref()));
        if let Some(uid) = object.metadata.uid.as_deref().filter(|_| controls) {
            self.seen.insert(self.hash(uid));
        }
    }

    /// Whether `object` is judged through its controller: its controller is of a kind that
    /// judges it, and was listed (exists). A forged owner reference (another kind, a UID
    /// nothing has) hides nothing.
    fn judge_through_controller(&self, object: &crate::view::Object<'_>) -> bool {
        let Some((_, kinds)) = JUDGED_THROUGH.iter().find(|(k, _)| *k == object.kind) else {
            return false;
        };
        object.controller().is_some_and(|owner| {
            kinds.contains(&owner.kind.as_ref())
                && !owner.uid.is_empty()
                && self.seen.contains(&self.hash(&owner.uid))
        })
    }
}

/// Decodes and evaluates one listed object, and hands its findings to the sink. The item is
/// decoded straight into the view (by its list's kind); its text is parsed whole only when a
/// mutating policy patches it.
fn scan_object(
    engine: &Engine,
    snapshot: &Snapshot,
    kind: Kind<'_>,
    item: &RawValue,
    owners: &mut Owners,
    sink: &mut dyn ScanSink,
) {
    let text = item.get();
    let viewed = match view_text(kind.kind, text) {
        Ok(viewed) => viewed,
        Err(e) => {
            sink.object_error(format!("a {} in a list {e}", kind.kind));
            return;
        }
    };
    let mut viewed = viewed;
    let object = &mut viewed.object;
    // List items carry no apiVersion and kind.
    object.api_version = Cow::Borrowed(kind.api_version);
    object.kind = Cow::Borrowed(kind.kind);
    let namespace = object.namespace().unwrap_or_default().to_owned();
    owners.note(object);
    if engine.is_excluded(&namespace) || owners.judge_through_controller(object) {
        return;
    }
    let scanned = Scanned {
        api_version: kind.api_version.to_owned(),
        kind: kind.kind,
        name: object.name().unwrap_or_default().to_owned(),
        uid: object.metadata.uid.as_deref().map(str::to_owned),
        namespace,
    };
    match evaluate_listed(engine, snapshot, viewed, text, &scanned.namespace) {
        Ok(findings) => sink.object(&scanned, findings),
        Err(e) => sink.object_error(format!(
            "{} {}/{}: {e}",
            scanned.kind, scanned.namespace, scanned.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_shrink_to_the_byte_budget_from_the_objects_seen() {
        let budget = PageBudget {
            objects: 500,
            bytes: 1_000_000,
        };
        assert_eq!(budget.next_limit(0, 0), 100, "a first page of 100 measures");
        assert_eq!(
            budget.next_limit(100, 200_000),
            500,
            "2 kB objects: full pages"
        );
        assert_eq!(budget.next_limit(100, 2_000_000), 50, "20 kB objects: 50");
        assert_eq!(
            budget.next_limit(10, 100_000_000),
            MIN_PAGE_OBJECTS,
            "never fewer than the minimum"
        );
    }

    fn object(value: serde_json::Value) -> crate::view::Object<'static> {
        crate::view::owned(value).unwrap()
    }

    /// Only what the audit judges through its controller is left to it, and only once that
    /// controller was listed. (The old rule skipped anything with a `controller: true` owner
    /// reference: the first two assertions on `forged` and `operator` failed on it.)
    #[test]
    fn only_objects_judged_through_a_listed_controller_are_left_to_it() {
        let mut owners = Owners::default();
        let deployment = object(serde_json::json!({"kind": "Deployment",
            "metadata": {"name": "web", "uid": "d-1"}}));
        let replica_set = |owner: &str, uid: &str| {
            object(
                serde_json::json!({"kind": "ReplicaSet", "metadata": {"name": "web-1", "uid": "rs-1",
                "ownerReferences": [{"kind": owner, "name": "web", "uid": uid, "controller": true}]}}),
            )
        };
        // Before its Deployment is listed, a ReplicaSet is judged itself.
        assert!(!owners.judge_through_controller(&replica_set("Deployment", "d-1")));
        owners.note(&deployment);
        assert!(owners.judge_through_controller(&replica_set("Deployment", "d-1")));
        // A forged reference: a UID nothing has, or a kind that does not judge it.
        let forged = replica_set("Deployment", "no-such-uid");
        assert!(!owners.judge_through_controller(&forged));
        let operator = object(
            serde_json::json!({"kind": "StatefulSet", "metadata": {"name": "pg",
            "ownerReferences": [{"kind": "Cluster", "name": "pg", "uid": "c-1", "controller": true}]}}),
        );
        owners.note(&object(
            serde_json::json!({"kind": "Cluster", "metadata": {"name": "pg", "uid": "c-1"}}),
        ));
        assert!(!owners.judge_through_controller(&operator));
        // A Pod of a listed ReplicaSet is left to it; a reference that is not the controller's is
        // not enough.
        owners.note(&replica_set("Deployment", "d-1"));
        let pod = |controller: bool| {
            object(
                serde_json::json!({"kind": "Pod", "metadata": {"name": "web-1-x",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "uid": "rs-1", "controller": controller}]}}),
            )
        };
        assert!(owners.judge_through_controller(&pod(true)));
        assert!(!owners.judge_through_controller(&pod(false)));
        assert!(!owners.judge_through_controller(&object(
            serde_json::json!({"kind": "Pod", "metadata": {"name": "bare"}})
        )));
        // Controllers are listed before what they run.
        let mut kinds = [
            "Pod",
            "ReplicaSet",
            "Job",
            "Deployment",
            "CronJob",
            "Ingress",
        ];
        kinds.sort_by_key(|k| listing_rank(k));
        assert_eq!(kinds[..2], ["Deployment", "CronJob"]);
        assert_eq!(kinds[5], "Pod");
    }
}
