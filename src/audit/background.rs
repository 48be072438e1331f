//! The background audit of `serve`: the replica holding the Lease scans every interval,
//! rewrites the PolicyReports, publishes Events for findings that are new, and updates the
//! audit metrics.
//!
//! It runs on a thread and a single-threaded runtime of its own, with a kube client of its
//! own, so that a scan never takes a worker of the runtime that answers admission reviews.
//!
//! Events are late, never lost: a scan publishes at most `events_per_scan` Events, one at a
//! time with a pause between them; a new finding beyond that, or whose Event the API server
//! refused, stays pending and is published by a later scan (it is still new then, since only
//! published findings count as known). A leader's first scan that finds more new findings
//! than one scan publishes (a fresh install on a large cluster, or a new leader) publishes
//! one summary Event per namespace instead, with the counts per policy.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};

use super::budget::{self, AuditBudget, Plan};
use super::lease::{self, LeaseSettings};
use super::reports;
use super::tally::{audit_report, Tally, TallyLimits};
use super::{scan_into, PageBudget};
use crate::engine::{Action, Engine, Reported};
use crate::report::events::{to_event, AUDIT_CONTROLLER};
use crate::report::metrics::AuditFindingLabels;
use crate::report::metrics::Metrics;
use crate::report::{ObjectRef, Report};

/// The pause between two audit Events: at most 20 a second reach the API server.
pub const EVENT_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub interval: Duration,
    pub lease: LeaseSettings,
    /// Results one report keeps.
    pub max_results: usize,
    /// Results all reports keep together (lowered by the memory plan).
    pub max_results_total: usize,
    /// Pages as asked (lowered by the memory plan).
    pub page: PageBudget,
    /// Events one scan publishes at most.
    pub events_per_scan: usize,
    /// The pause between two Events.
    pub event_gap: Duration,
    /// The pod prodguard runs in (namespace, name), for Warning Events about the audit.
    pub pod: Option<(String, String)>,
    /// Memory kept for admission (see `http::admission_memory`).
    pub admission_memory: u64,
    /// The API(s) the reports are written in.
    pub report_api: reports::ReportApi,
}

/// What the audit shares with the server: the metrics, and whether the server still runs
/// (false once it shuts down: the audit then releases its Lease and stops).
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub serving: Arc<AtomicBool>,
}

/// Starts the audit's thread. `engine` evaluates the objects: built from the configuration
/// with the global mode at enforce, so that a dry-run rollout's reports show what
/// enforcement would deny.
pub fn spawn(
    config: kube::Config,
    shared: Shared,
    engine: Arc<Engine>,
    settings: AuditSettings,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("prodguard-audit".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(
                        "cannot start the audit's runtime: {e}; the background audit is off"
                    );
                    return;
                }
            };
            runtime.block_on(run(config, shared, engine, settings));
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the audit's thread: {e}"))
}

/// Puts the calling thread (the audit's) at Linux's SCHED_IDLE: it runs only when no other
/// thread wants the CPU, so a scan never delays an admission answer. Measured in
/// docs/benchmarks.md: at the normal priority, a scan of 10,000 workloads took the p99 at
/// 1,000 reviews/s from 0.4 ms to 4 ms on two cores.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            Ok(()) => tracing::debug!("the audit's thread runs at SCHED_IDLE"),
            Err(e) => tracing::warn!(
                "cannot lower the audit thread's priority ({e:?}); scans compete with admission for the CPU"
            ),
        }
    }
}

