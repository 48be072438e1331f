//! The API-server side: what prodguard reads from the cluster.

use async_trait::async_trait;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, ApiResource, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;

use crate::unit::{Binding, ClusterLookup, LookupError, RoleKey, TRAEFIK_GROUP};
use crate::view::Object;
use serde_json::json;

/// A Role as a snapshot holds it.
fn role_entry(role: Role) -> (RoleKey, Vec<PolicyRule>) {
    let key = RoleKey {
        cluster: false,
        namespace: role.metadata.namespace.unwrap_or_default(),
        name: role.metadata.name.unwrap_or_default(),
    };
    (key, role.rules.unwrap_or_default())
}

/// A ClusterRole as a snapshot holds it.
fn cluster_role_entry(role: ClusterRole) -> (RoleKey, Vec<PolicyRule>) {
    let key = RoleKey {
        cluster: true,
        namespace: String::new(),
        name: role.metadata.name.unwrap_or_default(),
    };
    (key, role.rules.unwrap_or_default())
}

/// Traefik's Middleware resource.
pub fn middleware_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk(TRAEFIK_GROUP, "v1alpha1", "Middleware"),
        "middlewares",
    )
}

/// Reads through the kube client (RBAC: get pods and namespaces; get roles and clusterroles;
/// list rolebindings and clusterrolebindings).
pub struct KubeLookup {
    client: kube::Client,
}

impl KubeLookup {
    pub fn new(client: kube::Client) -> KubeLookup {
        KubeLookup { client }
    }

    /// An object's JSON as it comes, for the view: no generic tree in between. A missing
    /// object (or a missing CRD) is `NotFound`.
    async fn get_text(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        what: String,
    ) -> Result<String, LookupError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, resource);
        let request = kube::core::Request::new(api.resource_url())
            .get(name, &Default::default())
            .map_err(|e| read_failed(what.clone())(kube::Error::BuildRequest(e)))?;
        match self.client.request_text(request).await {
            Ok(text) => Ok(text),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err(LookupError::NotFound { what })
            }
            Err(e) => Err(read_failed(what)(e)),
        }
    }
}

fn read_failed(what: String) -> impl FnOnce(kube::Error) -> LookupError {
    move |e| LookupError::Failed {
        what,
        message: e.to_string(),
    }
}

/// Every item of a list, in pages.
async fn list_all<K>(api: &Api<K>, what: &str) -> Result<Vec<K>, LookupError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(500);
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(|e| match e {
            // The resource is not served (a CRD not installed).
            kube::Error::Api(status) if status.code == 404 => LookupError::NotFound {
                what: what.to_owned(),
            },
            e => read_failed(what.to_owned())(e),
        })?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

#[async_trait]
impl ClusterLookup for KubeLookup {
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        let resource = ApiResource::erase::<Pod>(&());
        self.get_text(
            &resource,
            namespace,
            name,
            format!("pod {namespace}/{name}"),
        )
        .await
    }

    async fn get_middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        let what = format!("Middleware {namespace}/{name}");
        self.get_text(&middleware_resource(), namespace, name, what)
            .await
    }

    // Listed as DynamicObject (metadata typed, the rest kept as JSON) and decoded into the view
    // where they are read: k8s-openapi's Pod and StatefulSet types are not compiled in for this.
    async fn pods_in(&self, namespace: &str) -> Result<Vec<String>, LookupError> {
        let what = format!("the pods of namespace {namespace}");
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<Pod>(&()),
        );
        as_json(list_all(&api, &what).await?, &what)
    }

    async fn statefulsets_in(&self, namespace: &str) -> Result<Vec<String>, LookupError> {
        let what = format!("the StatefulSets of namespace {namespace}");
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<StatefulSet>(&()),
        );
        as_json(list_all(&api, &what).await?, &what)
    }

    async fn get_service(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        let resource = ApiResource::erase::<Service>(&());
        let what = format!("Service {namespace}/{name}");
        self.get_text(&resource, namespace, name, what).await
    }

    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, LookupError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let what = format!("namespace {namespace}");
        match api.get_opt(namespace).await {
            Ok(Some(ns)) => Ok(ns.metadata.labels.unwrap_or_default()),
            Ok(None) => Err(LookupError::NotFound { what }),
            Err(e) => Err(read_failed(what)(e)),
        }
    }

    async fn role_rules(&self, role: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
        let what = role.to_string();
        if role.cluster {
            let api: Api<ClusterRole> = Api::all(self.client.clone());
            let found = api.get_opt(&role.name).await.map_err(read_failed(what))?;
            Ok(found.map(|r| r.rules.unwrap_or_default()))
        } else {
            let api: Api<Role> = Api::namespaced(self.client.clone(), &role.namespace);
            let found = api.get_opt(&role.name).await.map_err(read_failed(what))?;
            Ok(found.map(|r| r.rules.unwrap_or_default()))
        }
    }

    async fn bindings_to(&self, role: &RoleKey) -> Result<Vec<Binding>, LookupError> {
        let role_bindings: Api<RoleBinding> = if role.cluster {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &role.namespace)
        };
        let mut bindings: Vec<Binding> = list_all(&role_bindings, "rolebindings")
            .await?
            .iter()
            .map(Binding::from_role_binding)
            .collect();
        if role.cluster {
            let cluster_bindings: Api<ClusterRoleBinding> = Api::all(self.client.clone());
            bindings.extend(
                list_all(&cluster_bindings, "clusterrolebindings")
                    .await?
                    .iter()
                    .map(Binding::from_cluster_role_binding),
            );
        }
        bindings.retain(|b| &b.role == role);
        Ok(bindings)
    }
}

