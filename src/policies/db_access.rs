//! `db-access` (validating): keeps non-admins from running code in or beside database pods:
//!
//! - `exec`, `attach`, `port-forward` and the API server's `pods/proxy` (CONNECT): the request
//!   object is an options object, not the Pod, so the Pod is read through the lookups, after
//!   the admin check; when it cannot be read, the request is denied (fail closed);
//! - ephemeral containers added to a database pod (UPDATE of `pods/ephemeralcontainers`, what
//!   `kubectl debug` does): the request holds the Pod on Kubernetes 1.23 and later, and only the
//!   ephemeral containers before, when the Pod is read through the lookups as for CONNECT.
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
use super::PolicyModule;
use crate::config::Admins;
use crate::config::{Config, Labels, PolicyMode};
use crate::engine::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
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
        if request.resource != "pods" || !request.resource_group.is_empty() {
            return None;
        }
        match (&request.operation, request.sub_resource) {
            (Operation::Connect, Some("exec")) => Some("exec into"),
            (Operation::Connect, Some("attach")) => Some("attach to"),
            (Operation::Connect, Some("portforward")) => Some("port-forward to"),
            (Operation::Connect, Some("proxy")) => Some("proxy through the API server to"),
            (Operation::Update, Some("ephemeralcontainers")) => Some("add ephemeral containers to"),
            (Operation::Create, None) => Some("create a pod beside"),
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

    /// A Pod CREATE by someone other than a controller that mounts a claim a database pod of
    /// the namespace mounts: refused, naming the claim and the database pod. The namespace's
    /// pods are read through the lookups; when they cannot be, the request is refused.
    async fn pod_beside_a_database(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Some(pod) = request.object else {
            return Err(EvalError::MissingObject);
        };
        let claims: Vec<&str> = claims_of(pod);
        if claims.is_empty() || self.controllers.iter().any(|c| c.matches(request.username)) {
            return Ok(Vec::new());
        }
        let target = format!("{}/{}", request.namespace, request.object_name());
        let texts = match lookups.pods_in(request.namespace).await {
            Ok(texts) => texts,
            Err(e) => {
                return Ok(vec![Finding::Violation {
                    message: format!(
                        "cannot tell whether pod {target} mounts a database's \
                         PersistentVolumeClaim ({}) because reading the pods of namespace {} \
                         failed ({e}); denied because db-access fails closed",
                        claims.join(", "),
                        request.namespace
                    ),
                }])
            }
        };
        for text in &texts {
            let Ok(Some(other)) = Object::decode("Pod", text) else {
                continue;
            };
            if other.name() == Some(request.object_name()) {
                continue;
            }
            let Some(claim) = claims_of(&other).into_iter().find(|c| claims.contains(c)) else {
                continue;
            };
            let Some(reason) = self.database_reason(&other) else {
                continue;
            };
            return Ok(vec![Finding::Violation {
                message: format!(
                    "user {:?} may not create pod {target} mounting PersistentVolumeClaim {claim} \
                     of database pod {}/{} ({reason}): a pod beside a database's storage reads \
                     and writes its data whatever the database allows (kubectl debug --copy-to \
                     makes one); database pods come from their controller, which \
                     policies.db-access.controllers lists; ask a cluster admin, who can lift \
                     db-access for you and this pod for a bounded time with a PolicyException \
                     (break-glass)",
                    request.username,
                    request.namespace,
                    other.name().unwrap_or_default()
                ),
            }]);
        }
        Ok(Vec::new())
    }

    /// The refusal of `verb` on database pod `target`: names the pod and why it is one, what the
    /// door gives, and the way in that is left (break-glass).
    fn refusal(
        &self,
        request: &Request<'_>,
        verb: &str,
        target: &str,
        what: &str,
        reason: &str,
    ) -> Finding {
        let gives = if request.operation == Operation::Update {
            "an ephemeral container runs a command of the requester's choosing inside the \
             database pod, beside its data, and its output is read with kubectl logs, which no \
             webhook sees"
        } else {
            "only admins may log into, port-forward or proxy to database pods"
        };
        Finding::Violation {
            message: format!(
                "user {:?} may not {verb} database pod {target}{what} ({reason}): {gives}; ask \
                 a cluster admin, who can lift db-access for you and this pod for a bounded time \
                 with a PolicyException (break-glass)",
                request.username
            ),
        }
    }

    /// Why `pod` is a database pod, or `None`.
    pub fn database_reason(&self, pod: &Object<'_>) -> Option<String> {
        let meta = &pod.metadata;
        if meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(DATABASE_ANNOTATION))
            .is_some_and(|v| v == "true")
        {
            return Some(format!("annotation {DATABASE_ANNOTATION}=true"));
        }
        if let Some(labels) = &meta.labels {
            for key in LABELS {
                if let Some(value) = labels.label(key) {
                    if self.databases.contains(&value.to_ascii_lowercase()) {
                        return Some(format!("label {key}={value}"));
                    }
                }
            }
        }
        for container in pod_spec::containers(pod, &[ContainerList::Containers]) {
            let Some(image) = container.image else {
                continue;
            };
            let Ok(parsed) = ImageRef::parse(image) else {
                continue;
            };
            let is_db = self.images.iter().any(|db| db.matches(&parsed));
            if is_db {
                return Some(format!("{} runs image {image}", container.describe()));
            }
        }
        None
    }
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
        if request.operation == Operation::Create {
            return self.pod_beside_a_database(request, lookups).await;
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
            assert!(
                message.contains("label app.kubernetes.io/name=postgresql"),
                "{message}"
            );
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
             (ephemeral container \"debugger-x7\") (label app.kubernetes.io/name=postgresql): an \
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
            matches!(&findings[..], [Finding::Violation { message }] if message.contains("(ephemeral container \"debugger\") (label app=redis)")),
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
        let findings = p.eval(&req, &cluster).unwrap();
        let [Finding::Violation { message }] = &findings[..] else {
            panic!("{findings:?}")
        };
        assert!(
            message.starts_with(
                "user \"alice\" may not create pod openg2p/copy mounting PersistentVolumeClaim \
             data-registry-postgresql-0 of database pod openg2p/registry-postgresql-0 (label \
             app.kubernetes.io/name=postgresql): a pod beside a database's storage"
            ),
            "{message}"
        );
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
