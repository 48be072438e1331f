//! A policy's floor: the part of its rule the API server can decide from the request alone, in
//! CEL, so that it still holds while prodguard is down (docs/floor.md).
//!
//! A policy module declares its floor ([`super::PolicyModule::floor`]) from its live settings:
//! what it covers (operations, resources, conditions) and either checks (a
//! ValidatingAdmissionPolicy) or apply configurations (a MutatingAdmissionPolicy). The
//! `floor` module above turns the declarations into the API objects, with the excluded
//! namespaces, the mode and the exceptions in force; a policy says only what its rule is.
//!
//! The expressions use standard CEL, `matches` (RE2) and the strings extension
//! (`split`, `join`, `substring`, `indexOf`), which Kubernetes enables for admission policies
//! since 1.29, and which the tests' interpreter (cel-rust) evaluates too.

use super::resources::Resource;

/// One part of a policy's floor: one policy object and its binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    /// What the part covers, added to the object names (`prodguard-min-replicas-scale`); empty
    /// for a policy's first part.
    pub part: &'static str,
    pub operations: &'static [&'static str],
    pub resources: Vec<Resource>,
    /// Named CEL values the conditions and checks read as `variables.<name>`, in order.
    pub variables: Vec<(&'static str, String)>,
    /// CEL conditions (name, expression), all true for the part to act: the request is one the
    /// policy judges.
    pub conditions: Vec<(&'static str, String)>,
    pub action: Action,
}

/// What a part does with a request it acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Refuses the request when a check is false.
    Validate(Vec<Check>),
    /// Applies each configuration, in order (server-side apply's merge).
    Mutate(Vec<Apply>),
}

/// A validation: `expression` is true for an allowed request; `message` is a CEL string
/// expression, the policy's message.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub expression: String,
    pub message: String,
}

/// An apply configuration, as a tree: the object type of each node follows from the fields
/// above it (`Object.spec.template.spec.containers`), so a declaration cannot name a wrong one.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// An object with these fields.
    Object(Vec<(&'static str, Apply)>),
    /// One item per item of the CEL list `list` (an object, bound to `var`): `list.map(var, item)`.
    Each {
        list: String,
        var: &'static str,
        item: Box<Apply>,
    },
    /// A CEL value.
    Value(String),
    /// The configuration when `condition` holds, else an empty object of the same type.
    When { condition: String, then: Box<Apply> },
}

/// How an [`Apply`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// As a MutatingAdmissionPolicy's `applyConfiguration` (`Object.spec{containers: ...}`).
    Kubernetes,
    /// As plain CEL maps (`{"spec": {"containers": ...}}`), for an interpreter without
    /// Kubernetes' object types: the same tree, the same values.
    Maps,
}

impl Apply {
    /// The CEL expression of this configuration, at the object's root.
    pub fn render(&self, syntax: Syntax) -> String {
        let mut out = String::new();
        self.render_at(&mut vec!["Object"], syntax, &mut out);
        out
    }

