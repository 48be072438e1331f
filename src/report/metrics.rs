//! Prometheus metrics (prometheus-client), served as text on a separate plain-HTTP address.
//! Admission latency has sub-millisecond buckets: the API server's own webhook histogram
//! starts at 5 ms, which would hide everything prodguard does.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub webhook: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`, or empty for a body that was not a request.
    pub operation: &'static str,
    /// The kind, one of the kinds the webhook configurations send or `other` (see
    /// [`kind_label`]): never a string from the request.
    pub kind: &'static str,
    /// `allowed`, `patched`, `denied`, `malformed` or `invalid` (not a review).
    pub verdict: &'static str,
}

/// The `kind` label of a request: the kind when prodguard is registered for it, else `other`.
/// A label value never comes from the request, so a request can neither add a series (the
/// number of series is bounded by construction) nor forge a line of the exposition.
pub fn kind_label(kind: &str) -> &'static str {
    // The kinds of the resources policies act on (so counting a request allocates nothing).
    crate::policies::resources::ALL
        .iter()
        .flat_map(|r| r.kinds)
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

/// `serving` or `ca`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub policy: &'static str,
    /// `Denied`, `Audited`, `Mutated` at admission; `deny`, `patch`, `warn` in the audit.
    pub action: &'static str,
    /// `admission` or `audit`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: &'static str,
}

/// A caller refused: which listener (`admission` or `metrics`) and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: &'static str,
    /// `no_certificate`, `subject` or `untrusted` (admission, with `--client-ca`);
    /// `no_token`, `unauthenticated`, `forbidden` or `review_failed` (metrics, with
    /// `--metrics-auth=kubernetes`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditFindingLabels {
    pub policy: &'static str,
    /// `deny`, `patch` or `warn`.
    pub action: &'static str,
}

/// Every metric prodguard exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<WebhookLabels, Histogram>,
    pub findings: Family<FindingLabels, Counter>,
    pub events_published: Counter,
    pub reports_dropped: Counter,
    pub events_failed: Counter,
    pub audit_runs: Counter,
    pub audit_failures: Counter,
    pub audit_duration_seconds: Gauge<f64, AtomicU64>,
    pub audit_objects_scanned: Gauge,
    pub audit_last_success_seconds: Gauge<f64, AtomicU64>,
    pub audit_leader: Gauge,
    pub audit_findings: Family<AuditFindingLabels, Gauge>,
    pub audit_events_published: Counter,
    pub audit_events_pending: Gauge,
    pub audit_events_failed: Counter,
    pub audit_summary_events: Counter,
    pub audit_results_dropped: Gauge,
    pub audit_page_bytes_max: Gauge,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    pub client_refusals: Family<RefusalLabels, Counter>,
    pub events_rate_limited: Counter,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    pub certificate_renewals: Family<CertificateLabels, Counter>,
    pub certificate_failures: Counter,
    pub webhooks_repaired: Counter,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub exceptions_applied: Family<PolicyLabels, Counter>,
    pub exceptions: crate::exceptions::watch::ExceptionGauges,
    pub floor: FloorMetrics,
}

/// The CEL floor writer's counters (`floor_writer`).
#[derive(Debug, Clone, Default)]
pub struct FloorMetrics {
    pub writes: Counter,
    pub write_failures: Counter,
    pub objects: Gauge,
}

