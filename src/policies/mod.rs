//! The built-in policies, one file each, named after the policy id, and the helpers they
//! share: the pod-spec walker and the image-reference parser.

pub mod airgap_registry;
pub mod db_access;
pub mod external_databases;
pub mod image_pull_policy;
pub mod image_ref;
pub mod ingress_body_size;
pub mod min_replicas;
pub mod node_spread;
pub mod opensearch_cluster;
pub mod pod_spec;
pub mod production;
pub mod protect_delete;
pub mod rbac_hygiene;
pub mod registry_mirror;

use json_patch::PatchOperation;

use crate::config::{Config, LabelSelector, PolicyMode};
use crate::engine::{EvalError, Finding, Lookups, Operation, Policy, Request};
use crate::view::Object;
use image_ref::ImagePattern;
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
        (Box::new(node_spread::NodeSpread), p.node_spread.mode),
        (
            Box::new(ingress_body_size::IngressBodySizeDefault::new(
                &p.ingress_body_size,
            )),
            p.ingress_body_size.mode,
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
        (
            Box::new(rbac_hygiene::RbacHygiene::new(
                &p.rbac_hygiene,
                &config.admins,
                &p.protect_delete.kinds,
            )),
            p.rbac_hygiene.mode,
        ),
        (
            Box::new(ingress_body_size::IngressBodySizeLimit::new(
                &p.ingress_body_size,
            )),
            p.ingress_body_size.mode,
        ),
        (
            Box::new(opensearch_cluster::OpensearchCluster::policy(
                &p.opensearch_cluster,
                &config.production_namespaces,
            )),
            p.opensearch_cluster.mode,
        ),
        (
            Box::new(external_databases::ExternalDatabases::policy(
                &p.external_databases,
                &config.production_namespaces,
            )),
            p.external_databases.mode,
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
    for container in pod_spec::containers(object, lists) {
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
    pod_spec::containers(old, &[container.list])
        .iter()
        .any(|o| o.name == container.name && o.image == container.image)
}

/// The first container (of `containers`, not init or ephemeral ones, which are often
/// clients) whose image one of `patterns` matches.
pub fn container_running<'a>(
    object: &'a Object<'a>,
    patterns: &[ImagePattern],
) -> Option<ContainerRef<'a>> {
    pod_spec::containers(object, &[ContainerList::Containers])
        .into_iter()
        .find(|c| {
            c.image
                .is_some_and(|image| ImagePattern::any_matches(patterns, image))
        })
}

/// Whether the request's namespace is a production one, from its labels; `Err` with the
/// reason when they cannot be read.
pub async fn is_production(
    lookups: &Lookups<'_>,
    request: &Request<'_>,
    selector: &LabelSelector,
) -> Result<bool, String> {
    match lookups.namespace_labels(request.namespace).await {
        Ok(labels) => Ok(selector.matches(&labels)),
        Err(e) => Err(format!(
            "cannot tell whether namespace {} is a production namespace: {e}",
            request.namespace
        )),
    }
}

/// The labels that mark a production namespace, for messages: `a=b, c=d`.
pub fn describe_selector(selector: &LabelSelector) -> String {
    if selector.match_labels.is_empty() {
        return "(every namespace)".to_owned();
    }
    selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `containers[0] "app"` joined for messages.
pub fn join_descriptions(items: &[String]) -> String {
    items.join("; ")
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builds requests and cluster answers for policy unit tests.
    use std::collections::BTreeMap;

    use futures_util::FutureExt;
    use k8s_openapi::api::rbac::v1::PolicyRule;
    use serde_json::Value;

    use crate::cluster::{Binding, ClusterLookup, LookupError, RoleKey};
    use crate::engine::{EvalError, Finding, Lookups, Operation, Policy, Request};
    use crate::view::{self, Object};

    /// What the cluster answers a test's policy: each lookup's answer, or (`None`) that it
    /// was not expected.
    #[derive(Default)]
    pub struct Context {
        pub pod: Option<Result<Object<'static>, String>>,
        pub namespace_labels: Option<Result<BTreeMap<String, String>, String>>,
        pub role_rules: Option<Result<Option<Vec<PolicyRule>>, String>>,
        pub bindings: Option<Result<Vec<Binding>, String>>,
    }

    fn answer<T: Clone>(given: &Option<Result<T, String>>, what: &str) -> Result<T, LookupError> {
        match given {
            Some(answer) => answer.clone().map_err(LookupError::Test),
            None => Err(LookupError::Test(format!(
                "the test did not expect {what} to be read"
            ))),
        }
    }

    #[async_trait::async_trait]
    impl ClusterLookup for Context {
        async fn get_pod(&self, _: &str, _: &str) -> Result<Object<'static>, LookupError> {
            answer(&self.pod, "a pod")
        }
        async fn namespace_labels(&self, _: &str) -> Result<BTreeMap<String, String>, LookupError> {
            answer(&self.namespace_labels, "namespace labels")
        }
        async fn role_rules(&self, _: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
            answer(&self.role_rules, "a role")
        }
        async fn bindings_to(&self, _: &RoleKey) -> Result<Vec<Binding>, LookupError> {
            answer(&self.bindings, "bindings")
        }
    }

    /// Evaluates a policy against a test's cluster (which answers at once).
    pub trait Eval {
        fn eval(&self, request: &Request<'_>, context: &Context)
            -> Result<Vec<Finding>, EvalError>;
    }

    impl<P: Policy + ?Sized> Eval for P {
        fn eval(
            &self,
            request: &Request<'_>,
            context: &Context,
        ) -> Result<Vec<Finding>, EvalError> {
            self.evaluate(request, &Lookups::immediate(context))
                .now_or_never()
                .expect("a test's cluster answers at once")
        }
    }

    /// What `policy` reads from the cluster on `request` (`pod openg2p/db-0`), whatever the
    /// answers.
    pub fn asked(policy: &dyn Policy, request: &Request<'_>) -> Vec<String> {
        let context = Context::default();
        let lookups = Lookups::immediate(&context);
        let _ = policy.evaluate(request, &lookups).now_or_never();
        lookups.asked()
    }

    /// The messages of the violations `policy` finds; panics on an error or a mutation.
    pub fn violations(
        policy: &dyn Policy,
        request: &Request<'_>,
        context: &Context,
    ) -> Vec<String> {
        policy
            .eval(request, context)
            .expect("evaluates")
            .into_iter()
            .map(|f| match f {
                Finding::Violation { message } => message,
                Finding::Mutation { .. } => panic!("a validating policy patched"),
            })
            .collect()
    }

    /// The view of a test object (its `kind` decides what is read).
    pub fn object(value: Value) -> Object<'static> {
        assert!(
            value.get("kind").is_some(),
            "a test object needs a kind: {value}"
        );
        view::owned(value).expect("test object")
    }

    /// `doc` with the patches of `findings` applied.
    pub fn patched(doc: &Value, findings: &[Finding]) -> Value {
        let mut doc = doc.clone();
        for f in findings {
            if let Finding::Mutation { patch, .. } = f {
                json_patch::patch(&mut doc, patch).expect("the patch applies");
            }
        }
        doc
    }

    pub fn request<'a>(
        operation: Operation,
        kind: &'a str,
        resource: &'a str,
        object: Option<&'a Object<'a>>,
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
            shape_error: None,
        }
    }
}
