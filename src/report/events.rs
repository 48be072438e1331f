//! Reports as events.k8s.io/v1 Events, regarding the object, published by kube-runtime's
//! `Recorder` (which folds repeats of the same reason and action on the same object into an
//! event series). A bounded queue sits between admission and the API server: a full queue
//! drops the report and counts it, and never delays a response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::{Report, Reporter};
use crate::engine::Action;

/// Reports waiting to be published; beyond this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 1024;
/// Slots of the queue that only denials and break-glass uses (PolicyException reports) may
/// take: a flood of mutations and warnings leaves them room.
pub const RESERVED_SLOTS: usize = 256;
/// Reports one requesting user, or one namespace, may have published at once: its bucket holds
/// this many, and fills again at [`KEY_REFILL_PER_SECOND`]. A review forged by a caller that
/// is not the API server (without `--client-ca`) names whatever user and namespace it likes;
/// these bound what one name, repeated, can take of the queue.
pub const KEY_BURST: f64 = 60.0;
/// See [`KEY_BURST`].
pub const KEY_REFILL_PER_SECOND: f64 = 2.0;
/// Users and namespaces with a bucket of their own; beyond, new names share one.
pub const MAX_KEYS: usize = 4096;
/// The characters of a user or namespace name that tell buckets apart (a Kubernetes
/// namespace has at most 63; a user name is seldom longer).
pub const MAX_KEY_CHARS: usize = 256;
/// The reporting controller of admission Events.
pub const CONTROLLER: &str = "prodguard";
/// The reporting controller of background audit Events, so that they never fold into the
/// series of an admission Event about the same object.
pub const AUDIT_CONTROLLER: &str = "prodguard-audit";

/// Counters of the sink (shared with the metrics registry).
#[derive(Debug, Default, Clone)]
pub struct EventStats {
    pub published: Counter,
    pub dropped: Counter,
    pub failed: Counter,
    pub rate_limited: Counter,
}

impl EventStats {
    pub fn from_metrics(metrics: &Metrics) -> EventStats {
        EventStats {
            published: metrics.events_published.clone(),
            dropped: metrics.reports_dropped.clone(),
            failed: metrics.events_failed.clone(),
            rate_limited: metrics.events_rate_limited.clone(),
        }
    }
}

pub struct EventSink {
    queue: mpsc::Sender<Report>,
    pub stats: EventStats,
    limiter: std::sync::Mutex<Limiter>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: KEY_BURST,
            at: now,
        }
    }

    /// The tokens it holds at `now`.
    fn refill(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * KEY_REFILL_PER_SECOND).min(KEY_BURST);
        self.at = now;
        self.tokens
    }
}

/// The buckets of the requesting users and of the namespaces (at most [`MAX_KEYS`] of each;
/// when full, the buckets that have filled again are forgotten, and new names beyond share
/// one overflow bucket).
#[derive(Debug)]
struct Limiter {
    users: HashMap<String, Bucket>,
    namespaces: HashMap<String, Bucket>,
    overflow_users: Bucket,
    overflow_namespaces: Bucket,
    /// When each full map (users, namespaces) was last swept.
    pruned: (Instant, Instant),
}

impl Limiter {
    fn new(now: Instant) -> Limiter {
        Limiter {
            users: HashMap::new(),
            namespaces: HashMap::new(),
            overflow_users: Bucket::full(now),
            overflow_namespaces: Bucket::full(now),
            pruned: (now, now),
        }
    }

    fn bucket<'a>(
        map: &'a mut HashMap<String, Bucket>,
        overflow: &'a mut Bucket,
        pruned: &mut Instant,
        key: &str,
        now: Instant,
    ) -> &'a mut Bucket {
        // A forged review's names can be long: the map keeps their first characters.
        let key = match key.char_indices().nth(MAX_KEY_CHARS) {
            Some((end, _)) => &key[..end],
            None => key,
        };
        // A full map is swept at most once a second, so that a flood of new names costs a
        // lookup each, not a sweep each.
        if !map.contains_key(key)
            && map.len() >= MAX_KEYS
            && now.saturating_duration_since(*pruned) >= std::time::Duration::from_secs(1)
        {
            *pruned = now;
            map.retain(|_, bucket| bucket.refill(now) < KEY_BURST);
        }
        if map.contains_key(key) || map.len() < MAX_KEYS {
            map.entry(key.to_owned())
                .or_insert_with(|| Bucket::full(now))
        } else {
            overflow
        }
    }

    /// Whether a report of `user` about an object of `namespace` may be queued now: both
    /// buckets must hold a token, and then each gives one.
    fn admit(&mut self, user: &str, namespace: &str, now: Instant) -> bool {
        let Limiter {
            users,
            namespaces,
            overflow_users,
            overflow_namespaces,
            pruned: (users_pruned, namespaces_pruned),
        } = self;
        let user = Self::bucket(users, overflow_users, users_pruned, user, now);
        let namespace = Self::bucket(
            namespaces,
            overflow_namespaces,
            namespaces_pruned,
            namespace,
            now,
        );
        if user.refill(now) < 1.0 || namespace.refill(now) < 1.0 {
            return false;
        }
        user.tokens -= 1.0;
        namespace.tokens -= 1.0;
        true
    }
}

