//! Evaluation of a stored or written object, as the API server would run the webhooks on
//! its CREATE: the mutating policies patch it, then the validating policies judge the patched
//! object. Used by `check` (files) and by the audit (what a cluster holds).

use serde::Serialize;
use serde_json::Value;

use crate::unit::ClusterLookup;
use crate::view::{Object, ShapeError};

use futures_util::FutureExt;

use super::{Engine, Reported, Verdict};
use crate::unit::{Lookups, Operation, Request, Webhook};

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

/// Evaluates one object (a manifest) as a CREATE: mutate, apply the patch, validate the
/// result. What the policies would read from the cluster comes from `cluster`.
pub fn evaluate_object(
    engine: &Engine,
    cluster: &dyn ClusterLookup,
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
    let mut run = Run::new(engine, cluster, default_namespace);
    let patch = {
        let text = value.to_string();
        run.webhook(Webhook::Mutate, &view_of(&value, &text)?)?
    };
    run.validate_patched(value, patch)?;
    Ok(run.results)
}

/// Evaluates one listed object, the JSON text of an object of kind `kind` (list items carry
/// no kind), like [`evaluate_object`]. `object` is its view, decoded by the caller; the text
/// is parsed whole only when a mutating policy patches it.
pub fn evaluate_listed(
    engine: &Engine,
    cluster: &dyn ClusterLookup,
    object: Viewed<'_>,
    text: &str,
    default_namespace: &str,
) -> Result<Vec<ObjectFinding>, String> {
    let mut run = Run::new(engine, cluster, default_namespace);
    let patch = run.webhook(Webhook::Mutate, &object)?;
    if patch.is_empty() {
        run.webhook(Webhook::Validate, &object)?;
        return Ok(run.results);
    }
    let mut value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert(
            "apiVersion".into(),
            Value::String(object.object.api_version.to_string()),
        );
        fields.insert("kind".into(), Value::String(object.object.kind.to_string()));
    }
    drop(object);
    run.validate_patched(value, patch)?;
    Ok(run.results)
}

/// One object's offline evaluation: where lookups are answered, the namespace of an object
/// that names none, and the findings so far.
struct Run<'e> {
    engine: &'e Engine,
    cluster: &'e dyn ClusterLookup,
    default_namespace: &'e str,
    results: Vec<ObjectFinding>,
}

impl<'e> Run<'e> {
    fn new(
        engine: &'e Engine,
        cluster: &'e dyn ClusterLookup,
        default_namespace: &'e str,
    ) -> Run<'e> {
        Run {
            engine,
            cluster,
            default_namespace,
            results: Vec::new(),
        }
    }

    /// Runs one webhook's policies; returns the enforced patch.
    fn webhook(
        &mut self,
        webhook: Webhook,
        object: &Viewed<'_>,
    ) -> Result<Vec<json_patch::PatchOperation>, String> {
        evaluate(
            self.engine,
            self.cluster,
            webhook,
            object,
            self.default_namespace,
            &mut self.results,
        )
    }

    /// Applies the mutating policies' patch to `value` and runs the validating policies on
    /// the result.
    fn validate_patched(
        &mut self,
        mut value: Value,
        patch: Vec<json_patch::PatchOperation>,
    ) -> Result<(), String> {
        if !patch.is_empty() {
            json_patch::patch(&mut value, &patch)
                .map_err(|e| format!("prodguard's own patch does not apply: {e}"))?;
        }
        let text = value.to_string();
        self.webhook(Webhook::Validate, &view_of(&value, &text)?)?;
        Ok(())
    }
}

/// The view of a manifest: `text` is `value` written out (the view is decoded from text, as a
/// listed object's is, so that one decoder serves both).
fn view_of<'t>(value: &Value, text: &'t str) -> Result<Viewed<'t>, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    view_text(kind, text)
}

/// An object's view, and why it does not have its kind's shape (its view then holds its
/// metadata only, to name it).
pub struct Viewed<'a> {
    pub object: Object<'a>,
    pub shape_error: Option<ShapeError>,
}

/// The view of an object of kind `kind` given as JSON text. A shape error outside the
/// metadata is kept, to be reported as the engine reports it, and the object is then named by
/// its metadata alone; one in the metadata makes it no object at all.
pub fn view_text<'a>(kind: &str, text: &'a str) -> Result<Viewed<'a>, String> {
    let invalid = |e: ShapeError| format!("is not a valid object: {e}");
    match Object::decode(kind, text) {
        Ok(object) => Ok(Viewed {
            object: object.unwrap_or_default(),
            shape_error: None,
        }),
        Err(e) if e.is_metadata() => Err(invalid(e)),
        Err(e) => Ok(Viewed {
            object: Object::decode("", text)
                .map_err(invalid)?
                .unwrap_or_default(),
            shape_error: Some(e),
        }),
    }
}

/// Runs one webhook's policies on `object`; returns the enforced patch.
fn evaluate(
    engine: &Engine,
    cluster: &dyn ClusterLookup,
    webhook: Webhook,
    viewed: &Viewed<'_>,
    default_namespace: &str,
    results: &mut Vec<ObjectFinding>,
) -> Result<Vec<json_patch::PatchOperation>, String> {
    let object = &viewed.object;
    let (group, version) = match object.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", object.api_version.as_ref()),
    };
    let kind = object.kind.as_ref();
    let resource = plural(kind);
    let namespace = match object.namespace() {
        _ if is_cluster_scoped(kind) => "",
        Some(namespace) => namespace,
        None => default_namespace,
    };
    let request = Request {
        uid: "",
        operation: Operation::Create,
        group,
        version,
        kind,
        resource: &resource,
        resource_group: group,
        resource_version: version,
        sub_resource: None,
        namespace,
        name: object.name().unwrap_or(""),
        username: OFFLINE_USER,
        groups: &[],
        object: Some(object),
        old_object: None,
        dry_run: true,
        shape_error: viewed.shape_error.as_ref(),
    };
    // A snapshot answers at once, so the evaluation never waits.
    let lookups = Lookups::immediate(cluster);
    let decision = match engine.evaluate(webhook, &request, &lookups).now_or_never() {
        Some(Verdict::Decided(decision)) => decision,
        Some(Verdict::Malformed(message)) => return Err(message),
        None => return Err("a lookup of the checked objects did not answer at once".into()),
    };
    let name = request.object_name().to_owned();
    for item in decision.reports {
        results.push(ObjectFinding {
            kind: kind.to_owned(),
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

/// The resource name of a kind: the one policies act on, else as the API server derives it
/// (`Ingress` -> `ingresses`).
pub fn plural(kind: &str) -> String {
    if let Some(resource) = crate::policies::resources::of_kind(kind) {
        return resource.plural.to_owned();
    }
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
