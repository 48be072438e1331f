//! `rbac-hygiene` (validating): reads skip admission, so prodguard guards the grants. The
//! production guide protects viewing Secrets at every level, access to database pods, and
//! deletion of workloads and configuration; a grant of any of these to a subject that is not
//! an admin or exempt is a violation:
//!
//! - `get`, `list` or `watch` on `secrets`;
//! - `create` or `get` on `pods/exec`, `pods/attach` or `pods/portforward`;
//! - `delete` or `deletecollection` on the kinds `protect-delete` protects;
//! - `create`, `update` or `patch` on `policyexceptions.prodguard.io` (an exception lifts policies);
//! - the escalation classes, each a setting (`escalations`, all on by default): grants that let
//!   a subject become someone who holds the above, or walk around prodguard (impersonation,
//!   `escalate` and `bind` on roles, deleting namespaces, writing webhook configurations,
//!   `nodes/proxy`, approving certificate requests, ephemeral containers, service account tokens,
//!   creating PersistentVolumes);
//!
//! directly or through `*` (verbs, resources, API groups, `pods/*`, `*/exec`), whatever
//! `resourceNames` narrows it to. It checks CREATE and UPDATE of RoleBindings and
//! ClusterRoleBindings (the role's rules are read through the API; a role that does not
//! exist grants nothing yet) and of Roles and ClusterRoles that are already bound (their
//! bindings are read through the API). When the API cannot be read, the request is refused
//! (fail closed). On UPDATE only what the request adds is judged: new subjects of a binding,
//! new grants of a role.

use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::PolicyMode;
use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::config::Admins;
use crate::unit::{role_key, RoleKey};
use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};

pub const ID: &str = "rbac-hygiene";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Users and service accounts (`system:serviceaccount:<namespace>:<name>`), with `*`
    /// wildcards, that may be granted the guarded permissions besides the admins.
    pub exempt_users: Vec<String>,
    /// Groups, with `*` wildcards, that may be granted them.
    pub exempt_groups: Vec<String>,
    /// The escalation classes guarded besides Secrets, exec and deletion.
    pub escalations: Escalations,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            exempt_users: default_rbac_exempt_users(),
            exempt_groups: default_rbac_exempt_groups(),
            escalations: Escalations::default(),
        }
    }
}

/// Grants that walk around every other guard, each guarded unless set to `false` (a cluster
/// that delegates one on purpose says so in its policy file). Kubernetes' "Role Based Access
/// Control Good Practices" lists them as privilege-escalation risks; the CIS Benchmark (5.1.8)
/// asks to limit bind, impersonate and escalate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Escalations {
    /// `impersonate` on users, groups or service accounts.
    pub impersonate: bool,
    /// `escalate` on roles and cluster roles.
    pub escalate: bool,
    /// `bind` on roles and cluster roles.
    pub bind: bool,
    /// `delete`, `deletecollection` on namespaces.
    pub delete_namespaces: bool,
    /// Writing validating or mutating webhook configurations.
    pub webhook_configurations: bool,
    /// Any verb on `nodes/proxy` (the kubelet's API).
    pub node_proxy: bool,
    /// `approve` on `signers` (certificates.k8s.io).
    pub approve_certificates: bool,
    /// `update`, `patch` on `pods/ephemeralcontainers`.
    pub ephemeral_containers: bool,
    /// `create` on `serviceaccounts/token`.
    pub service_account_tokens: bool,
    /// `create` on `persistentvolumes`.
    pub create_persistent_volumes: bool,
}

impl Default for Escalations {
    fn default() -> Self {
        Escalations {
            impersonate: true,
            escalate: true,
            bind: true,
            delete_namespaces: true,
            webhook_configurations: true,
            node_proxy: true,
            approve_certificates: true,
            ephemeral_containers: true,
            service_account_tokens: true,
            create_persistent_volumes: true,
        }
    }
}

/// An escalation class: its setting, the grants it guards and the risk a message names.
struct Class {
    enabled: fn(&Escalations) -> bool,
    /// (API group, resource, verbs).
    grants: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// What the grant lets its holder do: "{who} {risk}".
    risk: &'static str,
}