/// 50 us to 1 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("prodguard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by webhook, operation, kind and verdict",
            requests.clone(),
        );
        let latency = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "admission_duration_seconds",
            "Time from a decoded body to an encoded answer, by webhook",
            latency.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "policy_findings",
            "Findings, by policy, action and source (admission or audit)",
            findings.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Policy reports published as Events",
            events_published.clone(),
        );
        let reports_dropped = Counter::default();
        registry.register(
            "reports_dropped",
            "Policy reports dropped because the event queue was full",
            reports_dropped.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "events_failed",
            "Policy reports the API server did not accept as Events",
            events_failed.clone(),
        );
        let audit_runs = Counter::default();
        registry.register(
            "audit_runs",
            "Background audit scans completed",
            audit_runs.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Background audit scans that failed",
            audit_failures.clone(),
        );
        let audit_duration_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_duration_seconds",
            "Duration of the last background audit scan",
            audit_duration_seconds.clone(),
        );
        let audit_objects_scanned = Gauge::default();
        registry.register(
            "audit_objects_scanned",
            "Objects evaluated by the last background audit scan",
            audit_objects_scanned.clone(),
        );
        let audit_last_success_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_last_success_timestamp_seconds",
            "Unix time of the last successful background audit scan",
            audit_last_success_seconds.clone(),
        );
        let audit_leader = Gauge::default();
        registry.register(
            "audit_leader",
            "1 while this replica holds the audit Lease",
            audit_leader.clone(),
        );
        let audit_findings = Family::<AuditFindingLabels, Gauge>::default();
        registry.register(
            "audit_findings",
            "Findings of the last background audit scan, by policy and action",
            audit_findings.clone(),
        );
        let audit_events_published = Counter::default();
        registry.register(
            "audit_events_published",
            "Background audit findings published as Events (one per finding)",
            audit_events_published.clone(),
        );
        let audit_events_pending = Gauge::default();
        registry.register(
            "audit_events_pending",
            "New findings of the last background audit scan whose Event is delayed to a later scan (none are dropped)",
            audit_events_pending.clone(),
        );
        let audit_events_failed = Counter::default();
        registry.register(
            "audit_events_failed",
            "Background audit Events the API server did not accept (their findings stay pending)",
            audit_events_failed.clone(),
        );
        let audit_summary_events = Counter::default();
        registry.register(
            "audit_summary_events",
            "Summary Events of a leader's first scan, one per namespace, in place of one Event per finding",
            audit_summary_events.clone(),
        );
        let audit_results_dropped = Gauge::default();
        registry.register(
            "audit_results_dropped",
            "Results of the last background audit scan left out of the reports by the caps (counted in their summaries)",
            audit_results_dropped.clone(),
        );
        let audit_page_bytes_max = Gauge::default();
        registry.register(
            "audit_page_bytes_max",
            "The largest list page of the last background audit scan, in bytes of JSON",
            audit_page_bytes_max.clone(),
        );
        let tls_reloads = Counter::default();
        registry.register(
            "tls_reloads",
            "Serving certificates and client CAs reloaded from their files",
            tls_reloads.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_reload_failures",
            "Changed certificate or client CA files that could not be used (the previous one stayed)",
            tls_reload_failures.clone(),
        );
        let client_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "client_refusals",
            "Callers refused: on the admission listener without an accepted client certificate (with --client-ca), on the metrics listener without an authorized token (with --metrics-auth=kubernetes)",
            client_refusals.clone(),
        );
        let events_rate_limited = Counter::default();
        registry.register(
            "events_rate_limited",
            "Admission reports not published as Events because their user or namespace was over its rate, or only the share kept for denials and break-glass was left",
            events_rate_limited.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the served certificate (serving) and the last certificate of its chain (ca) expire, in seconds since the Unix epoch",
            certificate_expiry.clone(),
        );
        let certificate_renewals = Family::<CertificateLabels, Counter>::default();
        registry.register(
            "certificate_renewals",
            "Certificates this replica issued and stored as the certificate writer of --manage-certs: serving certificates (serving) and CAs put in use (ca)",
            certificate_renewals.clone(),
        );
        let certificate_failures = Counter::default();
        registry.register(
            "certificate_failures",
            "Certificate writer and webhook steps of --manage-certs that failed (a forbidden or refused write, a certificate that could not be issued); what is served stays in use",
            certificate_failures.clone(),
        );
        let webhooks_repaired = Counter::default();
        registry.register(
            "webhook_repairs",
            "Patches to prodguard's webhook configurations: a CA bundle set or restored, a webhook armed to fail closed",
            webhooks_repaired.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Policy configurations reloaded from --config",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Changed policy configurations refused (the previous one stayed in force)",
            config_reload_failures.clone(),
        );
        let exceptions_applied = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "exceptions_applied",
            "Admission findings lifted by a PolicyException, by policy",
            exceptions_applied.clone(),
        );
        let exceptions = crate::exceptions::watch::ExceptionGauges::default();
        registry.register(
            "exceptions_in_force",
            "PolicyExceptions in force now (valid, not expired)",
            exceptions.in_force.clone(),
        );
        registry.register(
            "exceptions_next_end_timestamp_seconds",
            "When the first PolicyException in force ends (Unix seconds; 0 when none is in force)",
            exceptions.next_end.clone(),
        );
        registry.register(
            "exceptions_ignored",
            "PolicyExceptions in the cluster that are not honoured: invalid, or beyond the cap",
            exceptions.ignored.clone(),
        );
        let floor = FloorMetrics::default();
        registry.register(
            "floor_writes",
            "CEL floor objects written (created or changed) by the Lease holder",
            floor.writes.clone(),
        );
        registry.register(
            "floor_write_failures",
            "CEL floor objects that could not be written, listed or deleted",
            floor.write_failures.clone(),
        );
        registry.register(
            "floor_objects",
            "CEL floor objects wanted in the cluster now (policies and bindings)",
            floor.objects.clone(),
        );
        Metrics {
            floor,
            exceptions_applied,
            exceptions,
            config_reloads,
            config_reload_failures,
            tls_reloads,
            tls_reload_failures,
            client_refusals,
            events_rate_limited,
            certificate_expiry,
            certificate_renewals,
            certificate_failures,
            webhooks_repaired,
            audit_findings,
            audit_events_published,
            audit_events_pending,
            audit_events_failed,
            audit_summary_events,
            audit_results_dropped,
            audit_page_bytes_max,
            registry,
            requests,
            latency,
            findings,
            events_published,
            reports_dropped,
            events_failed,
            audit_runs,
            audit_failures,
            audit_duration_seconds,
            audit_objects_scanned,
            audit_last_success_seconds,
            audit_leader,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_latency_and_findings_are_exported() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                webhook: "validate",
                operation: "CREATE",
                kind: kind_label("Deployment"),
                verdict: "denied",
            })
            .inc();
        m.latency
            .get_or_create(&WebhookLabels {
                webhook: "validate",
            })
            .observe(0.0003);
        m.findings
            .get_or_create(&FindingLabels {
                policy: "min-replicas",
                action: "Denied",
                source: "admission",
            })
            .inc();
        m.reports_dropped.inc();
        let text = m.encode();
        assert!(text.contains(
            "prodguard_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",kind=\"Deployment\",verdict=\"denied\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "prodguard_admission_duration_seconds_bucket{le=\"0.0005\",webhook=\"validate\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("prodguard_admission_duration_seconds_bucket{le=\"0.00025\",webhook=\"validate\"} 0"), "{text}");
        assert!(text.contains("prodguard_policy_findings_total{policy=\"min-replicas\",action=\"Denied\",source=\"admission\"} 1"), "{text}");
        assert!(text.contains("prodguard_reports_dropped_total 1"), "{text}");
        assert!(
            text.contains("prodguard_audit_last_success_timestamp_seconds"),
            "{text}"
        );
    }

    #[test]
    fn kinds_from_requests_add_no_series_and_forge_no_line() {
        let m = Metrics::new();
        let count = |kind: &str| {
            m.requests
                .get_or_create(&RequestLabels {
                    webhook: "validate",
                    operation: "CREATE",
                    kind: kind_label(kind),
                    verdict: "allowed",
                })
                .inc();
        };
        count("Deployment");
        let before = m.encode().lines().count();
        count("Pod\",verdict=\"allowed\"} 1\nprodguard_injected_metric{x=\"1");
        for i in 0..1000 {
            count(&format!("Kind{i}"));
        }
        let text = m.encode();
        assert!(!text.contains("injected"), "{text}");
        assert!(text.contains(
            "prodguard_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",kind=\"other\",verdict=\"allowed\"} 1001"
        ), "{text}");
        assert_eq!(
            text.lines().count(),
            before + 1,
            "one series for every unknown kind"
        );
    }
}
