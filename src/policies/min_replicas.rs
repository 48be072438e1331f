//! `min-replicas` (validating): workloads run at least `minReplicas` replicas (or exactly 0,
//! a deliberate scale-down).
//!
//! Checks CREATE and UPDATE of Deployments, StatefulSets and ReplicaSets (a ReplicaSet
//! controlled by a Deployment is skipped: its Deployment is checked), UPDATE of their `scale`
//! subresource (what `kubectl scale` sends), and HorizontalPodAutoscalers' `minReplicas`.
//! On UPDATE only a changed value is judged, so an old singleton can still be updated.
//! Exemptions come from the policy configuration only, never from the object.

use super::floor::{
    all_of, any_of, cel_string, glob_matches, Action, Check, Floor, OBJECT_NAME, REQUEST_NAMESPACE,
};
use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::{LabelSelector, Labels, PolicyMode};
use crate::view::ObjectLabels;
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::Spec;

pub const ID: &str = "min-replicas";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    pub min_replicas: i64,
    pub exemptions: Vec<Exemption>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            min_replicas: default_min_replicas(),
            exemptions: Vec::new(),
        }
    }
}

fn default_min_replicas() -> i64 {
    2
}

/// A workload that may run below `minReplicas`. Every field given must match; `namespace`
/// and `name` take `*` and `?` wildcards.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub selector: Option<LabelSelector>,
}

impl Exemption {
    /// Whether this exemption covers the workload. `labels` is `None` when the request does
    /// not carry the workload's labels (a Scale request): a selector then does not match.
    pub fn matches(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        labels: Option<&dyn Labels>,
    ) -> bool {
        let glob = |pattern: &Option<String>, value: &str| {
            pattern
                .as_ref()
                .is_none_or(|p| WildMatch::new(p).matches(value))
        };
        glob(&self.namespace, namespace)
            && self.kind.as_ref().is_none_or(|k| k == kind)
            && glob(&self.name, name)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| labels.is_some_and(|labels| s.matches(labels)))
    }
}

impl Exemption {
    /// [`Exemption::matches`] in CEL: `namespace`, `kind` and `name` are CEL string
    /// expressions, `meta` the CEL metadata whose labels a selector reads (`None`: the request
    /// carries no labels, so a selector matches nothing).
    fn cel(&self, namespace: &str, kind: &str, name: &str, meta: Option<&str>) -> String {
        let mut all = Vec::new();
        if let Some(pattern) = &self.namespace {
            all.push(glob_matches(namespace, pattern));
        }
        if let Some(k) = &self.kind {
            all.push(format!("{kind} == {}", cel_string(k)));
        }
        if let Some(pattern) = &self.name {
            all.push(glob_matches(name, pattern));
        }
        if let Some(selector) = &self.selector {
            match meta {
                None => all.push("false".to_owned()),
                Some(meta) => {
                    all.push(format!("has({meta}.labels)"));
                    for (key, value) in &selector.match_labels {
                        all.push(format!(
                            "{k} in {meta}.labels && {meta}.labels[{k}] == {v}",
                            k = cel_string(key),
                            v = cel_string(value)
                        ));
                    }
                }
            }
        }
        all_of(&all)
    }
}

/// `min-replicas`: its settings, what it matches, its policy.
pub struct Definition;

