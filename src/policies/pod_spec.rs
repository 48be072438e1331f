//! The one walker over every container list of every pod-bearing kind.

use json_patch::jsonptr::PointerBuf;
use serde_json::Value;

/// Where a kind keeps its pod spec, from the object root.
pub fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "PodTemplate" => &["template", "spec"],
        // What Kubernetes 1.20-1.22 sends on the pods/ephemeralcontainers subresource.
        "EphemeralContainers" => &[],
        _ => return None,
    })
}

/// Whether `kind` carries containers.
pub fn is_pod_bearing(kind: &str) -> bool {
    pod_spec_path(kind).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl ContainerList {
    pub const ALL: [ContainerList; 3] = [
        ContainerList::InitContainers,
        ContainerList::Containers,
        ContainerList::EphemeralContainers,
    ];

    pub fn field(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
            ContainerList::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// One container found in an object, with the pointer to it.
#[derive(Debug, Clone)]
pub struct ContainerRef<'a> {
    pub list: ContainerList,
    pub index: usize,
    pub name: &'a str,
    pub image: Option<&'a str>,
    pub pull_policy: Option<&'a str>,
    /// Where the kind keeps its pod spec ([`pod_spec_path`]).
    pub spec_path: &'static [&'static str],
}

impl ContainerRef<'_> {
    /// `initContainers[0] "setup"`: how messages name a container.
    pub fn describe(&self) -> String {
        format!("{}[{}] {:?}", self.list.field(), self.index, self.name)
    }

    /// JSON pointer to the container object, from the object root. Built on demand: most
    /// walks only read containers.
    pub fn pointer(&self) -> PointerBuf {
        let index = self.index.to_string();
        PointerBuf::from_tokens(
            self.spec_path
                .iter()
                .copied()
                .chain([self.list.field(), index.as_str()]),
        )
    }

    /// Pointer to a field of this container.
    pub fn field_pointer(&self, field: &str) -> PointerBuf {
        let mut p = self.pointer();
        p.push_back(field);
        p
    }
}

/// An object that does not have the shape its kind requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} field {path} must be {expected}")]
pub struct ShapeError {
    pub kind: String,
    pub path: String,
    pub expected: &'static str,
}