/// Listed objects as JSON, for the view.
fn as_json<K: serde::Serialize>(items: Vec<K>, what: &str) -> Result<Vec<String>, LookupError> {
    items
        .iter()
        .map(|item| {
            serde_json::to_string(item).map_err(|e| LookupError::Failed {
                what: what.to_owned(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// A pod that mounts a PersistentVolumeClaim, as JSON holding only its name, namespace,
/// labels, annotations, containers' names and images, and its claim volumes; `None` for a pod
/// that mounts no claim.
fn claim_holder(pod: DynamicObject) -> Option<String> {
    let spec = pod.data.get("spec")?;
    let volumes: Vec<serde_json::Value> = spec
        .get("volumes")?
        .as_array()?
        .iter()
        .filter_map(|v| {
            let claim = v.pointer("/persistentVolumeClaim/claimName")?;
            Some(json!({"name": v.get("name"), "persistentVolumeClaim": {"claimName": claim}}))
        })
        .collect();
    if volumes.is_empty() {
        return None;
    }
    Some(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": kept_metadata(pod.metadata),
            "spec": {"containers": names_and_images(spec.get("containers")), "volumes": volumes},
        })
        .to_string(),
    )
}

/// What db-access reads of an object's metadata: its name, namespace, labels and annotations.
fn kept_metadata(meta: kube::api::ObjectMeta) -> serde_json::Value {
    json!({"name": meta.name, "namespace": meta.namespace,
           "labels": meta.labels, "annotations": meta.annotations})
}

/// Each container's name and image.
fn names_and_images(containers: Option<&serde_json::Value>) -> Vec<serde_json::Value> {
    containers
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c.get("name"), "image": c.get("image")}))
        .collect()
}

/// A StatefulSet with claim templates, as JSON holding only its name, namespace, labels,
/// annotations, its template's labels, annotations and containers, and its claim templates'
/// names; `None` for one without claim templates.
fn claim_templates_holder(set: DynamicObject) -> Option<String> {
    let spec = set.data.get("spec")?;
    let templates: Vec<serde_json::Value> = spec
        .get("volumeClaimTemplates")?
        .as_array()?
        .iter()
        .map(|t| json!({"metadata": {"name": t.pointer("/metadata/name")}}))
        .collect();
    if templates.is_empty() {
        return None;
    }
    let template = spec.get("template");
    let pod_meta = template.and_then(|t| t.get("metadata"));
    Some(
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": kept_metadata(set.metadata),
            "spec": {"template": {"metadata": {"labels": pod_meta.and_then(|m| m.get("labels")),
                                               "annotations": pod_meta.and_then(|m| m.get("annotations"))},
                                  "spec": {"containers": names_and_images(template.and_then(|t| t.pointer("/spec/containers")))}},
                     "volumeClaimTemplates": templates},
        })
        .to_string(),
    )
}

