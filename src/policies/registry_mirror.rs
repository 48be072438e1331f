//! `registry-mirror` (mutating, optional): rewrites public image references to the private
//! mirror, keeping path, tag and digest. Mutating webhooks run before validating ones, so a
//! mirrored image then passes `airgap-registry`.
//!
//! Scope as `image-pull-policy`: Pods on CREATE and their ephemeral containers, workloads on
//! CREATE and UPDATE. An image that does not parse is left alone (`airgap-registry` reports it).

use super::image_ref::parse_registry_pattern;
use super::resources::Match;
use super::Config;
use super::{container_matches, PolicyModule};
use crate::config::PolicyMode;
use json_patch::{PatchOperation, ReplaceOperation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

use super::image_ref::{normalize_registry, ImageRef};
use super::mutate_containers;
use crate::unit::{EvalError, Finding, Lookups, Policy, Request, Webhook};

pub const ID: &str = "registry-mirror";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Public registry (`docker.io`) -> mirror prefix (`registry.local:5000/dockerhub`).
    pub mirrors: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Off,
            mirrors: BTreeMap::new(),
        }
    }
}

/// `registry-mirror`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        for (from, to) in &settings.mirrors {
            let key = format!("mirrors.{from}");
            normalize_registry(from).map_err(|e| {
                (
                    key.clone(),
                    format!("{e}; a mirror key is a public registry such as `docker.io`"),
                )
            })?;
            parse_registry_pattern(to).map_err(|problem| (key.clone(), problem))?;
        }
        if settings.mode != PolicyMode::Off && settings.mirrors.is_empty() {
            return Err((
                "mirrors".into(),
                "the policy is on but maps no registry; add for example \
                 `docker.io: registry.local:5000/dockerhub` or set mode: \"off\""
                    .into(),
            ));
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        container_matches(Webhook::Mutate)
    }

    fn build(settings: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(RegistryMirror::new(settings))]
    }
}

pub struct RegistryMirror {
    /// (normalised public registry, mirror prefix)
    mirrors: Vec<(String, String)>,
}

impl RegistryMirror {
    pub fn new(config: &Settings) -> RegistryMirror {
        RegistryMirror {
            mirrors: config
                .mirrors
                .iter()
                // Validated at load; an entry that still fails is skipped, never guessed at.
                .filter_map(|(from, to)| {
                    normalize_registry(from)
                        .ok()
                        .map(|from| (from, to.trim_end_matches('/').to_owned()))
                })
                .collect(),
        }
    }

    /// The mirrored reference for `image`, if its registry is mirrored.
    pub fn mirrored(&self, image: &str) -> Option<String> {
        let parsed = ImageRef::parse(image).ok()?;
        let (_, prefix) = self
            .mirrors
            .iter()
            .find(|(from, _)| parsed.registry_is(from))?;
        let rewritten = parsed.with_prefix(prefix);
        (rewritten != image).then_some(rewritten)
    }
}

#[async_trait::async_trait]
impl Policy for RegistryMirror {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Mutate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        mutate_containers(request, "mirror images: ", |container| {
            let image = container.image?;
            let mirrored = self.mirrored(image)?;
            let change = format!("{} {image} -> {mirrored}", container.describe());
            let operation = PatchOperation::Replace(ReplaceOperation {
                path: container.field_pointer("image"),
                value: Value::String(mirrored),
            });
            Some((operation, change))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{object, patched, request, Context, Eval};
    use crate::unit::Operation;
    use serde_json::json;

    fn policy() -> RegistryMirror {
        RegistryMirror::new(&Settings {
            mode: crate::config::PolicyMode::Enforce,
            mirrors: [
                (
                    "docker.io".to_string(),
                    "registry.local:5000/dockerhub".to_string(),
                ),
                (
                    "quay.io".to_string(),
                    "registry.local:5000/quay/".to_string(),
                ),
            ]
            .into(),
        })
    }

    #[test]
    fn rewrites_public_references_keeping_path_tag_and_digest() {
        let p = policy();
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            (
                "nginx",
                Some("registry.local:5000/dockerhub/library/nginx".to_string()),
            ),
            (
                "redis:7.2",
                Some("registry.local:5000/dockerhub/library/redis:7.2".to_string()),
            ),
            (
                "index.docker.io/bitnami/postgresql:16",
                Some("registry.local:5000/dockerhub/bitnami/postgresql:16".to_string()),
            ),
            (
                "quay.io/keycloak/keycloak:24",
                Some("registry.local:5000/quay/keycloak/keycloak:24".to_string()),
            ),
            (
                &*format!("nginx@{digest}"),
                Some(format!(
                    "registry.local:5000/dockerhub/library/nginx@{digest}"
                )),
            ),
            ("ghcr.io/openg2p/app:1", None),
            ("registry.local:5000/dockerhub/library/nginx", None),
            ("NOT VALID", None),
        ];
        for (image, expected) in cases {
            assert_eq!(p.mirrored(image), expected, "{image}");
        }
    }

    #[test]
    fn the_patch_applies_to_the_deployment() {
        let doc = json!({"kind": "Deployment", "spec": {"template": {"spec": {
            "initContainers": [{"name": "i", "image": "busybox:1.36"}],
            "containers": [{"name": "a", "image": "ghcr.io/openg2p/app:1"}, {"name": "b", "image": "redis:7.2"}]
        }}}});
        let deploy = object(doc.clone());
        let req = request(
            Operation::Create,
            "Deployment",
            "deployments",
            Some(&deploy),
        );
        let findings = policy().eval(&req, &Context::default()).unwrap();
        assert!(matches!(&findings[0], Finding::Mutation { .. }));
        let doc = patched(&doc, &findings);
        assert_eq!(
            doc.pointer("/spec/template/spec/initContainers/0/image"),
            Some(&json!("registry.local:5000/dockerhub/library/busybox:1.36"))
        );
        assert_eq!(
            doc.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("ghcr.io/openg2p/app:1"))
        );
        assert_eq!(
            doc.pointer("/spec/template/spec/containers/1/image"),
            Some(&json!("registry.local:5000/dockerhub/library/redis:7.2"))
        );
    }
}
