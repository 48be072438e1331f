//! What the background audit keeps of a scan: per namespace, counts and at most a bounded
//! number of results for its PolicyReport; for the whole cluster, one 64-bit hash per
//! finding (to tell new findings from known ones) and at most a bounded number of new
//! findings waiting for their Event. Nothing else about an object survives its evaluation:
//! no patch, no object, no message longer than [`MESSAGE_MAX_BYTES`].

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};

use super::{ScanSink, Scanned};
use crate::engine::offline::ObjectFinding;
use crate::engine::{Action, Reported};
use crate::report::{ObjectRef, Report};

/// The user audit Events name.
pub const AUDIT_USER: &str = "prodguard-audit";

/// A kept result's message is cut to this many bytes (as an Event's note is).
pub const MESSAGE_MAX_BYTES: usize = 1024;

/// Identifies a finding across scans (for "new since the previous scan"): a hash of the
/// policy, the object and the result. Two findings share a hash with a chance of about
/// n²/2⁶⁵ (one in 10¹⁰ for 60,000 findings); the cost of a clash is one Event not sent.
pub fn finding_key(policy: &str, kind: &str, namespace: &str, name: &str, result: &str) -> u64 {
    // SipHash with fixed keys: the same value in every process, so that keys read back from
    // the reports of another replica match.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    (policy, kind, namespace, name, result).hash(&mut hasher);
    hasher.finish()
}

/// `fail` for what would be denied, `warn` for what would be patched or is audited, `skip`
/// for what a PolicyException lifts.
pub fn result_of(action: Action) -> &'static str {
    match action {
        Action::Denied => "fail",
        Action::Audited | Action::Mutated => "warn",
        Action::Excepted => "skip",
    }
}

/// `message` cut to at most `max` bytes on a character boundary, with `...` when cut.
pub fn bounded(mut message: String, max: usize) -> Box<str> {
    if message.len() > max {
        let mut end = max.saturating_sub(3);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message.into_boxed_str()
}

/// How much a tally may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TallyLimits {
    /// Results one report holds; the rest are counted.
    pub max_results: usize,
    /// Results all reports hold together; the rest are counted.
    pub max_results_total: usize,
    /// New findings kept for their Event in one scan; the rest wait for a later scan.
    pub events: usize,
}

/// One result a report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptResult {
    pub policy: &'static str,
    pub action: Action,
    pub api_version: String,
    pub kind: &'static str,
    pub name: String,
    pub uid: Option<String>,
    pub message: Box<str>,
}

/// What one namespace's report needs ("" is the cluster-scoped one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceTally {
    pub objects: usize,
    pub objects_with_findings: usize,
    pub fail: usize,
    pub warn: usize,
    /// Findings lifted by a PolicyException.
    pub skip: usize,
    pub results: Vec<KeptResult>,
    /// Results left out of `results` by the caps.
    pub dropped: usize,
    /// Findings not known before this scan, by policy and action (for summary Events).
    pub new_by_policy: BTreeMap<(&'static str, Action), usize>,
}

/// A new finding kept for its Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: u64,
    pub report: Report,
}

/// The background audit's [`ScanSink`].
#[derive(Debug)]
pub struct Tally {
    limits: TallyLimits,
    pub namespaces: BTreeMap<String, NamespaceTally>,
    kept: usize,
    /// The keys of every finding of this scan.
    pub current: HashSet<u64>,
    /// The keys of findings whose Event was published (or summarised) before this scan.
    known: HashSet<u64>,
    /// Findings of this scan not in `known`.
    pub new_findings: usize,
    /// The first `limits.events` of them, for their Events.
    pub candidates: Vec<Candidate>,
    /// Findings by policy and action, for the metrics.
    pub by_policy: BTreeMap<(&'static str, Action), i64>,
    pub object_errors: Vec<String>,
    /// Object errors beyond the first few, counted.
    pub more_object_errors: usize,
}

/// Object errors kept for the log; the rest are counted.
const OBJECT_ERRORS_KEPT: usize = 20;

impl Tally {
    /// A tally that treats the findings in `known` as already published.
    pub fn new(limits: TallyLimits, known: HashSet<u64>) -> Tally {
        Tally {
            limits,
            namespaces: BTreeMap::new(),
            kept: 0,
            current: HashSet::new(),
            known,
            new_findings: 0,
            candidates: Vec::new(),
            by_policy: BTreeMap::new(),
            object_errors: Vec::new(),
            more_object_errors: 0,
        }
    }

    pub fn objects(&self) -> usize {
        self.namespaces.values().map(|n| n.objects).sum()
    }

    pub fn findings(&self) -> usize {
        self.namespaces.values().map(|n| n.fail + n.warn).sum()
    }

