//! The API-server side: what prodguard reads from the cluster.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource};
use kube::core::DynamicObject;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("pod {namespace}/{name} was not found")]
    NotFound { namespace: String, name: String },
    #[error("reading pod {namespace}/{name} failed: {message}")]
    Failed {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("no Kubernetes client is configured ({0})")]
    NoClient(String),
}

/// Reads Pods (what `db-access` needs for CONNECT requests).
#[async_trait]
pub trait PodLookup: Send + Sync {
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<DynamicObject, LookupError>;
}

/// Reads Pods through the kube client (RBAC: get pods).
pub struct KubePodLookup {
    client: kube::Client,
}

impl KubePodLookup {
    pub fn new(client: kube::Client) -> KubePodLookup {
        KubePodLookup { client }
    }
}

#[async_trait]
impl PodLookup for KubePodLookup {
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<DynamicObject, LookupError> {
        let resource = ApiResource::erase::<Pod>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        match api.get_opt(name).await {
            Ok(Some(pod)) => Ok(pod),
            Ok(None) => Err(LookupError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) => Err(LookupError::Failed {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message: e.to_string(),
            }),
        }
    }
}

/// Used when no client could be built: every lookup fails, so `db-access` fails closed.
pub struct NoPodLookup {
    pub reason: String,
}

#[async_trait]
impl PodLookup for NoPodLookup {
    async fn get_pod(&self, _namespace: &str, _name: &str) -> Result<DynamicObject, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
}

/// Answers from a fixed set of Pods (tests, `check`).
#[derive(Default)]
pub struct FixedPodLookup {
    pub pods: Vec<DynamicObject>,
}

#[async_trait]
impl PodLookup for FixedPodLookup {
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<DynamicObject, LookupError> {
        self.pods
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
            .ok_or_else(|| LookupError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }
}
