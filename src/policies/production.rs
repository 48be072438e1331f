//! What `opensearch-cluster` and `external-databases` share: they judge workloads, only in
//! production namespaces (`productionNamespaces`), and on UPDATE only what the request
//! introduces. Each supplies the check; [`InProduction`] makes it a policy.

use super::image_ref::ImagePattern;
use super::pod_spec::ContainerRef;
use super::resources::{self, Match};
use super::{container_running, describe_selector, is_production};
use crate::config::LabelSelector;
use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::Object;

/// The first container of a running Deployment or StatefulSet that runs one of `images`, with
/// the workload's replicas; `None` for other kinds, other images and workloads scaled to 0.
pub fn running_container<'a>(
    object: &'a Object<'a>,
    images: &[ImagePattern],
) -> Option<(ContainerRef<'a>, i64)> {
    if !matches!(object.kind.as_ref(), "Deployment" | "StatefulSet") {
        return None;
    }
    let container = container_running(object, images)?;
    let replicas = object.replicas().unwrap_or(1);
    (replicas != 0).then_some((container, replicas))
}

/// What both production checks match: Deployments and StatefulSets when created or updated.
pub fn workload_matches() -> Vec<Match> {
    vec![Match::new(
        Webhook::Validate,
        &["CREATE", "UPDATE"],
        &[resources::DEPLOYMENTS, resources::STATEFUL_SETS],
    )]
}

/// A check of one workload object.
pub trait WorkloadCheck: Send + Sync {
    fn id(&self) -> &'static str;
    /// What is wrong with the object, or `None`.
    fn shortfall(&self, object: &Object<'_>) -> Option<String>;
    /// The finding, for `what` (`StatefulSet ns/name`), the shortfall and where it is.
    fn message(&self, what: &str, shortfall: &str, namespace: &str) -> String;
}

/// A [`WorkloadCheck`] run as a validating policy in production namespaces.
pub struct InProduction<C> {
    pub check: C,
    pub production: LabelSelector,
}

impl<C: WorkloadCheck> InProduction<C> {
    /// The shortfall this request introduces: on CREATE any, on UPDATE one the old object did
    /// not have.
    fn introduced(&self, request: &Request<'_>) -> Result<Option<String>, EvalError> {
        if !matches!(request.operation, Operation::Create | Operation::Update)
            || request.sub_resource.is_some()
        {
            return Ok(None);
        }
        let object = request.object.ok_or(EvalError::MissingObject)?;
        let Some(shortfall) = self.check.shortfall(object) else {
            return Ok(None);
        };
        if let (Operation::Update, Some(old)) = (&request.operation, request.old_object) {
            if self.check.shortfall(old).is_some() {
                return Ok(None);
            }
        }
        Ok(Some(shortfall))
    }
}

#[async_trait::async_trait]
impl<C: WorkloadCheck> Policy for InProduction<C> {
    fn id(&self) -> &'static str {
        self.check.id()
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Some(shortfall) = self.introduced(request)? else {
            return Ok(Vec::new());
        };
        // The namespace's labels are read only for a workload the check finds fault with.
        match is_production(lookups, request, &self.production).await {
            Err(problem) => Err(EvalError::Lookup(problem)),
            Ok(true) => Ok(vec![Finding::Violation {
                message: self.check.message(
                    &request.describe(),
                    &shortfall,
                    &format!(
                        "production namespace {} ({})",
                        request.namespace,
                        describe_selector(&self.production)
                    ),
                ),
            }]),
            Ok(false) => Ok(Vec::new()),
        }
    }
}