const CLASSES: &[Class] = &[
    Class {
        enabled: |e| e.impersonate,
        grants: &[
            ("", "users", &["impersonate"]),
            ("", "groups", &["impersonate"]),
            ("", "serviceaccounts", &["impersonate"]),
        ],
        risk: "act as any user, group or service account, admins included",
    },
    Class {
        enabled: |e| e.escalate,
        grants: &[
            (RBAC_GROUP, "roles", &["escalate"]),
            (RBAC_GROUP, "clusterroles", &["escalate"]),
        ],
        risk: "write into a role permissions they do not hold, and so give themselves any",
    },
    Class {
        enabled: |e| e.bind,
        grants: &[
            (RBAC_GROUP, "roles", &["bind"]),
            (RBAC_GROUP, "clusterroles", &["bind"]),
        ],
        risk: "bind any role, cluster-admin included, to anyone, themselves included",
    },
    Class {
        enabled: |e| e.delete_namespaces,
        grants: &[("", "namespaces", DELETE)],
        risk: "delete a namespace and with it every Deployment, ConfigMap and Secret in it, \
               through the namespace controller that protect-delete exempts",
    },
    Class {
        enabled: |e| e.webhook_configurations,
        grants: &[
            (
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                WEBHOOK_WRITE,
            ),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                WEBHOOK_WRITE,
            ),
        ],
        risk: "switch off or replace prodguard's webhooks, and every other admission webhook",
    },
    Class {
        enabled: |e| e.node_proxy,
        grants: &[(
            "",
            "nodes/proxy",
            &["get", "create", "update", "patch", "delete"],
        )],
        risk:
            "run commands in any pod of a node through the kubelet, which no admission webhook sees",
    },
    Class {
        enabled: |e| e.approve_certificates,
        grants: &[("certificates.k8s.io", "signers", &["approve"])],
        risk: "approve a certificate request and so mint a client certificate for any user or \
               group, system:masters included",
    },
    Class {
        enabled: |e| e.ephemeral_containers,
        grants: &[("", "pods/ephemeralcontainers", &["update", "patch"])],
        risk: "run code of their choosing inside any pod, database pods included",
    },
    Class {
        enabled: |e| e.service_account_tokens,
        grants: &[("", "serviceaccounts/token", &["create"])],
        risk: "take the identity, and every right, of the service accounts they can name",
    },
    Class {
        enabled: |e| e.create_persistent_volumes,
        grants: &[("", "persistentvolumes", &["create"])],
        risk: "mount any path of a node (hostPath) into a pod",
    },
];

fn default_rbac_exempt_users() -> Vec<String> {
    [
        "system:serviceaccount:kube-system:*",
        "system:serviceaccount:prodguard:prodguard",
        "system:kube-controller-manager",
        "system:kube-scheduler",
    ]
    .map(String::from)
    .to_vec()
}

fn default_rbac_exempt_groups() -> Vec<String> {
    vec!["system:nodes".to_owned()]
}

/// `rbac-hygiene`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    /// The audit lists the bindings: what a stored role grants is reported at the bindings
    /// that grant it, once.
    fn matches(_: &Settings) -> Vec<Match> {
        let writes: &[&str] = &["CREATE", "UPDATE"];
        vec![
            Match::new(
                Webhook::Validate,
                writes,
                &[resources::ROLE_BINDINGS, resources::CLUSTER_ROLE_BINDINGS],
            ),
            Match::new(
                Webhook::Validate,
                writes,
                &[resources::ROLES, resources::CLUSTER_ROLES],
            )
            .not_audited(),
        ]
    }

    /// The kinds `protect-delete` protects are guarded here too: who may delete them.
    fn build(settings: &Settings, config: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(RbacHygiene::new(
            settings,
            &config.admins,
            &config.policies.protect_delete.kinds,
        ))]
    }
}
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A permission the guide reserves for admins.
#[derive(Debug, Clone, PartialEq)]
struct Guarded {
    group: String,
    resource: String,
    verbs: &'static [&'static str],
    /// For an escalation class: what the grant lets its holder do.
    risk: Option<&'static str>,
}

impl Guarded {
    fn new(group: &str, resource: &str, verbs: &'static [&'static str]) -> Guarded {
        Guarded {
            group: group.to_owned(),
            resource: resource.to_owned(),
            verbs,
            risk: None,
        }
    }

    /// `secrets`, `deployments.apps`.
    fn describe_resource(&self) -> String {
        if self.group.is_empty() || self.group == "*" {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const CONNECT: &[&str] = &["create", "get"];
const DELETE: &[&str] = &["delete", "deletecollection"];
/// Writing a PolicyException lifts policies: only admins may.
const WRITE: &[&str] = &["create", "update", "patch"];
const WEBHOOK_WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// The API group and resource of a kind `protect-delete` names; an unknown kind is matched by
/// its lower-case plural in any group.
fn resource_of(kind: &str) -> (&'static str, String) {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            ("apps", format!("{}s", kind.to_ascii_lowercase()))
        }
        "Job" | "CronJob" => ("batch", format!("{}s", kind.to_ascii_lowercase())),
        "Ingress" => ("networking.k8s.io", "ingresses".to_owned()),
        "ConfigMap"
        | "Secret"
        | "Service"
        | "Pod"
        | "PersistentVolumeClaim"
        | "ServiceAccount"
        | "Namespace"
        | "PersistentVolume"
        | "ReplicationController" => ("", format!("{}s", kind.to_ascii_lowercase())),
        _ => ("*", format!("{}s", kind.to_ascii_lowercase())),
    }
}

