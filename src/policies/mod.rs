//! The built-in policies, one module each, named after the policy id, listed once in the
//! registry below; and the helpers they share: the pod-spec walker, the image-reference
//! parser, the resources policies match.
//!
//! A policy module declares a [`PolicyModule`]: its id, its settings (a struct, its defaults
//! and its validation), what it matches, and the policies it runs. Configuration parsing, the
//! engine, the webhook rules ([`webhook_rules`]; `tests/registry.rs` checks `deploy/` against
//! them), the audit's kinds and the metric labels all come from the registry. Adding a policy
//! is its module, its line in `registry!`, and its page under `docs/policies/`.

pub mod floor;
pub mod image_ref;
pub mod pod_spec;
pub mod production;
pub mod resources;

// One module per policy, listed again in `registry!` below (which runs them in its order).
// Declared here, not by the macro, so that rustfmt and other tools see the files.
pub mod airgap_registry;
pub mod db_access;
pub mod external_databases;
pub mod image_pull_policy;
pub mod ingress_body_size;
pub mod min_replicas;
pub mod node_spread;
pub mod opensearch_cluster;
pub mod protect_delete;
pub mod rbac_hygiene;
pub mod registry_mirror;

use std::fmt;

use json_patch::PatchOperation;
use serde::de::{Deserialize, DeserializeOwned, Deserializer, Error as _, MapAccess, Visitor};

use crate::config::{LabelSelector, PolicyMode, PolicySettings};
use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::Object;
use image_ref::ImagePattern;
use pod_spec::{ContainerList, ContainerRef};
use resources::{Match, Resource};

/// A policy set file with the registry's policies: what `serve`, `check` and the audit load.
pub type Config = crate::config::Config<Policies>;

/// What a policy module declares. Each module has one, `Definition`, and one line in the
/// registry.
pub trait PolicyModule {
    /// The policy id: its key under `policies:`, and how findings name it.
    const ID: &'static str;
    /// Its settings under `policies.<id>`, with their defaults (`Default`, which serde reads
    /// for a key left out). Every policy's settings have a `mode: PolicyMode` field, which the
    /// registry reads.
    type Settings: DeserializeOwned + Default + Clone + PartialEq + fmt::Debug + Send + Sync;
    /// What serde cannot check; `Err((key under policies.<id>, problem))`, the problem saying
    /// how to fix it.
    fn validate(_settings: &Self::Settings) -> Result<(), (String, String)> {
        Ok(())
    }
    /// The requests it acts on: the webhook rules and the audit's kinds.
    fn matches(settings: &Self::Settings) -> Vec<Match>;
    /// Its policies (one per webhook it runs in), built from its settings and the rest of the
    /// configuration (admins, production namespaces).
    fn build(settings: &Self::Settings, config: &Config) -> Vec<Box<dyn Policy>>;
    /// Its floor: the part of its rule the API server can decide from the request alone, in
    /// CEL (none for a policy that needs a lookup). Built from its live settings, whatever
    /// its mode (the `floor` module writes it by the mode).
    fn floor(_settings: &Self::Settings, _config: &Config) -> Vec<floor::Floor> {
        Vec::new()
    }
}