    /// The keys known to be published after this scan, given the candidates whose Events
    /// went out (`published`): what was known and is still found, and what was published now.
    pub fn published_after(&mut self, published: impl IntoIterator<Item = u64>) -> HashSet<u64> {
        let mut known = std::mem::take(&mut self.known);
        known.retain(|key| self.current.contains(key));
        known.extend(published);
        known
    }

    /// Every finding of this scan counts as published (after summary Events).
    pub fn all_published(&mut self) -> HashSet<u64> {
        self.known = HashSet::new();
        std::mem::take(&mut self.current)
    }
}

/// An audit Event's report: from the audit's user, with the operation `AUDIT`.
pub fn audit_report(violation: bool, regarding: ObjectRef, findings: Vec<Reported>) -> Report {
    Report {
        reason: if violation {
            "PolicyViolation"
        } else {
            "PolicyMutation"
        },
        action: Action::Audited,
        user: AUDIT_USER.to_owned(),
        operation: "AUDIT".to_owned(),
        regarding,
        findings,
    }
}

/// The Event of a new finding.
fn candidate(key: u64, object: &Scanned, finding: &Reported) -> Candidate {
    let message = bounded(
        format!("would {}: {}", finding.action.verb(), finding.message),
        MESSAGE_MAX_BYTES,
    );
    let regarding = ObjectRef {
        api_version: object.api_version.clone(),
        kind: object.kind.to_owned(),
        namespace: object.namespace.clone(),
        name: object.name.clone(),
        uid: object.uid.clone(),
    };
    let reported = Reported {
        policy: finding.policy,
        action: Action::Audited,
        violation: finding.violation,
        message: message.into(),
        patch: Vec::new(),
        exception: None,
    };
    Candidate {
        key,
        report: audit_report(finding.violation, regarding, vec![reported]),
    }
}

/// Keeps a result for the report when the caps allow, else counts it as dropped.
fn keep_result(
    tally: &mut NamespaceTally,
    kept: &mut usize,
    limits: &TallyLimits,
    object: &Scanned,
    policy: &'static str,
    action: Action,
    message: String,
) {
    if tally.results.len() < limits.max_results && *kept < limits.max_results_total {
        *kept += 1;
        tally.results.push(KeptResult {
            policy,
            action,
            api_version: object.api_version.clone(),
            kind: object.kind,
            name: object.name.clone(),
            uid: object.uid.clone(),
            message: bounded(message, MESSAGE_MAX_BYTES),
        });
    } else {
        tally.dropped += 1;
    }
}

impl Tally {
    /// Reports the PolicyExceptions that ended within the last day in their namespaces'
    /// reports: what they lifted is judged again.
    pub fn expired_exceptions(&mut self, expired: &[std::sync::Arc<crate::exceptions::Exception>]) {
        for e in expired {
            let object = Scanned {
                api_version: format!(
                    "{}/{}",
                    crate::exceptions::GROUP,
                    crate::exceptions::VERSION
                ),
                kind: crate::exceptions::KIND,
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                uid: None,
            };
            let tally = self.namespaces.entry(e.namespace.clone()).or_default();
            tally.warn += 1;
            let message = format!(
                "{} expired at {} ({}); {} applies again",
                e.describe(),
                e.expires_text,
                e.reason,
                e.policies.join(", ")
            );
            keep_result(
                tally,
                &mut self.kept,
                &self.limits,
                &object,
                crate::exceptions::POLICY_ID,
                Action::Audited,
                message,
            );
        }
    }
}

impl ScanSink for Tally {
    fn object(&mut self, object: &Scanned, findings: Vec<ObjectFinding>) {
        let Tally {
            limits,
            namespaces,
            kept,
            current,
            known,
            new_findings,
            candidates,
            by_policy,
            ..
        } = self;
        let tally = match namespaces.get_mut(&object.namespace) {
            Some(tally) => tally,
            None => namespaces.entry(object.namespace.clone()).or_default(),
        };
        tally.objects += 1;
        if !findings.is_empty() {
            tally.objects_with_findings += 1;
        }
        for ObjectFinding { finding, .. } in findings {
            let result = result_of(finding.action);
            *by_policy
                .entry((finding.policy, finding.action))
                .or_default() += 1;
            if finding.action == Action::Excepted {
                // Reported as skipped, never as a new finding to publish.
                tally.skip += 1;
            } else {
                if finding.action == Action::Denied {
                    tally.fail += 1;
                } else {
                    tally.warn += 1;
                }
                let key = finding_key(
                    finding.policy,
                    object.kind,
                    &object.namespace,
                    &object.name,
                    result,
                );
                if current.insert(key) && !known.contains(&key) {
                    *new_findings += 1;
                    *tally
                        .new_by_policy
                        .entry((finding.policy, finding.action))
                        .or_default() += 1;
                    if candidates.len() < limits.events {
                        candidates.push(candidate(key, object, &finding));
                    }
                }
            }
            let message = match &finding.exception {
                Some(by) => format!("excepted by {}: {}", by.describe(), finding.message),
                None => finding.message,
            };
            keep_result(
                tally,
                kept,
                limits,
                object,
                finding.policy,
                finding.action,
                message,
            );
        }
    }