/// The kinds min-replicas sizes, which an exemption may name.
const KINDS: [&str; 4] = [
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "HorizontalPodAutoscaler",
];

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        if settings.min_replicas < 1 {
            return Err((
                "minReplicas".into(),
                format!(
                    "is {}; it must be at least 1 (2 for high availability)",
                    settings.min_replicas
                ),
            ));
        }
        for (i, ex) in settings.exemptions.iter().enumerate() {
            let key = format!("exemptions[{i}]");
            if ex.namespace.is_none()
                && ex.kind.is_none()
                && ex.name.is_none()
                && ex.selector.is_none()
            {
                return Err((
                    key,
                    "has no namespace, kind, name or selector, so it would exempt every workload; \
                     narrow it down"
                        .into(),
                ));
            }
            if let Some(kind) = &ex.kind {
                if !KINDS.contains(&kind.as_str()) {
                    return Err((
                        format!("{key}.kind"),
                        format!(
                            "{kind:?} is not a kind min-replicas checks; use one of {}",
                            KINDS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        vec![Match::new(
            Webhook::Validate,
            &["CREATE", "UPDATE"],
            &[
                resources::DEPLOYMENTS,
                resources::STATEFUL_SETS,
                resources::REPLICA_SETS,
                resources::DEPLOYMENTS_SCALE,
                resources::STATEFUL_SETS_SCALE,
                resources::REPLICA_SETS_SCALE,
                resources::HORIZONTAL_POD_AUTOSCALERS,
            ],
        )]
    }

    fn build(settings: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(MinReplicas::new(settings))]
    }

    /// All of it: workloads, their scale subresource and HPAs, with the exemptions.
    fn floor(settings: &Settings, _: &Config) -> Vec<Floor> {
        floor_parts(settings)
    }
}

/// The floor's three parts. Each check is `allowed || unchanged || exempt`, as `evaluate`.
fn floor_parts(settings: &Settings) -> Vec<Floor> {
    let min = settings.min_replicas;
    let message = |kind: &str, field: &str, hpa: bool| {
        let fix = if hpa {
            format!("set {field} to {min} or more")
        } else {
            format!("set {field} to {min} or more, or to 0 to scale down deliberately")
        };
        format!(
            "{kind} + ' ' + {REQUEST_NAMESPACE} + '/' + variables.name + ' would run ' + \
             string(variables.value) + (variables.value == 1 ? ' replica' : ' replicas') + {}",
            cel_string(&format!(
                "; high availability needs at least {min} ({fix}; a real singleton needs an \
                 exemption in the min-replicas policy, which an admin adds)"
            ))
        )
    };
    let exempt = |kind: &str, labels: Option<&str>, target: bool| {
        let mut any: Vec<String> = settings
            .exemptions
            .iter()
            .map(|e| e.cel(REQUEST_NAMESPACE, kind, "variables.name", labels))
            .collect();
        if target {
            any.extend(settings.exemptions.iter().map(|e| {
                format!(
                    "variables.target && {}",
                    e.cel(
                        REQUEST_NAMESPACE,
                        "object.spec.scaleTargetRef.kind",
                        "object.spec.scaleTargetRef.name",
                        None
                    )
                )
            }));
        }
        any_of(&any)
    };
    let replicas = |object: &str, default: i64| {
        format!("has({object}.spec.replicas) ? {object}.spec.replicas : {default}")
    };
    let unchanged = |old: String| format!("oldObject != null && ({old}) == variables.value");
    let check = |allowed: String, unchanged: String, exempt: String, message: String| {
        Action::Validate(vec![Check {
            expression: any_of(&[allowed, unchanged, exempt]),
            message,
        }])
    };
    vec![
        Floor {
            part: "",
            operations: &["CREATE", "UPDATE"],
            resources: vec![
                resources::DEPLOYMENTS,
                resources::STATEFUL_SETS,
                resources::REPLICA_SETS,
            ],
            variables: vec![
                ("name", OBJECT_NAME.to_owned()),
                ("value", replicas("object", 1)),
            ],
            // A ReplicaSet its Deployment controls is judged through the Deployment.
            conditions: vec![(
                "not-controlled-by-a-deployment",
                "!(request.kind.kind == 'ReplicaSet' && has(object.metadata.ownerReferences) && \
                 object.metadata.ownerReferences.exists(r, r.kind == 'Deployment' && \
                 has(r.controller) && r.controller == true))"
                    .to_owned(),
            )],
            action: check(
                format!("variables.value >= {min} || variables.value == 0"),
                unchanged(replicas("oldObject", 1)),
                exempt("request.kind.kind", Some("object.metadata"), false),
                message("request.kind.kind", "spec.replicas", false),
            ),
        },
        Floor {
            part: "scale",
            operations: &["CREATE", "UPDATE"],
            resources: vec![
                resources::DEPLOYMENTS_SCALE,
                resources::STATEFUL_SETS_SCALE,
                resources::REPLICA_SETS_SCALE,
            ],
            variables: vec![
                ("name", OBJECT_NAME.to_owned()),
                (
                    "kind",
                    "{'deployments': 'Deployment', 'statefulsets': 'StatefulSet', \
                     'replicasets': 'ReplicaSet'}[request.resource.resource]"
                        .to_owned(),
                ),
                // Scale's spec.replicas is omitted when 0.
                ("value", replicas("object", 0)),
            ],
            conditions: vec![("a-scale", "request.kind.kind == 'Scale'".to_owned())],
            action: check(
                format!("variables.value >= {min} || variables.value == 0"),
                unchanged(replicas("oldObject", 0)),
                exempt("variables.kind", None, false),
                message("variables.kind", "spec.replicas", false),
            ),
        },
        Floor {
            part: "hpa",
            operations: &["CREATE", "UPDATE"],
            resources: vec![resources::HORIZONTAL_POD_AUTOSCALERS],
            variables: vec![
                ("name", OBJECT_NAME.to_owned()),
                (
                    "value",
                    "has(object.spec.minReplicas) ? object.spec.minReplicas : 1".to_owned(),
                ),
                (
                    "target",
                    "has(object.spec.scaleTargetRef) && has(object.spec.scaleTargetRef.kind) && \
                     has(object.spec.scaleTargetRef.name)"
                        .to_owned(),
                ),
            ],
            conditions: Vec::new(),
            action: check(
                format!("variables.value >= {min}"),
                unchanged(
                    "has(oldObject.spec.minReplicas) ? oldObject.spec.minReplicas : 1".to_owned(),
                ),
                exempt("'HorizontalPodAutoscaler'", Some("object.metadata"), true),
                message("'HorizontalPodAutoscaler'", "spec.minReplicas", true),
            ),
        },
    ]
}

pub struct MinReplicas {
    min: i64,
    exemptions: Vec<Exemption>,
}

/// What is being sized, and how big.
struct Sized<'a> {
    kind: &'a str,
    name: &'a str,
    labels: Option<&'a ObjectLabels<'a>>,
    /// The workload an HPA scales, checked against exemptions too.
    target: Option<(String, String)>,
    field: &'static str,
    value: i64,
    old_value: Option<i64>,
}

impl MinReplicas {
    pub fn new(config: &Settings) -> MinReplicas {
        MinReplicas {
            min: config.min_replicas,
            exemptions: config.exemptions.clone(),
        }
    }

    fn exempt(&self, namespace: &str, sized: &Sized<'_>) -> bool {
        self.exemptions.iter().any(|e| {
            e.matches(
                namespace,
                sized.kind,
                sized.name,
                sized.labels.map(|l| l as &dyn Labels),
            ) || sized
                .target
                .as_ref()
                .is_some_and(|(kind, name)| e.matches(namespace, kind, name, None))
        })
    }
}

fn scaled_kind(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "replicasets" => "ReplicaSet",
        _ => return None,
    })
}