/// Lists the policy modules, in the order they run within each webhook (so the mutating ones
/// patch in this order), and derives from them the `policies:` settings, the policies and
/// what they match.
macro_rules! registry {
    ($($module:ident,)*) => {
        /// Every policy's settings (`policies:` in the configuration), one field per module.
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct Policies {
            $(pub $module: <$module::Definition as PolicyModule>::Settings,)*
        }

        /// The policy ids, in registry order.
        pub const IDS: &[&str] = &[$(<$module::Definition as PolicyModule>::ID,)*];

        impl<'de> Deserialize<'de> for Policies {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct PoliciesVisitor;
                impl<'de> Visitor<'de> for PoliciesVisitor {
                    type Value = Policies;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a map of policy ids to their settings")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Policies, A::Error> {
                        let mut policies = Policies::default();
                        while let Some(key) = map.next_key::<String>()? {
                            $(
                                if key == <$module::Definition as PolicyModule>::ID {
                                    policies.$module = map.next_value()?;
                                    continue;
                                }
                            )*
                            return Err(A::Error::unknown_field(&key, IDS));
                        }
                        Ok(policies)
                    }
                }
                deserializer.deserialize_map(PoliciesVisitor)
            }
        }

        impl PolicySettings for Policies {
            /// Checks each policy's settings; the key of a problem is the full dotted path.
            fn validate(&self) -> Result<(), (String, String)> {
                $(
                    <$module::Definition as PolicyModule>::validate(&self.$module).map_err(
                        |(key, problem)| {
                            let id = <$module::Definition as PolicyModule>::ID;
                            (settings_key(id, &key), problem)
                        },
                    )?;
                )*
                Ok(())
            }
        }

        impl Policies {
            /// What each policy acts on, with its id, whatever its mode (the webhook rules
            /// cover every policy, so that turning one on needs no new rule).
            pub fn matches(&self) -> Vec<(&'static str, Match)> {
                let mut all = Vec::new();
                $(
                    for m in <$module::Definition as PolicyModule>::matches(&self.$module) {
                        all.push((<$module::Definition as PolicyModule>::ID, m));
                    }
                )*
                all
            }

            /// Each policy's id and mode, from its settings.
            pub fn modes(&self) -> Vec<(&'static str, PolicyMode)> {
                vec![$((<$module::Definition as PolicyModule>::ID, self.$module.mode),)*]
            }
        }

        /// Every policy's floor, with its id and mode, in registry order (a policy without one
        /// is left out).
        pub fn floors(config: &Config) -> Vec<(&'static str, PolicyMode, Vec<floor::Floor>)> {
            let mut all = Vec::new();
            $(
                let settings = &config.policies.$module;
                let parts = <$module::Definition as PolicyModule>::floor(settings, config);
                if !parts.is_empty() {
                    all.push((<$module::Definition as PolicyModule>::ID, settings.mode, parts));
                }
            )*
            all
        }

        /// Every built-in policy with its configured mode, in registry order.
        pub fn build(config: &Config) -> Vec<(Box<dyn Policy>, PolicyMode)> {
            let mut all = Vec::new();
            $(
                let settings = &config.policies.$module;
                let mode = settings.mode;
                for policy in <$module::Definition as PolicyModule>::build(settings, config) {
                    all.push((policy, mode));
                }
            )*
            all
        }
    };
}

registry! {
    registry_mirror,
    image_pull_policy,
    node_spread,
    ingress_body_size,
    airgap_registry,
    db_access,
    min_replicas,
    protect_delete,
    rbac_hygiene,
    opensearch_cluster,
    external_databases,
}

/// `policies.<id>.<key>` (`policies.<id>` when the key is empty).
fn settings_key(id: &str, key: &str) -> String {
    if key.is_empty() {
        format!("policies.{id}")
    } else {
        format!("policies.{id}.{key}")
    }
}

