//! `image-pull-policy` (mutating): sets `imagePullPolicy: IfNotPresent` on every container.
//!
//! The API server has already defaulted the field (to `Always` for `:latest` or untagged
//! images) before any webhook runs, so the patch replaces an existing value and adds a
//! missing one. No patch when nothing changes.

use super::floor::{cel_string, has_path, pod_specs, Action, Apply, Floor};
use super::resources::Match;
use super::Config;
use super::{container_matches, PolicyModule};
use crate::config::PolicyMode;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde::Deserialize;
use serde_json::Value;

use super::mutate_containers;
use crate::unit::{EvalError, Finding, Lookups, Policy, Request, Webhook};

pub const ID: &str = "image-pull-policy";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
        }
    }
}

/// `image-pull-policy`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn matches(_: &Settings) -> Vec<Match> {
        container_matches(Webhook::Mutate)
    }

    fn build(_: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(ImagePullPolicy)]
    }

    /// All of it, as apply configurations: every container of every list it patches gets
    /// `IfNotPresent` (one configuration per list, applied when the list is there).
    fn floor(_: &Settings, _: &Config) -> Vec<Floor> {
        pod_specs(Webhook::Mutate)
            .into_iter()
            .map(|specs| {
                let mutations = specs
                    .lists
                    .iter()
                    .map(|list| {
                        let at = format!("object.{}.{list}", specs.path.join("."));
                        let item = Apply::Object(vec![
                            ("name", Apply::Value("c.name".to_owned())),
                            ("imagePullPolicy", Apply::Value(cel_string(WANTED))),
                        ]);
                        let mut tree = Apply::Object(vec![(
                            *list,
                            Apply::Each {
                                list: at,
                                var: "c",
                                item: Box::new(item),
                            },
                        )]);
                        for field in specs.path.iter().rev() {
                            tree = Apply::Object(vec![(*field, tree)]);
                        }
                        let mut path = specs.path.to_vec();
                        path.push(list);
                        Apply::When {
                            condition: has_path("object", &path),
                            then: Box::new(tree),
                        }
                    })
                    .collect();
                Floor {
                    part: specs.part,
                    operations: specs.operations,
                    resources: specs.resources,
                    variables: Vec::new(),
                    conditions: specs.conditions,
                    action: Action::Mutate(mutations),
                }
            })
            .collect()
    }
}
const WANTED: &str = "IfNotPresent";

pub struct ImagePullPolicy;

#[async_trait::async_trait]
impl Policy for ImagePullPolicy {
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
        let summary = format!("set imagePullPolicy: {WANTED} on ");
        mutate_containers(request, &summary, |container| {
            if container.pull_policy == Some(WANTED) {
                return None;
            }
            let path = container.field_pointer("imagePullPolicy");
            let value = Value::String(WANTED.to_owned());
            Some(match container.pull_policy {
                Some(old) => (
                    PatchOperation::Replace(ReplaceOperation { path, value }),
                    format!("{} (was {old})", container.describe()),
                ),
                None => (
                    PatchOperation::Add(AddOperation { path, value }),
                    format!("{} (was unset)", container.describe()),
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{object, patched, request, Context, Eval};
    use crate::unit::Operation;
    use serde_json::json;

    #[test]
    fn replaces_defaulted_values_and_adds_missing_ones() {
        let doc = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [
                {"name": "a/b~c", "image": "nginx", "imagePullPolicy": "Always"},
                {"name": "ok", "image": "nginx:1", "imagePullPolicy": "IfNotPresent"}
            ],
            "ephemeralContainers": [{"name": "dbg", "image": "busybox", "imagePullPolicy": "Never"}]
        }});
        let pod = object(doc.clone());
        let req = request(Operation::Create, "Pod", "pods", Some(&pod));
        let findings = ImagePullPolicy.eval(&req, &Context::default()).unwrap();
        assert_eq!(findings.len(), 1);
        let Finding::Mutation { patch, message } = &findings[0] else {
            panic!()
        };
        assert_eq!(patch.len(), 3);
        assert!(matches!(patch[0], PatchOperation::Add(_)));
        assert!(matches!(patch[1], PatchOperation::Replace(_)));
        assert!(
            message.contains("containers[0] \"a/b~c\" (was Always)"),
            "{message}"
        );
        let doc = patched(&doc, &findings);
        for pointer in [
            "/spec/initContainers/0/imagePullPolicy",
            "/spec/containers/0/imagePullPolicy",
            "/spec/containers/1/imagePullPolicy",
            "/spec/ephemeralContainers/0/imagePullPolicy",
        ] {
            assert_eq!(
                doc.pointer(pointer),
                Some(&json!("IfNotPresent")),
                "{pointer}"
            );
        }
        assert_eq!(
            doc.pointer("/spec/containers/0/name"),
            Some(&json!("a/b~c"))
        );
    }

    #[test]
    fn nothing_to_change_gives_no_patch() {
        let pod = object(
            json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}]}}),
        );
        let req = request(Operation::Create, "Pod", "pods", Some(&pod));
        assert!(ImagePullPolicy
            .eval(&req, &Context::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn pod_update_is_never_patched_but_workload_update_is() {
        let pod = object(
            json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}}),
        );
        let req = request(Operation::Update, "Pod", "pods", Some(&pod));
        assert!(ImagePullPolicy
            .eval(&req, &Context::default())
            .unwrap()
            .is_empty());

        let deploy = object(
            json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}}}}),
        );
        let req = request(
            Operation::Update,
            "Deployment",
            "deployments",
            Some(&deploy),
        );
        assert_eq!(
            ImagePullPolicy
                .eval(&req, &Context::default())
                .unwrap()
                .len(),
            1
        );

        let mut status = request(
            Operation::Update,
            "Deployment",
            "deployments",
            Some(&deploy),
        );
        status.sub_resource = Some("status");
        assert!(ImagePullPolicy
            .eval(&status, &Context::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn ephemeral_subresource_patches_only_ephemeral_containers() {
        let doc = json!({"kind": "Pod", "spec": {
            "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}],
            "ephemeralContainers": [{"name": "d", "image": "busybox", "imagePullPolicy": "Always"}]
        }});
        let pod = object(doc.clone());
        let mut req = request(Operation::Update, "Pod", "pods", Some(&pod));
        req.sub_resource = Some("ephemeralcontainers");
        let findings = ImagePullPolicy.eval(&req, &Context::default()).unwrap();
        let Finding::Mutation { patch, .. } = &findings[0] else {
            panic!()
        };
        assert_eq!(patch.len(), 1);
        let doc = patched(&doc, &findings);
        assert_eq!(
            doc.pointer("/spec/containers/0/imagePullPolicy"),
            Some(&json!("Always"))
        );
        assert_eq!(
            doc.pointer("/spec/ephemeralContainers/0/imagePullPolicy"),
            Some(&json!("IfNotPresent"))
        );
    }
}
