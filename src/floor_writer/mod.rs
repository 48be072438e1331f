//! The CEL floor's writer: the replica holding the Lease `prodguard-floor` keeps the cluster's
//! ValidatingAdmissionPolicies, MutatingAdmissionPolicies and bindings equal to what `floor`
//! builds from the live configuration and the exceptions in force (docs/floor.md).
//!
//! Each reconcile: find what the API server serves (discovery), build the objects, list the
//! labelled ones the cluster holds (one list per kind), apply the ones that differ
//! (server-side apply, field manager `prodguard-floor`), delete the labelled ones no longer
//! wanted (a policy turned off, `--cel-floor=off`). A write that fails is logged,
//! counted (`prodguard_floor_write_failures_total`) and published as an Event; the next
//! reconcile tries again. Until the exceptions' watch has listed them, nothing is written
//! (a floor without them could refuse what an exception allows).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::audit::lease::{self, LeaseSettings};
use crate::exceptions::Exceptions;
use crate::floor::{objects, parts, FloorObject, Served, MANAGED_BY, POLICY_LABEL};
use crate::policies::Config;
use crate::report::metrics::FloorMetrics;

/// The writer's Lease.
pub const LEASE_NAME: &str = "prodguard-floor";
/// The field manager of its writes.
pub const FIELD_MANAGER: &str = "prodguard-floor";
/// The webhook configuration that owns the floor: deleting it (uninstalling) deletes the floor.
pub const OWNER: &str = "prodguard";

/// `--cel-floor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CelFloor {
    /// Write what the API server serves: ValidatingAdmissionPolicy on 1.30+,
    /// MutatingAdmissionPolicy on 1.36+.
    Auto,
    /// Write nothing, and delete what an earlier run wrote.
    Off,
}

pub struct WriterSettings {
    pub lease: LeaseSettings,
    pub mode: CelFloor,
    /// How often it reconciles (and at the latest when an exception it embeds ends).
    pub every: Duration,
    /// The pod Events are about (`namespace`, `name`), when known.
    pub pod: Option<(String, String)>,
}

/// Starts the writer. `config` follows the configuration's reloads.
pub fn spawn(
    client: kube::Client,
    settings: WriterSettings,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    exceptions: Arc<Exceptions>,
    metrics: FloorMetrics,
) {
    tokio::spawn(run(client, settings, config, exceptions, metrics));
}

