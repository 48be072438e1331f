//! Runs the units of one webhook on one request (the exceptions' write rule, then the
//! registry's policies, each only on what its matches name), lifts what a PolicyException in
//! force covers, then turns what they found into a verdict according to each unit's mode (a
//! pure step, see [`decide`]).

mod decide;
pub mod offline;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

pub use decide::{decide, Action, Decision, PolicyOutcome, Reported};

use crate::config::{Admins, GlobalMode, PolicyMode};
use crate::exceptions::rule::WriteRule;
use crate::exceptions::{self, ExceptionSet, Exceptions};
use crate::policies::Config;
use crate::policies::{
    self,
    resources::{Match, Resource},
};
use crate::unit::{ClusterLookup, EvalError, Finding, Lookups, Policy, Request, Webhook};
use report::{Report, Reporter};

/// How long the cluster lookups of one request may take together: well under the webhooks' 5 s
/// timeout, so a slow API server gets the policy's own verdict rather than the webhook's
/// failure policy.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// Whether a patch is reported (an Event per patched write, `--patch-events`); denials,
    /// warnings and lifted findings always are.
    report_patches: bool,
}

impl Engine {
    pub fn new(
        config: &Config,
        cluster: Arc<dyn ClusterLookup>,
        reporter: Arc<dyn Reporter>,
    ) -> Engine {
        let global_audit = config.mode == GlobalMode::Audit;
        let all_matches = config.policies.matches();
        // The exceptions' write rule first, in every mode; then the registry's policies.
        let write_rule = Configured {
            policy: Box::new(WriteRule::new(
                config.admins.clone(),
                config.max_exception_duration,
                true,
            )),
            mode: PolicyMode::Enforce,
            matches: WriteRule::matches(),
        };
        let registry = policies::build(config)
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
            .filter(|c| c.mode != PolicyMode::Off);
        let policies = std::iter::once(write_rule).chain(registry).collect();
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
            report_patches: false,
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

    /// Reports patches too (`--patch-events`): by default a patched write gets no Event.
    pub fn with_patch_reports(mut self, on: bool) -> Engine {
        self.report_patches = on;
        self
    }

    /// Whether patches are reported.
    pub fn reports_patches(&self) -> bool {
        self.report_patches
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
        for configured in &mut self.policies {
            if configured.policy.id() == exceptions::POLICY_ID {
                configured.policy = Box::new(WriteRule::new(
                    self.admins.clone(),
                    self.max_exception_duration,
                    false,
                ));
            }
        }
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
                // A patch alone is counted, not published, unless asked for.
                let unpatched: Vec<Reported>;
                let items = if self.report_patches
                    || decision.reports.iter().all(|r| r.action != Action::Mutated)
                {
                    &decision.reports[..]
                } else {
                    unpatched = decision
                        .reports
                        .iter()
                        .filter(|r| r.action != Action::Mutated)
                        .cloned()
                        .collect();
                    &unpatched[..]
                };
                for report in Report::all(request, items) {
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
            // The lifting stage: what a PolicyException in force covers.
            let policies = outcomes.iter().map(|o| o.policy);
            let lifted = self
                .exceptions
                .lifted(self.max_exception_duration, request, lookups, policies)
                .await;
            for (outcome, exception) in outcomes.iter_mut().zip(lifted) {
                outcome.exception = exception;
            }
        }
        Verdict::Decided(decide(&outcomes))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::rbac::v1::PolicyRule;

    use super::*;
    use crate::cluster::Snapshot;
    use crate::policies::resources;
    use crate::report::MemoryReporter;
    use crate::unit::Operation;
    use crate::unit::{Binding, LookupError, RoleKey};

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

    /// The exceptions' write rule is a unit the engine runs like the policies: on the writes
    /// of PolicyExceptions only, in enforce even under the global `audit` switch, and never
    /// lifted by an exception.
    #[tokio::test]
    async fn the_exceptions_write_rule_is_a_unit_in_every_mode() {
        let mut config = Config::embedded_default().unwrap();
        config.mode = GlobalMode::Audit;
        let engine = Engine::new(
            &config,
            Arc::new(Snapshot::default()),
            Arc::new(MemoryReporter::default()),
        );
        assert!(engine.active_policies().contains(&(
            exceptions::POLICY_ID,
            Webhook::Validate,
            PolicyMode::Enforce
        )));
        let exception = crate::view::owned(serde_json::json!({
            "apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
            "metadata": {"name": "e", "namespace": "openg2p"},
            "spec": {"policies": ["db-access"], "reason": "incident", "expires": "2000-01-01T00:00:00Z"}}))
        .unwrap();
        let mut request = crate::policies::test_support::request(
            Operation::Create,
            "PolicyException",
            "policyexceptions",
            None,
        );
        request.group = "prodguard.io";
        request.resource_group = "prodguard.io";
        request.username = "bob";
        request.object = Some(&exception);
        let snapshot = Snapshot::default();
        let lookups = Lookups::immediate(&snapshot);
        let Verdict::Decided(decision) =
            engine.evaluate(Webhook::Validate, &request, &lookups).await
        else {
            panic!("not decided");
        };
        assert!(!decision.allowed, "{decision:?}");
        let messages = decision.deny_messages.join("\n");
        assert!(messages.contains("may not"), "{messages}");
        // The same object as another resource is not a PolicyException write.
        request.resource = "configmaps";
        request.resource_group = "";
        let Verdict::Decided(decision) =
            engine.evaluate(Webhook::Validate, &request, &lookups).await
        else {
            panic!("not decided");
        };
        assert!(decision.allowed, "{decision:?}");
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
            Arc::new(crate::unit::NoLookup {
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
