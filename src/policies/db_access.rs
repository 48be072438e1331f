//! `db-access` (validating): keeps non-admins from running code in or beside database pods:
//!
//! - `exec`, `attach`, `port-forward` and the API server's `pods/proxy` (CONNECT): the request
//!   object is an options object, not the Pod, so the Pod is read through the lookups, after
//!   the admin check; when it cannot be read, the request is denied (fail closed);
//! - ephemeral containers added to a database pod (UPDATE of `pods/ephemeralcontainers`, what
//!   `kubectl debug` does): the request holds the Pod on Kubernetes 1.23 and later, and only the
//!   ephemeral containers before, when the Pod is read through the lookups as for CONNECT;
//! - the API server's `services/proxy` to a Service that selects database pods (the Service is
//!   read through the lookups);
//! - a Pod, or a workload whose pods, mount a database's PersistentVolumeClaim (one a database
//!   pod of the namespace mounts, or one of a database StatefulSet's claim templates), written
//!   by someone other than a controller (the namespace's pods and StatefulSets are read through
//!   the lookups).
//!
//! docs/policies/db-access.md lists every other door to a database's data and what closes it.
//!
//! A Pod is a database pod when a label (`app.kubernetes.io/name`, `app`,
//! `app.kubernetes.io/component`) names a configured database, when one of its containers
//! (`containers`, not init or ephemeral ones, which are often database clients) runs a
//! configured database image, or when it is annotated `prodguard.io/database: "true"`.

use super::image_ref::{validate_images, ImagePattern, ImageRef};
use super::pod_spec::{self, ContainerList};
use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::Admins;
use crate::config::{Labels, PolicyMode};
use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::Object;
use serde::Deserialize;

pub const ID: &str = "db-access";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Label values that name a database.
    pub databases: Vec<String>,
    /// Image repositories that are databases.
    pub images: Vec<String>,
    /// Accounts (wildcards) whose pods that mount a database's claim are the database itself:
    /// the workload controllers, and an operator that creates database pods itself.
    pub controllers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            databases: default_databases(),
            images: default_db_images(),
            controllers: [
                "system:serviceaccount:kube-system:*",
                "system:kube-controller-manager",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

fn default_databases() -> Vec<String> {
    [
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "mongodb",
        "redis",
    ]
    .map(String::from)
    .to_vec()
}

fn default_db_images() -> Vec<String> {
    [
        "postgres",
        "bitnami/postgresql",
        "mysql",
        "mariadb",
        "mongo",
        "bitnami/mongodb",
        "redis",
        "bitnami/redis",
    ]
    .map(String::from)
    .to_vec()
}

/// `db-access`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        validate_images(&settings.images, "`postgres` or `bitnami/postgresql`")?;
        for (i, db) in settings.databases.iter().enumerate() {
            if db.trim().is_empty() {
                return Err((
                    format!("databases[{i}]"),
                    "is empty; give a label value such as `postgresql`".into(),
                ));
            }
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        vec![
            Match::new(
                Webhook::Validate,
                &["CONNECT"],
                &[
                    resources::PODS_EXEC,
                    resources::PODS_ATTACH,
                    resources::PODS_PORTFORWARD,
                    resources::PODS_PROXY,
                    resources::SERVICES_PROXY,
                ],
            ),
            Match::new(
                Webhook::Validate,
                &["UPDATE"],
                &[resources::EPHEMERAL_CONTAINERS],
            ),
            // A pod of a person's that mounts a database's claim; the audit reports the ones
            // that run (it lists the pods that mount a claim).
            Match::new(Webhook::Validate, &["CREATE"], &[resources::PODS]),
            // A workload whose pods would mount one.
            Match::new(
                Webhook::Validate,
                &["CREATE", "UPDATE"],
                resources::WORKLOADS,
            ),
        ]
    }

    fn build(settings: &Settings, config: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(DbAccess::new(settings, &config.admins))]
    }
}
pub const DATABASE_ANNOTATION: &str = "prodguard.io/database";
const LABELS: [&str; 3] = [
    "app.kubernetes.io/name",
    "app",
    "app.kubernetes.io/component",
];

pub struct DbAccess {
    databases: Vec<String>,
    images: Vec<ImagePattern>,
    admins: Admins,
    controllers: Vec<wildmatch::WildMatch>,
}

impl DbAccess {
    pub fn new(config: &Settings, admins: &Admins) -> DbAccess {
        let images = ImagePattern::parse_all(&config.images);
        DbAccess {
            databases: config
                .databases
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            images,
            admins: admins.clone(),
            controllers: config
                .controllers
                .iter()
                .map(|c| wildmatch::WildMatch::new(c))
                .collect(),
        }
    }

