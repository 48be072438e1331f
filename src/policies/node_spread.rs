//! `node-spread` (mutating): a workload that runs 2 or more replicas and says nothing about
//! spreading them over nodes gets a soft topology spread constraint over
//! `kubernetes.io/hostname` (`whenUnsatisfiable: ScheduleAnyway`), so its replicas land on
//! different nodes when the cluster can place them there and still schedule when it cannot.
//!
//! Acts on CREATE and UPDATE of Deployments, StatefulSets, ReplicaSets (not those a
//! Deployment controls: the Deployment is patched) and ReplicationControllers. A workload that
//! already has a pod anti-affinity term or a spread constraint over the hostname is left
//! alone; other constraints are kept and the new one is appended. The constraint selects the
//! workload's pods with the workload's own selector.

use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::PolicyMode;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::{Object, PodSpec, Spec, Topology};

pub const ID: &str = "node-spread";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
        }
    }
}

/// `node-spread`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn matches(_: &Settings) -> Vec<Match> {
        vec![Match::new(
            Webhook::Mutate,
            &["CREATE", "UPDATE"],
            &[
                resources::DEPLOYMENTS,
                resources::STATEFUL_SETS,
                resources::REPLICA_SETS,
                resources::REPLICATION_CONTROLLERS,
            ],
        )]
    }

    fn build(_: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(NodeSpread)]
    }
}
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// Fewer replicas than this are not spread.
pub const MIN_REPLICAS: i64 = 2;

pub struct NodeSpread;

/// Whether the pod spec already spreads or separates its pods by node.
fn spreads_by_node(pod_spec: &PodSpec<'_>) -> bool {
    let by_hostname = |term: &Topology<'_>| term.topology_key.as_deref() == Some(HOSTNAME_KEY);
    let anti = pod_spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    pod_spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .any(by_hostname)
        || anti
            .and_then(|a| a.required.as_ref())
            .into_iter()
            .flatten()
            .any(by_hostname)
        || anti
            .and_then(|a| a.preferred.as_ref())
            .into_iter()
            .flatten()
            .any(|weighted| weighted.pod_affinity_term.as_ref().is_some_and(by_hostname))
}

/// The label selector of the workload's pods, as a spread constraint takes it.
fn pod_selector(object: &Object<'_>) -> Option<Value> {
    match &object.spec {
        // A plain label map.
        Spec::ReplicationController(spec) => {
            let labels = spec.selector.as_ref().filter(|l| !l.0.is_empty())?;
            let labels: serde_json::Map<String, Value> = labels
                .0
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            Some(json!({ "matchLabels": labels }))
        }
        Spec::Workload(spec) => {
            let selector = spec.selector.as_ref()?;
            if selector.match_labels.is_none() && selector.match_expressions.is_none() {
                return None;
            }
            serde_json::to_value(selector).ok()
        }
        _ => None,
    }
}