async fn run(config: kube::Config, shared: Shared, engine: Arc<Engine>, settings: AuditSettings) {
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(
                "cannot build the audit's Kubernetes client: {e}; the background audit is off"
            );
            return;
        }
    };
    let recorder = Recorder::new(
        client.clone(),
        EventReporter {
            controller: AUDIT_CONTROLLER.to_owned(),
            instance: Some(settings.lease.identity.clone()),
        },
    );
    let wanted = AuditBudget {
        page: settings.page,
        max_results_total: settings.max_results_total,
    };
    let limit = budget::memory_limit();
    let resident = budget::resident_bytes().unwrap_or(0);
    let budget = match budget::plan(limit, resident, settings.admission_memory, wanted) {
        Plan::Full(budget) => budget,
        Plan::Degraded(budget, why) => {
            tracing::warn!("{why}");
            warn_pod(&recorder, &settings, "AuditDegraded", &why).await;
            budget
        }
        Plan::Refused(why) => {
            tracing::error!("{why}");
            warn_pod(&recorder, &settings, "AuditRefused", &why).await;
            return;
        }
    };
    tracing::info!(
        memory_limit = limit,
        page_objects = budget.page.objects,
        page_bytes = budget.page.bytes,
        max_results_total = budget.max_results_total,
        "background audit planned"
    );
    let leader = Arc::new(AtomicBool::new(false));
    tokio::join!(
        hold_lease(
            client.clone(),
            shared.clone(),
            settings.lease.clone(),
            leader.clone()
        ),
        scan_loop(client, recorder, shared, engine, settings, budget, leader),
    );
}

/// A Warning Event about the audit itself, regarding prodguard's pod (when it runs in one).
async fn warn_pod(recorder: &Recorder, settings: &AuditSettings, reason: &str, note: &str) {
    let Some((namespace, name)) = &settings.pod else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(
            crate::audit::tally::bounded(note.to_owned(), crate::report::NOTE_MAX_BYTES).into(),
        ),
        action: "Audit".to_owned(),
        secondary: None,
    };
    let reference = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        ..ObjectReference::default()
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!("cannot publish the {reason} Event: {e}");
    }
}

async fn hold_lease(
    client: kube::Client,
    shared: Shared,
    settings: LeaseSettings,
    leader: Arc<AtomicBool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let every = (settings.duration / 3).max(Duration::from_millis(200));
    loop {
        let hold = match lease::try_hold(&api, &settings).await {
            Ok(hold) => hold,
            Err(e) => {
                tracing::warn!(lease = %settings.name, namespace = %settings.namespace, "cannot hold the audit Lease: {e}");
                lease::Hold::Elsewhere { expires_in: None }
            }
        };
        let held = hold.held();
        if held != leader.swap(held, Ordering::Relaxed) {
            tracing::info!(identity = %settings.identity, "{} the audit Lease", if held { "holding" } else { "lost" });
        }
        shared.metrics.audit_leader.set(i64::from(held));
        if !shared.serving.load(Ordering::Relaxed) {
            lease::release(&api, &settings).await;
            return;
        }
        tokio::time::sleep(hold.next_try(every)).await;
    }
}

async fn scan_loop(
    client: kube::Client,
    recorder: Recorder,
    shared: Shared,
    engine: Arc<Engine>,
    settings: AuditSettings,
    budget: AuditBudget,
    leader: Arc<AtomicBool>,
) {
    // The findings whose Event was published; `None` until this replica leads and has read
    // what the reports of the previous leader (or of itself before a restart) hold.
    let mut known: Option<HashSet<u64>> = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !shared.serving.load(Ordering::Relaxed) {
            return;
        }
        if !leader.load(Ordering::Relaxed) {
            // Another replica may report meanwhile: read its reports when this one leads.
            known = None;
            continue;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + settings.interval;
        let first = known.is_none();
        let before = match known.take() {
            Some(known) => known,
            None => reports::previous_findings(&client, settings.report_api).await,
        };
        let limits = TallyLimits {
            max_results: settings.max_results,
            max_results_total: budget.max_results_total,
            events: settings.events_per_scan,
        };
        let scan = Scanner {
            client: &client,
            recorder: &recorder,
            shared: &shared,
            engine: &engine,
            settings: &settings,
        };
        // A scan that could not finish leaves the reports as they were: the next one reads
        // them again and is still this leader's first.
        known = scan
            .once(Tally::new(limits, before), budget.page, first)
            .await;
    }
}

