//! The CEL floor's API objects: the ValidatingAdmissionPolicies, MutatingAdmissionPolicies and
//! their bindings that hold each policy's floor inside the API server (docs/floor.md). Pure:
//! built from the configuration, the exceptions in force and what the server serves; the
//! writer (`floor_writer`) keeps the cluster's objects equal to them.
//!
//! - the mode: enforce binds with `Deny`, audit (or the global audit rollout) with `Warn` and
//!   `Audit`, off writes nothing; a MutatingAdmissionPolicy only in enforce (it cannot warn);
//! - the excluded namespaces are a match condition of every policy object;
//! - the exceptions in force are embedded: a match condition that none holds, regenerated when
//!   they change (CEL admission has no clock, so an exception ends in the floor only when the
//!   writer next writes it);
//! - the PolicyExceptions' write rule is bound with `Deny` in every mode, as the webhook runs it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    ApplyConfiguration, MatchCondition, MatchResources, MutatingAdmissionPolicy,
    MutatingAdmissionPolicyBinding, MutatingAdmissionPolicyBindingSpec,
    MutatingAdmissionPolicySpec, Mutation, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::config::{GlobalMode, PolicyMode};
use crate::exceptions::rule::WriteRule;
use crate::exceptions::{ExceptionSet, POLICY_ID};
use crate::policies::floor::{any_of, cel_strings, Action, Floor, Syntax, REQUEST_NAMESPACE};
use crate::policies::Config;

/// The label every floor object carries, valued with the id of the policy it holds.
pub const POLICY_LABEL: &str = "prodguard.io/floor-policy";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "prodguard");

/// What the API server serves, from its discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Served {
    /// ValidatingAdmissionPolicy, `admissionregistration.k8s.io/v1` (Kubernetes 1.30+).
    pub validating: bool,
    /// MutatingAdmissionPolicy, `admissionregistration.k8s.io/v1` (Kubernetes 1.36+).
    pub mutating: bool,
}

/// One object of the floor.
#[derive(Debug, Clone, PartialEq)]
pub enum FloorObject {
    Validating(ValidatingAdmissionPolicy),
    ValidatingBinding(ValidatingAdmissionPolicyBinding),
    Mutating(MutatingAdmissionPolicy),
    MutatingBinding(MutatingAdmissionPolicyBinding),
}

impl FloorObject {
    pub fn name(&self) -> &str {
        let meta = match self {
            FloorObject::Validating(o) => &o.metadata,
            FloorObject::ValidatingBinding(o) => &o.metadata,
            FloorObject::Mutating(o) => &o.metadata,
            FloorObject::MutatingBinding(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }

    /// Its kind, as the API server serves it.
    pub fn kind(&self) -> &'static str {
        match self {
            FloorObject::Validating(_) => "ValidatingAdmissionPolicy",
            FloorObject::ValidatingBinding(_) => "ValidatingAdmissionPolicyBinding",
            FloorObject::Mutating(_) => "MutatingAdmissionPolicy",
            FloorObject::MutatingBinding(_) => "MutatingAdmissionPolicyBinding",
        }
    }

    /// The object as JSON, as it is applied.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            FloorObject::Validating(o) => serde_json::to_value(o),
            FloorObject::ValidatingBinding(o) => serde_json::to_value(o),
            FloorObject::Mutating(o) => serde_json::to_value(o),
            FloorObject::MutatingBinding(o) => serde_json::to_value(o),
        }
    }

    /// `ValidatingAdmissionPolicy prodguard-min-replicas`, as logs and Events name it.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind(), self.name())
    }
}

/// One part of a policy's floor, as it is bound: what the differential test evaluates and the
/// objects are made of.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundPart {
    pub policy: &'static str,
    /// `prodguard-<policy>[-<part>]`: the policy object's and its binding's name.
    pub name: String,
    pub floor: Floor,
    /// Every match condition: the excluded namespaces, the part's own, the exceptions.
    pub conditions: Vec<(String, String)>,
    /// `Deny`, or `Warn` and `Audit`.
    pub actions: Vec<&'static str>,
}

