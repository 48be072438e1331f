//! `external-databases` (validating, audit by default): in a production namespace, a
//! PostgreSQL or MinIO StatefulSet or Deployment is reported with the production guide's
//! advice: run them on separate machines with high capacity, tight access control and backups.
//!
//! A workload is such a store when one of its containers runs a configured image. A workload
//! scaled to 0 is not reported. On UPDATE only a workload that did not already run the store
//! is reported: the background audit reports what runs.

use super::image_ref::validate_images;
use super::image_ref::ImagePattern;
use super::production::workload_matches;
use super::production::{running_container, InProduction, WorkloadCheck};
use super::resources::Match;
use super::Config;
use super::PolicyModule;
use crate::config::LabelSelector;
use crate::config::PolicyMode;
use crate::unit::Policy;
use crate::view::Object;
use serde::Deserialize;

pub const ID: &str = "external-databases";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Image repositories of the stores the guide runs outside the cluster.
    pub images: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Audit,
            images: default_external_images(),
        }
    }
}

fn default_external_images() -> Vec<String> {
    [
        "postgres",
        "bitnami/postgresql",
        "minio/minio",
        "bitnami/minio",
    ]
    .map(String::from)
    .to_vec()
}

/// `external-databases`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        validate_images(&settings.images, "`bitnami/postgresql`")
    }

    fn matches(_: &Settings) -> Vec<Match> {
        workload_matches()
    }

    fn build(settings: &Settings, config: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(ExternalDatabases::policy(
            settings,
            &config.production_namespaces,
        ))]
    }
}

pub struct ExternalDatabases {
    images: Vec<ImagePattern>,
}

/// How the guide names the store an image runs.
fn store_name(image: &str) -> &'static str {
    let image = image.to_ascii_lowercase();
    if image.contains("postgres") {
        "PostgreSQL"
    } else if image.contains("minio") {
        "MinIO"
    } else {
        "a database"
    }
}

impl ExternalDatabases {
    pub fn policy(
        config: &Settings,
        production: &LabelSelector,
    ) -> InProduction<ExternalDatabases> {
        InProduction {
            check: ExternalDatabases {
                images: ImagePattern::parse_all(&config.images),
            },
            production: production.clone(),
        }
    }
}

impl WorkloadCheck for ExternalDatabases {
    fn id(&self) -> &'static str {
        ID
    }

    /// Which store the workload runs in the cluster, or `None`.
    fn shortfall(&self, object: &Object<'_>) -> Option<String> {
        let (container, _) = running_container(object, &self.images)?;
        let image = container.image.unwrap_or_default();
        Some(format!(
            "{} ({}, image {image})",
            store_name(image),
            container.describe()
        ))
    }

    fn message(&self, what: &str, store: &str, namespace: &str) -> String {
        format!(
            "{what} runs {store} inside the cluster in {namespace}; the production guide runs \
             PostgreSQL and MinIO on separate machines with high capacity, tight access control \
             and backups"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Config;
    use super::*;
    use crate::policies::test_support::{asked, object, request, violations, Context, Eval};
    use crate::unit::Operation;
    use serde_json::json;

    fn policy() -> InProduction<ExternalDatabases> {
        let config = Config::default();
        ExternalDatabases::policy(
            &config.policies.external_databases,
            &config.production_namespaces,
        )
    }

    fn production() -> Context {
        Context {
            namespace_labels: Some(Ok(BTreeMap::from([(
                "prodguard.io/environment".to_owned(),
                "production".to_owned(),
            )]))),
            ..Context::default()
        }
    }

    fn workload(kind: &str, replicas: i64, image: &str) -> crate::view::Object<'static> {
        object(
            json!({"kind": kind, "metadata": {"name": "store"}, "spec": {
            "replicas": replicas,
            "template": {"spec": {
                "initContainers": [{"name": "wait", "image": "postgres:16"}],
                "containers": [{"name": "main", "image": image}]}}}}),
        )
    }

    fn verdict(kind: &str, obj: &crate::view::Object<'static>, ctx: &Context) -> Option<String> {
        let req = request(Operation::Create, kind, "x", Some(obj));
        violations(&policy(), &req, ctx).into_iter().next()
    }

    #[test]
    fn table() {
        let cases = [
            (
                "StatefulSet",
                1,
                "docker.io/bitnami/postgresql:16.2.0",
                Some("PostgreSQL"),
            ),
            ("StatefulSet", 3, "postgres:16", Some("PostgreSQL")),
            (
                "Deployment",
                1,
                "quay.io/minio/minio:RELEASE.2024",
                Some("MinIO"),
            ),
            ("StatefulSet", 4, "bitnami/minio:2024", Some("MinIO")),
            ("StatefulSet", 0, "postgres:16", None),
            // A client in the init container does not count; other images do not either.
            ("StatefulSet", 1, "openg2p/odoo:17", None),
            ("Deployment", 1, "minio/mc:latest", None),
            ("DaemonSet", 1, "postgres:16", None),
        ];
        for (kind, replicas, image, store) in cases {
            let obj = workload(kind, replicas, image);
            let got = verdict(kind, &obj, &production());
            match store {
                None => assert_eq!(got, None, "{kind} {image}"),
                Some(name) => {
                    let msg = got.unwrap_or_default();
                    assert!(
                        msg.starts_with(&format!("{kind} openg2p/store runs {name} (containers[0] \"main\", image {image}) inside the cluster in production namespace openg2p")),
                        "{msg}"
                    );
                    assert!(msg.contains("separate machines"), "{msg}");
                }
            }
            let not_production = Context {
                namespace_labels: Some(Ok(BTreeMap::new())),
                ..Context::default()
            };
            assert_eq!(verdict(kind, &obj, &not_production), None);
        }
    }

    #[test]
    fn update_reports_only_a_new_store_and_needs_follow_the_image() {
        let old = workload("StatefulSet", 1, "postgres:15");
        let new = workload("StatefulSet", 1, "postgres:16");
        let mut req = request(Operation::Update, "StatefulSet", "statefulsets", Some(&new));
        req.old_object = Some(&old);
        assert!(policy().eval(&req, &production()).unwrap().is_empty());
        assert!(asked(&policy(), &req).is_empty());
        let before = workload("StatefulSet", 1, "busybox");
        req.old_object = Some(&before);
        assert_eq!(policy().eval(&req, &production()).unwrap().len(), 1);
        assert_eq!(asked(&policy(), &req), ["namespace openg2p"]);
    }
}