fn matches_list(list: &[String], value: &str) -> bool {
    list.iter().any(|item| item == "*" || item == value)
}

/// Whether a rule's `resources` entry covers `resource` (`pods/exec`): exact, `*`, `pods/*`
/// or `*/exec`.
fn covers_resource(entry: &str, resource: &str) -> bool {
    if entry == "*" || entry == resource {
        return true;
    }
    match (entry.split_once('/'), resource.split_once('/')) {
        (Some((main, "*")), Some((want_main, _))) => main == want_main,
        (Some(("*", sub)), Some((_, want_sub))) => sub == want_sub,
        _ => false,
    }
}

/// One guarded permission that rules grant: `get, list, watch on secrets`, and for an escalation
/// class its risk.
#[derive(Debug, Clone, PartialEq)]
struct Grant {
    text: String,
    /// The guarded resource alone (`secrets`), what a message about a role the requester
    /// may not read names.
    resource: String,
    risk: Option<&'static str>,
}

/// The grants as one list (`get on secrets; create on pods/exec`).
fn texts(grants: &[Grant]) -> String {
    grants
        .iter()
        .map(|g| g.text.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the escalation grants let `who` do, one clause per class (`impersonate on users,
/// impersonate on groups lets User alice act as ...; `), or nothing.
fn risks(grants: &[Grant], who: &str) -> String {
    let mut classes: Vec<(&str, Vec<&str>)> = Vec::new();
    for grant in grants {
        let Some(risk) = grant.risk else { continue };
        match classes.iter_mut().find(|(r, _)| *r == risk) {
            Some((_, texts)) => texts.push(&grant.text),
            None => classes.push((risk, vec![&grant.text])),
        }
    }
    classes
        .iter()
        .map(|(risk, texts)| format!("{} lets {who} {risk}; ", texts.join(", ")))
        .collect()
}

/// What a role the requester may not read holds, said coarsely: the guarded resources (no
/// verbs, no resource names) and what the escalation classes among them let `who` do.
fn coarse(grants: &[Grant], who: &str) -> String {
    let mut resources: Vec<&str> = Vec::new();
    let mut risks: Vec<&str> = Vec::new();
    for grant in grants {
        if !resources.contains(&grant.resource.as_str()) {
            resources.push(&grant.resource);
        }
        if let Some(risk) = grant.risk.filter(|r| !risks.contains(r)) {
            risks.push(risk);
        }
    }
    let mut text = format!(
        "permissions on {} that only admins may hold",
        resources.join(", ")
    );
    if !risks.is_empty() {
        text.push_str(&format!(", which would let {who} {}", risks.join("; and ")));
    }
    text
}

/// What `rules` grant of `guarded`.
fn grants(rules: &[PolicyRule], guarded: &[Guarded]) -> Vec<Grant> {
    let mut found = Vec::new();
    for g in guarded {
        let mut verbs: Vec<&str> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut unrestricted = false;
        for rule in rules {
            let groups = rule.api_groups.as_deref().unwrap_or_default();
            let resources = rule.resources.as_deref().unwrap_or_default();
            let group_ok = g.group == "*" || matches_list(groups, &g.group);
            if !group_ok || !resources.iter().any(|r| covers_resource(r, &g.resource)) {
                continue;
            }
            let granted: Vec<&str> = g
                .verbs
                .iter()
                .copied()
                .filter(|v| matches_list(&rule.verbs, v))
                .collect();
            if granted.is_empty() {
                continue;
            }
            match rule.resource_names.as_deref() {
                Some(list) if !list.is_empty() => names.extend(list.iter().cloned()),
                _ => unrestricted = true,
            }
            for v in granted {
                if !verbs.contains(&v) {
                    verbs.push(v);
                }
            }
        }
        if verbs.is_empty() {
            continue;
        }
        verbs.sort_by_key(|v| g.verbs.iter().position(|x| x == v));
        let scope = if unrestricted || names.is_empty() {
            String::new()
        } else {
            names.sort();
            names.dedup();
            format!(" (named {})", names.join(", "))
        };
        found.push(Grant {
            text: format!("{} on {}{scope}", verbs.join(", "), g.describe_resource()),
            resource: g.describe_resource(),
            risk: g.risk,
        });
    }
    found
}

fn describe_subject(subject: &Subject, binding_namespace: &str) -> String {
    match subject.kind.as_str() {
        "ServiceAccount" => format!(
            "ServiceAccount {}/{}",
            subject.namespace.as_deref().unwrap_or(binding_namespace),
            subject.name
        ),
        kind => format!("{kind} {}", subject.name),
    }
}

pub struct RbacHygiene {
    admins: Admins,
    exempt_users: Vec<WildMatch>,
    exempt_groups: Vec<WildMatch>,
    guarded: Vec<Guarded>,
}

impl RbacHygiene {
    pub fn new(config: &Settings, admins: &Admins, protected_kinds: &[String]) -> RbacHygiene {
        let mut guarded = vec![
            Guarded::new("", "secrets", READ),
            Guarded::new("", "pods/exec", CONNECT),
            Guarded::new("", "pods/attach", CONNECT),
            Guarded::new("", "pods/portforward", CONNECT),
            Guarded::new(
                resources::POLICY_EXCEPTIONS.group,
                resources::POLICY_EXCEPTIONS.plural,
                WRITE,
            ),
        ];
        for kind in protected_kinds {
            let (group, resource) = resource_of(kind);
            guarded.push(Guarded::new(group, &resource, DELETE));
        }
        for class in CLASSES.iter().filter(|c| (c.enabled)(&config.escalations)) {
            for (group, resource, verbs) in class.grants {
                guarded.push(Guarded {
                    risk: Some(class.risk),
                    ..Guarded::new(group, resource, verbs)
                });
            }
        }
        RbacHygiene {
            admins: admins.clone(),
            exempt_users: config
                .exempt_users
                .iter()
                .map(|u| WildMatch::new(u))
                .collect(),
            exempt_groups: config
                .exempt_groups
                .iter()
                .map(|g| WildMatch::new(g))
                .collect(),
            guarded,
        }
    }

    /// Whether the subject may hold the guarded permissions.
    fn trusted(&self, subject: &Subject, binding_namespace: &str) -> bool {
        let user = |name: &str| {
            self.admins.users.iter().any(|u| u == name)
                || self.exempt_users.iter().any(|p| p.matches(name))
        };
        match subject.kind.as_str() {
            "User" => user(&subject.name),
            "Group" => {
                self.admins.groups.iter().any(|g| g == &subject.name)
                    || self.exempt_groups.iter().any(|p| p.matches(&subject.name))
            }
            "ServiceAccount" => user(&format!(
                "system:serviceaccount:{}:{}",
                subject.namespace.as_deref().unwrap_or(binding_namespace),
                subject.name
            )),
            _ => false,
        }
    }

    fn untrusted<'s>(&self, subjects: &'s [Subject], namespace: &str) -> Vec<&'s Subject> {
        subjects
            .iter()
            .filter(|s| !self.trusted(s, namespace))
            .collect()
    }

    /// For a binding write: the role it grants and its untrusted subjects (on UPDATE only those
    /// the request adds). `None` when there is nothing to check.
    fn binding_write(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<(RoleKey, Vec<Subject>)>, EvalError> {
        let object = request.object.ok_or(EvalError::MissingObject)?;
        let Some(role_ref) = &object.role_ref else {
            return Ok(None);
        };
        let subjects = object.subjects.as_deref().unwrap_or_default();
        let mut added: Vec<Subject> = self
            .untrusted(subjects, request.namespace)
            .into_iter()
            .cloned()
            .collect();
        if let (Operation::Update, Some(old)) = (&request.operation, request.old_object) {
            let old_subjects = old.subjects.as_deref().unwrap_or_default();
            added.retain(|s| !old_subjects.contains(s));
        }
        if added.is_empty() {
            return Ok(None);
        }
        Ok(Some((role_key(role_ref, request.namespace), added)))
    }

    /// For a role write: the role and what its rules grant (on UPDATE only the new grants).
    fn role_write(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<(RoleKey, Vec<Grant>)>, EvalError> {
        let object = request.object.ok_or(EvalError::MissingObject)?;
        let rules = object.rules.as_deref().unwrap_or_default();
        let mut granted = grants(rules, &self.guarded);
        if let (Operation::Update, Some(old)) = (&request.operation, request.old_object) {
            let old_rules = old.rules.as_deref().unwrap_or_default();
            let before = grants(old_rules, &self.guarded);
            granted.retain(|g| !before.contains(g));
        }
        if granted.is_empty() {
            return Ok(None);
        }
        let key = RoleKey {
            cluster: request.kind == "ClusterRole",
            namespace: if request.kind == "ClusterRole" {
                String::new()
            } else {
                request.namespace.to_owned()
            },
            name: request.object_name().to_owned(),
        };
        Ok(Some((key, granted)))
    }

    const FIX: &'static str = "the production guide reserves these for admins; a subject that \
                               needs them is listed in admins or in policies.rbac-hygiene's \
                               exemptUsers or exemptGroups, which an admin does";
}

#[async_trait::async_trait]
impl Policy for RbacHygiene {
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
        // The engine runs it only on what its matches name: writes of the four RBAC kinds.
        let message = match request.kind {
            "RoleBinding" | "ClusterRoleBinding" => {
                let Some((role, subjects)) = self.binding_write(request)? else {
                    return Ok(Vec::new());
                };
                let rules = match lookups.role_rules(&role).await {
                    Ok(None) => return Ok(Vec::new()),
                    Err(e) => {
                        return Err(EvalError::Lookup(format!(
                            "{} cannot be checked: {e}",
                            request.describe()
                        )))
                    }
                    Ok(Some(rules)) => rules,
                };
                let granted = grants(&rules, &self.guarded);
                if granted.is_empty() {
                    return Ok(Vec::new());
                }
                let who: Vec<String> = subjects
                    .iter()
                    .map(|s| describe_subject(s, request.namespace))
                    .collect();
                let scope = if request.kind == "ClusterRoleBinding" {
                    "cluster-wide".to_owned()
                } else {
                    format!("in namespace {}", request.namespace)
                };
                let who = who.join(", ");
                // The role was read, not sent: the requester may not be allowed to read it,
                // so the message says what it holds coarsely; the log has its grants.
                tracing::info!(
                    policy = ID,
                    user = request.username,
                    role = %role,
                    grants = %texts(&granted),
                    "refused a binding to a role with guarded grants"
                );
                format!(
                    "{} grants {role} to {who} {scope}, and {role} holds {}; {}",
                    request.describe(),
                    coarse(&granted, &who),
                    Self::FIX
                )
            }
            "Role" | "ClusterRole" => {
                let Some((role, granted)) = self.role_write(request)? else {
                    return Ok(Vec::new());
                };
                let bindings = match lookups.bindings_to(&role).await {
                    Err(e) => {
                        return Err(EvalError::Lookup(format!(
                            "{} cannot be checked: {e}",
                            request.describe()
                        )))
                    }
                    Ok(bindings) => bindings,
                };
                let mut who = Vec::new();
                let mut subjects = Vec::new();
                for binding in &bindings {
                    for subject in self.untrusted(&binding.subjects, &binding.namespace) {
                        subjects.push(describe_subject(subject, &binding.namespace));
                        who.push(format!(
                            "{} (through {})",
                            describe_subject(subject, &binding.namespace),
                            binding.describe()
                        ));
                    }
                }
                if who.is_empty() {
                    return Ok(Vec::new());
                }
                // The grants are the request's own; its bindings were read, not sent: the
                // message counts their subjects and the log names them.
                tracing::info!(
                    policy = ID,
                    user = request.username,
                    role = %role,
                    subjects = %who.join(", "),
                    "refused guarded grants to a bound role"
                );
                let them = match subjects.len() {
                    1 => "1 subject bound to it that is neither an admin nor exempt".to_owned(),
                    n => format!("{n} subjects bound to it that are neither admins nor exempt"),
                };
                format!(
                    "{role} would allow {} to {them}; {}{}",
                    texts(&granted),
                    risks(&granted, "them"),
                    Self::FIX
                )
            }
            _ => return Ok(Vec::new()),
        };
        Ok(vec![Finding::Violation { message }])
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use super::*;
    use crate::policies::test_support::{asked, object, request, violations, Context, Eval};
    use crate::unit::Binding;
    use serde_json::json;
    use serde_json::Value;

    fn policy() -> RbacHygiene {
        let config = Config::default();
        RbacHygiene::new(
            &config.policies.rbac_hygiene,
            &config.admins,
            &config.policies.protect_delete.kinds,
        )
    }

    fn rules(value: Value) -> Vec<PolicyRule> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn grants_table() {
        let g = policy().guarded;
        let cases = [
            (
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]),
                vec!["get, list on secrets"],
            ),
            (
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
                vec![
                    "get, list, watch on secrets",
                    "create, get on pods/exec",
                    "create, get on pods/attach",
                    "create, get on pods/portforward",
                    "create, update, patch on policyexceptions.prodguard.io",
                    "delete, deletecollection on deployments.apps",
                    "delete, deletecollection on statefulsets.apps",
                    "delete, deletecollection on configmaps",
                    "delete, deletecollection on secrets",
                    "impersonate on users",
                    "impersonate on groups",
                    "impersonate on serviceaccounts",
                    "escalate on roles.rbac.authorization.k8s.io",
                    "escalate on clusterroles.rbac.authorization.k8s.io",
                    "bind on roles.rbac.authorization.k8s.io",
                    "bind on clusterroles.rbac.authorization.k8s.io",
                    "delete, deletecollection on namespaces",
                    "create, update, patch, delete, deletecollection on validatingwebhookconfigurations.admissionregistration.k8s.io",
                    "create, update, patch, delete, deletecollection on mutatingwebhookconfigurations.admissionregistration.k8s.io",
                    "get, create, update, patch, delete on nodes/proxy",
                    "approve on signers.certificates.k8s.io",
                    "update, patch on pods/ephemeralcontainers",
                    "create on serviceaccounts/token",
                    "create on persistentvolumes",
                ],
            ),
            (
                json!([{"apiGroups": ["prodguard.io"], "resources": ["policyexceptions"], "verbs": ["get", "list", "watch", "create"]}]),
                vec!["create on policyexceptions.prodguard.io"],
            ),
            (
                json!([{"apiGroups": ["prodguard.io"], "resources": ["policyexceptions"], "verbs": ["get", "list", "watch"]}]),
                vec![],
            ),
            (
                json!([{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["create"]}]),
                vec![
                    "create on pods/exec",
                    "create on pods/attach",
                    "create on pods/portforward",
                ],
            ),
            (
                json!([{"apiGroups": [""], "resources": ["*/portforward"], "verbs": ["create"]}]),
                vec!["create on pods/portforward"],
            ),
            (
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["tls", "db"]}]),
                vec!["get on secrets (named db, tls)"],
            ),
            (
                json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["delete"]}]),
                vec!["delete on deployments.apps"],
            ),
            // Harmless: other groups, other verbs, pods themselves, logs, non-resource URLs.
            (
                json!([{"apiGroups": ["example.com"], "resources": ["secrets"], "verbs": ["*"]}]),
                vec![],
            ),
            (
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update"]}]),
                vec![],
            ),
            (
                json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch", "delete"]}]),
                vec![],
            ),
            (
                json!([{"apiGroups": ["extensions"], "resources": ["deployments"], "verbs": ["delete"]}]),
                vec![],
            ),
            (json!([{"nonResourceURLs": ["*"], "verbs": ["*"]}]), vec![]),
        ];
        for (value, expected) in cases {
            let found: Vec<String> = grants(&rules(value.clone()), &g)
                .into_iter()
                .map(|g| g.text)
                .collect();
            assert_eq!(found, expected, "{value}");
        }
    }

    fn binding(
        kind: &str,
        role_kind: &str,
        role: &str,
        subjects: Value,
    ) -> crate::view::Object<'static> {
        object(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects}),
        )
    }

    fn rbac_request<'a>(
        op: Operation,
        kind: &'a str,
        obj: &'a crate::view::Object<'static>,
    ) -> Request<'a> {
        let mut req = request(op, kind, "x", Some(obj));
        req.group = RBAC_GROUP;
        if kind.starts_with("Cluster") {
            req.namespace = "";
        }
        req
    }

    fn messages(req: &Request<'_>, ctx: &Context) -> Vec<String> {
        violations(&policy(), req, ctx)
    }

    fn with_rules(value: Value) -> Context {
        Context {
            role_rules: Some(Ok(Some(rules(value)))),
            ..Context::default()
        }
    }

    #[test]
    fn a_binding_to_a_secret_reader_is_refused_for_non_admins() {
        let obj = binding(
            "RoleBinding",
            "ClusterRole",
            "secret-reader",
            json!([
                {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"},
                {"kind": "ServiceAccount", "name": "app"},
                {"kind": "Group", "name": "system:masters", "apiGroup": "rbac.authorization.k8s.io"},
            ]),
        );
        let req = rbac_request(Operation::Create, "RoleBinding", &obj);
        assert_eq!(asked(&policy(), &req), ["ClusterRole secret-reader"]);
        let ctx = with_rules(
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch"]}]),
        );
        assert_eq!(messages(&req, &ctx), vec![
            // The role was read, not sent: its resources are named, not its verbs.
            "RoleBinding openg2p/b grants ClusterRole secret-reader to User bob, ServiceAccount openg2p/app \
             in namespace openg2p, and ClusterRole secret-reader holds permissions on secrets that only admins \
             may hold; the production guide reserves these for admins; a subject that needs them is listed in \
             admins or in policies.rbac-hygiene's exemptUsers or exemptGroups, which an admin does".to_owned()
        ]);
        // Harmless rules, a missing role, or only trusted subjects: nothing.
        let view =
            with_rules(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]));
        assert!(messages(&req, &view).is_empty());
        let missing = Context {
            role_rules: Some(Ok(None)),
            ..Context::default()
        };
        assert!(messages(&req, &missing).is_empty());
        let admins_only = binding(
            "ClusterRoleBinding",
            "ClusterRole",
            "cluster-admin",
            json!([
                {"kind": "Group", "name": "system:masters"},
                {"kind": "ServiceAccount", "name": "generic-garbage-collector", "namespace": "kube-system"},
                {"kind": "User", "name": "system:kube-controller-manager"},
                {"kind": "Group", "name": "system:nodes"},
            ]),
        );
        let req = rbac_request(Operation::Create, "ClusterRoleBinding", &admins_only);
        assert!(asked(&policy(), &req).is_empty(), "no lookup needed");
        assert!(messages(
            &req,
            &with_rules(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]))
        )
        .is_empty());
    }

    #[test]
    fn cluster_wide_scope_and_fail_closed() {
        let obj = binding(
            "ClusterRoleBinding",
            "ClusterRole",
            "ops",
            json!([{"kind": "Group", "name": "developers"}]),
        );
        let req = rbac_request(Operation::Create, "ClusterRoleBinding", &obj);
        let msgs = messages(
            &req,
            &with_rules(
                json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
            ),
        );
        assert!(msgs[0].starts_with("ClusterRoleBinding b grants ClusterRole ops to Group developers cluster-wide, and ClusterRole ops holds permissions on pods/exec that only admins may hold;"), "{}", msgs[0]);
        let failed = Context {
            role_rules: Some(Err("reading ClusterRole ops failed: timeout".into())),
            ..Context::default()
        };
        assert_eq!(
            policy().eval(&req, &failed),
            Err(EvalError::Lookup(
                "ClusterRoleBinding b cannot be checked: reading ClusterRole ops failed: timeout"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn a_binding_update_judges_only_new_subjects() {
        let old = binding(
            "RoleBinding",
            "Role",
            "r",
            json!([{"kind": "User", "name": "bob"}]),
        );
        let new = binding(
            "RoleBinding",
            "Role",
            "r",
            json!([{"kind": "User", "name": "bob"}, {"kind": "User", "name": "eve"}]),
        );
        let mut req = rbac_request(Operation::Update, "RoleBinding", &new);
        req.old_object = Some(&old);
        let ctx =
            with_rules(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]));
        let msgs = messages(&req, &ctx);
        assert!(
            msgs[0].contains("grants Role openg2p/r to User eve in namespace openg2p,"),
            "{}",
            msgs[0]
        );
        req.object = Some(&old);
        assert!(messages(&req, &ctx).is_empty());
    }

    #[test]
    fn a_bound_role_may_not_gain_guarded_rules() {
        let role = object(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "app"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]}),
        );
        let req = rbac_request(Operation::Create, "Role", &role);
        let key = RoleKey {
            cluster: false,
            namespace: "openg2p".into(),
            name: "app".into(),
        };
        assert_eq!(asked(&policy(), &req), [format!("the bindings of {key}")]);
        let bound = |subjects: Vec<Subject>| Context {
            bindings: Some(Ok(vec![Binding {
                kind: "RoleBinding",
                namespace: "openg2p".into(),
                name: "app-binding".into(),
                role: key.clone(),
                subjects,
            }])),
            ..Context::default()
        };
        let subject = |kind: &str, name: &str| Subject {
            kind: kind.into(),
            name: name.into(),
            ..Subject::default()
        };
        assert_eq!(messages(&req, &bound(vec![subject("User", "bob")])), vec![
            // The grants are the request's own; its bindings were read: counted, not named.
            "Role openg2p/app would allow get, list, watch on secrets; delete, deletecollection on secrets to \
             1 subject bound to it that is neither an admin nor exempt; the production guide reserves these for \
             admins; a subject that needs them is listed in admins or in policies.rbac-hygiene's exemptUsers or \
             exemptGroups, which an admin does".to_owned()
        ]);
        assert!(messages(&req, &bound(vec![subject("Group", "system:masters")])).is_empty());
        assert!(messages(&req, &bound(vec![])).is_empty(), "unbound");
        // An update that keeps the same grants is not judged again.
        let mut update = req.clone();
        update.operation = Operation::Update;
        update.old_object = Some(&role);
        assert!(asked(&policy(), &update).is_empty());
        assert!(messages(&update, &bound(vec![subject("User", "bob")])).is_empty());
    }

    /// Each escalation class, in a plain and a wildcard form: (setting, rule, a plain form's
    /// grant, a wildcard form, the risk the message names).
    fn escalation_table() -> Vec<(&'static str, Value, &'static str, Value, &'static str)> {
        vec![
            ("impersonate",
             json!({"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}),
             "impersonate on users",
             json!({"apiGroups": ["*"], "resources": ["serviceaccounts"], "verbs": ["*"]}),
             "act as any user, group or service account, admins included"),
            ("escalate",
             json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["escalate"]}),
             "escalate on clusterroles.rbac.authorization.k8s.io",
             json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["*"], "verbs": ["escalate"]}),
             "write into a role permissions they do not hold"),
            ("bind",
             json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"]}),
             "bind on roles.rbac.authorization.k8s.io",
             json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["bind"]}),
             "bind any role, cluster-admin included"),
            ("deleteNamespaces",
             json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["delete"]}),
             "delete on namespaces",
             json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["*"]}),
             "through the namespace controller that protect-delete exempts"),
            ("webhookConfigurations",
             json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"], "verbs": ["patch"]}),
             "patch on validatingwebhookconfigurations.admissionregistration.k8s.io",
             json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["*"], "verbs": ["*"]}),
             "switch off or replace prodguard's webhooks"),
            ("nodeProxy",
             json!({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}),
             "get on nodes/proxy",
             json!({"apiGroups": [""], "resources": ["nodes/*"], "verbs": ["*"]}),
             "through the kubelet, which no admission webhook sees"),
            ("approveCertificates",
             json!({"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"], "resourceNames": ["kubernetes.io/kube-apiserver-client"]}),
             "approve on signers.certificates.k8s.io (named kubernetes.io/kube-apiserver-client)",
             json!({"apiGroups": ["certificates.k8s.io"], "resources": ["*"], "verbs": ["*"]}),
             "mint a client certificate for any user or group"),
            ("ephemeralContainers",
             json!({"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch"]}),
             "patch on pods/ephemeralcontainers",
             json!({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["update"]}),
             "run code of their choosing inside any pod"),
            ("serviceAccountTokens",
             json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}),
             "create on serviceaccounts/token",
             json!({"apiGroups": [""], "resources": ["*/token"], "verbs": ["*"]}),
             "take the identity, and every right, of the service accounts"),
            ("createPersistentVolumes",
             json!({"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["create"]}),
             "create on persistentvolumes",
             json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["create"]}),
             "mount any path of a node (hostPath) into a pod"),
        ]
    }

    fn policy_with(settings: Value) -> RbacHygiene {
        let config = Config::default();
        let settings: Settings = serde_json::from_value(settings).unwrap();
        RbacHygiene::new(
            &settings,
            &config.admins,
            &config.policies.protect_delete.kinds,
        )
    }

    #[test]
    fn every_escalation_class_is_refused_by_default_named_with_its_risk_and_can_be_turned_off() {
        let obj = binding(
            "ClusterRoleBinding",
            "ClusterRole",
            "delegated",
            json!([{"kind": "User", "name": "alice"}]),
        );
        let req = rbac_request(Operation::Create, "ClusterRoleBinding", &obj);
        for (key, plain, grant, wildcard, risk) in escalation_table() {
            let msgs = messages(&req, &with_rules(json!([plain])));
            assert_eq!(msgs.len(), 1, "{key}: {msgs:?}");
            assert!(
                msgs[0].starts_with(&format!(
                    "ClusterRoleBinding b grants ClusterRole delegated to User alice cluster-wide, and ClusterRole delegated holds permissions on {} that only admins may hold, which would let User alice ",
                    // The resource alone: no verbs, no resource names.
                    grant
                        .split(" on ")
                        .nth(1)
                        .and_then(|r| r.split(" (named").next())
                        .unwrap_or_default()
                )),
                "{key}: {}",
                msgs[0]
            );
            assert!(msgs[0].contains(risk), "{key}: {}", msgs[0]);
            let wild = messages(&req, &with_rules(json!([wildcard.clone()])));
            assert!(
                wild.len() == 1 && wild[0].contains(risk),
                "{key} in its wildcard form {wildcard}: {wild:?}"
            );
            // Turned off, this class alone no longer counts.
            let off = policy_with(json!({"escalations": {key: false}}));
            assert!(
                violations(&off, &req, &with_rules(json!([plain]))).is_empty(),
                "{key} off"
            );
            // Another class turned off leaves this one guarded.
            let other = if key == "bind" { "escalate" } else { "bind" };
            let still = policy_with(json!({"escalations": {other: false}}));
            assert_eq!(
                violations(&still, &req, &with_rules(json!([plain]))).len(),
                1,
                "{key} with {other} off"
            );
        }
    }

    #[test]
    fn a_bound_role_gaining_an_escalation_counts_its_subjects_and_names_the_risk() {
        let role = object(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "ops"},
            "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]}),
        );
        let req = rbac_request(Operation::Update, "ClusterRole", &role);
        let key = RoleKey {
            cluster: true,
            namespace: String::new(),
            name: "ops".into(),
        };
        let ctx = Context {
            bindings: Some(Ok(vec![Binding {
                kind: "ClusterRoleBinding",
                namespace: String::new(),
                name: "ops".into(),
                role: key,
                subjects: vec![Subject {
                    kind: "User".into(),
                    name: "alice".into(),
                    ..Subject::default()
                }],
            }])),
            ..Context::default()
        };
        let msgs = messages(&req, &ctx);
        assert_eq!(msgs, vec![
            "ClusterRole ops would allow impersonate on users; impersonate on groups to 1 subject bound to it \
             that is neither an admin nor exempt; impersonate on users, impersonate on groups lets them act as \
             any user, group or service account, admins included; the production guide reserves these for \
             admins; a subject that needs them is listed in admins or in policies.rbac-hygiene's exemptUsers or \
             exemptGroups, which an admin does".to_owned()
        ]);
    }

    #[test]
    fn an_unknown_escalation_class_is_a_configuration_error() {
        let err =
            serde_json::from_value::<Settings>(json!({"escalations": {"impersonation": false}}))
                .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `impersonation`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_rbac_objects_are_shape_errors() {
        let err = crate::view::owned(
            json!({"kind": "RoleBinding", "metadata": {"name": "b"}, "roleRef": "admin"}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "RoleBinding field roleRef must be a role reference"
        );
    }
}