    /// What the request would do to the pod, as a message says it (`exec into`), or `None`.
    fn door(request: &Request<'_>) -> Option<&'static str> {
        if request.sub_resource.is_none()
            && matches!(request.operation, Operation::Create | Operation::Update)
            && WORKLOAD_KINDS.contains(&request.kind)
        {
            return Some("write a workload beside");
        }
        if !request.resource_group.is_empty() {
            return None;
        }
        if request.resource == "services" {
            return (request.operation == Operation::Connect
                && request.sub_resource == Some("proxy"))
            .then_some("proxy through the API server to");
        }
        if request.resource != "pods" {
            return None;
        }
        match (&request.operation, request.sub_resource) {
            (Operation::Connect, Some("exec")) => Some("exec into"),
            (Operation::Connect, Some("attach")) => Some("attach to"),
            (Operation::Connect, Some("portforward")) => Some("port-forward to"),
            (Operation::Connect, Some("proxy")) => Some("proxy through the API server to"),
            (Operation::Update, Some("ephemeralcontainers")) => Some("add ephemeral containers to"),
            _ => None,
        }
    }

    /// The ephemeral containers an UPDATE of `pods/ephemeralcontainers` adds (by name).
    fn added_ephemeral<'r>(request: &'r Request<'_>) -> Vec<&'r str> {
        let names = |object: Option<&'r Object<'_>>| -> Vec<&'r str> {
            object
                .map(|o| {
                    pod_spec::containers(o, &[ContainerList::EphemeralContainers])
                        .into_iter()
                        .map(|c| c.name)
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = names(request.old_object);
        names(request.object)
            .into_iter()
            .filter(|name| !before.contains(name))
            .collect()
    }

    fn is_admin(&self, request: &Request<'_>) -> bool {
        self.admins.is_admin(request.username, request.groups)
    }

    /// A Pod, or a workload whose pods, mount a database's claim, written by someone other than a
    /// controller: refused, naming the claim and the database. A database's claim is one a
    /// database pod of the namespace mounts (not a pod of the written workload's own), or one of
    /// a database StatefulSet's claim templates. On UPDATE only claims the request adds count.
    /// The namespace's pods, then its StatefulSets, are read through the lookups; when they
    /// cannot be, the request is refused.
    async fn beside_a_database(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Some(object) = request.object else {
            return Err(EvalError::MissingObject);
        };
        let before = request.old_object.map(claims_of).unwrap_or_default();
        let claims: Vec<&str> = claims_of(object)
            .into_iter()
            .filter(|c| !before.contains(c))
            .collect();
        if claims.is_empty() || self.controllers.iter().any(|c| c.matches(request.username)) {
            return Ok(Vec::new());
        }
        let name = request.object_name();
        let target = if request.kind == "Pod" {
            format!("create pod {}/{name} mounting", request.namespace)
        } else {
            format!(
                "write {} {}/{name} whose pods mount",
                request.kind, request.namespace
            )
        };
        // The message names the claim the request mounts, not the database pod or StatefulSet
        // that holds it, nor why that is a database's: the requester may not be allowed to read
        // them (a forged review would learn it). The log has them.
        let refused = |claim: &str, of: String, reason: String| {
            tracing::info!(
                policy = ID,
                user = request.username,
                claim,
                holder = %of,
                reason = %reason,
                "refused a pod beside a database's storage"
            );
            Ok(vec![Finding::Violation {
                message: format!(
                    "user {:?} may not {target} PersistentVolumeClaim {claim}, which a \
                     database's pods mount: a pod beside a database's storage reads and writes its data \
                     whatever the database allows (kubectl debug --copy-to makes one); database \
                     pods come from their own workload's controller, which \
                     policies.db-access.controllers lists; ask a cluster admin, who can lift \
                     db-access for you and this {} for a bounded time with a PolicyException \
                     (break-glass)",
                    request.username,
                    if request.kind == "Pod" {
                        "pod"
                    } else {
                        "workload"
                    }
                ),
            }])
        };
        let unreadable = |what: &str, e: String| {
            Ok(vec![Finding::Violation {
                message: format!(
                    "cannot tell whether {} {}/{name} mounts a database's PersistentVolumeClaim \
                     ({}) because reading the {what} of namespace {} failed ({e}); denied \
                     because db-access fails closed",
                    request.kind,
                    request.namespace,
                    claims.join(", "),
                    request.namespace
                ),
            }])
        };
        let pods = match lookups.pods_in(request.namespace).await {
            Ok(texts) => texts,
            Err(e) => return unreadable("pods", e),
        };
        for text in &pods {
            let Ok(Some(other)) = Object::decode("Pod", text) else {
                continue;
            };
            // The pod itself (stored already when the audit or an UPDATE judges it), and the
            // written workload's own pods.
            let itself = request.kind == "Pod" && other.name() == Some(name);
            if itself || owned_by(&other, request.kind, name) {
                continue;
            }
            let Some(claim) = claims_of(&other).into_iter().find(|c| claims.contains(c)) else {
                continue;
            };
            let Some(reason) = self.database_reason(&other) else {
                continue;
            };
            let of = format!(
                "database pod {}/{}",
                request.namespace,
                other.name().unwrap_or_default()
            );
            return refused(claim, of, reason);
        }
        // A claim of a database StatefulSet's template, even while it runs no pod.
        let sets = match lookups.statefulsets_in(request.namespace).await {
            Ok(sets) => sets,
            Err(e) => return unreadable("StatefulSets", e),
        };
        for text in &sets {
            let Ok(Some(set)) = Object::decode("StatefulSet", text) else {
                continue;
            };
            let set_name = set.name().unwrap_or_default();
            if request.kind == "StatefulSet" && set_name == name {
                continue;
            }
            let templates: Vec<&str> = match &set.spec {
                crate::view::Spec::Workload(w) => w
                    .volume_claim_templates
                    .iter()
                    .flatten()
                    .filter_map(|t| t.metadata.name.as_deref())
                    .collect(),
                _ => Vec::new(),
            };
            let Some(claim) = claims.iter().find(|claim| {
                templates
                    .iter()
                    .any(|t| claim_of_template(claim, t, set_name))
            }) else {
                continue;
            };
            let Some(reason) = self.statefulset_reason(&set) else {
                continue;
            };
            let of = format!("database StatefulSet {}/{set_name}", request.namespace);
            return refused(claim, of, reason);
        }
        Ok(Vec::new())
    }

    /// The refusal of `verb` on database pod `target`: names the pod (the request names it), what
    /// the door gives, and the way in that is left (break-glass). Why the pod is a database pod
    /// (its labels, annotation or image) is logged, not told: the requester may not be allowed
    /// to read the pod.
    fn refusal(
        &self,
        request: &Request<'_>,
        verb: &str,
        target: &str,
        what: &str,
        reason: &str,
    ) -> Finding {
        tracing::info!(
            policy = ID,
            user = request.username,
            pod = target,
            reason,
            "refused access to a database pod"
        );
        let gives = if request.operation == Operation::Update {
            "an ephemeral container runs a command of the requester's choosing inside the \
             database pod, beside its data, and its output is read with kubectl logs, which no \
             webhook sees"
        } else {
            "only admins may log into, port-forward or proxy to database pods"
        };
        Finding::Violation {
            message: format!(
                "user {:?} may not {verb} database pod {target}{what}: {gives}; ask \
                 a cluster admin, who can lift db-access for you and this pod for a bounded time \
                 with a PolicyException (break-glass)",
                request.username
            ),
        }
    }

    /// Why `pod` is a database pod, or `None`.
    pub fn database_reason(&self, pod: &Object<'_>) -> Option<String> {
        self.meta_reason(&pod.metadata)
            .or_else(|| self.image_reason(pod))
    }

    /// Why a StatefulSet runs database pods (its own labels or its pods'), or `None`.
    fn statefulset_reason(&self, set: &Object<'_>) -> Option<String> {
        let template_meta = match &set.spec {
            crate::view::Spec::Workload(w) => w.template.as_ref().and_then(|t| t.metadata.as_ref()),
            _ => None,
        };
        self.meta_reason(&set.metadata)
            .or_else(|| template_meta.and_then(|m| self.meta_reason(m)))
            .or_else(|| self.image_reason(set))
    }

    /// The database annotation or a label naming a database.
    fn meta_reason(&self, meta: &crate::view::Meta<'_>) -> Option<String> {
        if meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(DATABASE_ANNOTATION))
            .is_some_and(|v| v == "true")
        {
            return Some(format!("annotation {DATABASE_ANNOTATION}=true"));
        }
        self.labels_reason(meta.labels.as_ref()?)
    }

    /// A label (of [`LABELS`]) that names a database.
    fn labels_reason(&self, labels: &crate::view::ObjectLabels<'_>) -> Option<String> {
        for key in LABELS {
            if let Some(value) = labels.label(key) {
                if self.databases.contains(&value.to_ascii_lowercase()) {
                    return Some(format!("label {key}={value}"));
                }
            }
        }
        None
    }

    /// A container (of `containers`) running a database image.
    fn image_reason(&self, object: &Object<'_>) -> Option<String> {
        for container in pod_spec::containers(object, &[ContainerList::Containers]) {
            let Some(image) = container.image else {
                continue;
            };
            let Ok(parsed) = ImageRef::parse(image) else {
                continue;
            };
            if self.images.iter().any(|db| db.matches(&parsed)) {
                return Some(format!("{} runs image {image}", container.describe()));
            }
        }
        None
    }

    /// CONNECT `services/proxy`: refused when the Service selects database pods (its selector
    /// names a database, or a database pod of the namespace carries every label it selects).
    async fn service_proxy(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let name = request.object_name();
        let target = format!("Service {}/{name}", request.namespace);
        let fail = |e: String| {
            Ok(vec![Finding::Violation {
                message: format!(
                    "cannot tell whether {target} leads to database pods because {e}; denied \
                     because db-access fails closed"
                ),
            }])
        };
        let text = match lookups.service(request.namespace, name).await {
            Ok(text) => text,
            Err(e) => return fail(format!("the Service lookup failed ({e})")),
        };
        let service = match Object::decode("Service", &text) {
            Ok(Some(service)) => service,
            Ok(None) => return fail("the API server answered null".into()),
            Err(e) => return fail(e.to_string()),
        };
        let Some(selector) = (match &service.spec {
            crate::view::Spec::Service(spec) => spec.selector.as_ref(),
            _ => None,
        })
        .filter(|s| !s.0.is_empty()) else {
            // No selector: its endpoints are set by hand, and name no pod prodguard can judge.
            return Ok(Vec::new());
        };
        let reason = match self.labels_reason(selector) {
            Some(reason) => format!("its selector's {reason}"),
            None => {
                let texts = match lookups.pods_in(request.namespace).await {
                    Ok(texts) => texts,
                    Err(e) => return fail(format!("reading the namespace's pods failed ({e})")),
                };
                let found = texts.iter().find_map(|text| {
                    let pod = Object::decode("Pod", text).ok()??;
                    let labels = pod.metadata.labels.as_ref()?;
                    let selected = selector.0.iter().all(|(k, v)| labels.label(k) == Some(v));
                    let why = selected.then(|| self.database_reason(&pod)).flatten()?;
                    Some(format!(
                        "it selects database pod {}/{} ({why})",
                        request.namespace,
                        pod.name().unwrap_or_default()
                    ))
                });
                match found {
                    Some(reason) => reason,
                    None => return Ok(Vec::new()),
                }
            }
        };
        tracing::info!(
            policy = ID,
            user = request.username,
            service = %target,
            reason = %reason,
            "refused a proxy to database pods"
        );
        Ok(vec![Finding::Violation {
            message: format!(
                "user {:?} may not proxy through the API server to {target}, which leads to \
                 database pods: only \
                 admins may log into, port-forward or proxy to database pods; ask a cluster \
                 admin, who can lift db-access for you and this Service for a bounded time with a \
                 PolicyException (break-glass)",
                request.username
            ),
        }])
    }
}

/// The kinds whose objects make pods (and Pod itself): db-access judges the claims they mount.
const WORKLOAD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "PodTemplate",
];

/// Whether `pod` is one of the pods the workload `kind`/`name` makes: its controller is the
/// workload, or (a Deployment's, a CronJob's) the ReplicaSet `<name>-<hash>` or the Job
/// `<name>-<n>` the workload makes. A Pod is never its own owner.
fn owned_by(pod: &Object<'_>, kind: &str, name: &str) -> bool {
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return false;
    };
    let made_by = |owner_kind: &str| {
        owner.kind == owner_kind
            && owner
                .name
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| !suffix.is_empty() && !suffix.contains('-'))
    };
    match kind {
        "Pod" => false,
        "Deployment" => made_by("ReplicaSet"),
        "CronJob" => made_by("Job"),
        _ => owner.kind == kind && owner.name == name,
    }
}