#[async_trait::async_trait]
impl Policy for NodeSpread {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Mutate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let kind = request.kind;
        if !matches!(request.operation, Operation::Create | Operation::Update)
            || request.sub_resource.is_some()
            || !matches!(
                kind,
                "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
            )
        {
            return Ok(Vec::new());
        }
        let object = request.object.ok_or(EvalError::MissingObject)?;
        if kind == "ReplicaSet" && object.controlled_by("Deployment") {
            return Ok(Vec::new());
        }
        let replicas = object.replicas().unwrap_or(1);
        if replicas < MIN_REPLICAS {
            return Ok(Vec::new());
        }
        let Some(pod_spec) = object.pod_spec() else {
            return Ok(Vec::new());
        };
        if spreads_by_node(pod_spec) {
            return Ok(Vec::new());
        }
        let Some(selector) = pod_selector(object) else {
            // Without a selector there is nothing to spread by (the API server rejects such
            // a workload anyway).
            return Ok(Vec::new());
        };
        let constraint = json!({
            "maxSkew": 1,
            "topologyKey": HOSTNAME_KEY,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        });
        let mut path =
            PointerBuf::from_tokens(["spec", "template", "spec", "topologySpreadConstraints"]);
        let value = match pod_spec.topology_spread_constraints {
            None => Value::Array(vec![constraint]),
            Some(_) => {
                path.push_back("-");
                constraint
            }
        };
        Ok(vec![Finding::Mutation {
            message: format!(
                "add a topology spread constraint over {HOSTNAME_KEY} (ScheduleAnyway) so that \
                 the {replicas} replicas of {} land on different nodes",
                request.describe()
            ),
            patch: vec![PatchOperation::Add(AddOperation { path, value })],
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{object, request, Context, Eval};

    fn patched(kind: &str, mut doc: Value, op: Operation) -> Option<Value> {
        doc["kind"] = json!(kind);
        let obj = object(doc.clone());
        let req = request(op, kind, "x", Some(&obj));
        let findings = NodeSpread.eval(&req, &Context::default()).unwrap();
        let Some(Finding::Mutation { patch, .. }) = findings.into_iter().next() else {
            return None;
        };
        json_patch::patch(&mut doc, &patch).unwrap();
        Some(doc)
    }

    fn deployment(replicas: Option<i64>, pod_spec: Value) -> Value {
        let mut spec = json!({
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
        });
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn adds_a_soft_constraint_with_the_workload_selector() {
        let doc = patched(
            "Deployment",
            deployment(Some(3), json!({"containers": []})),
            Operation::Create,
        )
        .expect("patched");
        assert_eq!(
            doc.pointer("/spec/template/spec/topologySpreadConstraints"),
            Some(&json!([{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": "web"}},
            }]))
        );
    }

    #[test]
    fn replicas_table() {
        for (replicas, expected) in [
            (None, false),
            (Some(0), false),
            (Some(1), false),
            (Some(2), true),
        ] {
            let doc = patched(
                "StatefulSet",
                deployment(replicas, json!({"containers": []})),
                Operation::Update,
            );
            assert_eq!(doc.is_some(), expected, "{replicas:?}");
        }
    }

    #[test]
    fn existing_constraints_are_kept_and_hostname_ones_respected() {
        let zone = json!({"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {}});
        let doc = patched(
            "Deployment",
            deployment(
                Some(2),
                json!({"topologySpreadConstraints": [zone.clone()]}),
            ),
            Operation::Create,
        )
        .expect("appended");
        let list = doc
            .pointer("/spec/template/spec/topologySpreadConstraints")
            .unwrap();
        assert_eq!(list[0], zone, "the existing constraint is unchanged");
        assert_eq!(list[1]["topologyKey"], "kubernetes.io/hostname");

        let host = json!({"maxSkew": 3, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"});
        let anti_required = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}]}}});
        let anti_preferred = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}});
        for spec in [
            json!({"topologySpreadConstraints": [host]}),
            anti_required,
            anti_preferred,
        ] {
            assert_eq!(
                patched(
                    "Deployment",
                    deployment(Some(4), spec.clone()),
                    Operation::Create
                ),
                None,
                "{spec}"
            );
        }
        // Anti-affinity by zone only does not spread by node.
        let by_zone = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "topology.kubernetes.io/zone"}]}}});
        assert!(patched(
            "Deployment",
            deployment(Some(4), by_zone),
            Operation::Create
        )
        .is_some());
    }

    #[test]
    fn kinds_and_owned_replicasets() {
        let rc = json!({"kind": "ReplicationController", "metadata": {"name": "rc"}, "spec": {
            "replicas": 2, "selector": {"app": "rc"}, "template": {"spec": {"containers": []}}}});
        let doc = patched("ReplicationController", rc, Operation::Create).expect("patched");
        assert_eq!(
            doc.pointer("/spec/template/spec/topologySpreadConstraints/0/labelSelector"),
            Some(&json!({"matchLabels": {"app": "rc"}}))
        );
        let mut owned = deployment(Some(3), json!({}));
        owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]);
        assert_eq!(patched("ReplicaSet", owned, Operation::Create), None);
        assert_eq!(
            patched(
                "DaemonSet",
                deployment(Some(3), json!({})),
                Operation::Create
            ),
            None
        );
    }

    #[test]
    fn a_malformed_list_is_a_shape_error() {
        let err = crate::view::owned(deployment(
            Some(2),
            json!({"topologySpreadConstraints": "x"}),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Deployment field spec.template.spec.topologySpreadConstraints must be a list"
        );
    }
}