impl EventSink {
    /// Starts the publishing task; `controller` and `instance` (the pod name) are named on
    /// every Event.
    pub fn start(
        client: kube::Client,
        controller: &str,
        instance: String,
        stats: EventStats,
    ) -> Arc<EventSink> {
        let (queue, reports) = mpsc::channel(QUEUE_CAPACITY);
        let recorder = Recorder::new(
            client,
            EventReporter {
                controller: controller.to_owned(),
                instance: Some(instance),
            },
        );
        tokio::spawn(publish(recorder, reports, stats.clone()));
        Arc::new(EventSink::with_queue(queue, stats))
    }

    fn with_queue(queue: mpsc::Sender<Report>, stats: EventStats) -> EventSink {
        EventSink {
            queue,
            stats,
            limiter: std::sync::Mutex::new(Limiter::new(Instant::now())),
        }
    }
}

impl Reporter for EventSink {
    fn report(&self, report: Report) {
        let admitted = match self.limiter.lock() {
            Ok(mut limiter) => {
                limiter.admit(&report.user, &report.regarding.namespace, Instant::now())
            }
            Err(poisoned) => poisoned.into_inner().admit(
                &report.user,
                &report.regarding.namespace,
                Instant::now(),
            ),
        };
        // Denials and break-glass uses may take the reserved slots; the rest may not.
        let reserved = matches!(report.action, Action::Denied | Action::Excepted);
        if !admitted || (!reserved && self.queue.capacity() <= RESERVED_SLOTS) {
            let limited = self.stats.rate_limited.inc() + 1;
            if limited.is_power_of_two() {
                tracing::warn!(
                    limited,
                    user = %report.user,
                    namespace = %report.regarding.namespace,
                    "policy reports over their user's or namespace's rate, or beyond the queue's share for mutations and warnings, are not published"
                );
            }
            return;
        }
        if self.queue.try_send(shrunk(report)).is_err() {
            let dropped = self.stats.dropped.inc() + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "the event queue is full; reports are being dropped"
                );
            }
        }
    }
}

/// A report reduced to what its Event shows, so that a queued report holds at most a few
/// kilobytes whatever the review was: names cut to [`MAX_KEY_CHARS`], each message to the
/// note's size, no patches.
fn shrunk(mut report: Report) -> Report {
    fn cut(text: &mut String, chars: usize) {
        if let Some((end, _)) = text.char_indices().nth(chars) {
            text.truncate(end);
        }
    }
    cut(&mut report.user, MAX_KEY_CHARS);
    cut(&mut report.operation, MAX_KEY_CHARS);
    let r = &mut report.regarding;
    for field in [
        &mut r.api_version,
        &mut r.kind,
        &mut r.namespace,
        &mut r.name,
    ] {
        cut(field, MAX_KEY_CHARS);
    }
    if let Some(uid) = &mut r.uid {
        cut(uid, MAX_KEY_CHARS);
    }
    for finding in &mut report.findings {
        cut(&mut finding.message, super::NOTE_MAX_BYTES);
        finding.patch = Vec::new();
    }
    report
}

/// The Event a report becomes.
pub fn to_event(report: &Report) -> (Event, ObjectReference) {
    let event = Event {
        type_: match report.action {
            Action::Mutated => EventType::Normal,
            Action::Denied | Action::Audited | Action::Excepted => EventType::Warning,
        },
        reason: report.reason.to_owned(),
        note: Some(report.note()),
        action: report.action.as_str().to_owned(),
        secondary: None,
    };
    let r = &report.regarding;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let reference = ObjectReference {
        api_version: non_empty(&r.api_version),
        kind: non_empty(&r.kind),
        namespace: non_empty(&r.namespace),
        name: non_empty(&r.name),
        uid: r.uid.clone(),
        ..ObjectReference::default()
    };
    (event, reference)
}