struct Scanner<'a> {
    client: &'a kube::Client,
    recorder: &'a Recorder,
    shared: &'a Shared,
    engine: &'a Engine,
    settings: &'a AuditSettings,
}

impl Scanner<'_> {
    /// One scan; returns the keys of the findings whose Events are published, or `None` when
    /// the scan could not finish.
    async fn once(&self, mut tally: Tally, page: PageBudget, first: bool) -> Option<HashSet<u64>> {
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        let stats = scan_into(self.client, self.engine, page, &mut tally).await;
        for error in &tally.object_errors {
            tracing::warn!("audit: {error}");
        }
        if tally.more_object_errors > 0 {
            tracing::warn!(
                "audit: {} more objects could not be evaluated",
                tally.more_object_errors
            );
        }
        if !stats.errors.is_empty() {
            metrics.audit_failures.inc();
            tracing::warn!(errors = ?stats.errors, "the audit could not list everything; the reports are kept as they were");
            return None;
        }
        // Exceptions that ended in the last day, where prodguard acts.
        if let Some(set) = self.engine.exceptions().0.current() {
            let expired: Vec<_> = set
                .recently_expired(SystemTime::now())
                .into_iter()
                .filter(|e| !self.engine.is_excluded(&e.namespace))
                .collect();
            tally.expired_exceptions(&expired);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if let Err(e) = reports::publish(
            self.client,
            self.settings.report_api,
            &tally.namespaces,
            now.as_secs() as i64,
        )
        .await
        {
            metrics.audit_failures.inc();
            tracing::warn!("audit: {e}");
            return None;
        }
        metrics.audit_findings.clear();
        for ((policy, action), count) in &tally.by_policy {
            metrics
                .audit_findings
                .get_or_create(&AuditFindingLabels {
                    policy,
                    action: action.verb(),
                })
                .set(*count);
        }
        let findings = tally.findings();
        let objects = tally.objects();
        let new_findings = tally.new_findings;
        let dropped: usize = tally.namespaces.values().map(|n| n.dropped).sum();
        let (known, pending) = if first && new_findings > self.settings.events_per_scan {
            self.publish_summaries(&tally.namespaces).await;
            (tally.all_published(), 0)
        } else {
            let published = self.publish_findings(&mut tally).await;
            let pending = new_findings - published.len();
            (tally.published_after(published), pending)
        };
        let elapsed = started.elapsed();
        metrics.audit_events_pending.set(pending as i64);
        metrics.audit_results_dropped.set(dropped as i64);
        metrics
            .audit_page_bytes_max
            .set(stats.largest_page_bytes as i64);
        metrics.audit_runs.inc();
        metrics.audit_duration_seconds.set(elapsed.as_secs_f64());
        metrics.audit_objects_scanned.set(objects as i64);
        metrics.audit_last_success_seconds.set(now.as_secs_f64());
        tracing::info!(
            objects,
            findings,
            new_findings,
            pending_events = pending,
            pages = stats.pages,
            largest_page_bytes = stats.largest_page_bytes,
            seconds = elapsed.as_secs_f64(),
            "audit scan done"
        );
        Some(known)
    }

    /// One Event per candidate, paced; returns the keys of those the API server accepted.
    async fn publish_findings(&self, tally: &mut Tally) -> Vec<u64> {
        let metrics = &self.shared.metrics;
        let mut published = Vec::new();
        for (i, candidate) in std::mem::take(&mut tally.candidates)
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                tokio::time::sleep(self.settings.event_gap).await;
            }
            if self.publish(&candidate.report).await {
                metrics.audit_events_published.inc();
                published.push(candidate.key);
            } else {
                metrics.audit_events_failed.inc();
            }
        }
        published
    }

    /// One summary Event per namespace with new findings, paced.
    async fn publish_summaries(&self, namespaces: &BTreeMap<String, super::tally::NamespaceTally>) {
        let mut first = true;
        for (namespace, tally) in namespaces {
            // Regarding the report in the first API written.
            let kinds = &self.settings.report_api.kinds()[0];
            let Some(report) = summary(kinds, namespace, tally) else {
                continue;
            };
            if !first {
                tokio::time::sleep(self.settings.event_gap).await;
            }
            first = false;
            if self.publish(&report).await {
                self.shared.metrics.audit_summary_events.inc();
            } else {
                self.shared.metrics.audit_events_failed.inc();
            }
        }
    }

    async fn publish(&self, report: &Report) -> bool {
        let (event, reference) = to_event(report);
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    kind = %report.regarding.kind,
                    namespace = %report.regarding.namespace,
                    name = %report.regarding.name,
                    "cannot publish an audit Event (it stays pending): {e}"
                );
                false
            }
        }
    }
}

