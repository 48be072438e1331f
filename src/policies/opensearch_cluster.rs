//! `opensearch-cluster` (validating, audit by default): in a production namespace, an
//! OpenSearch workload that runs as a single node is reported, because the production guide
//! asks for an OpenSearch cluster (several pods with master, data, coordinating and ingest
//! roles) where development runs one pod.
//!
//! A Deployment or StatefulSet is an OpenSearch workload when one of its containers runs a
//! configured OpenSearch image. It runs as a single node when that container sets
//! `discovery.type=single-node` (in `env`), or when it has fewer than `minNodes` replicas
//! (0 replicas is a deliberate scale-down and is not reported). On UPDATE only a workload
//! that did not already break the policy is reported: the background audit reports what runs.

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

pub const ID: &str = "opensearch-cluster";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Image repositories that are OpenSearch nodes.
    pub images: Vec<String>,
    /// The fewest replicas an OpenSearch workload of a production namespace should run.
    pub min_nodes: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Audit,
            images: default_opensearch_images(),
            min_nodes: default_min_nodes(),
        }
    }
}

fn default_opensearch_images() -> Vec<String> {
    vec![
        "opensearchproject/opensearch".to_owned(),
        "bitnami/opensearch".to_owned(),
    ]
}

fn default_min_nodes() -> i64 {
    3
}

/// `opensearch-cluster`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        validate_images(&settings.images, "`bitnami/postgresql`")?;
        if settings.min_nodes < 1 {
            return Err((
                "minNodes".into(),
                format!(
                    "is {}; it must be at least 1 (3 for a cluster)",
                    settings.min_nodes
                ),
            ));
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        workload_matches()
    }

    fn build(settings: &Settings, config: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(OpensearchCluster::policy(
            settings,
            &config.production_namespaces,
        ))]
    }
}

pub struct OpensearchCluster {
    images: Vec<ImagePattern>,
    min_nodes: i64,
}

impl OpensearchCluster {
    pub fn policy(
        config: &Settings,
        production: &LabelSelector,
    ) -> InProduction<OpensearchCluster> {
        InProduction {
            check: OpensearchCluster {
                images: ImagePattern::parse_all(&config.images),
                min_nodes: config.min_nodes,
            },
            production: production.clone(),
        }
    }
}

