//! What a policy is, and all it may see: the request ([`Request`]), what it may ask of the
//! cluster ([`ClusterLookup`], through the per-request handle [`Lookups`]), and what it finds
//! ([`Finding`]). The bottom layer with `config` and `view`: it knows no policy, no engine and
//! no Kubernetes client.

pub mod cluster;
pub mod lookups;
pub mod request;

pub use cluster::{
    role_key, Binding, ClusterLookup, LookupError, NoLookup, RoleKey, TRAEFIK_GROUP,
};
pub use lookups::Lookups;
pub use request::{parent_kind, Operation, Request, PARENT_KINDS};

use crate::view::ShapeError;

/// Which webhook a policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    Mutate,
    Validate,
}

impl Webhook {
    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Mutate => "mutate",
            Webhook::Validate => "validate",
        }
    }
}

/// What a policy found on a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The request breaks the policy.
    Violation { message: String },
    /// Something a policy cannot judge and will not let pass unseen: reported as audited
    /// (a warning) whatever the policy's mode, never denied.
    Advisory { message: String },
    /// The request should be patched.
    Mutation {
        message: String,
        patch: Vec<json_patch::PatchOperation>,
    },
}

/// A request a policy cannot evaluate because its object is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("the request carries no object to check")]
    MissingObject,
    /// What the policy needs from the cluster could not be read. The webhook treats this as
    /// the policy's violation (so it fails closed in enforce mode and warns in audit mode);
    /// offline evaluation, which may simply not have been given the object, as an error.
    #[error("{0}")]
    Lookup(String),
}

/// One built-in policy. What it needs from the cluster it reads through [`Lookups`], when it
/// needs it.
#[async_trait::async_trait]
pub trait Policy: Send + Sync {
    fn id(&self) -> &'static str;
    fn webhook(&self) -> Webhook;
    async fn evaluate(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError>;
}