    fn object_error(&mut self, message: String) {
        if self.object_errors.len() < OBJECT_ERRORS_KEPT {
            self.object_errors.push(message);
        } else {
            self.more_object_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(ns: &str, name: &str) -> Scanned {
        Scanned {
            api_version: "apps/v1".into(),
            kind: "Deployment",
            namespace: ns.into(),
            name: name.into(),
            uid: None,
        }
    }

    fn deny(name: &str) -> ObjectFinding {
        ObjectFinding {
            kind: "Deployment".into(),
            namespace: "ns".into(),
            name: name.into(),
            finding: Reported {
                policy: "min-replicas",
                action: Action::Denied,
                violation: true,
                message: format!("{name} would run 1 replica"),
                patch: Vec::new(),
                exception: None,
            },
        }
    }

    fn limits(max_results: usize, max_results_total: usize, events: usize) -> TallyLimits {
        TallyLimits {
            max_results,
            max_results_total,
            events,
        }
    }

    /// Scans `names` in namespace `ns` (each with one finding) into a tally that knows
    /// `known`, publishes what it can (all candidates, or `fail` refused) and returns the
    /// names whose Events went out with the known set after the scan.
    fn scan(
        names: &[&str],
        known: HashSet<u64>,
        events: usize,
        refuse: &[&str],
    ) -> (Vec<String>, HashSet<u64>, usize) {
        let mut tally = Tally::new(limits(100, 1000, events), known);
        for name in names {
            tally.object(&object("ns", name), vec![deny(name)]);
        }
        let mut sent = Vec::new();
        let mut keys = Vec::new();
        for candidate in std::mem::take(&mut tally.candidates) {
            let name = candidate.report.regarding.name.clone();
            if !refuse.contains(&name.as_str()) {
                sent.push(name);
                keys.push(candidate.key);
            }
        }
        let pending = tally.new_findings - keys.len();
        (sent, tally.published_after(keys), pending)
    }

    #[test]
    fn new_findings_beyond_the_budget_wait_for_later_scans_and_none_is_sent_twice() {
        let names = ["a", "b", "c", "d", "e"];
        let (first, known, pending) = scan(&names, HashSet::new(), 2, &[]);
        assert_eq!(first, ["a", "b"]);
        assert_eq!(pending, 3, "delayed, not dropped");
        let (second, known, pending) = scan(&names, known, 2, &[]);
        assert_eq!(second, ["c", "d"]);
        assert_eq!(pending, 1);
        let (third, known, pending) = scan(&names, known, 2, &[]);
        assert_eq!(third, ["e"]);
        assert_eq!(pending, 0);
        let (fourth, known, _) = scan(&names, known, 2, &[]);
        assert!(fourth.is_empty(), "nothing is published twice: {fourth:?}");
        assert_eq!(known.len(), 5);
    }

    #[test]
    fn a_refused_event_stays_pending_and_a_fixed_finding_is_forgotten() {
        let (sent, known, pending) = scan(&["a", "b"], HashSet::new(), 10, &["b"]);
        assert_eq!((sent, pending), (vec!["a".to_owned()], 1));
        // b's Event goes out the next time; a is fixed meanwhile and forgotten...
        let (sent, known, _) = scan(&["b"], known, 10, &[]);
        assert_eq!(sent, ["b"]);
        assert_eq!(known.len(), 1);
        // ...so that it is new again when it comes back.
        let (sent, _, _) = scan(&["a", "b"], known, 10, &[]);
        assert_eq!(sent, ["a"]);
    }

    #[test]
    fn a_summary_marks_every_finding_published() {
        let mut tally = Tally::new(limits(100, 1000, 1), HashSet::new());
        for name in ["a", "b", "c"] {
            tally.object(&object("ns", name), vec![deny(name)]);
        }
        assert_eq!(tally.new_findings, 3);
        assert_eq!(tally.candidates.len(), 1, "candidates are bounded");
        assert_eq!(
            tally.namespaces["ns"].new_by_policy[&("min-replicas", Action::Denied)],
            3
        );
        let known = tally.all_published();
        let mut again = Tally::new(limits(100, 1000, 1), known);
        for name in ["a", "b", "c"] {
            again.object(&object("ns", name), vec![deny(name)]);
        }
        assert_eq!(again.new_findings, 0);
        assert!(again.candidates.is_empty());
    }

    #[test]
    fn results_are_capped_per_report_and_in_all_and_the_rest_counted() {
        let mut tally = Tally::new(limits(2, 3, 0), HashSet::new());
        for ns in ["one", "two"] {
            for name in ["a", "b", "c"] {
                tally.object(&object(ns, name), vec![deny(name)]);
            }
        }
        let one = &tally.namespaces["one"];
        let two = &tally.namespaces["two"];
        assert_eq!((one.results.len(), one.dropped), (2, 1), "per report");
        assert_eq!((two.results.len(), two.dropped), (1, 2), "in all");
        assert_eq!(
            (one.fail, two.fail),
            (3, 3),
            "the summaries count everything"
        );
        assert_eq!(tally.findings(), 6);
        assert_eq!(tally.objects(), 6);
    }

    #[test]
    fn a_kept_result_holds_no_patch_and_a_bounded_message() {
        let mut tally = Tally::new(limits(10, 10, 10), HashSet::new());
        let mut long = deny("a");
        long.finding.message = "é".repeat(3000);
        tally.object(&object("ns", "a"), vec![long]);
        let kept = &tally.namespaces["ns"].results[0];
        assert!(kept.message.len() <= MESSAGE_MAX_BYTES);
        assert!(kept.message.ends_with("..."));
        let note = tally.candidates[0].report.note();
        assert!(note.len() <= crate::report::NOTE_MAX_BYTES);
    }

    #[test]
    fn object_errors_are_kept_up_to_a_few_and_counted() {
        let mut tally = Tally::new(limits(1, 1, 1), HashSet::new());
        for i in 0..(OBJECT_ERRORS_KEPT + 5) {
            tally.object_error(format!("error {i}"));
        }
        assert_eq!(tally.object_errors.len(), OBJECT_ERRORS_KEPT);
        assert_eq!(tally.more_object_errors, 5);
    }

    #[test]
    fn finding_keys_are_stable_and_distinct() {
        let a = finding_key("min-replicas", "Deployment", "ns", "a", "fail");
        assert_eq!(
            a,
            finding_key("min-replicas", "Deployment", "ns", "a", "fail")
        );
        assert_ne!(
            a,
            finding_key("min-replicas", "Deployment", "ns", "a", "warn")
        );
        assert_ne!(
            a,
            finding_key("min-replicas", "Deployment", "nsa", "", "fail")
        );
    }

    #[test]
    fn excepted_findings_are_skipped_and_expired_exceptions_reported() {
        let mut tally = Tally::new(limits(100, 1000, 10), HashSet::new());
        let mut excepted = deny("migrate");
        excepted.finding.action = Action::Excepted;
        excepted.finding.exception = Some(crate::exceptions::lifting::ExceptedBy {
            namespace: "ns".into(),
            name: "migration".into(),
            reason: "one-off".into(),
            expires: "2026-12-01T00:00:00Z".into(),
        });
        tally.object(&object("ns", "migrate"), vec![excepted]);
        let ns = &tally.namespaces["ns"];
        assert_eq!((ns.fail, ns.warn, ns.skip), (0, 0, 1));
        assert!(
            tally.candidates.is_empty(),
            "a lifted finding gets no Event"
        );
        assert_eq!(tally.new_findings, 0);
        assert_eq!(ns.results[0].action, Action::Excepted);
        assert_eq!(
            &*ns.results[0].message,
            "excepted by PolicyException ns/migration (until 2026-12-01T00:00:00Z: one-off): migrate would run 1 replica"
        );

        let exception = crate::exceptions::Exception::from_text(
            &serde_json::json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
                "metadata": {"name": "migration", "namespace": "ns"},
                "spec": {"policies": ["min-replicas"], "match": {"names": ["migrate"]},
                         "reason": "one-off", "expires": "2026-12-01T00:00:00Z"}})
            .to_string(),
            "",
        )
        .unwrap();
        tally.expired_exceptions(&[std::sync::Arc::new(exception)]);
        let ns = &tally.namespaces["ns"];
        assert_eq!(ns.warn, 1);
        let note = &ns.results[1];
        assert_eq!(
            (note.policy, note.kind, note.name.as_str()),
            ("policy-exception", "PolicyException", "migration")
        );
        assert_eq!(
            &*note.message,
            "PolicyException ns/migration expired at 2026-12-01T00:00:00Z (one-off); min-replicas applies again"
        );
    }
}
