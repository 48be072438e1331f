//! `airgap-registry` (validating): when the cluster is air-gapped, every image must come from
//! an allowed private registry. References are parsed by the Docker/OCI grammar; an
//! unparsable reference is a violation. The message names every offending container and the
//! registry its image resolved to.

use super::floor::{any_of, cel_string, has_path, pod_specs, Action, Check, Floor};
use super::image_ref::parse_registry_pattern;
use super::image_ref::ImageRef;
use super::image_ref::RegistryPattern;
use super::resources::Match;
use super::Config;
use super::{checked_container_lists, image_unchanged, pod_spec};
use super::{container_matches, PolicyModule};
use crate::config::PolicyMode;
use crate::unit::{EvalError, Finding, Lookups, Policy, Request, Webhook};
use serde::Deserialize;

pub const ID: &str = "airgap-registry";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// The policy acts only when true.
    pub airgapped: bool,
    /// `host[:port]`, optionally with a path prefix (`harbor.example.org/openg2p/`).
    pub allowed_registries: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            airgapped: false,
            allowed_registries: Vec::new(),
        }
    }
}

/// `airgap-registry`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        for (i, entry) in settings.allowed_registries.iter().enumerate() {
            parse_registry_pattern(entry)
                .map_err(|problem| (format!("allowedRegistries[{i}]"), problem))?;
        }
        if settings.airgapped
            && settings.mode != PolicyMode::Off
            && settings.allowed_registries.is_empty()
        {
            return Err((
                "allowedRegistries".into(),
                "airgapped is true but no registry is allowed, so every image would be denied; \
                 list your private registry (for example `registry.local:5000`)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        container_matches(Webhook::Validate)
    }

    fn build(settings: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(AirgapRegistry::new(settings))]
    }

    /// All of it when air-gapped: each container's image is read by the same grammar, as
    /// regular expressions ([`RegistryPattern::cel_allows`]); an image an UPDATE keeps passes.
    /// Its message names the containers and images, not the registry each resolved to.
    fn floor(settings: &Settings, _: &Config) -> Vec<Floor> {
        if !settings.airgapped {
            return Vec::new();
        }
        let policy = AirgapRegistry::new(settings);
        let allowed_list: Vec<String> = policy.allowed.iter().map(ToString::to_string).collect();
        let allowed = any_of(
            &policy
                .allowed
                .iter()
                .map(|p| p.cel_allows("c.image"))
                .collect::<Vec<_>>(),
        );
        pod_specs(Webhook::Validate)
            .into_iter()
            .map(|specs| {
                let spec = format!("object.{}", specs.path.join("."));
                let old_spec = format!("oldObject.{}", specs.path.join("."));
                let variables: Vec<(&'static str, String)> = specs
                    .lists
                    .iter()
                    .map(|list| {
                        let mut path = specs.path.to_vec();
                        path.push(list);
                        let kept = format!(
                            "oldObject != null && {} && {old_spec}.{list}.exists(o, o.name == c.name && \
                             has(o.image) && o.image == c.image)",
                            has_path("oldObject", &path)
                        );
                        (
                            *list,
                            format!(
                                "{} ? {spec}.{list}.filter(c, has(c.image) && !({allowed}) && \
                                 !({kept})) : []",
                                has_path("object", &path)
                            ),
                        )
                    })
                    .collect();
                let sizes: Vec<String> = specs
                    .lists
                    .iter()
                    .map(|l| format!("size(variables.{l})"))
                    .collect();
                let named: Vec<String> = specs
                    .lists
                    .iter()
                    .map(|l| {
                        format!(
                            "variables.{l}.map(c, '{l} \"' + c.name + '\": image \"' + c.image + '\"')"
                        )
                    })
                    .collect();
                Floor {
                    part: specs.part,
                    operations: specs.operations,
                    resources: specs.resources,
                    variables,
                    conditions: specs.conditions,
                    action: Action::Validate(vec![Check {
                        expression: format!("{} == 0", sizes.join(" + ")),
                        message: format!(
                            "{} + ({}).join('; ') + {}",
                            cel_string(&format!(
                                "the cluster is air-gapped and images must come from an allowed \
                                 registry ({}): ",
                                allowed_list.join(", ")
                            )),
                            named.join(" + "),
                            cel_string(" is from no allowed registry")
                        ),
                    }]),
                }
            })
            .collect()
    }
}

pub struct AirgapRegistry {
    airgapped: bool,
    allowed: Vec<RegistryPattern>,
}

impl AirgapRegistry {
    pub fn new(config: &Settings) -> AirgapRegistry {
        AirgapRegistry {
            airgapped: config.airgapped,
            // Validated at load: an entry that still fails allows nothing (fail closed).
            allowed: config
                .allowed_registries
                .iter()
                .filter_map(|entry| parse_registry_pattern(entry).ok())
                .collect(),
        }
    }

    /// Why `image` is not allowed, or `None` when it is.
    fn problem(&self, image: &str) -> Option<String> {
        match ImageRef::parse(image) {
            Err(e) => Some(format!("image {image:?} is not a valid reference ({e})")),
            Ok(parsed) if self.allowed.iter().any(|p| p.matches(&parsed)) => None,
            Ok(parsed) => Some(format!(
                "image {image:?} resolves to registry {}",
                parsed.registry
            )),
        }
    }
}

#[async_trait::async_trait]
impl Policy for AirgapRegistry {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        if !self.airgapped {
            return Ok(Vec::new());
        }
        let Some(lists) = checked_container_lists(request) else {
            return Ok(Vec::new());
        };
        let object = request.object.ok_or(EvalError::MissingObject)?;
        let mut problems = Vec::new();
        for container in pod_spec::containers(object, lists) {
            let Some(image) = container.image else {
                continue;
            };
            if image_unchanged(request, &container) {
                continue;
            }
            if let Some(problem) = self.problem(image) {
                problems.push(format!("{}: {problem}", container.describe()));
            }
        }
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        let allowed: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        Ok(vec![Finding::Violation {
            message: format!(
                "the cluster is air-gapped and images must come from an allowed registry ({}): {}",
                allowed.join(", "),
                problems.join("; ")
            ),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyMode;
    use crate::policies::test_support::{object, request, Context, Eval};
    use crate::unit::Operation;
    use serde_json::json;

    fn policy(airgapped: bool) -> AirgapRegistry {
        AirgapRegistry::new(&Settings {
            mode: PolicyMode::Enforce,
            airgapped,
            allowed_registries: vec![
                "registry.local:5000".into(),
                "harbor.example.org/openg2p/".into(),
            ],
        })
    }

    fn pod(images: &[&str]) -> crate::view::Object<'static> {
        let containers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        object(json!({"kind": "Pod", "spec": {"containers": containers}}))
    }

    fn message(p: &AirgapRegistry, obj: &crate::view::Object<'static>) -> Option<String> {
        let req = request(Operation::Create, "Pod", "pods", Some(obj));
        p.eval(&req, &Context::default())
            .unwrap()
            .into_iter()
            .map(|f| match f {
                Finding::Violation { message } => message,
                Finding::Mutation { .. } => panic!("validating policy patched"),
                Finding::Advisory { .. } => panic!("airgap-registry gave an advisory"),
            })
            .next()
    }

    #[test]
    fn allows_only_the_listed_registries() {
        let p = policy(true);
        for ok in [
            "registry.local:5000/openg2p/app:1",
            "registry.local:5000/x",
            "harbor.example.org/openg2p/app",
            "REGISTRY.local:5000/x",
        ] {
            assert_eq!(message(&p, &pod(&[ok])), None, "{ok}");
        }
        for bad in [
            "nginx",
            "registry.local/x",
            "registry.local:5001/x",
            "harbor.example.org/other/app",
            "harbor.example.org/openg2p-evil/app",
            "registry.local:5000.evil.com/x",
            "ghcr.io.evil.com/openg2p/app",
            "myregistry/busybox",
        ] {
            assert!(message(&p, &pod(&[bad])).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_message_names_every_container_and_registry() {
        let msg = message(
            &policy(true),
            &pod(&["nginx", "registry.local:5000/ok", "Bad Ref", "quay.io/a/b"]),
        )
        .unwrap();
        assert!(
            msg.contains("containers[0] \"c0\": image \"nginx\" resolves to registry docker.io"),
            "{msg}"
        );
        assert!(
            msg.contains("containers[2] \"c2\": image \"Bad Ref\" is not a valid reference"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "containers[3] \"c3\": image \"quay.io/a/b\" resolves to registry quay.io"
            ),
            "{msg}"
        );
        assert!(!msg.contains("c1"), "{msg}");
        assert!(
            msg.contains("(registry.local:5000, harbor.example.org/openg2p/)"),
            "{msg}"
        );
    }

    #[test]
    fn does_nothing_when_not_airgapped() {
        assert_eq!(message(&policy(false), &pod(&["nginx"])), None);
    }

    #[test]
    fn update_judges_only_changed_images() {
        let p = policy(true);
        let old = pod(&["nginx"]);
        let same = pod(&["nginx"]);
        let mut req = request(Operation::Update, "Pod", "pods", Some(&same));
        req.old_object = Some(&old);
        assert!(p.eval(&req, &Context::default()).unwrap().is_empty());
        let changed = pod(&["nginx:2"]);
        let mut req = request(Operation::Update, "Pod", "pods", Some(&changed));
        req.old_object = Some(&old);
        assert_eq!(p.eval(&req, &Context::default()).unwrap().len(), 1);
    }
}