    fn render_at(&self, path: &mut Vec<&'static str>, syntax: Syntax, out: &mut String) {
        match self {
            Apply::Object(fields) => {
                match syntax {
                    Syntax::Kubernetes => {
                        out.push_str(&path.join("."));
                        out.push('{');
                    }
                    Syntax::Maps => out.push('{'),
                }
                for (i, (field, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match syntax {
                        Syntax::Kubernetes => out.push_str(field),
                        Syntax::Maps => out.push_str(&cel_string(field)),
                    }
                    out.push_str(": ");
                    path.push(field);
                    value.render_at(path, syntax, out);
                    path.pop();
                }
                out.push('}');
            }
            Apply::Each { list, var, item } => {
                out.push_str(&format!("{list}.map({var}, "));
                item.render_at(path, syntax, out);
                out.push(')');
            }
            Apply::Value(value) => out.push_str(value),
            Apply::When { condition, then } => {
                out.push_str(&format!("({condition}) ? "));
                then.render_at(path, syntax, out);
                out.push_str(" : ");
                match syntax {
                    Syntax::Kubernetes => {
                        out.push_str(&path.join("."));
                        out.push_str("{}");
                    }
                    Syntax::Maps => out.push_str("{}"),
                }
            }
        }
    }
}

/// `text` as a CEL string literal.
pub fn cel_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A CEL list of string literals.
pub fn cel_strings<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| cel_string(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// `text` with every regular-expression metacharacter escaped (RE2 and Rust's `regex` read
/// it alike).
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A whole-string regular expression for a `*`/`?` wildcard pattern (as `wildmatch` reads it:
/// `*` any run, `?` one character, case kept).
pub fn glob_regex(pattern: &str) -> String {
    let mut out = String::from("^(?s)");
    for c in pattern.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&regex_escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

/// A CEL condition: `value` (a string expression) matches the wildcard `pattern`. A pattern
/// without wildcards compares as a string.
pub fn glob_matches(value: &str, pattern: &str) -> String {
    if pattern.contains(['*', '?']) {
        format!("{value}.matches({})", cel_string(&glob_regex(pattern)))
    } else {
        format!("{value} == {}", cel_string(pattern))
    }
}

/// `a || b || ...`, `false` for none.
pub fn any_of(conditions: &[String]) -> String {
    match conditions {
        [] => "false".to_owned(),
        [one] => one.clone(),
        many => many
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" || "),
    }
}

/// `a && b && ...`, `true` for none.
pub fn all_of(conditions: &[String]) -> String {
    match conditions {
        [] => "true".to_owned(),
        [one] => one.clone(),
        many => many
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" && "),
    }
}

/// The request's user is one of `admins` (by name or group).
pub fn is_admin(admins: &crate::config::Admins) -> String {
    let mut any = Vec::new();
    if !admins.users.is_empty() {
        any.push(format!(
            "request.userInfo.username in {}",
            cel_strings(&admins.users)
        ));
    }
    if !admins.groups.is_empty() {
        any.push(format!(
            "has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in {})",
            cel_strings(&admins.groups)
        ));
    }
    any_of(&any)
}

/// The API server leaves a field of CEL's `request` out when it is empty (`name` on a CREATE
/// by generateName, `namespace` of a cluster-scoped object, `subResource` of a request on the
/// object itself), and reading an absent one is an error: so the floor reads them through
/// `has()` (these two, and [`OBJECT_NAME`]), as `''` when absent.
pub const REQUEST_NAMESPACE: &str = "(has(request.namespace) ? request.namespace : '')";
/// See [`REQUEST_NAMESPACE`].
pub const REQUEST_SUBRESOURCE: &str = "(has(request.subResource) ? request.subResource : '')";

/// The object's name as messages give it (`Request::object_name`): the request's, else the
/// object's (the old one's on DELETE), else its generateName.
pub const OBJECT_NAME: &str = "has(request.name) && request.name != '' ? request.name : \
     (object != null && has(object.metadata.name) ? object.metadata.name : \
     (object != null && has(object.metadata.generateName) ? object.metadata.generateName : \
     (oldObject != null && has(oldObject.metadata.name) ? oldObject.metadata.name : '')))";

/// `Deployment openg2p/web` (`Request::describe`) when the request is about the object itself;
/// `name` is a CEL string expression of the object's name.
pub fn describe_object(name: &str) -> String {
    format!(
        "request.kind.kind + ' ' + (has(request.namespace) && request.namespace != '' ? \
         request.namespace + '/' : '') + \
         ({name} != '' ? {name} : '(unnamed)')"
    )
}

/// `has(root.a) && has(root.a.b) && ...`: every field of `path` is set (`true` for none).
pub fn has_path(root: &str, path: &[&str]) -> String {
    let mut at = root.to_owned();
    let mut all = Vec::new();
    for field in path {
        at = format!("{at}.{field}");
        all.push(format!("has({at})"));
    }
    if all.is_empty() {
        "true".to_owned()
    } else {
        all.join(" && ")
    }
}

/// Where a group of pod-bearing resources keeps its pod spec, and which container lists a
/// container policy reaches there: the floor's version of `mutable_container_lists` and
/// `checked_container_lists`.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpecs {
    pub part: &'static str,
    pub operations: &'static [&'static str],
    pub resources: Vec<Resource>,
    /// From the object root (`["spec", "template", "spec"]`).
    pub path: &'static [&'static str],
    pub lists: &'static [&'static str],
    /// The webhooks' own match conditions for these requests.
    pub conditions: Vec<(&'static str, String)>,
}

/// The webhooks' `not-a-workload-controllers-pod` (deploy/base/webhooks.yaml, which a test
/// compares): the pods a built-in workload controller creates come from a template judged at
/// the workload, so they never wait on prodguard, nor on its floor; workloads heal.
pub const NOT_A_WORKLOAD_CONTROLLERS_POD: (&str, &str) = (
    "not-a-workload-controllers-pod",
    "!(request.operation == 'CREATE' && request.resource.resource == 'pods' \
     && request.userInfo.username in ['system:serviceaccount:kube-system:replicaset-controller', \
     'system:serviceaccount:kube-system:statefulset-controller', \
     'system:serviceaccount:kube-system:daemon-set-controller', \
     'system:serviceaccount:kube-system:job-controller', \
     'system:serviceaccount:kube-system:replication-controller', \
     'system:kube-controller-manager'] \
     && has(object.metadata.ownerReferences) \
     && object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller))",
);

