//! The API-server side: what prodguard reads from the cluster.

use async_trait::async_trait;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::core::DynamicObject;
use serde_json::json;

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
