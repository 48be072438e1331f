//! Policy reports: a side channel that never sits on the admission response's path.
//! The engine hands one [`Report`] per reported request to a [`Reporter`], which must not
//! block; [`events::EventSink`] turns them into events.k8s.io/v1 Events.

pub mod events;
pub mod metrics;

use std::sync::Mutex;

pub use crate::engine::report::{NoReporter, ObjectRef, Report, Reporter, NOTE_MAX_BYTES};

/// Logs each report at debug level (when no cluster is reachable for Events).
pub struct LogReporter;

impl Reporter for LogReporter {
    fn wants_reports(&self) -> bool {
        tracing::enabled!(tracing::Level::DEBUG)
    }

    fn report(&self, report: Report) {
        tracing::debug!(
            reason = report.reason,
            action = report.action.as_str(),
            kind = %report.regarding.kind,
            namespace = %report.regarding.namespace,
            name = %report.regarding.name,
            "{}",
            report.note()
        );
    }
}

/// Keeps reports in memory (tests).
#[derive(Default)]
pub struct MemoryReporter {
    reports: Mutex<Vec<Report>>,
}

impl MemoryReporter {
    pub fn take(&self) -> Vec<Report> {
        match self.reports.lock() {
            Ok(mut reports) => std::mem::take(&mut *reports),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl Reporter for MemoryReporter {
    fn report(&self, report: Report) {
        match self.reports.lock() {
            Ok(mut reports) => reports.push(report),
            Err(poisoned) => poisoned.into_inner().push(report),
        }
    }
}