async fn publish(recorder: Recorder, mut reports: mpsc::Receiver<Report>, stats: EventStats) {
    while let Some(report) = reports.recv().await {
        let (event, reference) = to_event(&report);
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                stats.published.inc();
            }
            Err(e) => {
                stats.failed.inc();
                tracing::warn!(
                    kind = %report.regarding.kind,
                    namespace = %report.regarding.namespace,
                    name = %report.regarding.name,
                    "cannot publish a policy event: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Reported;
    use crate::report::ObjectRef;

    #[test]
    fn a_denial_is_a_warning_regarding_the_object() {
        let report = Report {
            reason: "PolicyViolation",
            action: Action::Denied,
            user: "bob".into(),
            operation: "DELETE".into(),
            regarding: ObjectRef {
                api_version: "v1".into(),
                kind: "Secret".into(),
                namespace: "openg2p".into(),
                name: "db".into(),
                uid: Some("u".into()),
            },
            findings: vec![Reported {
                policy: "protect-delete",
                action: Action::Denied,
                violation: true,
                message: "no".into(),
                patch: Vec::new(),
                exception: None,
            }],
        };
        let (event, reference) = to_event(&report);
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(
            (event.reason.as_str(), event.action.as_str()),
            ("PolicyViolation", "Denied")
        );
        assert_eq!(
            event.note.as_deref(),
            Some("DELETE by \"bob\": [protect-delete] Denied: no")
        );
        assert_eq!(reference.kind.as_deref(), Some("Secret"));
        assert_eq!(reference.uid.as_deref(), Some("u"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // No publisher drains this queue of 2.
        let (queue, _reports) = mpsc::channel(2);
        let sink = EventSink::with_queue(queue, EventStats::default());
        let report = Report {
            reason: "PolicyViolation",
            action: Action::Denied,
            user: "bob".into(),
            operation: "CREATE".into(),
            regarding: ObjectRef::default(),
            findings: vec![],
        };
        let started = std::time::Instant::now();
        for _ in 0..5 {
            sink.report(report.clone());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(sink.stats.dropped.get(), 3);
    }

    fn report_by(action: Action, user: &str, namespace: &str) -> Report {
        Report {
            reason: "PolicyViolation",
            action,
            user: user.into(),
            operation: "CREATE".into(),
            regarding: ObjectRef {
                namespace: namespace.into(),
                ..ObjectRef::default()
            },
            findings: vec![],
        }
    }

    #[test]
    fn a_flood_under_one_name_leaves_room_for_another_users_denial() {
        let (queue, mut reports) = mpsc::channel(QUEUE_CAPACITY);
        let sink = EventSink::with_queue(queue, EventStats::default());
        for _ in 0..5000 {
            sink.report(report_by(Action::Denied, "forger", "openg2p"));
        }
        sink.report(report_by(Action::Denied, "alice", "social-registry"));
        let mut queued = Vec::new();
        while let Ok(report) = reports.try_recv() {
            queued.push(report.user);
        }
        // The forger's burst, then the real denial; the rest were limited, none dropped.
        assert_eq!(queued.len(), KEY_BURST as usize + 1);
        assert_eq!(queued.last().map(String::as_str), Some("alice"));
        assert_eq!(sink.stats.rate_limited.get(), 5000 - KEY_BURST as u64);
        assert_eq!(sink.stats.dropped.get(), 0);
        // Varying the user does not lift the namespace's limit.
        for i in 0..200 {
            sink.report(report_by(Action::Denied, &format!("forger-{i}"), "openg2p"));
        }
        assert_eq!(reports.try_recv().ok(), None);
    }

    #[test]
    fn a_queued_report_is_small_whatever_the_review() {
        let (queue, mut reports) = mpsc::channel(QUEUE_CAPACITY);
        let sink = EventSink::with_queue(queue, EventStats::default());
        let long = "é".repeat(1_000_000);
        let mut report = report_by(Action::Denied, &long, &long);
        report.regarding.name = long.clone();
        report.findings.push(Reported {
            policy: "min-replicas",
            action: Action::Denied,
            violation: true,
            message: long.clone(),
            patch: vec![json_patch::PatchOperation::Remove(
                json_patch::RemoveOperation::default(),
            )],
            exception: None,
        });
        sink.report(report);
        let queued = reports.try_recv().expect("queued");
        assert_eq!(queued.user.chars().count(), MAX_KEY_CHARS);
        assert_eq!(queued.regarding.name.chars().count(), MAX_KEY_CHARS);
        assert_eq!(
            queued.findings[0].message.chars().count(),
            crate::report::NOTE_MAX_BYTES
        );
        assert!(queued.findings[0].patch.is_empty());
        assert!(to_event(&queued).0.note.unwrap().len() <= crate::report::NOTE_MAX_BYTES);
    }

    #[test]
    fn buckets_fill_again_at_their_rate() {
        let start = Instant::now();
        let mut limiter = Limiter::new(start);
        let admitted = (0..100)
            .filter(|_| limiter.admit("bob", "ns", start))
            .count();
        assert_eq!(admitted, KEY_BURST as usize);
        assert!(!limiter.admit("bob", "ns", start));
        let later = start + std::time::Duration::from_secs(1);
        let admitted = (0..10)
            .filter(|_| limiter.admit("bob", "ns", later))
            .count();
        assert_eq!(admitted, KEY_REFILL_PER_SECOND as usize);
        let much_later = start + std::time::Duration::from_secs(3600);
        let admitted = (0..100)
            .filter(|_| limiter.admit("bob", "ns", much_later))
            .count();
        assert_eq!(
            admitted, KEY_BURST as usize,
            "a bucket holds no more than its burst"
        );
    }

    #[test]
    fn names_beyond_the_cap_share_one_bucket_and_the_maps_stay_bounded() {
        let now = Instant::now();
        let mut limiter = Limiter::new(now);
        let admitted = (0..3 * MAX_KEYS)
            .filter(|i| limiter.admit(&format!("user-{i}"), &format!("ns-{i}"), now))
            .count();
        assert!(limiter.users.len() <= MAX_KEYS && limiter.namespaces.len() <= MAX_KEYS);
        assert_eq!(admitted, MAX_KEYS + KEY_BURST as usize);
        // Once they have filled again, old names are forgotten to make room for new ones.
        let later = now + std::time::Duration::from_secs(3600);
        assert!(limiter.admit("newcomer", "new-ns", later));
        assert!(limiter.users.contains_key("newcomer"));
        assert!(limiter.namespaces.contains_key("new-ns"));
        assert!(limiter.users.len() <= MAX_KEYS);
        // A long forged name is kept by its first characters.
        let long = "x".repeat(100_000);
        assert!(limiter.admit(&long, "ns", later));
        assert!(limiter.users.keys().all(|k| k.len() <= MAX_KEY_CHARS));
    }

    #[test]
    fn mutations_and_warnings_leave_the_reserved_slots_to_denials() {
        let (queue, mut reports) = mpsc::channel(QUEUE_CAPACITY);
        let sink = EventSink::with_queue(queue, EventStats::default());
        // Many names, so that no bucket limits them: only the queue's share does.
        for i in 0..QUEUE_CAPACITY {
            let action = if i % 2 == 0 {
                Action::Mutated
            } else {
                Action::Audited
            };
            sink.report(report_by(action, &format!("u{i}"), &format!("n{i}")));
        }
        assert_eq!(
            sink.stats.rate_limited.get(),
            RESERVED_SLOTS as u64,
            "the last reserved slots were kept"
        );
        for (i, action) in [Action::Denied, Action::Excepted].into_iter().enumerate() {
            sink.report(report_by(action, &format!("real-{i}"), "social-registry"));
        }
        let mut queued = Vec::new();
        while let Ok(report) = reports.try_recv() {
            queued.push(report.action);
        }
        assert_eq!(queued.len(), QUEUE_CAPACITY - RESERVED_SLOTS + 2);
        assert_eq!(
            queued[queued.len() - 2..],
            [Action::Denied, Action::Excepted]
        );
    }

    #[test]
    fn an_unnamed_object_gets_no_empty_name() {
        let report = Report {
            reason: "PolicyMutation",
            action: Action::Mutated,
            user: "u".into(),
            operation: "CREATE".into(),
            regarding: ObjectRef {
                kind: "Pod".into(),
                ..ObjectRef::default()
            },
            findings: vec![],
        };
        let (event, reference) = to_event(&report);
        assert_eq!(event.type_, EventType::Normal);
        assert_eq!(reference.name, None);
        assert_eq!(reference.namespace, None);
    }
}