/// A fixed picture of a cluster: what the audit listed, what `check` was given, or what a
/// test sets up. Answers lookups synchronously.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Pods, as JSON.
    pub pods: Vec<String>,
    /// StatefulSets, as JSON (the audit keeps those with claim templates, reduced).
    pub statefulsets: Vec<String>,
    /// Services, as JSON.
    pub services: Vec<String>,
    /// Traefik Middlewares, as JSON, by namespace and name (see [`Snapshot::add_middleware`]).
    pub middlewares: BTreeMap<(String, String), String>,
    /// Namespace name -> labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Labels assumed for a namespace not in `namespaces`; `None`: such a namespace is not found.
    pub other_namespaces: Option<BTreeMap<String, String>>,
    pub roles: Vec<(RoleKey, Vec<PolicyRule>)>,
    pub bindings: Vec<Binding>,
    /// Whether a role missing here is missing from the cluster (an audit listing) rather than
    /// merely not given (`check`'s input, which cannot be judged).
    pub complete: bool,
}

impl Snapshot {
    pub fn pod(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        self.pods
            .iter()
            .find(|text| {
                Object::decode("", text).is_ok_and(|pod| {
                    pod.is_some_and(|p| p.namespace() == Some(namespace) && p.name() == Some(name))
                })
            })
            .cloned()
            .ok_or_else(|| LookupError::NotFound {
                what: format!("pod {namespace}/{name}"),
            })
    }

    pub fn labels_of(&self, namespace: &str) -> Result<BTreeMap<String, String>, LookupError> {
        self.namespaces
            .get(namespace)
            .or(self.other_namespaces.as_ref())
            .cloned()
            .ok_or_else(|| LookupError::NotFound {
                what: format!("namespace {namespace}"),
            })
    }

    pub fn rules_of(&self, role: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
        match self.roles.iter().find(|(key, _)| key == role) {
            Some((_, rules)) => Ok(Some(rules.clone())),
            None if self.complete => Ok(None),
            None => Err(LookupError::NotGiven {
                what: role.to_string(),
            }),
        }
    }

