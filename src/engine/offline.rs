//! Evaluation of a stored or written object, as the API server would run the webhooks on
//! its CREATE: the mutating policies patch it, then the validating policies judge the patched
//! object. Used by `check` (files) and by the audit (what a cluster holds).

use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::Value;

use crate::cluster::Snapshot;

use super::{Context, Engine, Operation, Reported, Request, Verdict, Webhook};

/// The user offline evaluation runs as.
pub const OFFLINE_USER: &str = "prodguard-check";

/// What one policy would do to one object: the object, and the finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectFinding {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub finding: Reported,
}

/// Evaluates one object as a CREATE: mutate, apply the patch, validate the result. What the
/// policies would read from the cluster comes from `cluster`.
pub fn evaluate_object(
    engine: &Engine,
    cluster: &Snapshot,
    value: Value,
    default_namespace: &str,
) -> Result<Vec<ObjectFinding>, String> {
    if !value.is_object() {
        return Err("is not a mapping, so not a Kubernetes object".into());
    }
    for field in ["apiVersion", "kind"] {
        if !value.get(field).is_some_and(Value::is_string) {
            return Err(format!("has no {field}, so it is not a Kubernetes object"));
        }
    }
    let object: DynamicObject =
        serde_json::from_value(value).map_err(|e| format!("is not a valid object: {e}"))?;
    let mut results = Vec::new();
    let patch = evaluate(
        engine,
        cluster,
        Webhook::Mutate,
        &object,
        default_namespace,
        &mut results,
    )?;
    let object = if patch.is_empty() {
        object
    } else {
        let mut patched = serde_json::to_value(&object).map_err(|e| e.to_string())?;
        json_patch::patch(&mut patched, &patch)
            .map_err(|e| format!("prodguard's own patch does not apply: {e}"))?;
        serde_json::from_value(patched).map_err(|e| e.to_string())?
    };
    evaluate(
        engine,
        cluster,
        Webhook::Validate,
        &object,
        default_namespace,
        &mut results,
    )?;
    Ok(results)
}

/// Runs one webhook's policies on `object`; returns the enforced patch.
fn evaluate(
    engine: &Engine,
    cluster: &Snapshot,
    webhook: Webhook,
    object: &DynamicObject,
    default_namespace: &str,
    results: &mut Vec<ObjectFinding>,
) -> Result<Vec<json_patch::PatchOperation>, String> {
    let types = object.types.clone().unwrap_or_default();
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", types.api_version.as_str()),
    };
    let resource = plural(&types.kind);
    let namespace = match object.metadata.namespace.as_deref() {
        _ if is_cluster_scoped(&types.kind) => "",
        Some(namespace) => namespace,
        None => default_namespace,
    };
    let request = Request {
        uid: "",
        operation: Operation::Create,
        group,
        version,
        kind: &types.kind,
        resource: &resource,
        resource_group: group,
        resource_version: version,
        sub_resource: None,
        namespace,
        name: object.metadata.name.as_deref().unwrap_or(""),
        username: OFFLINE_USER,
        groups: &[],
        object: Some(object),
        old_object: None,
        dry_run: true,
    };
    let context = Context::from_snapshot(cluster, &engine.needs(webhook, &request), &request);
    let decision = match engine.evaluate(webhook, &request, &context) {
        Verdict::Decided(decision) => decision,
        Verdict::Malformed(message) => return Err(message),
    };
    let name = request.object_name().to_owned();
    for item in decision.reports {
        results.push(ObjectFinding {
            kind: types.kind.clone(),
            namespace: namespace.to_owned(),
            name: name.clone(),
            finding: item,
        });
    }
    Ok(decision.patch)
}

/// Whether objects of the kind live outside namespaces (of the kinds a manifest set holds).
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Node"
            | "PersistentVolume"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "StorageClass"
            | "IngressClass"
            | "PriorityClass"
            | "RuntimeClass"
            | "CustomResourceDefinition"
            | "MutatingWebhookConfiguration"
            | "ValidatingWebhookConfiguration"
            | "APIService"
            | "ClusterPolicyReport"
            | "CSIDriver"
            | "PodSecurityPolicy"
    )
}

/// The resource name of a kind, as the API server derives it (`Ingress` -> `ingresses`).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

#[cfg(test)]
mod tests {
    use super::plural;

    #[test]
    fn plurals() {
        for (kind, resource) in [
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("ClusterRoleBinding", "clusterrolebindings"),
        ] {
            assert_eq!(plural(kind), resource);
        }
    }
}