impl WorkloadCheck for OpensearchCluster {
    fn id(&self) -> &'static str {
        ID
    }

    /// How the workload falls short of a cluster, or `None`.
    fn shortfall(&self, object: &Object<'_>) -> Option<String> {
        let (container, replicas) = running_container(object, &self.images)?;
        let single = container
            .env
            .and_then(|env| env.get("discovery.type"))
            .is_some_and(|v| v == "single-node");
        let image = container.image.unwrap_or_default();
        if single {
            return Some(format!(
                "{} runs {image} with discovery.type=single-node",
                container.describe()
            ));
        }
        if replicas < self.min_nodes {
            let noun = if replicas == 1 { "replica" } else { "replicas" };
            return Some(format!(
                "it runs {replicas} {noun} of {image}, fewer than the {} nodes of a cluster",
                self.min_nodes
            ));
        }
        None
    }

    fn message(&self, what: &str, shortfall: &str, namespace: &str) -> String {
        format!(
            "{what} does not run OpenSearch as a cluster ({shortfall}) in {namespace}; the \
             production guide asks for an OpenSearch cluster: several pods with master, data, \
             coordinating and ingest roles"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Config;
    use super::*;
    use crate::policies::test_support::{asked, object, request, violations, Context, Eval};
    use crate::unit::{EvalError, Operation};
    use serde_json::{json, Value};

    fn policy() -> InProduction<OpensearchCluster> {
        let config = Config::default();
        OpensearchCluster::policy(
            &config.policies.opensearch_cluster,
            &config.production_namespaces,
        )
    }

    fn production(yes: bool) -> Context {
        let labels = if yes {
            BTreeMap::from([(
                "prodguard.io/environment".to_owned(),
                "production".to_owned(),
            )])
        } else {
            BTreeMap::new()
        };
        Context {
            namespace_labels: Some(Ok(labels)),
            ..Context::default()
        }
    }

    fn workload(
        kind: &str,
        replicas: i64,
        image: &str,
        env: Value,
    ) -> crate::view::Object<'static> {
        object(
            json!({"kind": kind, "metadata": {"name": "opensearch"}, "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "opensearch", "image": image, "env": env}]}}}}),
        )
    }

    fn verdict(kind: &str, obj: &crate::view::Object<'static>, ctx: &Context) -> Option<String> {
        let req = request(Operation::Create, kind, "x", Some(obj));
        violations(&policy(), &req, ctx).into_iter().next()
    }

    #[test]
    fn table() {
        let single = json!([{"name": "discovery.type", "value": "single-node"}]);
        let cases = [
            (
                "StatefulSet",
                1,
                "opensearchproject/opensearch:2.11.0",
                json!([]),
                true,
            ),
            (
                "StatefulSet",
                3,
                "opensearchproject/opensearch:2.11.0",
                json!([]),
                false,
            ),
            (
                "StatefulSet",
                3,
                "opensearchproject/opensearch:2.11.0",
                single.clone(),
                true,
            ),
            (
                "Deployment",
                2,
                "docker.io/bitnami/opensearch:2",
                json!([]),
                true,
            ),
            (
                "StatefulSet",
                0,
                "opensearchproject/opensearch",
                single.clone(),
                false,
            ),
            // Not OpenSearch itself: a connector, a dashboard.
            (
                "Deployment",
                1,
                "openg2p/reporting-opensearch-kafka-connector:1.2.0",
                json!([]),
                false,
            ),
            (
                "Deployment",
                1,
                "opensearchproject/opensearch-dashboards:2",
                json!([]),
                false,
            ),
            (
                "DaemonSet",
                1,
                "opensearchproject/opensearch",
                json!([]),
                false,
            ),
        ];
        for (kind, replicas, image, env, reported) in cases {
            let obj = workload(kind, replicas, image, env);
            assert_eq!(
                verdict(kind, &obj, &production(true)).is_some(),
                reported,
                "{kind} {replicas} {image}"
            );
            assert_eq!(
                verdict(kind, &obj, &production(false)),
                None,
                "not production"
            );
        }
    }

    #[test]
    fn messages_and_needs() {
        let obj = workload(
            "StatefulSet",
            3,
            "opensearchproject/opensearch:2",
            json!([{"name": "discovery.type", "value": "single-node"}]),
        );
        let msg = verdict("StatefulSet", &obj, &production(true)).unwrap();
        assert!(msg.starts_with("StatefulSet openg2p/opensearch does not run OpenSearch as a cluster (containers[0] \"opensearch\" runs opensearchproject/opensearch:2 with discovery.type=single-node) in production namespace openg2p (prodguard.io/environment=production)"), "{msg}");
        let failed = Context {
            namespace_labels: Some(Err("namespace openg2p was not found".into())),
            ..Context::default()
        };
        let req = request(Operation::Create, "StatefulSet", "statefulsets", Some(&obj));
        assert_eq!(
            policy().eval(&req, &failed),
            Err(EvalError::Lookup(
                "cannot tell whether namespace openg2p is a production namespace: namespace openg2p was not found".into()
            ))
        );
        let req = request(Operation::Create, "StatefulSet", "statefulsets", Some(&obj));
        assert_eq!(asked(&policy(), &req), ["namespace openg2p"]);
        let web = workload("StatefulSet", 1, "nginx", json!([]));
        let req = request(Operation::Create, "StatefulSet", "statefulsets", Some(&web));
        assert!(
            asked(&policy(), &req).is_empty(),
            "no lookup for other images"
        );
    }

    #[test]
    fn update_reports_only_a_new_shortfall() {
        let old = workload("StatefulSet", 1, "opensearchproject/opensearch", json!([]));
        let new = workload("StatefulSet", 1, "opensearchproject/opensearch", json!([]));
        let mut req = request(Operation::Update, "StatefulSet", "statefulsets", Some(&new));
        req.old_object = Some(&old);
        assert!(policy().eval(&req, &production(true)).unwrap().is_empty());
        let old3 = workload("StatefulSet", 3, "opensearchproject/opensearch", json!([]));
        req.old_object = Some(&old3);
        assert_eq!(policy().eval(&req, &production(true)).unwrap().len(), 1);
    }
}