    /// A Middleware's JSON: not found when the picture is complete (the audit listed them all),
    /// else not given (`check`'s input must hold it).
    pub fn middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        let found = self
            .middlewares
            .get(&(namespace.to_owned(), name.to_owned()));
        let what = format!("Middleware {namespace}/{name}");
        match found {
            Some(text) => Ok(text.clone()),
            None if self.complete => Err(LookupError::NotFound { what }),
            None => Err(LookupError::NotGiven { what }),
        }
    }

    /// Keeps a Middleware's JSON under its namespace and name (read once, here); one without
    /// a name is not kept.
    pub fn add_middleware(&mut self, text: String) {
        let key = match Object::decode("", &text) {
            Ok(Some(m)) => m
                .name()
                .map(|name| (m.namespace().unwrap_or("").to_owned(), name.to_owned())),
            _ => None,
        };
        if let Some(key) = key {
            self.middlewares.insert(key, text);
        }
    }

    pub fn bindings_of(&self, role: &RoleKey) -> Vec<Binding> {
        self.bindings
            .iter()
            .filter(|b| &b.role == role)
            .cloned()
            .collect()
    }

    /// Adds what a Namespace, Role, ClusterRole or binding manifest says about the cluster
    /// (a namespaced one without a namespace is in `default_namespace`); other objects, and
    /// objects that do not have their kind's shape, are ignored here.
    pub fn learn(&mut self, manifest: &serde_json::Value, default_namespace: &str) {
        fn typed<K: kube::Resource + serde::de::DeserializeOwned>(
            manifest: &serde_json::Value,
            default_namespace: &str,
            namespaced: bool,
        ) -> Option<K> {
            let mut object: K = serde_json::from_value(manifest.clone()).ok()?;
            let namespace = &mut object.meta_mut().namespace;
            if namespaced && namespace.is_none() {
                *namespace = Some(default_namespace.to_owned());
            }
            Some(object)
        }
        match manifest.get("kind").and_then(serde_json::Value::as_str) {
            Some("Namespace") => {
                if let Some(ns) = typed::<Namespace>(manifest, default_namespace, false) {
                    if let Some(name) = ns.metadata.name {
                        self.namespaces
                            .insert(name, ns.metadata.labels.unwrap_or_default());
                    }
                }
            }
            Some("Role") => {
                self.roles
                    .extend(typed(manifest, default_namespace, true).map(role_entry));
            }
            Some("ClusterRole") => {
                self.roles
                    .extend(typed(manifest, default_namespace, false).map(cluster_role_entry));
            }
            Some("RoleBinding") => {
                if let Some(b) = typed::<RoleBinding>(manifest, default_namespace, true) {
                    self.bindings.push(Binding::from_role_binding(&b));
                }
            }
            Some("ClusterRoleBinding") => {
                if let Some(b) = typed::<ClusterRoleBinding>(manifest, default_namespace, false) {
                    self.bindings.push(Binding::from_cluster_role_binding(&b));
                }
            }
            // What db-access reads of the input: which pods and StatefulSets hold claims, and
            // which pods Services select (a database outside the input is not seen).
            Some(kind @ ("Pod" | "StatefulSet" | "Service"))
                if manifest
                    .get("apiVersion")
                    .and_then(serde_json::Value::as_str)
                    == Some(if kind == "StatefulSet" {
                        "apps/v1"
                    } else {
                        "v1"
                    }) =>
            {
                let mut object = manifest.clone();
                if object.pointer("/metadata/namespace").is_none() {
                    if let Some(meta) = object
                        .get_mut("metadata")
                        .and_then(serde_json::Value::as_object_mut)
                    {
                        meta.insert("namespace".into(), default_namespace.into());
                    }
                }
                let text = object.to_string();
                match kind {
                    "Pod" => self.pods.push(text),
                    "StatefulSet" => self.statefulsets.push(text),
                    _ => self.services.push(text),
                }
            }
            Some("Middleware")
                if manifest
                    .get("apiVersion")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|v| v.starts_with("traefik.io/")) =>
            {
                let mut middleware = manifest.clone();
                if middleware.pointer("/metadata/namespace").is_none() {
                    if let Some(meta) = middleware
                        .get_mut("metadata")
                        .and_then(serde_json::Value::as_object_mut)
                    {
                        meta.insert("namespace".into(), default_namespace.into());
                    }
                }
                self.add_middleware(middleware.to_string());
            }
            _ => {}
        }
    }

    /// What `check` knows before reading its input: the user-facing ClusterRoles every cluster
    /// has (`cluster-admin`, `admin`, `edit`, `view`; the rules of theirs that the policies
    /// look at), and the labels to assume for a namespace the input does not define.
    pub fn for_check(other_namespaces: BTreeMap<String, String>) -> Snapshot {
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..PolicyRule::default()
        };
        let write = ["create", "delete", "deletecollection", "patch", "update"];
        let edit = vec![
            rule(
                &[""],
                &[
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                    "secrets",
                    "services/proxy",
                ],
                &["get", "list", "watch"],
            ),
            rule(
                &[""],
                &[
                    "pods",
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                ],
                &write,
            ),
            rule(
                &[""],
                &[
                    "configmaps",
                    "persistentvolumeclaims",
                    "secrets",
                    "services",
                ],
                &write,
            ),
            rule(
                &["apps"],
                &["daemonsets", "deployments", "replicasets", "statefulsets"],
                &write,
            ),
        ];
        let view = vec![rule(
            &["", "apps"],
            &[
                "pods",
                "configmaps",
                "services",
                "deployments",
                "statefulsets",
            ],
            &["get", "list", "watch"],
        )];
        let cluster_role = |name: &str| RoleKey {
            cluster: true,
            namespace: String::new(),
            name: name.to_owned(),
        };
        Snapshot {
            other_namespaces: Some(other_namespaces),
            roles: vec![
                (
                    cluster_role("cluster-admin"),
                    vec![rule(&["*"], &["*"], &["*"])],
                ),
                (cluster_role("admin"), edit.clone()),
                (cluster_role("edit"), edit),
                (cluster_role("view"), view),
            ],
            ..Snapshot::default()
        }
    }

    /// Reads namespaces and roles from the cluster (for the audit, which checks bindings, not
    /// roles): a complete picture of what bindings can grant.
    pub async fn list(client: &kube::Client) -> Result<Snapshot, LookupError> {
        let mut snapshot = Snapshot {
            complete: true,
            ..Snapshot::default()
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in list_all(&namespaces, "namespaces").await? {
            if let Some(name) = ns.metadata.name {
                snapshot
                    .namespaces
                    .insert(name, ns.metadata.labels.unwrap_or_default());
            }
        }
        let roles: Api<Role> = Api::all(client.clone());
        snapshot
            .roles
            .extend(list_all(&roles, "roles").await?.into_iter().map(role_entry));
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        snapshot.roles.extend(
            list_all(&cluster_roles, "clusterroles")
                .await?
                .into_iter()
                .map(cluster_role_entry),
        );
        // The pods that mount a PersistentVolumeClaim, reduced to what db-access reads of them
        // (which pod mounts which claim, and whether it is a database pod): a person's pod
        // beside a database's storage is reported at its pod.
        // Page by page, so that at most one page of whole pods is held.
        let pods: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<Pod>(&()));
        let mut params = ListParams::default().limit(500);
        loop {
            let page = pods
                .list(&params)
                .await
                .map_err(read_failed("pods".to_owned()))?;
            snapshot
                .pods
                .extend(page.items.into_iter().filter_map(claim_holder));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        // The StatefulSets with claim templates, reduced likewise: a claim of a database's
        // StatefulSet is its claim even while the StatefulSet runs no pod.
        let statefulsets: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<StatefulSet>(&()));
        snapshot.statefulsets.extend(
            list_all(&statefulsets, "statefulsets")
                .await?
                .into_iter()
                .filter_map(claim_templates_holder),
        );
        // Traefik's Middlewares, which Ingresses and IngressRoutes name (none without the CRD).
        let middlewares: Api<DynamicObject> = Api::all_with(client.clone(), &middleware_resource());
        match list_all(&middlewares, "middlewares").await {
            Ok(items) => {
                for item in items {
                    if let Ok(text) = serde_json::to_string(&item) {
                        snapshot.add_middleware(text);
                    }
                }
            }
            Err(LookupError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(snapshot)
    }
}

#[async_trait]
impl ClusterLookup for Snapshot {
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        self.pod(namespace, name)
    }
    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, LookupError> {
        self.labels_of(namespace)
    }
    async fn role_rules(&self, role: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
        self.rules_of(role)
    }
    async fn bindings_to(&self, role: &RoleKey) -> Result<Vec<Binding>, LookupError> {
        Ok(self.bindings_of(role))
    }
    async fn get_middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        self.middleware(namespace, name)
    }
    async fn pods_in(&self, namespace: &str) -> Result<Vec<String>, LookupError> {
        Ok(in_namespace(&self.pods, namespace))
    }
    async fn statefulsets_in(&self, namespace: &str) -> Result<Vec<String>, LookupError> {
        Ok(in_namespace(&self.statefulsets, namespace))
    }
    async fn get_service(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
        self.services
            .iter()
            .find(|text| {
                Object::decode("", text).is_ok_and(|s| {
                    s.is_some_and(|s| s.namespace() == Some(namespace) && s.name() == Some(name))
                })
            })
            .cloned()
            .ok_or_else(|| {
                let what = format!("Service {namespace}/{name}");
                if self.complete {
                    LookupError::NotFound { what }
                } else {
                    LookupError::NotGiven { what }
                }
            })
    }
}