async fn run(
    client: kube::Client,
    settings: WriterSettings,
    mut config: tokio::sync::watch::Receiver<Arc<Config>>,
    exceptions: Arc<Exceptions>,
    metrics: FloorMetrics,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.lease.namespace);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "prodguard".into(),
            instance: Some(settings.lease.identity.clone()),
        },
    );
    // The Lease is renewed every third of its duration; the floor is written when this
    // replica becomes the holder, when the configuration or the exceptions change, when an
    // exception it embeds ends, and every `every` besides.
    let tick = settings.every.min(settings.lease.duration / 3);
    let mut held = false;
    let mut written: Option<(Arc<Config>, usize)> = None;
    let mut due = tokio::time::Instant::now();
    loop {
        // A server that serves neither kind gets nothing from the floor: no Lease is taken,
        // and discovery is asked again every `every`.
        if let Ok(Served {
            validating: false,
            mutating: false,
        }) = served(&client).await
        {
            if held {
                lease::release(&leases, &settings.lease).await;
                held = false;
            }
            tokio::select! {
                _ = tokio::time::sleep(settings.every) => {}
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        let was_held = held;
        held = match lease::try_hold(&leases, &settings.lease).await {
            Ok(hold) => hold.held(),
            Err(e) => {
                tracing::warn!(error = %e, "the CEL floor's Lease cannot be read or written");
                false
            }
        };
        if held && !was_held {
            tracing::info!("this replica writes the CEL floor");
        }
        if held {
            let current = config.borrow_and_update().clone();
            match exceptions.current() {
                None => tracing::debug!("the CEL floor waits for the PolicyExceptions' first list"),
                Some(set) => {
                    let seen = (current.clone(), Arc::as_ptr(&set) as usize);
                    let changed = written
                        .as_ref()
                        .is_none_or(|(c, e)| !Arc::ptr_eq(c, &seen.0) || *e != seen.1);
                    let now = tokio::time::Instant::now();
                    if !was_held || changed || now >= due {
                        let wall = SystemTime::now();
                        due = now + settings.every;
                        if let Some(next) = crate::floor::rewrite_in(&current, &set, wall) {
                            due = due.min(now + next + Duration::from_secs(1));
                        }
                        let failures =
                            reconcile(&client, settings.mode, &current, &set, wall, &metrics).await;
                        // A failure is tried again at the next `every`, not at every tick.
                        written = Some(seen);
                        for failure in failures {
                            metrics.write_failures.inc();
                            tracing::error!("{failure}");
                            publish(&recorder, &settings, &failure).await;
                        }
                    }
                }
            }
        }
        let wait = if held {
            tick.min(due.saturating_duration_since(tokio::time::Instant::now()))
        } else {
            tick
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn publish(recorder: &Recorder, settings: &WriterSettings, failure: &str) {
    let Some((namespace, name)) = &settings.pod else {
        return;
    };
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        ..Default::default()
    };
    let mut note = failure.to_owned();
    note.truncate(1000);
    let event = Event {
        type_: EventType::Warning,
        reason: "CelFloorWriteFailed".into(),
        note: Some(note),
        action: "WriteCelFloor".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "cannot publish the CEL floor's Event");
    }
}

/// What the API server serves of the floor's kinds.
pub async fn served(client: &kube::Client) -> Result<Served, kube::Error> {
    match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => {
            let has = |plural: &str| list.resources.iter().any(|r| r.name == plural);
            Ok(Served {
                validating: has("validatingadmissionpolicies")
                    && has("validatingadmissionpolicybindings"),
                mutating: has("mutatingadmissionpolicies")
                    && has("mutatingadmissionpolicybindings"),
            })
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Served::default()),
        Err(e) => Err(e),
    }
}

/// One reconcile: the failures, each a sentence.
pub async fn reconcile(
    client: &kube::Client,
    mode: CelFloor,
    config: &Config,
    exceptions: &crate::exceptions::ExceptionSet,
    now: SystemTime,
    metrics: &FloorMetrics,
) -> Vec<String> {
    let served = match served(client).await {
        Ok(served) => served,
        Err(e) => {
            return vec![format!(
                "the CEL floor cannot read the API server's discovery: {e}"
            )]
        }
    };
    let owner = owner(client).await;
    let wanted = match mode {
        CelFloor::Off => Vec::new(),
        CelFloor::Auto => objects(&parts(config, exceptions, now), served, owner.as_ref()),
    };
    metrics.objects.set(wanted.len() as i64);
    let mut failures = Vec::new();
    // What the cluster holds of the floor: one list of each served kind, by label.
    let mut held = Held::default();
    if served.validating {
        held.validating = list::<ValidatingAdmissionPolicy>(client, &mut failures).await;
        held.validating_bindings =
            list::<ValidatingAdmissionPolicyBinding>(client, &mut failures).await;
    }
    if served.mutating {
        held.mutating = list::<MutatingAdmissionPolicy>(client, &mut failures).await;
        held.mutating_bindings =
            list::<MutatingAdmissionPolicyBinding>(client, &mut failures).await;
    }
    // Policies before their bindings when writing (`objects` orders them so).
    for object in &wanted {
        let result = match object {
            FloorObject::Validating(o) => apply(client, o, &held.validating).await,
            FloorObject::ValidatingBinding(o) => apply(client, o, &held.validating_bindings).await,
            FloorObject::Mutating(o) => apply(client, o, &held.mutating).await,
            FloorObject::MutatingBinding(o) => apply(client, o, &held.mutating_bindings).await,
        };
        match result {
            Ok(true) => {
                metrics.writes.inc();
            }
            Ok(false) => {}
            Err(e) => failures.push(format!(
                "the CEL floor cannot write {}: {e}",
                object.describe()
            )),
        }
    }
    // Bindings before their policies when deleting (a binding without its policy is an error
    // the server reports).
    failures.extend(
        prune::<ValidatingAdmissionPolicyBinding>(client, &held.validating_bindings, &wanted).await,
    );
    failures.extend(prune::<ValidatingAdmissionPolicy>(client, &held.validating, &wanted).await);
    failures.extend(
        prune::<MutatingAdmissionPolicyBinding>(client, &held.mutating_bindings, &wanted).await,
    );
    failures.extend(prune::<MutatingAdmissionPolicy>(client, &held.mutating, &wanted).await);
    failures
}

/// One of the floor's four kinds, as the writer reads and writes them.
trait FloorKind:
    Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> FloorKind for K where
    K: Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// The floor's objects the cluster holds, by kind: name -> the object as JSON.
#[derive(Default)]
struct Held {
    validating: BTreeMap<String, serde_json::Value>,
    validating_bindings: BTreeMap<String, serde_json::Value>,
    mutating: BTreeMap<String, serde_json::Value>,
    mutating_bindings: BTreeMap<String, serde_json::Value>,
}

/// The labelled objects of kind `K`; a list that fails is a failure, and nothing is held.
async fn list<K>(
    client: &kube::Client,
    failures: &mut Vec<String>,
) -> BTreeMap<String, serde_json::Value>
where
    K: FloorKind,
{
    let api: Api<K> = Api::all(client.clone());
    let selector = format!("{}={},{POLICY_LABEL}", MANAGED_BY.0, MANAGED_BY.1);
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|item| {
                let name = item.meta().name.clone()?;
                Some((name, serde_json::to_value(item).ok()?))
            })
            .collect(),
        Err(e) => {
            failures.push(format!("the CEL floor cannot list {}: {e}", K::kind(&())));
            BTreeMap::new()
        }
    }
}

