//! Runs the policies of one webhook on one request, then turns what they found into a
//! verdict according to each policy's mode (a pure step, see [`decide`]).

mod decide;
mod lookups;
pub mod offline;
mod request;

use std::sync::Arc;
use std::time::Duration;

pub use decide::{decide, Action, Decision, ExceptedBy, PolicyOutcome, Reported};
pub use lookups::Lookups;
pub use request::{parent_kind, Operation, Request};

use crate::cluster::ClusterLookup;
use crate::config::{Admins, Config, GlobalMode, PolicyMode};
use crate::exceptions::{self, ExceptionSet, Exceptions, Target};
use crate::policies::{
    self,
    resources::{Match, Resource},
};
use crate::report::{Report, Reporter};
use crate::view::ShapeError;

/// How long the cluster lookups of one request may take together: well under the webhooks' 5 s
/// timeout, so a slow API server gets the policy's own verdict rather than the webhook's
/// failure policy.
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

struct Configured {
    policy: Box<dyn Policy>,
    mode: PolicyMode,
    /// What the policy acts on in its webhook (its module's `matches`, the webhook rules'
    /// source): the engine runs it on nothing else.
    matches: Vec<Match>,
}

impl Configured {
    /// Whether the policy acts on this request: its operation and its resource (subresource
    /// included) are in one of the policy's matches.
    fn acts_on(&self, request: &Request<'_>) -> bool {
        self.matches.iter().any(|m| covers(m, request))
    }
}

/// Whether `m` covers `request`'s operation and resource (`pods/exec` for a subresource).
pub fn covers(m: &Match, request: &Request<'_>) -> bool {
    let operation = request.operation_name();
    m.operations.contains(&operation)
        && m.resources.iter().any(|r| {
            if r.group == crate::policies::resources::ANY_GROUP {
                return request.sub_resource.is_none() && r.kinds.contains(&request.kind);
            }
            r.group == request.resource_group
                && match (r.plural.split_once('/'), request.sub_resource) {
                    (None, None) => r.plural == request.resource,
                    (Some((main, sub)), Some(asked)) => main == request.resource && sub == asked,
                    _ => false,
                }
        })
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
    /// The stored kinds the policies judge when created or updated (the audit lists them).
    audited: Vec<Resource>,
    excluded_namespaces: Vec<String>,
    cluster: Arc<dyn ClusterLookup>,
    reporter: Arc<dyn Reporter>,
    lookup_timeout: Duration,
    lookup_failures_are_errors: bool,
    admins: Admins,
    exceptions: Arc<Exceptions>,
    max_exception_duration: Duration,
    /// Whether a PolicyException's author must be an admin (offline evaluation has none).
    judges_authors: bool,
}

impl Engine {
    pub fn new(
        config: &Config,
        cluster: Arc<dyn ClusterLookup>,
        reporter: Arc<dyn Reporter>,
    ) -> Engine {
        let global_audit = config.mode == GlobalMode::Audit;
        let all_matches = config.policies.matches();
        let policies = policies::build(config)
            .into_iter()
            .map(|(policy, mode)| Configured {
                mode: match mode {
                    PolicyMode::Enforce if global_audit => PolicyMode::Audit,
                    mode => mode,
                },
                matches: all_matches
                    .iter()
                    .filter(|(id, m)| *id == policy.id() && m.webhook == policy.webhook())
                    .map(|(_, m)| m.clone())
                    .collect(),
                policy,
            })
            .filter(|c| c.mode != PolicyMode::Off)
            .collect();
        Engine {
            policies,
            audited: policies::audited_resources(&config.policies),
            excluded_namespaces: config.excluded_namespaces.clone(),
            cluster,
            reporter,
            lookup_timeout: LOOKUP_TIMEOUT,
            lookup_failures_are_errors: false,
            admins: config.admins.clone(),
            exceptions: Exceptions::fixed(ExceptionSet::default()),
            max_exception_duration: config.max_exception_duration,
            judges_authors: true,
        }
    }

    /// Where the engine finds PolicyExceptions (by default none).
    pub fn with_exceptions(mut self, exceptions: Arc<Exceptions>) -> Engine {
        self.exceptions = exceptions;
        self
    }