/// The summary Event of a namespace's new findings, regarding its report (in the API
/// `kinds`); `None` when it has none.
pub fn summary(
    kinds: &reports::ReportKinds,
    namespace: &str,
    tally: &super::tally::NamespaceTally,
) -> Option<Report> {
    if tally.new_by_policy.is_empty() {
        return None;
    }
    let (kind, where_) = if namespace.is_empty() {
        (kinds.cluster.0, "cluster-scoped objects".to_owned())
    } else {
        (kinds.namespaced.0, format!("namespace {namespace}"))
    };
    let findings = tally
        .new_by_policy
        .iter()
        .map(|((policy, action), count)| Reported {
            policy,
            action: Action::Audited,
            violation: *action != Action::Mutated,
            message: format!(
                "{count} {} would {} in {where_}",
                if *count == 1 { "finding" } else { "findings" },
                action.verb()
            ),
            patch: Vec::new(),
            exception: None,
        })
        .collect();
    // A violation when any new finding would be denied or warned about, not only patched.
    let violation = tally
        .new_by_policy
        .keys()
        .any(|(_, action)| *action != Action::Mutated);
    let regarding = ObjectRef {
        api_version: kinds.api_version(),
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: reports::REPORT_NAME.to_owned(),
        uid: None,
    };
    Some(audit_report(violation, regarding, findings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tally::NamespaceTally;

    #[test]
    fn a_summary_counts_new_findings_per_policy_regarding_the_report() {
        let mut tally = NamespaceTally {
            objects: 10,
            objects_with_findings: 4,
            fail: 3,
            warn: 2,
            ..NamespaceTally::default()
        };
        assert_eq!(
            summary(&reports::WGPOLICY, "openg2p", &tally),
            None,
            "nothing new, no summary"
        );
        tally
            .new_by_policy
            .insert(("min-replicas", Action::Denied), 3);
        tally
            .new_by_policy
            .insert(("image-pull-policy", Action::Mutated), 1);
        let report = summary(&reports::WGPOLICY, "openg2p", &tally).unwrap();
        assert_eq!(report.regarding.kind, "PolicyReport");
        assert_eq!(report.regarding.name, "prodguard");
        assert_eq!(report.regarding.namespace, "openg2p");
        assert_eq!(report.regarding.api_version, "wgpolicyk8s.io/v1alpha2");
        assert_eq!(
            report.note(),
            "AUDIT by \"prodguard-audit\": [image-pull-policy] Audited: 1 finding would patch in namespace openg2p; \
             [min-replicas] Audited: 3 findings would deny in namespace openg2p"
        );
        assert_eq!(report.reason, "PolicyViolation");
        let cluster = summary(&reports::WGPOLICY, "", &tally).unwrap();
        assert_eq!(cluster.regarding.kind, "ClusterPolicyReport");
        assert!(cluster.note().contains("in cluster-scoped objects"));
        // Only patches: a mutation summary.
        tally
            .new_by_policy
            .remove(&("min-replicas", Action::Denied));
        assert_eq!(
            summary(&reports::WGPOLICY, "openg2p", &tally)
                .unwrap()
                .reason,
            "PolicyMutation"
        );
    }
}
