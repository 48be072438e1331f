//! The background audit of `serve`: the replica holding the Lease scans every interval,
//! rewrites the PolicyReports, publishes Events for findings that are new since the previous
//! scan, and updates the audit metrics.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use super::lease::{self, LeaseSettings};
use super::reports::{self, finding_key};
use super::scan;
use crate::engine::{Action, Engine};
use crate::http::AppState;
use crate::report::metrics::AuditFindingLabels;
use crate::report::{ObjectRef, Report, ReportedFinding, Reporter};

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub interval: Duration,
    pub lease: LeaseSettings,
    pub max_results: usize,
}

/// The user audit Events name.
pub const AUDIT_USER: &str = "prodguard-audit";

/// Starts the Lease and scan loops.
/// `engine` evaluates the objects: built from the configuration with the global mode at
/// enforce, so that a dry-run rollout's reports show what enforcement would deny.
pub fn spawn(
    client: kube::Client,
    state: Arc<AppState>,
    engine: Arc<Engine>,
    reporter: Arc<dyn Reporter>,
    settings: AuditSettings,
) {
    let leader = Arc::new(AtomicBool::new(false));
    tokio::spawn(hold_lease(
        client.clone(),
        state.clone(),
        settings.lease.clone(),
        leader.clone(),
    ));
    tokio::spawn(scan_loop(client, state, engine, reporter, settings, leader));
}

async fn hold_lease(
    client: kube::Client,
    state: Arc<AppState>,
    settings: LeaseSettings,
    leader: Arc<AtomicBool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let every = (settings.duration / 3).max(Duration::from_millis(200));
    loop {
        let held = match lease::try_hold(&api, &settings).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %settings.name, namespace = %settings.namespace, "cannot hold the audit Lease: {e}");
                false
            }
        };
        if held != leader.swap(held, Ordering::Relaxed) {
            tracing::info!(identity = %settings.identity, "{} the audit Lease", if held { "holding" } else { "lost" });
        }
        state.metrics.audit_leader.set(i64::from(held));
        if !state.ready.load(Ordering::Relaxed) {
            lease::release(&api, &settings).await;
            return;
        }
        tokio::time::sleep(every).await;
    }
}

async fn scan_loop(
    client: kube::Client,
    state: Arc<AppState>,
    engine: Arc<Engine>,
    reporter: Arc<dyn Reporter>,
    settings: AuditSettings,
    leader: Arc<AtomicBool>,
) {
    let mut previous: Option<BTreeSet<String>> = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !state.ready.load(Ordering::Relaxed) {
            return;
        }
        if !leader.load(Ordering::Relaxed) {
            // Another replica may report meanwhile: read its reports when this one leads.
            previous = None;
            continue;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + settings.interval;
        if previous.is_none() {
            previous = Some(reports::previous_findings(&client).await);
        }
        let seen = previous.take().unwrap_or_default();
        let reported = run_once(
            &client,
            &state,
            &engine,
            reporter.as_ref(),
            &settings,
            &seen,
        )
        .await;
        previous = Some(reported.unwrap_or(seen));
    }
}

/// One scan; returns the finding keys it reported, or `None` when it could not report.
async fn run_once(
    client: &kube::Client,
    state: &AppState,
    engine: &Engine,
    reporter: &dyn Reporter,
    settings: &AuditSettings,
    seen: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let metrics = &state.metrics;
    let started = Instant::now();
    let scan = scan(client, engine).await;
    for error in &scan.object_errors {
        tracing::warn!("audit: {error}");
    }
    if !scan.errors.is_empty() {
        metrics.audit_failures.inc();
        tracing::warn!(errors = ?scan.errors, "the audit could not list everything; the reports are kept as they were");
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let built = reports::build(&scan, settings.max_results, now.as_secs() as i64);
    if let Err(e) = reports::publish(client, &built).await {
        metrics.audit_failures.inc();
        tracing::warn!("audit: {e}");
        return None;
    }
    let mut keys = BTreeSet::new();
    metrics.audit_findings.clear();
    for (scanned, finding) in &scan.findings {
        metrics
            .audit_findings
            .get_or_create(&AuditFindingLabels {
                policy: finding.policy,
                action: finding.action,
            })
            .inc();
        let result = reports::result_of(finding.action);
        let key = finding_key(
            finding.policy,
            &scanned.kind,
            &scanned.namespace,
            &scanned.name,
            result,
        );
        if !seen.contains(&key) {
            reporter.report(Report {
                reason: if finding.violation {
                    "PolicyViolation"
                } else {
                    "PolicyMutation"
                },
                action: Action::Audited,
                user: AUDIT_USER.to_owned(),
                operation: "AUDIT".to_owned(),
                regarding: ObjectRef {
                    api_version: scanned.api_version.clone(),
                    kind: scanned.kind.clone(),
                    namespace: scanned.namespace.clone(),
                    name: scanned.name.clone(),
                    uid: scanned.uid.clone(),
                },
                findings: vec![ReportedFinding {
                    policy: finding.policy,
                    action: Action::Audited,
                    message: format!("would {}: {}", finding.action, finding.message),
                }],
            });
        }
        keys.insert(key);
    }
    let elapsed = started.elapsed();
    metrics.audit_runs.inc();
    metrics.audit_duration_seconds.set(elapsed.as_secs_f64());
    metrics.audit_objects_scanned.set(scan.objects() as i64);
    metrics.audit_last_success_seconds.set(now.as_secs_f64());
    tracing::info!(
        objects = scan.objects(),
        findings = scan.findings.len(),
        seconds = elapsed.as_secs_f64(),
        "audit scan done"
    );
    Some(keys)
}