/// Whether `claim` is one of the claims StatefulSet `set`'s template `template` gives its pods:
/// `<template>-<set>-<ordinal>`.
fn claim_of_template(claim: &str, template: &str, set: &str) -> bool {
    claim
        .strip_prefix(template)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(set))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

#[async_trait::async_trait]
impl Policy for DbAccess {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Some(verb) = Self::door(request) else {
            return Ok(Vec::new());
        };
        if self.is_admin(request) {
            return Ok(Vec::new());
        }
        if request.sub_resource.is_none() {
            return self.beside_a_database(request, lookups).await;
        }
        if request.resource == "services" {
            return self.service_proxy(request, lookups).await;
        }
        let target = format!("{}/{}", request.namespace, request.name);
        let mut what = String::new();
        if request.operation == Operation::Update {
            let added = Self::added_ephemeral(request);
            if added.is_empty() {
                return Ok(Vec::new());
            }
            let quoted: Vec<String> = added.iter().map(|n| format!("{n:?}")).collect();
            what = format!(" (ephemeral container {})", quoted.join(", "));
            // Kubernetes 1.23 and later send the Pod itself: judge it as it is.
            if let Some(pod) = request
                .object
                .filter(|o| o.shape == crate::view::Shape::Pod)
            {
                return Ok(self
                    .database_reason(pod)
                    .map(|reason| self.refusal(request, verb, &target, &what, &reason))
                    .into_iter()
                    .collect());
            }
        }
        let message = match lookups.pod(request.namespace, request.name).await {
            Err(e) => format!(
                "cannot tell whether pod {target} is a database pod because the pod lookup \
                 failed ({e}); denied because db-access fails closed"
            ),
            Ok(text) => match Object::decode("Pod", &text) {
                Err(e) => format!(
                    "cannot tell whether pod {target} is a database pod: {e}; denied because \
                     db-access fails closed"
                ),
                Ok(None) => format!(
                    "cannot tell whether pod {target} is a database pod: the API server answered \
                     null; denied because db-access fails closed"
                ),
                Ok(Some(pod)) => match self.database_reason(&pod) {
                    None => return Ok(Vec::new()),
                    Some(reason) => {
                        return Ok(vec![self.refusal(request, verb, &target, &what, &reason)])
                    }
                },
            },
        };
        Ok(vec![Finding::Violation { message }])
    }
}

