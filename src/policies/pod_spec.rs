//! The one walker over every container list of every pod-bearing kind, on the typed view.

use json_patch::jsonptr::PointerBuf;

use crate::view::{Container, Env, Object, Shape};

/// Whether `kind` carries containers.
pub fn is_pod_bearing(kind: &str) -> bool {
    Shape::of(kind).pod_spec_path().is_some()
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
    pub env: Option<&'a Env<'a>>,
    /// Where the kind keeps its pod spec ([`Shape::pod_spec_path`]).
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

/// Every container of the object, in the lists `lists`. An object whose kind is not
/// pod-bearing has none; a missing spec or list has none.
pub fn containers<'a>(object: &'a Object<'a>, lists: &[ContainerList]) -> Vec<ContainerRef<'a>> {
    let Some(spec_path) = object.shape.pod_spec_path() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for &list in lists {
        let items = match (object.shape, object.pod_spec()) {
            (Shape::EphemeralContainers, _) if list == ContainerList::EphemeralContainers => {
                object.ephemeral_containers.as_ref()
            }
            (Shape::EphemeralContainers, _) | (_, None) => None,
            (_, Some(spec)) => match list {
                ContainerList::Containers => spec.containers.as_ref(),
                ContainerList::InitContainers => spec.init_containers.as_ref(),
                ContainerList::EphemeralContainers => spec.ephemeral_containers.as_ref(),
            },
        };
        for (index, container) in items.iter().flat_map(|c| c.0.iter()).enumerate() {
            found.push(reference(list, index, container, spec_path));
        }
    }
    found
}

fn reference<'a>(
    list: ContainerList,
    index: usize,
    container: &'a Container<'a>,
    spec_path: &'static [&'static str],
) -> ContainerRef<'a> {
    ContainerRef {
        list,
        index,
        name: container.name.as_deref().unwrap_or(""),
        image: container.image.as_deref(),
        pull_policy: container.image_pull_policy.as_deref(),
        env: container.env.as_ref(),
        spec_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view;
    use serde_json::{json, Value};

    fn template(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    /// `value` as an object of kind `kind`.
    fn of(kind: &str, mut value: Value) -> Result<Object<'static>, view::ShapeError> {
        value["kind"] = json!(kind);
        view::owned(value)
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
            let object = of(kind, object).unwrap();
            let found = containers(&object, &ContainerList::ALL);
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
        let object = of(
            "EphemeralContainers",
            json!({"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}),
        )
        .unwrap();
        let found = containers(&object, &ContainerList::ALL);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pointer().to_string(), "/ephemeralContainers/0");
    }

    #[test]
    fn other_kinds_and_missing_specs_have_no_containers() {
        let service = of("Service", json!({"spec": {"containers": [{"name": "x"}]}})).unwrap();
        assert!(containers(&service, &ContainerList::ALL).is_empty());
        let bare = of("Deployment", json!({})).unwrap();
        assert!(containers(&bare, &ContainerList::ALL).is_empty());
        let empty = of("Deployment", json!({"spec": {}})).unwrap();
        assert!(containers(&empty, &ContainerList::ALL).is_empty());
    }

    #[test]
    fn only_the_lists_asked_for() {
        let object = of(
            "Pod",
            json!({"spec": {"containers": [{"name": "a"}], "ephemeralContainers": [{"name": "b"}]}}),
        )
        .unwrap();
        let found = containers(&object, &[ContainerList::EphemeralContainers]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "b");
    }

    #[test]
    fn wrong_shapes_are_errors_that_name_the_field() {
        let err = of("Pod", json!({"spec": {"containers": {}}})).unwrap_err();
        assert_eq!(err.to_string(), "Pod field spec.containers must be a list");
        let err = of(
            "Deployment",
            template(json!({"containers": [{"name": "a", "image": 5}]})),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Deployment field spec.template.spec.containers[0].image must be a string"
        );
        let err = of("Deployment", json!({"spec": "x"})).unwrap_err();
        assert_eq!(err.to_string(), "Deployment field spec must be an object");
        let err = of("Pod", json!({"spec": {"initContainers": ["x"]}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Pod field spec.initContainers[0] must be an object"
        );
    }

    #[test]
    fn names_with_slashes_and_tildes_do_not_break_pointers() {
        let object = of(
            "Pod",
            json!({"spec": {"containers": [{"name": "a/b~c", "image": "x"}]}}),
        )
        .unwrap();
        let found = containers(&object, &ContainerList::ALL);
        assert_eq!(
            found[0].field_pointer("image").to_string(),
            "/spec/containers/0/image"
        );
    }
}