/// The resources the webhook rules must name, per webhook: every policy's matches, merged
/// into one list of (operation, resource) per webhook, in first-seen order.
pub fn webhook_rules(policies: &Policies) -> Vec<(Webhook, &'static str, Resource)> {
    let mut rules: Vec<(Webhook, &'static str, Resource)> = Vec::new();
    for (_, m) in policies.matches() {
        for operation in m.operations {
            // A kind of an API prodguard does not know is the admin's rule to add.
            for resource in m
                .resources
                .iter()
                .filter(|r| r.group != resources::ANY_GROUP)
            {
                let rule = (m.webhook, *operation, *resource);
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
    }
    // Writes of PolicyExceptions, which the engine judges whatever the policies.
    for operation in ["CREATE", "UPDATE"] {
        rules.push((Webhook::Validate, operation, resources::POLICY_EXCEPTIONS));
    }
    rules
}

/// The stored kinds a policy judges when they are created or updated: what the background
/// audit lists, in first-seen order.
pub fn audited_resources(policies: &Policies) -> Vec<Resource> {
    let mut kinds: Vec<Resource> = Vec::new();
    for (_, m) in policies.matches() {
        if !m.audited
            || !m
                .operations
                .iter()
                .any(|o| matches!(*o, "CREATE" | "UPDATE"))
        {
            continue;
        }
        for resource in m.resources {
            if !resource.is_subresource() && !kinds.contains(&resource) {
                kinds.push(resource);
            }
        }
    }
    kinds
}

/// The operations a container policy acts on: pods when created (and their ephemeral
/// containers when added), workloads when created or updated.
pub fn container_matches(webhook: Webhook) -> Vec<Match> {
    let pod_operations: &'static [&'static str] = match webhook {
        Webhook::Mutate => &["CREATE"],
        Webhook::Validate => &["CREATE", "UPDATE"],
    };
    let ephemeral_operations: &'static [&'static str] = match webhook {
        Webhook::Mutate => &["UPDATE"],
        Webhook::Validate => &["CREATE", "UPDATE"],
    };
    vec![
        Match::new(webhook, pod_operations, &[resources::PODS]),
        Match::new(
            webhook,
            ephemeral_operations,
            &[resources::EPHEMERAL_CONTAINERS],
        ),
        Match::new(webhook, &["CREATE", "UPDATE"], resources::WORKLOADS),
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
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_every_policy_once_mutating_first() {
        let policies = Policies::default();
        assert_eq!(IDS.len(), 11);
        let modes = policies.modes();
        assert_eq!(modes.iter().map(|(id, _)| *id).collect::<Vec<_>>(), IDS);
        let built = build(&Config::default());
        let webhooks: Vec<_> = built.iter().map(|(p, _)| (p.id(), p.webhook())).collect();
        // ingress-body-size runs in both webhooks.
        assert_eq!(webhooks.len(), 12);
        assert_eq!(webhooks[3], ("ingress-body-size", Webhook::Mutate));
        assert_eq!(webhooks[4], ("ingress-body-size", Webhook::Validate));
        for id in IDS {
            assert!(
                webhooks.iter().any(|(i, _)| i == id),
                "{id} builds a policy"
            );
        }
    }

    #[test]
    fn every_kind_a_policy_matches_has_its_own_metric_label() {
        for (id, m) in Policies::default().matches() {
            for resource in &m.resources {
                for kind in resource.kinds {
                    assert_eq!(
                        crate::report::metrics::kind_label(kind),
                        *kind,
                        "{id}: {}",
                        resource.plural
                    );
                }
            }
        }
        assert_eq!(crate::report::metrics::kind_label("Service"), "other");
    }

    #[test]
    fn the_audit_lists_what_policies_judge_when_created() {
        let kinds: Vec<_> = audited_resources(&Policies::default())
            .iter()
            .map(|r| r.kind())
            .collect();
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "ClusterRoleBinding",
                "CronJob",
                "DaemonSet",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Ingress",
                "IngressRoute",
                "Job",
                "Middleware",
                "Pod",
                "PodTemplate",
                "ReplicaSet",
                "ReplicationController",
                "RoleBinding",
                "StatefulSet",
            ]
        );
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builds requests and cluster answers for policy unit tests.
    use std::collections::BTreeMap;

    use futures_util::FutureExt;
    use k8s_openapi::api::rbac::v1::PolicyRule;
    use serde_json::Value;

    use crate::unit::{Binding, ClusterLookup, LookupError, RoleKey};
    use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request};
    use crate::view::{self, Object};

    /// What the cluster answers a test's policy: each lookup's answer, or (`None`) that it
    /// was not expected.
    #[derive(Default)]
    pub struct Context {
        /// The Pod, as JSON.
        pub pod: Option<Result<String, String>>,
        pub namespace_labels: Option<Result<BTreeMap<String, String>, String>>,
        pub role_rules: Option<Result<Option<Vec<PolicyRule>>, String>>,
        pub bindings: Option<Result<Vec<Binding>, String>>,
        /// Traefik Middlewares, as JSON: the cluster holds these and no others.
        pub middlewares: Vec<String>,
        /// The pods of the request's namespace, as JSON.
        pub pods: Option<Result<Vec<String>, String>>,
        /// The StatefulSets of the request's namespace, as JSON.
        pub statefulsets: Option<Result<Vec<String>, String>>,
        /// The Service, as JSON.
        pub service: Option<Result<String, String>>,
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
        async fn get_pod(&self, _: &str, _: &str) -> Result<String, LookupError> {
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
        async fn get_middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
            let mut cluster = crate::cluster::Snapshot {
                complete: true,
                ..Default::default()
            };
            for text in &self.middlewares {
                cluster.add_middleware(text.clone());
            }
            cluster.middleware(namespace, name)
        }
        async fn pods_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            answer(&self.pods, "the pods of a namespace")
        }
        async fn statefulsets_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            answer(&self.statefulsets, "the StatefulSets of a namespace")
        }
        async fn get_service(&self, _: &str, _: &str) -> Result<String, LookupError> {
            answer(&self.service, "a Service")
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

    /// Evaluates `policy` as the engine does: only on what `matches` (its module's) covers.
    pub fn eval_matched(
        matches: &[super::resources::Match],
        policy: &dyn Policy,
        request: &Request<'_>,
        context: &Context,
    ) -> Result<Vec<Finding>, EvalError> {
        if !matches.iter().any(|m| crate::engine::covers(m, request)) {
            return Ok(Vec::new());
        }
        policy.eval(request, context)
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
                Finding::Advisory { message } => format!("advisory: {message}"),
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