/// The floor's parts for the configuration and the exceptions in force at `now`, whatever the
/// server serves (the test evaluates them all).
pub fn parts(config: &Config, exceptions: &ExceptionSet, now: SystemTime) -> Vec<BoundPart> {
    let max = config.max_exception_duration;
    let mut declared: Vec<(&'static str, PolicyMode, Vec<Floor>)> = crate::policies::floors(config);
    // The write rule runs in every mode and is lifted by no exception.
    declared.push((
        POLICY_ID,
        PolicyMode::Enforce,
        vec![WriteRule::floor(&config.admins)],
    ));
    let mut out = Vec::new();
    for (policy, mode, floors) in declared {
        let actions = match (policy == POLICY_ID, config.mode, mode) {
            (_, _, PolicyMode::Off) => continue,
            (true, _, _) | (false, GlobalMode::Enforce, PolicyMode::Enforce) => vec!["Deny"],
            _ => vec!["Warn", "Audit"],
        };
        for floor in floors {
            if matches!(floor.action, Action::Mutate(_)) && actions != ["Deny"] {
                // A mutation cannot warn: an audited mutating policy has no floor.
                continue;
            }
            let name = if floor.part.is_empty() {
                format!("prodguard-{policy}")
            } else {
                format!("prodguard-{policy}-{}", floor.part)
            };
            let mut conditions = Vec::new();
            if !config.excluded_namespaces.is_empty() {
                conditions.push((
                    "not-an-excluded-namespace".to_owned(),
                    format!(
                        "!({REQUEST_NAMESPACE} in {})",
                        cel_strings(&config.excluded_namespaces)
                    ),
                ));
            }
            conditions.extend(
                floor
                    .conditions
                    .iter()
                    .map(|(n, e)| ((*n).to_owned(), e.clone())),
            );
            if policy != POLICY_ID {
                let holding: Vec<String> = exceptions
                    .iter()
                    .filter(|e| e.policies.contains(&policy) && e.in_force(now, max))
                    .map(|e| e.cel_holds())
                    .collect();
                if !holding.is_empty() {
                    conditions.push((
                        "no-policy-exception".to_owned(),
                        format!("!({})", any_of(&holding)),
                    ));
                }
            }
            out.push(BoundPart {
                policy,
                name,
                floor,
                conditions,
                actions: actions.clone(),
            });
        }
    }
    out
}

/// The API objects of `parts` that the server serves, labelled and owned by `owner`.
pub fn objects(
    parts: &[BoundPart],
    served: Served,
    owner: Option<&OwnerReference>,
) -> Vec<FloorObject> {
    let mut out = Vec::new();
    for part in parts {
        let metadata = ObjectMeta {
            name: Some(part.name.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (POLICY_LABEL.to_owned(), part.policy.to_owned()),
            ])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..Default::default()
        };
        let match_conditions: Vec<MatchCondition> = part
            .conditions
            .iter()
            .map(|(name, expression)| MatchCondition {
                name: name.clone(),
                expression: expression.clone(),
            })
            .collect();
        let variables: Vec<Variable> = part
            .floor
            .variables
            .iter()
            .map(|(name, expression)| Variable {
                name: (*name).to_owned(),
                expression: expression.clone(),
            })
            .collect();
        let constraints = match_resources(&part.floor);
        match &part.floor.action {
            Action::Validate(checks) if served.validating => {
                out.push(FloorObject::Validating(ValidatingAdmissionPolicy {
                    metadata: metadata.clone(),
                    spec: Some(ValidatingAdmissionPolicySpec {
                        failure_policy: Some("Fail".to_owned()),
                        match_constraints: Some(constraints),
                        match_conditions: non_empty(match_conditions),
                        variables: non_empty(variables),
                        validations: Some(
                            checks
                                .iter()
                                .map(|c| Validation {
                                    expression: c.expression.clone(),
                                    message_expression: Some(c.message.clone()),
                                    reason: Some("Forbidden".to_owned()),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                    status: None,
                }));
                out.push(FloorObject::ValidatingBinding(
                    ValidatingAdmissionPolicyBinding {
                        metadata,
                        spec: ValidatingAdmissionPolicyBindingSpec {
                            policy_name: part.name.clone(),
                            validation_actions: part
                                .actions
                                .iter()
                                .map(|a| (*a).to_owned())
                                .collect(),
                            ..Default::default()
                        },
                    },
                ));
            }
            Action::Mutate(applies) if served.mutating => {
                out.push(FloorObject::Mutating(MutatingAdmissionPolicy {
                    metadata: metadata.clone(),
                    spec: Some(MutatingAdmissionPolicySpec {
                        // Not patched is what happens without the floor: never refuse for it.
                        failure_policy: Some("Ignore".to_owned()),
                        match_constraints: Some(constraints),
                        match_conditions: non_empty(match_conditions),
                        variables: non_empty(variables),
                        reinvocation_policy: Some("Never".to_owned()),
                        mutations: Some(
                            applies
                                .iter()
                                .map(|a| Mutation {
                                    patch_type: "ApplyConfiguration".to_owned(),
                                    apply_configuration: Some(ApplyConfiguration {
                                        expression: Some(a.render(Syntax::Kubernetes)),
                                    }),
                                    json_patch: None,
                                })
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                }));
                out.push(FloorObject::MutatingBinding(
                    MutatingAdmissionPolicyBinding {
                        metadata,
                        spec: Some(MutatingAdmissionPolicyBindingSpec {
                            policy_name: Some(part.name.clone()),
                            ..Default::default()
                        }),
                    },
                ));
            }
            _ => {}
        }
    }
    out
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// The part's resources, one rule each, converted from any version (`Equivalent`).
fn match_resources(part: &Floor) -> MatchResources {
    MatchResources {
        match_policy: Some("Equivalent".to_owned()),
        resource_rules: Some(
            part.resources
                .iter()
                .map(|r| NamedRuleWithOperations {
                    api_groups: Some(vec![r.group.to_owned()]),
                    api_versions: Some(r.versions.iter().map(|v| (*v).to_owned()).collect()),
                    operations: Some(part.operations.iter().map(|o| (*o).to_owned()).collect()),
                    resources: Some(vec![r.plural.to_owned()]),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// How long after `now` the floor changes by itself: when the first exception it embeds ends
/// (the writer writes it again then).
pub fn rewrite_in(config: &Config, exceptions: &ExceptionSet, now: SystemTime) -> Option<Duration> {
    exceptions
        .next_end(now, config.max_exception_duration)
        .map(|at| at.duration_since(now).unwrap_or_default())
}