/// Every container of the object, in the lists `lists`. An object whose kind is not
/// pod-bearing has none; a missing spec or list has none; a list or field of the wrong type
/// is a [`ShapeError`].
pub fn containers<'a>(
    kind: &str,
    object: &'a Value,
    lists: &[ContainerList],
) -> Result<Vec<ContainerRef<'a>>, ShapeError> {
    let Some(spec_path) = pod_spec_path(kind) else {
        return Ok(Vec::new());
    };
    let shape_error = |path: &[&str], expected| ShapeError {
        kind: kind.to_owned(),
        path: path.join("."),
        expected,
    };
    let mut spec = object;
    for (depth, token) in spec_path.iter().enumerate() {
        if !spec.is_object() {
            return Err(shape_error(&spec_path[..depth], "an object"));
        }
        match spec.get(token) {
            Some(Value::Null) | None => return Ok(Vec::new()),
            Some(next) => spec = next,
        }
    }
    if !spec.is_object() {
        return Err(shape_error(spec_path, "an object"));
    }
    let mut found = Vec::new();
    for &list in lists {
        let items = match spec.get(list.field()) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => {
                let mut path = spec_path.to_vec();
                path.push(list.field());
                return Err(shape_error(&path, "a list"));
            }
        };
        for (index, item) in items.iter().enumerate() {
            let describe = |field: &str| {
                let prefix = spec_path.join(".");
                let sep = if prefix.is_empty() { "" } else { "." };
                format!("{prefix}{sep}{}[{index}]{field}", list.field())
            };
            let container_error = |field: &str, expected| ShapeError {
                kind: kind.to_owned(),
                path: describe(field),
                expected,
            };
            let Some(fields) = item.as_object() else {
                return Err(container_error("", "an object"));
            };
            let string_field = |field: &str| match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(container_error(&format!(".{field}"), "a string")),
            };
            let name = string_field("name")?.unwrap_or("");
            let image = string_field("image")?;
            let pull_policy = string_field("imagePullPolicy")?;
            found.push(ContainerRef {
                list,
                index,
                name,
                image,
                pull_policy,
                spec_path,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn finds_every_list_of_every_pod_bearing_kind() {
        let spec = json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx", "imagePullPolicy": "Always"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}]
        });
        let objects = [
            ("Pod", json!({"spec": spec.clone()}), "/spec"),
            ("Deployment", template(spec.clone()), "/spec/template/spec"),
            ("StatefulSet", template(spec.clone()), "/spec/template/spec"),
            ("DaemonSet", template(spec.clone()), "/spec/template/spec"),
            ("ReplicaSet", template(spec.clone()), "/spec/template/spec"),
            (
                "ReplicationController",
                template(spec.clone()),
                "/spec/template/spec",
            ),
            ("Job", template(spec.clone()), "/spec/template/spec"),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec.clone()}}}}}),
                "/spec/jobTemplate/spec/template/spec",
            ),
            (
                "PodTemplate",
                json!({"template": {"spec": spec.clone()}}),
                "/template/spec",
            ),
        ];
        for (kind, object, prefix) in objects {
            let found = containers(kind, &object, &ContainerList::ALL).unwrap();
            let got: Vec<_> = found
                .iter()
                .map(|c| (c.name, c.image, c.pull_policy, c.pointer().to_string()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (
                        "init",
                        Some("busybox"),
                        None,
                        format!("{prefix}/initContainers/0")
                    ),
                    (
                        "app",
                        Some("nginx"),
                        Some("Always"),
                        format!("{prefix}/containers/0")
                    ),
                    (
                        "debug",
                        Some("busybox"),
                        None,
                        format!("{prefix}/ephemeralContainers/0")
                    ),
                ],
                "{kind}"
            );
        }
    }

    #[test]
    fn ephemeral_containers_kind_of_old_clusters() {
        let object = json!({"ephemeralContainers": [{"name": "debug", "image": "busybox"}]});
        let found = containers("EphemeralContainers", &object, &ContainerList::ALL).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pointer().to_string(), "/ephemeralContainers/0");
    }

    #[test]
    fn other_kinds_and_missing_specs_have_no_containers() {
        assert!(
            containers("Service", &json!({"spec": {}}), &ContainerList::ALL)
                .unwrap()
                .is_empty()
        );
        assert!(containers("Deployment", &json!({}), &ContainerList::ALL)
            .unwrap()
            .is_empty());
        assert!(
            containers("Deployment", &json!({"spec": {}}), &ContainerList::ALL)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn only_the_lists_asked_for() {
        let object = json!({"spec": {"containers": [{"name": "a"}], "ephemeralContainers": [{"name": "b"}]}});
        let found = containers("Pod", &object, &[ContainerList::EphemeralContainers]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "b");
    }

    #[test]
    fn wrong_shapes_are_errors_that_name_the_field() {
        let err = containers(
            "Pod",
            &json!({"spec": {"containers": {}}}),
            &ContainerList::ALL,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Pod field spec.containers must be a list");
        let err = containers(
            "Deployment",
            &template(json!({"containers": [{"name": "a", "image": 5}]})),
            &ContainerList::ALL,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Deployment field spec.template.spec.containers[0].image must be a string"
        );
        let err = containers("Deployment", &json!({"spec": "x"}), &ContainerList::ALL).unwrap_err();
        assert_eq!(err.to_string(), "Deployment field spec must be an object");
        let err = containers(
            "Pod",
            &json!({"spec": {"initContainers": ["x"]}}),
            &ContainerList::ALL,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Pod field spec.initContainers[0] must be an object"
        );
    }

    #[test]
    fn names_with_slashes_and_tildes_do_not_break_pointers() {
        let object = json!({"spec": {"containers": [{"name": "a/b~c", "image": "x"}]}});
        let found = containers("Pod", &object, &ContainerList::ALL).unwrap();
        assert_eq!(
            found[0].field_pointer("image").to_string(),
            "/spec/containers/0/image"
        );
    }
}