const ALL_LISTS: &[&str] = &["initContainers", "containers", "ephemeralContainers"];

/// The pod specs a container policy of `webhook` reaches, by where they are kept.
pub fn pod_specs(webhook: crate::unit::Webhook) -> Vec<PodSpecs> {
    use super::resources as r;
    use crate::unit::Webhook;
    let mutate = webhook == Webhook::Mutate;
    vec![
        PodSpecs {
            part: "pods",
            // A Pod's spec is immutable once created.
            operations: if mutate {
                &["CREATE"]
            } else {
                &["CREATE", "UPDATE"]
            },
            resources: vec![r::PODS],
            path: &["spec"],
            lists: ALL_LISTS,
            conditions: vec![(
                NOT_A_WORKLOAD_CONTROLLERS_POD.0,
                NOT_A_WORKLOAD_CONTROLLERS_POD.1.to_owned(),
            )],
        },
        PodSpecs {
            part: "ephemeral",
            operations: if mutate {
                &["UPDATE"]
            } else {
                &["CREATE", "UPDATE"]
            },
            resources: vec![r::EPHEMERAL_CONTAINERS],
            path: &["spec"],
            lists: if mutate {
                &["ephemeralContainers"]
            } else {
                ALL_LISTS
            },
            conditions: Vec::new(),
        },
        PodSpecs {
            part: "workloads",
            operations: &["CREATE", "UPDATE"],
            resources: vec![
                r::DEPLOYMENTS,
                r::STATEFUL_SETS,
                r::DAEMON_SETS,
                r::REPLICA_SETS,
                r::JOBS,
                r::REPLICATION_CONTROLLERS,
            ],
            path: &["spec", "template", "spec"],
            lists: ALL_LISTS,
            conditions: Vec::new(),
        },
        PodSpecs {
            part: "cronjobs",
            operations: &["CREATE", "UPDATE"],
            resources: vec![r::CRON_JOBS],
            path: &["spec", "jobTemplate", "spec", "template", "spec"],
            lists: ALL_LISTS,
            conditions: Vec::new(),
        },
        PodSpecs {
            part: "podtemplates",
            operations: &["CREATE", "UPDATE"],
            resources: vec![r::POD_TEMPLATES],
            path: &["template", "spec"],
            lists: ALL_LISTS,
            conditions: Vec::new(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_tree_names_its_types_by_their_path() {
        let apply = Apply::When {
            condition: "has(object.spec.initContainers)".into(),
            then: Box::new(Apply::Object(vec![(
                "spec",
                Apply::Object(vec![(
                    "initContainers",
                    Apply::Each {
                        list: "object.spec.initContainers".into(),
                        var: "c",
                        item: Box::new(Apply::Object(vec![
                            ("name", Apply::Value("c.name".into())),
                            ("imagePullPolicy", Apply::Value("\"IfNotPresent\"".into())),
                        ])),
                    },
                )]),
            )])),
        };
        assert_eq!(
            apply.render(Syntax::Kubernetes),
            "(has(object.spec.initContainers)) ? Object{spec: Object.spec{initContainers: \
             object.spec.initContainers.map(c, Object.spec.initContainers{name: c.name, \
             imagePullPolicy: \"IfNotPresent\"})}} : Object{}"
        );
        assert_eq!(
            apply.render(Syntax::Maps),
            "(has(object.spec.initContainers)) ? {\"spec\": {\"initContainers\": \
             object.spec.initContainers.map(c, {\"name\": c.name, \
             \"imagePullPolicy\": \"IfNotPresent\"})}} : {}"
        );
    }

    #[test]
    fn strings_and_patterns_are_escaped() {
        assert_eq!(cel_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(cel_string("x\ny"), r#""x\ny""#);
        assert_eq!(cel_strings(&["a", "b"]), r#"["a", "b"]"#);
        assert_eq!(
            glob_regex("system:serviceaccount:kube-system:*"),
            r"^(?s)system:serviceaccount:kube\-system:.*$"
        );
        assert_eq!(glob_regex("a.b?"), r"^(?s)a\.b.$");
        assert_eq!(glob_matches("x", "web"), "x == \"web\"");
        assert_eq!(any_of(&[]), "false");
        assert_eq!(all_of(&["a".into(), "b".into()]), "(a) && (b)");
    }
}
