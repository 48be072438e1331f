//! Reports as events.k8s.io/v1 Events, regarding the object, published by kube-runtime's
//! `Recorder` (which folds repeats of the same reason and action on the same object into an
//! event series). A bounded queue sits between admission and the API server: a full queue
//! drops the report and counts it, and never delays a response.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::{Report, Reporter};
use crate::engine::Action;

/// Reports waiting to be published; beyond this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 1024;
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
}

impl EventStats {
    pub fn from_metrics(metrics: &Metrics) -> EventStats {
        EventStats {
            published: metrics.events_published.clone(),
            dropped: metrics.reports_dropped.clone(),
            failed: metrics.events_failed.clone(),
        }
    }
}

pub struct EventSink {
    queue: mpsc::Sender<Report>,
    pub stats: EventStats,
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
        Arc::new(EventSink { queue, stats })
    }
}

impl Reporter for EventSink {
    fn report(&self, report: Report) {
        if self.queue.try_send(report).is_err() {
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
        let sink = EventSink {
            queue,
            stats: EventStats::default(),
        };
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
