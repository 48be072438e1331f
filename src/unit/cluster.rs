//! What a policy may ask of the cluster: the [`ClusterLookup`] trait and the types of its
//! answers. Answered by the API client (`cluster::KubeLookup`), by what the audit listed or
//! `check` was given (`cluster::Snapshot`), or by nothing ([`NoLookup`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{what} was not found")]
    NotFound { what: String },
    #[error("reading {what} failed: {message}")]
    Failed { what: String, message: String },
    #[error("no Kubernetes client is configured ({0})")]
    NoClient(String),
    #[error("{what} is not among the checked objects; add it to the input")]
    NotGiven { what: String },
    /// A test's answer, as the test words it.
    #[cfg(test)]
    #[error("{0}")]
    Test(String),
}

/// A Role (namespaced) or ClusterRole, as a binding's `roleRef` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKey {
    /// A ClusterRole (else a Role in `namespace`).
    pub cluster: bool,
    pub namespace: String,
    pub name: String,
}

impl RoleKey {
    pub fn kind(&self) -> &'static str {
        if self.cluster {
            "ClusterRole"
        } else {
            "Role"
        }
    }
}

impl std::fmt::Display for RoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.cluster {
            write!(f, "ClusterRole {}", self.name)
        } else {
            write!(f, "Role {}/{}", self.namespace, self.name)
        }
    }
}

/// A RoleBinding or ClusterRoleBinding: who it grants a role to.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// `RoleBinding` or `ClusterRoleBinding`.
    pub kind: &'static str,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    pub name: String,
    pub role: RoleKey,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_role_binding(b: &RoleBinding) -> Binding {
        let namespace = b.metadata.namespace.clone().unwrap_or_default();
        Binding {
            kind: "RoleBinding",
            role: role_key(&b.role_ref, &namespace),
            namespace,
            name: b.metadata.name.clone().unwrap_or_default(),
            subjects: b.subjects.clone().unwrap_or_default(),
        }
    }

    pub fn from_cluster_role_binding(b: &ClusterRoleBinding) -> Binding {
        Binding {
            kind: "ClusterRoleBinding",
            role: role_key(&b.role_ref, ""),
            namespace: String::new(),
            name: b.metadata.name.clone().unwrap_or_default(),
            subjects: b.subjects.clone().unwrap_or_default(),
        }
    }

    /// `RoleBinding openg2p/dev`, `ClusterRoleBinding dev`.
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The role a `roleRef` names, seen from a binding in `namespace` ("" for a ClusterRoleBinding).
pub fn role_key(role_ref: &RoleRef, namespace: &str) -> RoleKey {
    let cluster = role_ref.kind == "ClusterRole";
    RoleKey {
        cluster,
        namespace: if cluster {
            String::new()
        } else {
            namespace.to_owned()
        },
        name: role_ref.name.clone(),
    }
}

/// Traefik's API group.
pub const TRAEFIK_GROUP: &str = "traefik.io";

/// What the policies read from the cluster: the Pod a CONNECT targets (`db-access`), the
/// labels of a namespace (production namespaces), the rules of a role and the bindings of a
/// role (`rbac-hygiene`).
#[async_trait]
pub trait ClusterLookup: Send + Sync {
    /// The Pod's JSON, decoded where it is read (into the typed view).
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<String, LookupError>;
    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, LookupError>;
    /// The role's rules, `None` when it does not exist.
    async fn role_rules(&self, role: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError>;
    /// The bindings that grant `role`.
    async fn bindings_to(&self, role: &RoleKey) -> Result<Vec<Binding>, LookupError>;
    /// A Traefik `Middleware`'s JSON (`traefik.io/v1alpha1`), decoded where it is read.
    async fn get_middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError>;
    /// The JSON of every Pod of `namespace` (db-access: which pods mount a claim).
    async fn pods_in(&self, namespace: &str) -> Result<Vec<String>, LookupError>;
    /// The JSON of every StatefulSet of `namespace` (db-access: whose claims a claim is).
    async fn statefulsets_in(&self, namespace: &str) -> Result<Vec<String>, LookupError>;
    /// A Service's JSON (db-access: which pods its proxy reaches).
    async fn get_service(&self, namespace: &str, name: &str) -> Result<String, LookupError>;
}

/// Used when no client could be built: every lookup fails, so the policies that need the
/// cluster fail closed.
pub struct NoLookup {
    pub reason: String,
}

#[async_trait]
impl ClusterLookup for NoLookup {
    async fn get_pod(&self, _: &str, _: &str) -> Result<String, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn namespace_labels(&self, _: &str) -> Result<BTreeMap<String, String>, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn role_rules(&self, _: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn bindings_to(&self, _: &RoleKey) -> Result<Vec<Binding>, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn get_middleware(&self, _: &str, _: &str) -> Result<String, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn pods_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn statefulsets_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
    async fn get_service(&self, _: &str, _: &str) -> Result<String, LookupError> {
        Err(LookupError::NoClient(self.reason.clone()))
    }
}