    /// The exceptions the engine applies, and how far ahead one may end.
    pub fn exceptions(&self) -> (&Arc<Exceptions>, Duration) {
        (&self.exceptions, self.max_exception_duration)
    }

    /// Changes how long the cluster lookups of a request may take (default [`LOOKUP_TIMEOUT`]).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Engine {
        self.lookup_timeout = timeout;
        self
    }

    /// Makes a failed lookup an error for the whole object instead of the policy's violation
    /// (for offline evaluation, where the input may just lack what the policy reads).
    pub fn with_lookup_failures_as_errors(mut self) -> Engine {
        self.lookup_failures_are_errors = true;
        self
    }

    /// Judges PolicyExceptions without asking who writes them (offline evaluation, where the
    /// author is unknown).
    pub fn without_authors(mut self) -> Engine {
        self.judges_authors = false;
        self
    }

    /// Whether prodguard stays out of `namespace`.
    pub fn is_excluded(&self, namespace: &str) -> bool {
        !namespace.is_empty() && self.excluded_namespaces.iter().any(|n| n == namespace)
    }

    /// The stored kinds the policies judge when they are created or updated: what the
    /// background audit lists.
    pub fn audited_resources(&self) -> &[Resource] {
        &self.audited
    }

    /// The ids and effective modes of the policies that run.
    pub fn active_policies(&self) -> Vec<(&'static str, Webhook, PolicyMode)> {
        self.policies
            .iter()
            .map(|c| (c.policy.id(), c.policy.webhook(), c.mode))
            .collect()
    }

    /// Evaluates a request for one webhook, the policies reading what they need from the
    /// cluster within the lookup timeout, and reports violations and mutations unless the
    /// request is a dry run.
    pub async fn review(&self, webhook: Webhook, request: &Request<'_>) -> Verdict {
        let lookups = Lookups::within(self.cluster.as_ref(), self.lookup_timeout);
        let verdict = self.evaluate(webhook, request, &lookups).await;
        if let Verdict::Decided(decision) = &verdict {
            if !request.dry_run && self.reporter.wants_reports() {
                for report in Report::all(request, &decision.reports) {
                    self.reporter.report(report);
                }
            }
        }
        verdict
    }

    /// Evaluates without reporting, reading the cluster through `lookups` (used by `review`,
    /// and by `check` and the audit with a snapshot).
    pub async fn evaluate(
        &self,
        webhook: Webhook,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
    ) -> Verdict {
        if self.is_excluded(request.namespace) {
            return Verdict::Decided(decide(&[]));
        }
        if let Some(e) = request.shape_error {
            return Verdict::Malformed(format!(
                "prodguard cannot check {}: {e}",
                request.describe()
            ));
        }
        let mut outcomes = Vec::new();
        if webhook == Webhook::Validate && exceptions::is_exception_write(request) {
            let findings: Vec<Finding> = exceptions::judge_write(
                request,
                &self.admins,
                self.max_exception_duration,
                std::time::SystemTime::now(),
                self.judges_authors,
            )
            .into_iter()
            .map(|message| Finding::Violation { message })
            .collect();
            if !findings.is_empty() {
                // prodguard's own resource: refused in every mode.
                outcomes.push(PolicyOutcome {
                    policy: exceptions::POLICY_ID,
                    mode: PolicyMode::Enforce,
                    findings,
                    exception: None,
                });
            }
        }
        for configured in self
            .policies
            .iter()
            .filter(|c| c.policy.webhook() == webhook && c.acts_on(request))
        {
            match configured.policy.evaluate(request, lookups).await {
                Ok(findings) if findings.is_empty() => {}
                Ok(findings) => outcomes.push(PolicyOutcome {
                    policy: configured.policy.id(),
                    mode: configured.mode,
                    findings,
                    exception: None,
                }),
                Err(EvalError::Lookup(message)) if !self.lookup_failures_are_errors => outcomes
                    .push(PolicyOutcome {
                        policy: configured.policy.id(),
                        mode: configured.mode,
                        findings: vec![Finding::Violation { message }],
                        exception: None,
                    }),
                Err(EvalError::Lookup(message)) => return Verdict::Malformed(message),
                Err(e) => {
                    return Verdict::Malformed(format!(
                        "prodguard cannot check {}: {e}",
                        request.describe()
                    ))
                }
            }
        }
        if !outcomes.is_empty() {
            self.apply_exceptions(request, lookups, &mut outcomes).await;
        }
        Verdict::Decided(decide(&outcomes))
    }

    /// Marks each outcome that a PolicyException in force lifts for this request. Only the
    /// store's current set is read (never the API); an unsynced store lifts nothing.
    async fn apply_exceptions(
        &self,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
        outcomes: &mut [PolicyOutcome],
    ) {
        let Some(set) = self.exceptions.current() else {
            return;
        };
        if set.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now();
        let max = self.max_exception_duration;
        let target = Target {
            namespace: request.namespace,
            kind: request.target_kind(),
            name: request.object_name(),
            username: request.username,
            groups: request.groups,
        };
        // The object's labels, read once, and only when an exception selects by them.
        let mut labels: Option<Option<std::collections::BTreeMap<String, String>>> = None;
        for outcome in outcomes.iter_mut() {
            if outcome.policy == exceptions::POLICY_ID {
                continue;
            }
            if labels.is_none() && set.needs_labels(request.namespace, outcome.policy, now, max) {
                labels = Some(target_labels(request, lookups).await);
            }
            let known = labels.as_ref().and_then(Option::as_ref);
            if let Some(e) = set.covering(outcome.policy, &target, known, now, max) {
                outcome.exception = Some(ExceptedBy {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    reason: e.reason.clone(),
                    expires: e.expires_text.clone(),
                });
            }
        }
    }
}