/// The PersistentVolumeClaims a pod's volumes mount.
fn claims_of<'o>(pod: &'o Object<'_>) -> Vec<&'o str> {
    pod.pod_spec()
        .and_then(|spec| spec.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_ref())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{asked, object, request, Context, Eval};
    use serde_json::json;
    use std::borrow::Cow;

    fn policy() -> DbAccess {
        DbAccess::new(&Settings::default(), &Admins::default())
    }

    fn exec_request<'a>(sub: &'a str, groups: &'a [Cow<'a, str>]) -> Request<'a> {
        let mut req = request(Operation::Connect, "PodExecOptions", "pods", None);
        req.sub_resource = Some(sub);
        req.name = "db-0";
        req.groups = groups;
        req
    }

    /// `value` as a Pod.
    fn pod_object(mut value: serde_json::Value) -> crate::view::Object<'static> {
        value["kind"] = json!("Pod");
        object(value)
    }

    fn pod(mut value: serde_json::Value) -> Context {
        value["kind"] = json!("Pod");
        Context {
            pod: Some(Ok(value.to_string())),
            ..Context::default()
        }
    }

    #[test]
    fn recognises_database_pods() {
        let p = policy();
        let cases = [
            (
                json!({"metadata": {"labels": {"app.kubernetes.io/name": "postgresql"}}}),
                true,
            ),
            (json!({"metadata": {"labels": {"app": "Redis"}}}), true),
            (
                json!({"metadata": {"labels": {"app.kubernetes.io/component": "mysql"}}}),
                true,
            ),
            (
                json!({"metadata": {"annotations": {"prodguard.io/database": "true"}}}),
                true,
            ),
            (
                json!({"spec": {"containers": [{"name": "redis", "image": "redis:7.2"}]}}),
                true,
            ),
            (
                json!({"spec": {"containers": [{"name": "pg", "image": "docker.io/bitnami/postgresql:16.3.0"}]}}),
                true,
            ),
            (
                json!({"spec": {"containers": [{"name": "pg", "image": "registry.local:5000/dockerhub/library/postgres:16"}]}}),
                true,
            ),
            (
                json!({"spec": {"containers": [{"name": "m", "image": "mongo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}]}}),
                true,
            ),
            (
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}),
                false,
            ),
            (
                json!({"spec": {"containers": [{"name": "c", "image": "jbergknoff/postgresql-client"}]}}),
                false,
            ),
            (
                json!({"spec": {"containers": [{"name": "c", "image": "redis-exporter"}]}}),
                false,
            ),
            (
                json!({"spec": {"initContainers": [{"name": "wait", "image": "postgres:16"}], "containers": [{"name": "app", "image": "openg2p/app"}]}}),
                false,
            ),
            (
                json!({"metadata": {"annotations": {"prodguard.io/database": "false"}}}),
                false,
            ),
        ];
        for (value, is_db) in cases {
            assert_eq!(
                p.database_reason(&pod_object(value.clone())).is_some(),
                is_db,
                "{value}"
            );
        }
    }

    #[test]
    fn non_admins_are_denied_on_database_pods_for_every_subresource() {
        let p = policy();
        let ctx = pod(json!({"metadata": {"labels": {"app.kubernetes.io/name": "postgresql"}}}));
        for (sub, verb) in [
            ("exec", "exec into"),
            ("attach", "attach to"),
            ("portforward", "port-forward to"),
            ("proxy", "proxy through the API server to"),
        ] {
            let req = exec_request(sub, &[]);
            assert_eq!(asked(&p, &req).len(), 1);
            let findings = p.eval(&req, &ctx).unwrap();
            let Finding::Violation { message } = &findings[0] else {
                panic!()
            };
            assert!(
                message.contains(&format!(
                    "user \"alice\" may not {verb} database pod openg2p/db-0"
                )),
                "{message}"
            );
            // Why it is a database pod (its labels) is logged, not told.
            assert!(!message.contains("app.kubernetes.io/name"), "{message}");
        }
    }

    #[test]
    fn admins_pass_without_a_lookup_and_other_pods_pass() {
        let p = policy();
        let masters = [Cow::from("system:masters")];
        let req = exec_request("exec", &masters);
        assert!(asked(&p, &req).is_empty());
        assert!(p.eval(&req, &Context::default()).unwrap().is_empty());
        let req = exec_request("exec", &[]);
        let web = pod(json!({"spec": {"containers": [{"name": "web", "image": "nginx"}]}}));
        assert!(p.eval(&req, &web).unwrap().is_empty());
        let mut logs = exec_request("log", &[]);
        logs.operation = Operation::Connect;
        assert!(asked(&p, &logs).is_empty());
    }

    /// An UPDATE of `pods/ephemeralcontainers` of pod `db-0`: `before` and `after` are the
    /// request's old and new objects.
    fn debug_request<'a>(
        before: &'a crate::view::Object<'static>,
        after: &'a crate::view::Object<'static>,
        groups: &'a [Cow<'a, str>],
    ) -> Request<'a> {
        let mut req = request(Operation::Update, "Pod", "pods", Some(after));
        req.sub_resource = Some("ephemeralcontainers");
        req.old_object = Some(before);
        req.name = "db-0";
        req.groups = groups;
        req
    }

    fn database_pod(ephemeral: serde_json::Value) -> crate::view::Object<'static> {
        pod_object(
            json!({"metadata": {"name": "db-0", "labels": {"app.kubernetes.io/name": "postgresql"}},
            "spec": {"containers": [{"name": "postgresql", "image": "bitnami/postgresql:16"}],
                     "ephemeralContainers": ephemeral}}),
        )
    }

    #[test]
    fn an_ephemeral_container_into_a_database_pod_is_refused_for_non_admins() {
        let p = policy();
        let before = database_pod(json!([]));
        let after = database_pod(json!([{"name": "debugger-x7", "image": "busybox"}]));
        let req = debug_request(&before, &after, &[]);
        // Kubernetes 1.23 and later send the Pod: no lookup.
        assert!(asked(&p, &req).is_empty());
        let findings = p.eval(&req, &Context::default()).unwrap();
        let Finding::Violation { message } = &findings[0] else {
            panic!("{findings:?}")
        };
        assert_eq!(
            message,
            "user \"alice\" may not add ephemeral containers to database pod openg2p/db-0 \
             (ephemeral container \"debugger-x7\"): an \
             ephemeral container runs a command of the requester's choosing inside the database \
             pod, beside its data, and its output is read with kubectl logs, which no webhook sees; \
             ask a cluster admin, who can lift db-access for you and this pod for a bounded time \
             with a PolicyException (break-glass)"
        );
        // An admin, an update that adds none, and a pod that is no database pass.
        let masters = [Cow::from("system:masters")];
        assert!(p
            .eval(
                &debug_request(&before, &after, &masters),
                &Context::default()
            )
            .unwrap()
            .is_empty());
        assert!(p
            .eval(&debug_request(&after, &after, &[]), &Context::default())
            .unwrap()
            .is_empty());
        let web_before =
            pod_object(json!({"spec": {"containers": [{"name": "web", "image": "nginx"}]}}));
        let web_after = pod_object(
            json!({"spec": {"containers": [{"name": "web", "image": "nginx"}],
            "ephemeralContainers": [{"name": "d", "image": "busybox"}]}}),
        );
        assert!(p
            .eval(
                &debug_request(&web_before, &web_after, &[]),
                &Context::default()
            )
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_ephemeral_containers_object_of_older_servers_is_judged_on_the_pod_read() {
        // Kubernetes 1.20-1.22 send an `EphemeralContainers` object: the Pod is read.
        let p = policy();
        let shape = |names: &[&str]| {
            let list: Vec<_> = names
                .iter()
                .map(|n| json!({"name": n, "image": "busybox"}))
                .collect();
            object(json!({"apiVersion": "v1", "kind": "EphemeralContainers",
                "metadata": {"name": "db-0", "namespace": "openg2p"}, "ephemeralContainers": list}))
        };
        let (before, after) = (shape(&[]), shape(&["debugger"]));
        let req = debug_request(&before, &after, &[]);
        assert_eq!(asked(&p, &req), ["pod openg2p/db-0"]);
        let db = pod(json!({"metadata": {"labels": {"app": "redis"}}}));
        let findings = p.eval(&req, &db).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.contains("database pod openg2p/db-0 (ephemeral container \"debugger\"): ") && !message.contains("redis")),
            "{findings:?}"
        );
        let failed = Context {
            pod: Some(Err("timeout".into())),
            ..Context::default()
        };
        let findings = p.eval(&req, &failed).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.contains("fails closed")),
            "{findings:?}"
        );
    }

    fn with_claim(name: &str, labels: serde_json::Value, image: &str, claim: &str) -> String {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "openg2p", "labels": labels},
            "spec": {"containers": [{"name": "main", "image": image}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
        .to_string()
    }

    #[test]
    fn a_person_s_pod_mounting_a_database_s_claim_is_refused() {
        let p = policy();
        let cluster = Context {
            pods: Some(Ok(vec![
                with_claim(
                    "registry-postgresql-0",
                    json!({"app.kubernetes.io/name": "postgresql"}),
                    "bitnami/postgresql:16",
                    "data-registry-postgresql-0",
                ),
                with_claim("uploads", json!({"app": "web"}), "nginx", "uploads"),
            ])),
            statefulsets: Some(Ok(vec![
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "cache", "namespace": "openg2p"},
                "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "redis"}},
                         "spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
                         "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}})
                .to_string(),
            ])),
            ..Context::default()
        };
        // kubectl debug --copy-to, with its image replaced: no database image, the same claim.
        let copy: crate::view::Object<'static> = object(
            serde_json::from_str::<serde_json::Value>(&with_claim(
                "copy",
                json!({}),
                "busybox",
                "data-registry-postgresql-0",
            ))
            .unwrap(),
        );
        let req = request(Operation::Create, "Pod", "pods", Some(&copy));
        assert_eq!(asked(&p, &req), ["the pods of namespace openg2p"]);
        let scaled_down: crate::view::Object<'static> = object(
            serde_json::from_str::<serde_json::Value>(&with_claim(
                "peek",
                json!({}),
                "busybox",
                "data-cache-0",
            ))
            .unwrap(),
        );
        let peek = request(Operation::Create, "Pod", "pods", Some(&scaled_down));
        // The database pod itself (as the audit judges it, stored) is not beside itself.
        let itself: crate::view::Object<'static> = object(
            serde_json::from_str::<serde_json::Value>(&with_claim(
                "registry-postgresql-0",
                json!({"app.kubernetes.io/name": "postgresql"}),
                "bitnami/postgresql:16",
                "data-registry-postgresql-0",
            ))
            .unwrap(),
        );
        let mut stored = request(Operation::Create, "Pod", "pods", Some(&itself));
        stored.name = "registry-postgresql-0";
        assert!(p.eval(&stored, &cluster).unwrap().is_empty());
        // The claim of a database StatefulSet that runs no pod (scaled to zero).
        let findings = p.eval(&peek, &cluster).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.starts_with(
                "user \"alice\" may not create pod openg2p/peek mounting PersistentVolumeClaim data-cache-0, which a database's pods mount: ") && !message.contains("cache (")),
            "{findings:?}"
        );
        let findings = p.eval(&req, &cluster).unwrap();
        let [Finding::Violation { message }] = &findings[..] else {
            panic!("{findings:?}")
        };
        assert!(
            message.starts_with(
                "user \"alice\" may not create pod openg2p/copy mounting PersistentVolumeClaim \
             data-registry-postgresql-0, which a database's pods mount: a pod beside a \
             database's storage"
            ),
            "{message}"
        );
        // The pod that holds the claim, and why it is a database's, are not told.
        assert!(!message.contains("of database pod"), "{message}");
        // Another claim, a pod with none, a controller, an admin: no finding, and no lookup for
        // the last three.
        let other: crate::view::Object<'static> = object(
            serde_json::from_str::<serde_json::Value>(&with_claim(
                "web-2",
                json!({}),
                "nginx",
                "uploads",
            ))
            .unwrap(),
        );
        assert!(p
            .eval(
                &request(Operation::Create, "Pod", "pods", Some(&other)),
                &cluster
            )
            .unwrap()
            .is_empty());
        let bare = pod_object(
            json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        );
        let req = request(Operation::Create, "Pod", "pods", Some(&bare));
        assert!(asked(&p, &req).is_empty());
        let mut controller = request(Operation::Create, "Pod", "pods", Some(&copy));
        controller.username = "system:serviceaccount:kube-system:statefulset-controller";
        assert!(asked(&p, &controller).is_empty());
        let masters = [Cow::from("system:masters")];
        let mut admin = request(Operation::Create, "Pod", "pods", Some(&copy));
        admin.groups = &masters;
        assert!(asked(&p, &admin).is_empty());
        // The namespace's pods cannot be read: refused.
        let failed = Context {
            pods: Some(Err("timeout".into())),
            ..Context::default()
        };
        let req = request(Operation::Create, "Pod", "pods", Some(&copy));
        let findings = p.eval(&req, &failed).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.contains("denied because db-access fails closed")),
            "{findings:?}"
        );
    }

    #[test]
    fn claims_of_a_statefulset_s_template_are_told_by_name() {
        assert!(claim_of_template("data-pg-0", "data", "pg"));
        assert!(claim_of_template("data-pg-12", "data", "pg"));
        assert!(!claim_of_template("data-pg-", "data", "pg"));
        assert!(!claim_of_template("data-pg-0x", "data", "pg"));
        assert!(!claim_of_template("data-pgx-0", "data", "pg"));
        assert!(!claim_of_template("logs-pg-0", "data", "pg"));
    }

    fn service_proxy(name: &'static str) -> Request<'static> {
        let mut req = request(Operation::Connect, "ServiceProxyOptions", "services", None);
        req.sub_resource = Some("proxy");
        req.name = name;
        req
    }

    fn service(selector: serde_json::Value) -> Option<Result<String, String>> {
        Some(Ok(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "openg2p"}, "spec": {"selector": selector}})
        .to_string()))
    }

    #[test]
    fn the_api_server_s_proxy_to_a_database_service_is_refused() {
        let p = policy();
        // The selector names a database: no pod needs reading.
        let by_selector = Context {
            service: service(json!({"app.kubernetes.io/name": "postgresql"})),
            ..Context::default()
        };
        let findings = p
            .eval(&service_proxy("https:db:5432"), &by_selector)
            .unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.starts_with(
                "user \"alice\" may not proxy through the API server to Service openg2p/db, which leads to database pods: ") && !message.contains("app.kubernetes.io")),
            "{findings:?}"
        );
        // Otherwise the pods it selects are judged.
        let by_pods = Context {
            service: service(json!({"release": "registry"})),
            pods: Some(Ok(vec![
                json!({"kind": "Pod", "metadata": {"name": "web-1", "namespace": "openg2p", "labels": {"release": "web"}},
                    "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}}).to_string(),
                json!({"kind": "Pod", "metadata": {"name": "db-0", "namespace": "openg2p", "labels": {"release": "registry"}},
                    "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}}).to_string(),
            ])),
            ..Context::default()
        };
        let findings = p.eval(&service_proxy("db"), &by_pods).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.contains(
                "to Service openg2p/db, which leads to database pods: ") && !message.contains("db-0") && !message.contains("postgres:16")),
            "{findings:?}"
        );
        let web = Context {
            service: service(json!({"release": "web2"})),
            pods: Some(Ok(vec![])),
            ..Context::default()
        };
        assert!(p.eval(&service_proxy("db"), &web).unwrap().is_empty());
        let failed = Context {
            service: Some(Err("timeout".into())),
            ..Context::default()
        };
        let findings = p.eval(&service_proxy("db"), &failed).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.contains("fails closed")),
            "{findings:?}"
        );
    }

    #[test]
    fn a_workload_whose_pods_mount_a_database_s_claim_is_refused_but_not_the_database_s_own() {
        let p = policy();
        let db_pod = |owner: serde_json::Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "cache-7d9f-x2", "namespace": "openg2p", "labels": {"app": "redis"},
                             "ownerReferences": [owner]},
                "spec": {"containers": [{"name": "redis", "image": "redis:7"}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "cache-data"}}]}})
            .to_string()
        };
        let cluster = Context {
            pods: Some(Ok(vec![db_pod(
                json!({"kind": "ReplicaSet", "name": "cache-7d9f", "controller": true}),
            )])),
            statefulsets: Some(Ok(vec![])),
            ..Context::default()
        };
        let deployment = |name: &str, claim: &str| -> crate::view::Object<'static> {
            object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "openg2p"},
                "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}],
                         "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}}}}))
        };
        let intruder = deployment("reader", "cache-data");
        let mut req = request(
            Operation::Create,
            "Deployment",
            "deployments",
            Some(&intruder),
        );
        req.group = "apps";
        req.resource_group = "apps";
        req.name = "reader";
        let findings = p.eval(&req, &cluster).unwrap();
        assert!(
            matches!(&findings[..], [Finding::Violation { message }] if message.starts_with(
                "user \"alice\" may not write Deployment openg2p/reader whose pods mount PersistentVolumeClaim cache-data, which a database's pods mount: ") && !message.contains("cache-7d9f-x2")),
            "{findings:?}"
        );
        // The database's own Deployment (its ReplicaSet `cache-<hash>` owns the pod) passes; a
        // look-alike name (`cache` vs the ReplicaSet of `cache-7d9f`'s Deployment) does not.
        let own = deployment("cache", "cache-data");
        let mut req = request(Operation::Update, "Deployment", "deployments", Some(&own));
        req.group = "apps";
        req.resource_group = "apps";
        req.name = "cache";
        assert!(p.eval(&req, &cluster).unwrap().is_empty());
        let cache_7 = deployment("cache-7", "cache-data");
        let mut req = request(
            Operation::Create,
            "Deployment",
            "deployments",
            Some(&cache_7),
        );
        req.group = "apps";
        req.resource_group = "apps";
        req.name = "cache-7";
        assert_eq!(p.eval(&req, &cluster).unwrap().len(), 1);
        // An update that adds no claim is not judged again.
        let mut update = request(
            Operation::Update,
            "Deployment",
            "deployments",
            Some(&intruder),
        );
        update.old_object = Some(&intruder);
        update.group = "apps";
        update.resource_group = "apps";
        assert!(asked(&p, &update).is_empty());
    }

    #[test]
    fn a_workload_owns_the_pods_its_controllers_make() {
        let pod = |kind: &str, name: &str| {
            object(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
                "ownerReferences": [{"kind": kind, "name": name, "controller": true}]}}),
            )
        };
        assert!(owned_by(
            &pod("ReplicaSet", "web-5f7c9"),
            "Deployment",
            "web"
        ));
        assert!(!owned_by(
            &pod("ReplicaSet", "web-db-5f7c9"),
            "Deployment",
            "web"
        ));
        assert!(owned_by(&pod("Job", "backup-2894"), "CronJob", "backup"));
        assert!(owned_by(&pod("StatefulSet", "pg"), "StatefulSet", "pg"));
        assert!(!owned_by(&pod("StatefulSet", "pg"), "StatefulSet", "pg2"));
        assert!(!owned_by(&pod("ReplicaSet", "web-5f7c9"), "Pod", "web"));
        let orphan = object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}));
        assert!(!owned_by(&orphan, "Deployment", "p"));
    }

    #[test]
    fn a_failed_lookup_fails_closed() {
        let p = policy();
        let req = exec_request("exec", &[]);
        let ctx = Context {
            pod: Some(Err("pod openg2p/db-0 was not found".into())),
            ..Context::default()
        };
        let findings = p.eval(&req, &ctx).unwrap();
        let Finding::Violation { message } = &findings[0] else {
            panic!()
        };
        assert!(
            message.contains("pod lookup failed (pod openg2p/db-0 was not found)"),
            "{message}"
        );
        assert!(message.contains("fails closed"), "{message}");
    }
}