/// The objects of `texts` in `namespace`.
fn in_namespace(texts: &[String], namespace: &str) -> Vec<String> {
    texts
        .iter()
        .filter(|text| {
            Object::decode("", text)
                .is_ok_and(|o| o.is_some_and(|o| o.namespace() == Some(namespace)))
        })
        .cloned()
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{kind} {name} was not found; apply the webhook configurations first (kubectl apply -k deploy/base)")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name} has no webhooks to inject the CA bundle into")]
    NoWebhooks { kind: &'static str, name: String },
    #[error("patching {kind} {name} failed: {message}")]
    Failed {
        kind: &'static str,
        name: String,
        message: String,
    },
}

/// Sets `clientConfig.caBundle` of every webhook of the mutating and the validating webhook
/// configuration called `name` (a strategic merge by webhook name, RBAC: get and patch).
/// Returns what was patched.
pub async fn inject_ca_bundle(
    client: kube::Client,
    name: &str,
    ca_pem: &[u8],
) -> Result<Vec<String>, InjectError> {
    let mut patched = Vec::new();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    inject_into(
        &mutating,
        "MutatingWebhookConfiguration",
        name,
        ca_pem,
        &mut patched,
        |c| c.webhooks.into_iter().flatten().map(|w| w.name).collect(),
    )
    .await?;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client);
    inject_into(
        &validating,
        "ValidatingWebhookConfiguration",
        name,
        ca_pem,
        &mut patched,
        |c| c.webhooks.into_iter().flatten().map(|w| w.name).collect(),
    )
    .await?;
    Ok(patched)
}

