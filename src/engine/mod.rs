//! Runs the policies of one webhook on one request, then turns what they found into a
//! verdict according to each policy's mode (a pure step, see [`decide`]).

mod decide;
pub mod offline;
mod request;

use std::sync::Arc;
use std::time::Duration;

use kube::core::DynamicObject;

pub use decide::{decide, Action, Decision, PolicyOutcome, Reported};
pub use request::{Operation, Request};

use crate::cluster::PodLookup;
use crate::config::{Config, GlobalMode, PolicyMode};
use crate::policies::{self, pod_spec::ShapeError};
use crate::report::{Report, Reporter};

/// How long a Pod lookup may take: well under the webhooks' 10 s timeout, so a slow API
/// server gets prodguard's own denial rather than the webhook's failure policy.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// The request should be patched.
    Mutation {
        message: String,
        patch: Vec<json_patch::PatchOperation>,
    },
}

/// Facts a policy needs from outside the request, fetched before policies run.
#[derive(Debug, Default)]
pub struct Context {
    /// The Pod a CONNECT request targets, or why it could not be read.
    pub pod: Option<Result<DynamicObject, String>>,
}

/// A request a policy cannot evaluate because its object is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("the request carries no object to check")]
    MissingObject,
}

/// One built-in policy. Policies are pure: what they need from the cluster comes in [`Context`].
pub trait Policy: Send + Sync {
    fn id(&self) -> &'static str;
    fn webhook(&self) -> Webhook;
    /// Whether this request needs the target Pod read from the API server.
    fn needs_pod(&self, _request: &Request<'_>) -> bool {
        false
    }
    fn evaluate(&self, request: &Request<'_>, context: &Context)
        -> Result<Vec<Finding>, EvalError>;
}

struct Configured {
    policy: Box<dyn Policy>,
    mode: PolicyMode,
}

/// The verdict on one request, before it is encoded for the API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Decided(Decision),
    /// The object could not be evaluated; the request is denied.
    Malformed(String),
}

/// The configured policies, the cluster lookups and the reporter.
pub struct Engine {
    policies: Vec<Configured>,
    excluded_namespaces: Vec<String>,
    pods: Arc<dyn PodLookup>,
    reporter: Arc<dyn Reporter>,
    lookup_timeout: Duration,
}

impl Engine {
    pub fn new(config: &Config, pods: Arc<dyn PodLookup>, reporter: Arc<dyn Reporter>) -> Engine {
        let global_audit = config.mode == GlobalMode::Audit;
        let policies = policies::build(config)
            .into_iter()
            .map(|(policy, mode)| Configured {
                mode: match mode {
                    PolicyMode::Enforce if global_audit => PolicyMode::Audit,
                    mode => mode,
                },
                policy,
            })
            .filter(|c| c.mode != PolicyMode::Off)
            .collect();
        Engine {
            policies,
            excluded_namespaces: config.excluded_namespaces.clone(),
            pods,
            reporter,
            lookup_timeout: LOOKUP_TIMEOUT,
        }
    }

    /// Changes how long a Pod lookup may take (default [`LOOKUP_TIMEOUT`]).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Engine {
        self.lookup_timeout = timeout;
        self
    }

    /// Whether prodguard stays out of `namespace`.
    pub fn is_excluded(&self, namespace: &str) -> bool {
        !namespace.is_empty() && self.excluded_namespaces.iter().any(|n| n == namespace)
    }

    /// The ids and effective modes of the policies that run.
    pub fn active_policies(&self) -> Vec<(&'static str, Webhook, PolicyMode)> {
        self.policies
            .iter()
            .map(|c| (c.policy.id(), c.policy.webhook(), c.mode))
            .collect()
    }

    /// Evaluates a request for one webhook, reads what the policies need from the cluster,
    /// and reports violations and mutations unless the request is a dry run.
    pub async fn review(&self, webhook: Webhook, request: &Request<'_>) -> Verdict {
        if self.is_excluded(request.namespace) {
            return Verdict::Decided(decide(&[]));
        }
        let mut context = Context::default();
        let active = || {
            self.policies
                .iter()
                .filter(|c| c.policy.webhook() == webhook)
        };
        if active().any(|c| c.policy.needs_pod(request)) {
            let lookup = self.pods.get_pod(request.namespace, request.name);
            context.pod = Some(
                match tokio::time::timeout(self.lookup_timeout, lookup).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "reading pod {}/{} took longer than {:?}",
                        request.namespace, request.name, self.lookup_timeout
                    )),
                },
            );
        }
        let verdict = self.evaluate(webhook, request, &context);
        if let Verdict::Decided(decision) = &verdict {
            if !request.dry_run {
                if let Some(report) = Report::new(request, &decision.reports) {
                    self.reporter.report(report);
                }
            }
        }
        verdict
    }

    /// Evaluates without reading the cluster or reporting (used by `check` and by `review`).
    pub fn evaluate(&self, webhook: Webhook, request: &Request<'_>, context: &Context) -> Verdict {
        if self.is_excluded(request.namespace) {
            return Verdict::Decided(decide(&[]));
        }
        let mut outcomes = Vec::new();
        for configured in self
            .policies
            .iter()
            .filter(|c| c.policy.webhook() == webhook)
        {
            match configured.policy.evaluate(request, context) {
                Ok(findings) if findings.is_empty() => {}
                Ok(findings) => outcomes.push(PolicyOutcome {
                    policy: configured.policy.id(),
                    mode: configured.mode,
                    findings,
                }),
                Err(e) => {
                    return Verdict::Malformed(format!(
                        "prodguard cannot check {}: {e}",
                        request.describe()
                    ))
                }
            }
        }
        Verdict::Decided(decide(&outcomes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LookupError;
    use crate::report::MemoryReporter;

    struct HangingLookup;

    #[async_trait::async_trait]
    impl PodLookup for HangingLookup {
        async fn get_pod(&self, _: &str, _: &str) -> Result<DynamicObject, LookupError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_slow_pod_lookup_is_denied_in_time() {
        let reporter = Arc::new(MemoryReporter::default());
        let engine = Engine::new(
            &Config::default(),
            Arc::new(HangingLookup),
            reporter.clone(),
        )
        .with_lookup_timeout(Duration::from_millis(50));
        let request = Request {
            uid: "u",
            operation: Operation::Connect,
            group: "",
            version: "v1",
            kind: "PodExecOptions",
            resource: "pods",
            resource_group: "",
            resource_version: "v1",
            sub_resource: Some("exec"),
            namespace: "openg2p",
            name: "db-0",
            username: "bob",
            groups: &[],
            object: None,
            old_object: None,
            dry_run: false,
        };
        let Verdict::Decided(decision) = engine.review(Webhook::Validate, &request).await else {
            panic!("decided")
        };
        assert!(!decision.allowed);
        assert!(
            decision
                .deny_message()
                .contains("reading pod openg2p/db-0 took longer than 50ms"),
            "{}",
            decision.deny_message()
        );
        assert_eq!(reporter.take().len(), 1);

        // Nothing happens in an excluded namespace.
        let mut excluded = request.clone();
        excluded.namespace = "kube-system";
        let Verdict::Decided(decision) = engine.review(Webhook::Validate, &excluded).await else {
            panic!("decided")
        };
        assert!(decision.allowed && decision.reports.is_empty());
    }
}
