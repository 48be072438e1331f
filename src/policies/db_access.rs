//! `db-access` (validating, CONNECT): blocks `exec`, `attach` and `port-forward` into database
//! pods for non-admins. The request object is a `PodExecOptions` (or attach/port-forward
//! options), not the Pod, so the engine reads the Pod from the API server first; when it
//! cannot, the request is denied (fail closed).
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            databases: default_databases(),
            images: default_db_images(),
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
        vec![Match::new(
            Webhook::Validate,
            &["CONNECT"],
            &[
                resources::PODS_EXEC,
                resources::PODS_ATTACH,
                resources::PODS_PORTFORWARD,
            ],
        )]
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
        }
    }

    fn applies(request: &Request<'_>) -> bool {
        request.operation == Operation::Connect
            && request.resource == "pods"
            && matches!(
                request.sub_resource,
                Some("exec" | "attach" | "portforward")
            )
    }

    fn is_admin(&self, request: &Request<'_>) -> bool {
        self.admins.is_admin(request.username, request.groups)
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
        if !Self::applies(request) || self.is_admin(request) {
            return Ok(Vec::new());
        }
        let verb = match request.sub_resource {
            Some("exec") => "exec into",
            Some("attach") => "attach to",
            _ => "port-forward to",
        };
        let target = format!("{}/{}", request.namespace, request.name);
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
                    Some(reason) => format!(
                        "user {:?} may not {verb} database pod {target} ({reason}): only admins \
                         may log into or port-forward to database pods; ask a cluster admin for \
                         access",
                        request.username
                    ),
                },
            },
        };
        Ok(vec![Finding::Violation { message }])
    }
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