fn failed(kind: &'static str, name: &str, e: kube::Error) -> InjectError {
    match e {
        kube::Error::Api(status) if status.is_not_found() => InjectError::NotFound {
            kind,
            name: name.to_owned(),
        },
        e => InjectError::Failed {
            kind,
            name: name.to_owned(),
            message: e.to_string(),
        },
    }
}

/// Reads the configuration `name`, then patches the CA bundle into each of its webhooks.
async fn inject_into<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    ca_pem: &[u8],
    patched: &mut Vec<String>,
    webhook_names: impl FnOnce(K) -> Vec<String>,
) -> Result<(), InjectError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let webhooks = match api.get_opt(name).await {
        Ok(Some(config)) => webhook_names(config),
        Ok(None) => {
            return Err(InjectError::NotFound {
                kind,
                name: name.to_owned(),
            })
        }
        Err(e) => return Err(failed(kind, name, e)),
    };
    if webhooks.is_empty() {
        return Err(InjectError::NoWebhooks {
            kind,
            name: name.to_owned(),
        });
    }
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let entries: Vec<_> = webhooks
        .iter()
        .map(|w| json!({"name": w, "clientConfig": {"caBundle": bundle}}))
        .collect();
    let patch = json!({"webhooks": entries});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| failed(kind, name, e))?;
    patched.push(format!("{kind} {name} ({})", webhooks.join(", ")));
    Ok(())
}

/// What the API server said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// Authenticated, and allowed to get `/metrics`.
    Allowed,
    /// Not a token the API server accepts.
    Unauthenticated,
    /// Authenticated as this user, who may not get `/metrics`.
    Forbidden(String),
}

/// Reviews a bearer token: the cluster's TokenReview and SubjectAccessReview
/// ([`KubeTokenReviews`]) for the metrics listener's check (`http::metrics_auth`), or a test's answers.
#[async_trait::async_trait]
pub trait TokenReviews: Send + Sync {
    async fn review(&self, token: &str) -> Result<TokenVerdict, String>;
}

/// `--metrics-auth=kubernetes`'s reviews: a TokenReview of the bearer token, then a
/// SubjectAccessReview of `get` on the non-resource URL `/metrics` for the user it names.
pub struct KubeTokenReviews {
    pub client: kube::Client,
}

#[async_trait]
impl TokenReviews for KubeTokenReviews {
    async fn review(&self, token: &str) -> Result<TokenVerdict, String> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        use k8s_openapi::api::authorization::v1::{
            NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let answer = reviews
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview: {e}"))?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(TokenVerdict::Unauthenticated),
        };
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let username = user.username.clone().unwrap_or_default();
        let question = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = access
            .create(&kube::api::PostParams::default(), &question)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        Ok(if answer.status.is_some_and(|s| s.allowed) {
            TokenVerdict::Allowed
        } else {
            TokenVerdict::Forbidden(username)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_keeps_of_a_pod_only_what_db_access_reads_and_only_when_it_mounts_a_claim() {
        let pod: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pg-0", "namespace": "openg2p", "labels": {"app": "postgresql"},
                         "annotations": {"prodguard.io/database": "true"}, "uid": "u-1"},
            "spec": {"containers": [{"name": "pg", "image": "postgres:16", "env": [{"name": "PASSWORD", "value": "x"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}},
                                 {"name": "tmp", "emptyDir": {}}]}
        }))
        .unwrap();
        let kept: serde_json::Value =
            serde_json::from_str(&claim_holder(pod).expect("a claim holder")).unwrap();
        assert_eq!(
            kept,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "pg-0", "namespace": "openg2p", "labels": {"app": "postgresql"},
                             "annotations": {"prodguard.io/database": "true"}},
                "spec": {"containers": [{"name": "pg", "image": "postgres:16"}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}}]}})
        );
        let web: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}], "volumes": [{"name": "tmp", "emptyDir": {}}]}
        }))
        .unwrap();
        assert!(claim_holder(web).is_none());
    }
}
