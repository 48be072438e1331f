//! The built-in policies, one file each, named after the policy id, and the helpers they
//! share: the pod-spec walker and the image-reference parser.

pub mod airgap_registry;
pub mod db_access;
pub mod image_pull_policy;
pub mod image_ref;
pub mod min_replicas;
pub mod pod_spec;
pub mod protect_delete;
pub mod registry_mirror;

use json_patch::PatchOperation;

use crate::config::{Config, PolicyMode};
use crate::engine::{EvalError, Finding, Operation, Policy, Request};
use pod_spec::{ContainerList, ContainerRef};

/// Every built-in policy with its configured mode, mutating ones first, in the order they run.
pub fn build(config: &Config) -> Vec<(Box<dyn Policy>, PolicyMode)> {
    let p = &config.policies;
    vec![
        (
            Box::new(registry_mirror::RegistryMirror::new(&p.registry_mirror)) as Box<dyn Policy>,
            p.registry_mirror.mode,
        ),
        (
            Box::new(image_pull_policy::ImagePullPolicy),
            p.image_pull_policy.mode,
        ),
        (
            Box::new(airgap_registry::AirgapRegistry::new(&p.airgap_registry)),
            p.airgap_registry.mode,
        ),
        (
            Box::new(db_access::DbAccess::new(&p.db_access, &config.admins)),
            p.db_access.mode,
        ),
        (
            Box::new(min_replicas::MinReplicas::new(&p.min_replicas)),
            p.min_replicas.mode,
        ),
        (
            Box::new(protect_delete::ProtectDelete::new(
                &p.protect_delete,
                &config.admins,
            )),
            p.protect_delete.mode,
        ),
    ]
}

const EPHEMERAL: &[ContainerList] = &[ContainerList::EphemeralContainers];

/// Which container lists a mutating container policy may patch on this request.
///
/// A Pod's spec is immutable on UPDATE, so Pods are patched on CREATE and on the
/// `pods/ephemeralcontainers` subresource (its ephemeral containers only); workloads are
/// patched on CREATE and UPDATE. Other subresources (status, scale) are never patched.
pub fn mutable_container_lists(request: &Request<'_>) -> Option<&'static [ContainerList]> {
    if !pod_spec::is_pod_bearing(request.kind) {
        return None;
    }
    match (request.operation.clone(), request.sub_resource) {
        (Operation::Update, Some("ephemeralcontainers")) if request.resource == "pods" => {
            Some(EPHEMERAL)
        }
        (Operation::Create, None) => Some(&ContainerList::ALL),
        (Operation::Update, None) if request.kind != "Pod" => Some(&ContainerList::ALL),
        _ => None,
    }
}

/// Runs `patch_container` on every container a mutating policy may patch on this request
/// and gathers one mutation: the operations, and `summary` followed by each change.
pub fn mutate_containers(
    request: &Request<'_>,
    summary: &str,
    mut patch_container: impl FnMut(&ContainerRef<'_>) -> Option<(PatchOperation, String)>,
) -> Result<Vec<Finding>, EvalError> {
    let Some(lists) = mutable_container_lists(request) else {
        return Ok(Vec::new());
    };
    let object = request.object.ok_or(EvalError::MissingObject)?;
    let mut patch = Vec::new();
    let mut changed = Vec::new();
    for container in pod_spec::containers(request.kind, &object.data, lists)? {
        if let Some((operation, change)) = patch_container(&container) {
            patch.push(operation);
            changed.push(change);
        }
    }
    if patch.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Finding::Mutation {
        message: format!("{summary}{}", changed.join(", ")),
        patch,
    }])
}

/// Which container lists a validating container policy checks on this request: every
/// CREATE and UPDATE of a pod-bearing object, and the ephemeral-containers subresource.
pub fn checked_container_lists(request: &Request<'_>) -> Option<&'static [ContainerList]> {
    if !pod_spec::is_pod_bearing(request.kind) {
        return None;
    }
    match (request.operation.clone(), request.sub_resource) {
        (Operation::Update, Some("ephemeralcontainers")) if request.resource == "pods" => {
            Some(&ContainerList::ALL)
        }
        (Operation::Create | Operation::Update, None) => Some(&ContainerList::ALL),
        _ => None,
    }
}

/// On UPDATE, whether the old object already had this container with this image: validating
/// policies judge what a request changes, so an unrelated update of an old object is not
/// blocked (the background audit reports what already runs).
pub fn image_unchanged(request: &Request<'_>, container: &ContainerRef<'_>) -> bool {
    let (Operation::Update, Some(old)) = (&request.operation, request.old_object) else {
        return false;
    };
    let old_kind = old
        .types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or(request.kind);
    let Ok(old_containers) = pod_spec::containers(old_kind, &old.data, &[container.list]) else {
        return false;
    };
    old_containers
        .iter()
        .any(|o| o.name == container.name && o.image == container.image)
}

/// `containers[0] "app"` joined for messages.
pub fn join_descriptions(items: &[String]) -> String {
    items.join("; ")
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builds requests for policy unit tests.
    use kube::core::DynamicObject;
    use serde_json::Value;

    use crate::engine::{Operation, Request};

    pub fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).expect("test object")
    }

    pub fn request<'a>(
        operation: Operation,
        kind: &'a str,
        resource: &'a str,
        object: Option<&'a DynamicObject>,
    ) -> Request<'a> {
        Request {
            uid: "uid-1",
            operation,
            group: "",
            version: "v1",
            kind,
            resource,
            resource_group: "",
            resource_version: "v1",
            sub_resource: None,
            namespace: "openg2p",
            name: "",
            username: "alice",
            groups: &[],
            object,
            old_object: None,
            dry_run: false,
        }
    }
}
