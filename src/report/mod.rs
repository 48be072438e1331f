//! Policy reports: a side channel that never sits on the admission response's path.
//! The engine hands each report to a [`Reporter`], which must not block; the Events sink
//! (events.k8s.io/v1) implements it.

use std::sync::Mutex;

use crate::engine::{Action, Reported, Request};

/// What prodguard did, to whom, on which object.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub policy: &'static str,
    pub action: Action,
    /// `PolicyViolation` or `PolicyMutation`.
    pub reason: &'static str,
    pub message: String,
    pub user: String,
    pub operation: String,
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Report {
    pub fn new(request: &Request<'_>, item: &Reported) -> Report {
        let api_version = if request.group.is_empty() {
            request.version.to_owned()
        } else {
            format!("{}/{}", request.group, request.version)
        };
        Report {
            policy: item.policy,
            action: item.action,
            reason: if item.violation {
                "PolicyViolation"
            } else {
                "PolicyMutation"
            },
            message: item.message.clone(),
            user: request.username.to_owned(),
            operation: format!("{:?}", request.operation).to_uppercase(),
            api_version,
            kind: request.kind.to_owned(),
            namespace: request.namespace.to_owned(),
            name: request.object_name().to_owned(),
        }
    }

    /// The note of the Event: policy, action, user, message.
    pub fn note(&self) -> String {
        format!(
            "{} {} {} by {}: {}",
            self.policy,
            self.action.as_str(),
            self.operation,
            self.user,
            self.message
        )
    }
}

/// Receives reports. Implementations queue and return at once: reporting never delays or
/// fails an admission response.
pub trait Reporter: Send + Sync {
    fn report(&self, report: Report);
}

/// Reports nowhere (for `check`, which prints instead).
pub struct NoReporter;

impl Reporter for NoReporter {
    fn report(&self, _report: Report) {}
}

/// Logs each report at debug level: the reporter `serve` uses until the Events sink is wired.
pub struct LogReporter;

impl Reporter for LogReporter {
    fn report(&self, report: Report) {
        tracing::debug!(
            policy = report.policy,
            action = report.action.as_str(),
            kind = %report.kind,
            namespace = %report.namespace,
            name = %report.name,
            user = %report.user,
            "{}",
            report.message
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