/// The webhook configuration the floor's objects are owned by, when it exists.
async fn owner(client: &kube::Client) -> Option<OwnerReference> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = api.get_opt(OWNER).await.ok()??;
    Some(OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "ValidatingWebhookConfiguration".into(),
        name: OWNER.into(),
        uid: configuration.metadata.uid?,
        ..Default::default()
    })
}

/// Applies `object` unless the cluster's copy (from `held`) already holds it; `Ok(true)` when
/// written.
async fn apply<K>(
    client: &kube::Client,
    object: &K,
    held: &BTreeMap<String, serde_json::Value>,
) -> Result<bool, kube::Error>
where
    K: FloorKind,
{
    let api: Api<K> = Api::all(client.clone());
    let name = object.meta().name.clone().unwrap_or_default();
    let wanted = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if held
        .get(&name)
        .is_some_and(|existing| contains(existing, &wanted))
    {
        return Ok(false);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&wanted)).await?;
    Ok(true)
}

/// Whether every field of `wanted` is in `existing` with the same value (the server adds
/// defaults and status).
fn contains(existing: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (existing, wanted) {
        (Value::Object(e), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| e.get(k).is_some_and(|ev| contains(ev, v))),
        (Value::Array(e), Value::Array(w)) => {
            e.len() == w.len() && e.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (e, w) => e == w,
    }
}

/// Deletes the labelled objects of kind `K` (`held`) that are not `wanted`.
async fn prune<K>(
    client: &kube::Client,
    held: &BTreeMap<String, serde_json::Value>,
    wanted: &[FloorObject],
) -> Vec<String>
where
    K: FloorKind,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&());
    let kept = |name: &String| {
        wanted
            .iter()
            .any(|o| o.kind() == kind && o.name() == name.as_str())
    };
    let mut failures = Vec::new();
    for name in held.keys().filter(|name| !kept(name)) {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(kind = %K::kind(&()), name = %name, "CEL floor object deleted"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => failures.push(format!(
                "the CEL floor cannot delete {} {name}: {e}",
                K::kind(&())
            )),
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn an_object_holds_what_is_wanted_whatever_the_server_adds() {
        let wanted = json!({"spec": {"failurePolicy": "Fail", "rules": [{"a": 1}]}});
        let existing = json!({"spec": {"failurePolicy": "Fail", "rules": [{"a": 1, "scope": "*"}]}, "status": {}});
        assert!(contains(&existing, &wanted));
        let changed = json!({"spec": {"failurePolicy": "Ignore", "rules": [{"a": 1}]}});
        assert!(!contains(&changed, &wanted));
        let more = json!({"spec": {"failurePolicy": "Fail", "rules": [{"a": 1}, {"a": 2}]}});
        assert!(!contains(&more, &wanted));
    }
}