/// The labels of the object a request is about: the written object's, the deleted one's, or
/// (for a pod's subresource) the pod's, read through the request's lookups.
async fn target_labels(
    request: &Request<'_>,
    lookups: &Lookups<'_>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let of = |object: &crate::view::Object<'_>| {
        object.metadata.labels.as_ref().map(|l| {
            l.0.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    if request.sub_resource.is_none() {
        return request
            .object
            .or(request.old_object)
            .map(|o| of(o).unwrap_or_default());
    }
    if request.resource != "pods" || !request.resource_group.is_empty() {
        return None;
    }
    let text = lookups.pod(request.namespace, request.name).await.ok()?;
    let pod = crate::view::Object::decode("Pod", &text).ok()??;
    Some(of(&pod).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::rbac::v1::PolicyRule;

    use super::*;
    use crate::cluster::{Binding, LookupError, RoleKey, Snapshot};
    use crate::policies::resources;
    use crate::report::MemoryReporter;

    /// What a policy acts on is its matches, and only them: the operation, the resource and
    /// the subresource must all be named.
    #[test]
    fn a_match_covers_its_operations_resources_and_subresources_only() {
        let exec = Match::new(Webhook::Validate, &["CONNECT"], &[resources::PODS_EXEC]);
        let request = |operation, resource, sub| Request {
            sub_resource: sub,
            ..crate::policies::test_support::request(operation, "PodExecOptions", resource, None)
        };
        assert!(covers(
            &exec,
            &request(Operation::Connect, "pods", Some("exec"))
        ));
        assert!(!covers(
            &exec,
            &request(Operation::Connect, "pods", Some("attach"))
        ));
        assert!(!covers(&exec, &request(Operation::Connect, "pods", None)));
        assert!(!covers(
            &exec,
            &request(Operation::Create, "pods", Some("exec"))
        ));
        let deployments = Match::new(Webhook::Validate, &["DELETE"], &[resources::DEPLOYMENTS]);
        let mut delete = request(Operation::Delete, "deployments", None);
        assert!(
            !covers(&deployments, &delete),
            "the core group has no deployments"
        );
        delete.resource_group = "apps";
        assert!(covers(&deployments, &delete));
        delete.sub_resource = Some("scale");
        assert!(
            !covers(&deployments, &delete),
            "a subresource is not its parent"
        );
        // A kind of an API prodguard does not know: by kind, in any group.
        let custom = Match::new(
            Webhook::Validate,
            &["DELETE"],
            &[resources::of_any_group("Cluster")],
        );
        let mut cluster =
            crate::policies::test_support::request(Operation::Delete, "Cluster", "clusters", None);
        cluster.resource_group = "postgresql.cnpg.io";
        assert!(covers(&custom, &cluster));
        cluster.kind = "Backup";
        assert!(!covers(&custom, &cluster));
    }

    /// The engine runs a policy only on what it matches: protect-delete never sees a CREATE.
    /// Its evaluate no longer filters by operation, so without the gate this CREATE of a
    /// Secret would be denied.
    #[tokio::test]
    async fn the_engine_runs_a_policy_only_on_what_it_matches() {
        let engine = Engine::new(
            &Config::embedded_default().unwrap(),
            Arc::new(Snapshot::default()),
            Arc::new(MemoryReporter::default()),
        );
        let secret = crate::view::owned(serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "openg2p"}}))
        .unwrap();
        let mut request =
            crate::policies::test_support::request(Operation::Create, "Secret", "secrets", None);
        request.username = "bob";
        request.name = "db";
        request.old_object = Some(&secret);
        let snapshot = Snapshot::default();
        let lookups = Lookups::immediate(&snapshot);
        let allowed = |verdict: Verdict| match verdict {
            Verdict::Decided(decision) => decision.allowed,
            Verdict::Malformed(e) => panic!("{e}"),
        };
        assert!(allowed(
            engine.evaluate(Webhook::Validate, &request, &lookups).await
        ));
        request.operation = Operation::Delete;
        assert!(!allowed(
            engine.evaluate(Webhook::Validate, &request, &lookups).await
        ));
    }

    struct HangingLookup;

    #[async_trait::async_trait]
    impl ClusterLookup for HangingLookup {
        async fn get_pod(&self, _: &str, _: &str) -> Result<String, LookupError> {
            std::future::pending().await
        }
        async fn namespace_labels(&self, _: &str) -> Result<BTreeMap<String, String>, LookupError> {
            std::future::pending().await
        }
        async fn role_rules(&self, _: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
            std::future::pending().await
        }
        async fn bindings_to(&self, _: &RoleKey) -> Result<Vec<Binding>, LookupError> {
            std::future::pending().await
        }
        async fn get_middleware(&self, _: &str, _: &str) -> Result<String, LookupError> {
            std::future::pending().await
        }
        async fn pods_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            std::future::pending().await
        }
        async fn statefulsets_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            std::future::pending().await
        }
        async fn get_service(&self, _: &str, _: &str) -> Result<String, LookupError> {
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
            shape_error: None,
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

    #[tokio::test]
    async fn a_failed_lookup_is_the_policys_violation_in_its_mode() {
        let binding = crate::view::owned(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "openg2p"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "bob"}]
        }))
        .unwrap();
        let request = Request {
            uid: "u",
            operation: Operation::Create,
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: "RoleBinding",
            resource: "rolebindings",
            resource_group: "rbac.authorization.k8s.io",
            resource_version: "v1",
            sub_resource: None,
            namespace: "openg2p",
            name: "b",
            username: "alice",
            groups: &[],
            object: Some(&binding),
            old_object: None,
            dry_run: false,
            shape_error: None,
        };
        let lookup = || {
            Arc::new(crate::cluster::NoLookup {
                reason: "test".into(),
            })
        };
        let engine = Engine::new(
            &Config::default(),
            lookup(),
            Arc::new(MemoryReporter::default()),
        );
        let Verdict::Decided(decision) = engine.review(Webhook::Validate, &request).await else {
            panic!("decided")
        };
        assert!(!decision.allowed);
        assert_eq!(
            decision.deny_message(),
            "[rbac-hygiene] RoleBinding openg2p/b cannot be checked: no Kubernetes client is configured (test)"
        );
        let audit = Config {
            mode: GlobalMode::Audit,
            ..Config::default()
        };
        let engine = Engine::new(&audit, lookup(), Arc::new(MemoryReporter::default()));
        let Verdict::Decided(decision) = engine.review(Webhook::Validate, &request).await else {
            panic!("decided")
        };
        assert!(decision.allowed, "audit mode warns");
        assert_eq!(decision.reports.len(), 1);
        let strict = Engine::new(
            &Config::default(),
            lookup(),
            Arc::new(MemoryReporter::default()),
        )
        .with_lookup_failures_as_errors();
        let input = Snapshot::default();
        assert_eq!(
            strict.evaluate(Webhook::Validate, &request, &Lookups::immediate(&input)).await,
            Verdict::Malformed("RoleBinding openg2p/b cannot be checked: Role openg2p/r is not among the checked objects; add it to the input".into())
        );
    }
}