#[async_trait::async_trait]
impl Policy for MinReplicas {
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
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return Ok(Vec::new());
        }
        let is_scale = request.sub_resource == Some("scale");
        if request.sub_resource.is_some() && !is_scale {
            return Ok(Vec::new());
        }
        let Some(object) = request.object else {
            return Err(EvalError::MissingObject);
        };
        let old = request.old_object;
        let name = request.object_name();
        let sized = match (request.kind, is_scale) {
            ("Scale", true) => {
                let Some(kind) = scaled_kind(request.resource) else {
                    return Ok(Vec::new());
                };
                // Scale's spec.replicas is omitted when 0.
                Sized {
                    kind,
                    name,
                    labels: None,
                    target: None,
                    field: "spec.replicas",
                    value: object.replicas().unwrap_or(0),
                    old_value: old.map(|o| o.replicas().unwrap_or(0)),
                }
            }
            (kind @ ("Deployment" | "StatefulSet" | "ReplicaSet"), false) => {
                if kind == "ReplicaSet" && object.controlled_by("Deployment") {
                    return Ok(Vec::new());
                }
                Sized {
                    kind,
                    name,
                    labels: object.metadata.labels.as_ref(),
                    target: None,
                    field: "spec.replicas",
                    value: object.replicas().unwrap_or(1),
                    old_value: old.map(|o| o.replicas().unwrap_or(1)),
                }
            }
            ("HorizontalPodAutoscaler", false) => {
                let spec = |o: &crate::view::Object<'_>| match &o.spec {
                    Spec::HorizontalPodAutoscaler(spec) => (
                        spec.min_replicas.unwrap_or(1),
                        spec.scale_target_ref.as_ref().and_then(|t| {
                            Some((t.kind.as_deref()?.to_owned(), t.name.as_deref()?.to_owned()))
                        }),
                    ),
                    _ => (1, None),
                };
                let (value, target) = spec(object);
                Sized {
                    kind: "HorizontalPodAutoscaler",
                    name,
                    labels: object.metadata.labels.as_ref(),
                    target,
                    field: "spec.minReplicas",
                    value,
                    old_value: old.map(|o| spec(o).0),
                }
            }
            _ => return Ok(Vec::new()),
        };
        let is_hpa = sized.kind == "HorizontalPodAutoscaler";
        let allowed = sized.value >= self.min || (sized.value == 0 && !is_hpa);
        if allowed || sized.old_value == Some(sized.value) || self.exempt(request.namespace, &sized)
        {
            return Ok(Vec::new());
        }
        let noun = if sized.value == 1 {
            "replica"
        } else {
            "replicas"
        };
        let fix = if is_hpa {
            format!("set {} to {} or more", sized.field, self.min)
        } else {
            format!(
                "set {} to {} or more, or to 0 to scale down deliberately",
                sized.field, self.min
            )
        };
        Ok(vec![Finding::Violation {
            message: format!(
                "{} {}/{} would run {} {noun}; high availability needs at least {} ({fix}; a real \
                 singleton needs an exemption in the min-replicas policy, which an admin adds)",
                sized.kind, request.namespace, sized.name, sized.value, self.min
            ),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyMode;
    use crate::policies::test_support::{object, request, violations, Context};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn policy() -> MinReplicas {
        MinReplicas::new(&Settings {
            mode: PolicyMode::Enforce,
            min_replicas: 2,
            exemptions: vec![Exemption {
                namespace: Some("openg2p".into()),
                kind: Some("StatefulSet".into()),
                name: Some("*-postgresql".into()),
                selector: None,
            }],
        })
    }

    fn verdict(req: &Request<'_>) -> Option<String> {
        violations(&policy(), req, &Context::default())
            .into_iter()
            .next()
    }

    fn workload(kind: &str, name: &str, replicas: Option<i64>) -> crate::view::Object<'static> {
        let mut spec = json!({});
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        object(json!({"kind": kind, "metadata": {"name": name}, "spec": spec}))
    }

    #[test]
    fn exemptions_match_every_given_field() {
        let ex = Exemption {
            namespace: Some("openg2p".into()),
            kind: Some("StatefulSet".into()),
            name: Some("*-postgresql".into()),
            selector: None,
        };
        assert!(ex.matches("openg2p", "StatefulSet", "social-registry-postgresql", None));
        assert!(!ex.matches("other", "StatefulSet", "x-postgresql", None));
        assert!(!ex.matches("openg2p", "Deployment", "x-postgresql", None));
        assert!(!ex.matches("openg2p", "StatefulSet", "postgresql-x", None));
        let by_label = Exemption {
            selector: Some(LabelSelector {
                match_labels: [("prodguard.io/singleton".to_string(), "true".to_string())].into(),
            }),
            ..Default::default()
        };
        let labels: BTreeMap<String, String> =
            [("prodguard.io/singleton".to_string(), "true".to_string())].into();
        assert!(by_label.matches("a", "Deployment", "b", Some(&labels as &dyn Labels)));
        assert!(!by_label.matches(
            "a",
            "Deployment",
            "b",
            Some(&BTreeMap::new() as &dyn Labels)
        ));
        assert!(!by_label.matches("a", "Deployment", "b", None));
    }

    #[test]
    fn replicas_table() {
        let cases = [
            ("Deployment", Some(1), true),
            ("Deployment", None, true),
            ("Deployment", Some(2), false),
            ("Deployment", Some(0), false),
            ("Deployment", Some(5), false),
            ("StatefulSet", Some(1), true),
            ("ReplicaSet", Some(1), true),
            ("DaemonSet", Some(1), false),
        ];
        for (kind, replicas, denied) in cases {
            let obj = workload(kind, "web", replicas);
            let req = request(Operation::Create, kind, "x", Some(&obj));
            assert_eq!(verdict(&req).is_some(), denied, "{kind} {replicas:?}");
        }
    }

    #[test]
    fn the_message_says_what_and_how_to_fix() {
        let obj = workload("Deployment", "web", Some(1));
        let req = request(Operation::Create, "Deployment", "deployments", Some(&obj));
        let msg = verdict(&req).unwrap();
        assert!(
            msg.starts_with(
                "Deployment openg2p/web would run 1 replica; high availability needs at least 2"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("set spec.replicas to 2 or more, or to 0"),
            "{msg}"
        );
    }

    #[test]
    fn exemptions_and_owned_replicasets() {
        let obj = workload("StatefulSet", "social-registry-postgresql", Some(1));
        let req = request(Operation::Create, "StatefulSet", "statefulsets", Some(&obj));
        assert_eq!(verdict(&req), None);
        let mut other_ns = req.clone();
        other_ns.namespace = "default";
        assert!(verdict(&other_ns).is_some());

        let rs = object(
            json!({"kind": "ReplicaSet", "metadata": {"name": "web-abc", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}
        ]}, "spec": {"replicas": 1}}),
        );
        let req = request(Operation::Create, "ReplicaSet", "replicasets", Some(&rs));
        assert_eq!(verdict(&req), None);
    }

    #[test]
    fn an_annotation_cannot_exempt() {
        let obj = object(
            json!({"kind": "Deployment", "metadata": {"name": "web", "annotations": {"prodguard.io/exempt": "true"}}, "spec": {"replicas": 1}}),
        );
        let req = request(Operation::Create, "Deployment", "deployments", Some(&obj));
        assert!(verdict(&req).is_some());
    }

    #[test]
    fn scale_subresource() {
        let scale = |r: Option<i64>| {
            let spec = r.map_or(json!({}), |r| json!({"replicas": r}));
            object(
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": spec}),
            )
        };
        let old = scale(Some(3));
        for (replicas, denied) in [
            (Some(1), true),
            (Some(2), false),
            (None, false),
            (Some(0), false),
        ] {
            let new = scale(replicas);
            let mut req = request(Operation::Update, "Scale", "deployments", Some(&new));
            req.sub_resource = Some("scale");
            req.name = "web";
            req.old_object = Some(&old);
            assert_eq!(verdict(&req).is_some(), denied, "{replicas:?}");
        }
        let new = scale(Some(1));
        let mut req = request(Operation::Update, "Scale", "statefulsets", Some(&new));
        req.sub_resource = Some("scale");
        req.name = "social-registry-postgresql";
        assert_eq!(verdict(&req), None, "exempt by name");
    }

    #[test]
    fn hpa_min_replicas() {
        let hpa = |min: Option<i64>, target: &str| {
            let mut spec = json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": target}, "maxReplicas": 5});
            if let Some(m) = min {
                spec["minReplicas"] = json!(m);
            }
            object(
                json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}, "spec": spec}),
            )
        };
        for (min, denied) in [
            (Some(1), true),
            (None, true),
            (Some(2), false),
            (Some(0), true),
        ] {
            let obj = hpa(min, "web");
            let req = request(
                Operation::Create,
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
                Some(&obj),
            );
            assert_eq!(verdict(&req).is_some(), denied, "{min:?}");
        }
        let obj = hpa(Some(1), "x-postgresql");
        let req = request(
            Operation::Create,
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            Some(&obj),
        );
        assert_eq!(verdict(&req), None, "exempt through its target");
    }

    #[test]
    fn update_judges_only_a_changed_value_and_ignores_status() {
        let old = workload("Deployment", "web", Some(1));
        let new = workload("Deployment", "web", Some(1));
        let mut req = request(Operation::Update, "Deployment", "deployments", Some(&new));
        req.old_object = Some(&old);
        assert_eq!(verdict(&req), None);
        let old3 = workload("Deployment", "web", Some(3));
        req.old_object = Some(&old3);
        assert!(verdict(&req).is_some());
        req.sub_resource = Some("status");
        assert_eq!(verdict(&req), None);
    }

    #[test]
    fn a_non_integer_is_a_shape_error() {
        let err = crate::view::owned(
            json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": "two"}}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Deployment field spec.replicas must be an integer"
        );
    }
}
